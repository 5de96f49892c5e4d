//! Address and port rewriting for source NAT: an IPv4 packet's source (or destination)
//! address and its TCP / UDP port or ICMP echo identifier replaced in place, every
//! checksum it touches updated incrementally (RFC 1624) — the IPv4 header's, TCP's and
//! UDP's (their pseudo header covers the addresses; a UDP checksum of zero means "none"
//! and stays zero, a computed zero is sent as 0xffff, RFC 768) and ICMP's (the identifier
//! only: ICMP has no pseudo header).
//!
//! ICMP errors about a translated connection quote the packet as the node sent it:
//! [`rewrite_icmp_error`] turns one back for the pod (outer destination, quoted source,
//! their checksums).
//!
//! Hot path: [`rewrite`] and [`rewrite_icmp_error`] never allocate and never panic,
//! whatever bytes they are given.

use std::net::Ipv4Addr;

use crate::{Error, checksum, ipv4::{IpProtocol, Ipv4Packet}};

/// Which end of the packet [`rewrite`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source address and port (outbound, after the pod).
    Source,
    /// The destination address and port (the reply, back to the pod).
    Destination,
}

/// ICMP echo request and reply: the messages whose identifier NAT rewrites.
const ECHO_TYPES: [u8; 2] = [8, 0];

/// What NAT reads of a packet, in one pass ([`ends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub proto: IpProtocol,
    /// The source and destination ports; for ICMP echo, the identifier as both.
    pub src_port: u16,
    pub dst_port: u16,
    /// A TCP segment with FIN or RST set: the connection is closing (NAT lets its port go
    /// soon after).
    pub closes: bool,
}

impl Ends {
    /// The port (TCP, UDP) or echo identifier (ICMP) of `end`.
    pub fn port(&self, end: End) -> u16 {
        match end {
            End::Source => self.src_port,
            End::Destination => self.dst_port,
        }
    }

    /// The port that names the remote `end` of a translated connection: its TCP or UDP
    /// port; 0 for ICMP echo, whose identifier belongs to the node's end.
    pub fn remote_port(&self, end: End) -> u16 {
        if self.proto == IpProtocol::Icmp { 0 } else { self.port(end) }
    }
}

/// The ports of the IPv4 packet `packet` (TCP, UDP, ICMP echo's identifier) and whether
/// it closes a TCP connection; `None` when it has none to translate (a later fragment,
/// another protocol, other ICMP, a header cut short).
pub fn ends(packet: &[u8]) -> Option<Ends> {
    let (l4, proto) = l4(packet).ok()?;
    let read = |end| offset(proto, l4, end).map(|at| u16::from_be_bytes([l4[at], l4[at + 1]]));
    Some(Ends {
        proto,
        src_port: read(End::Source)?,
        dst_port: read(End::Destination)?,
        closes: proto == IpProtocol::Tcp && l4[13] & 0x05 != 0,
    })
}

/// Rewrites `end` of the IPv4 packet `packet` to `addr`:`port` (an ICMP echo's
/// identifier for ICMP) and updates the checksums. Refuses (and leaves the packet as it
/// was) a packet that is not a whole IPv4 packet with a TCP, UDP or ICMP echo header, and
/// fragments (a later fragment has no port to rewrite).
pub fn rewrite(packet: &mut [u8], end: End, addr: Ipv4Addr, port: u16) -> Result<(), Error> {
    let (l4_start, proto, old_addr) = {
        let ip = Ipv4Packet::new_checked(&*packet)?;
        if ip.is_fragment() {
            return Err(Error::Malformed);
        }
        let old = match end {
            End::Source => ip.src_addr(),
            End::Destination => ip.dst_addr(),
        };
        (ip.header_len(), ip.protocol(), old)
    };
    let total = usize::from(Ipv4Packet::new_unchecked(&*packet).total_len());
    let (l4, _) = l4(packet)?;
    let at = offset(proto, l4, end).ok_or(Error::Malformed)?;
    let old_port = u16::from_be_bytes([l4[at], l4[at + 1]]);

    // The L4 checksum first (it reads nothing the IPv4 rewrite changes).
    let l4 = &mut packet[l4_start..total];
    let (csum_at, pseudo) = match proto {
        IpProtocol::Tcp => (16, true),
        IpProtocol::Udp => (6, true),
        _ => (2, false), // ICMP
    };
    let csum = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    let udp_none = proto == IpProtocol::Udp && csum == 0;
    if !udp_none {
        let mut c = checksum::update_u16(csum, old_port, port);
        if pseudo {
            c = checksum::update_u32(c, u32::from(old_addr), u32::from(addr));
        }
        if proto == IpProtocol::Udp && c == 0 {
            c = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    l4[at..at + 2].copy_from_slice(&port.to_be_bytes());

    let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
    let c = checksum::update_u32(ip.checksum(), u32::from(old_addr), u32::from(addr));
    match end {
        End::Source => ip.set_src_addr(addr),
        End::Destination => ip.set_dst_addr(addr),
    }
    ip.set_checksum(c);
    Ok(())
}

/// Turns an ICMP error about a translated connection (its quote: the packet the node sent,
/// from the node's address and NAT port) back into one for the pod: the outer destination
/// and the quoted source become `addr`:`port` (the quoted echo identifier for a quoted
/// ping); the outer and quoted IPv4 checksums, a quoted UDP or TCP checksum that the quote
/// holds, and the ICMP checksum (recomputed over the message) stay right. The caller has
/// found the connection from [`crate::flow::FlowInfo::related`]. Refuses (writing
/// nothing) what is not an ICMP error with a quote of an IPv4 header and 8 bytes.
pub fn rewrite_icmp_error(packet: &mut [u8], addr: Ipv4Addr, port: u16) -> Result<(), Error> {
    let (hl, total, old_dst) = {
        let ip = Ipv4Packet::new_checked(&*packet)?;
        if ip.is_fragment() || ip.protocol() != IpProtocol::Icmp {
            return Err(Error::Malformed);
        }
        (ip.header_len(), usize::from(ip.total_len()), ip.dst_addr())
    };
    let icmp = &mut packet[hl..total];
    if icmp.len() < 8 || !matches!(icmp[0], 3 | 4 | 5 | 11 | 12) {
        return Err(Error::Malformed);
    }
    let quote = &mut icmp[8..];
    let qhl = usize::from(quote.first().copied().unwrap_or(0) & 0x0f) * 4;
    if quote.first().map(|b| b >> 4) != Some(4) || qhl < 20 || quote.len() < qhl + 8 {
        return Err(Error::Malformed);
    }
    let quoted_proto = IpProtocol::from(quote[9]);
    let (port_at, csum_at, pseudo) = match quoted_proto {
        IpProtocol::Tcp => (0, 16, true),
        IpProtocol::Udp => (0, 6, true),
        IpProtocol::Icmp => (4, 2, false),
        _ => return Err(Error::Malformed),
    };
    let (old, new) = (u32::from_be_bytes([quote[12], quote[13], quote[14], quote[15]]), u32::from(addr));
    // The quoted header: its source and its checksum.
    let qsum = checksum::update_u32(u16::from_be_bytes([quote[10], quote[11]]), old, new);
    quote[10..12].copy_from_slice(&qsum.to_be_bytes());
    quote[12..16].copy_from_slice(&addr.octets());
    // The quoted L4 header: the port or identifier, and its checksum where the quote has it
    // (a UDP checksum of zero means none).
    let l4 = &mut quote[qhl..];
    let old_port = u16::from_be_bytes([l4[port_at], l4[port_at + 1]]);
    l4[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    if let Some(c) = l4.get(csum_at..csum_at + 2).map(|c| u16::from_be_bytes([c[0], c[1]]))
        && !(quoted_proto == IpProtocol::Udp && c == 0)
    {
        let mut c = checksum::update_u16(c, old_port, port);
        if pseudo {
            c = checksum::update_u32(c, old, new);
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    // The ICMP checksum covers the whole quote: recomputed (errors are rare).
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = !checksum::data(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    // The outer destination.
    let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
    let c = checksum::update_u32(ip.checksum(), u32::from(old_dst), new);
    ip.set_dst_addr(addr);
    ip.set_checksum(c);
    Ok(())
}

/// The L4 bytes of a whole, unfragmented IPv4 packet (up to its total length), and its
/// protocol.
fn l4(packet: &[u8]) -> Result<(&[u8], IpProtocol), Error> {
    let ip = Ipv4Packet::new_checked(packet)?;
    if ip.is_fragment() {
        return Err(Error::Malformed);
    }
    let proto = ip.protocol();
    let (start, end) = (ip.header_len(), usize::from(ip.total_len()));
    Ok((&packet[start..end], proto))
}

/// Where `end`'s port lives in the L4 header `l4` of protocol `proto`, when the header is
/// whole.
fn offset(proto: IpProtocol, l4: &[u8], end: End) -> Option<usize> {
    let (at, header) = match proto {
        IpProtocol::Tcp => (if end == End::Source { 0 } else { 2 }, 20),
        IpProtocol::Udp => (if end == End::Source { 0 } else { 2 }, 8),
        // Echo: the identifier is the "port" of both ends.
        IpProtocol::Icmp if l4.first().is_some_and(|t| ECHO_TYPES.contains(t)) => (4, 8),
        _ => return None,
    };
    (l4.len() >= header).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fixtures, icmpv4::Icmpv4Packet, tcp::TcpPacket, udp::UdpPacket};
    use proptest::prelude::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);

    fn port_of(packet: &[u8], end: End) -> Option<u16> {
        ends(packet).map(|e| e.port(end))
    }

    /// The inner IPv4 packet of a captured VXLAN frame, its checksums made right (Linux
    /// senders leave a partial L4 checksum for the offload).
    fn inner(frame: &[u8]) -> Vec<u8> {
        let mut p = frame[64..].to_vec();
        let (src, dst, proto, hl) = {
            let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
            (ip.src_addr(), ip.dst_addr(), ip.protocol(), ip.header_len())
        };
        let total = usize::from(Ipv4Packet::new_checked(&p[..]).unwrap().total_len());
        let l4 = &mut p[hl..total];
        match proto {
            IpProtocol::Tcp => TcpPacket::new_unchecked(l4).fill_checksum(src, dst),
            IpProtocol::Udp => UdpPacket::new_unchecked(l4).fill_checksum(src, dst),
            _ => Icmpv4Packet::new_unchecked(l4).fill_checksum(),
        }
        p
    }

    /// Whether the IPv4 header and the L4 checksum of `p` are right.
    fn checksums_hold(p: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(p).unwrap();
        let (src, dst, l4) = (ip.src_addr(), ip.dst_addr(), ip.payload());
        ip.verify_checksum()
            && match ip.protocol() {
                IpProtocol::Tcp => TcpPacket::new_checked(l4).unwrap().verify_checksum(src, dst),
                IpProtocol::Udp => UdpPacket::new_checked(l4).unwrap().verify_checksum(src, dst),
                _ => Icmpv4Packet::new_checked(l4).unwrap().verify_checksum(),
            }
    }

    #[test]
    fn rewrites_tcp_udp_and_echo_and_keeps_every_checksum_right() {
        for (frame, proto) in [(&fixtures::VXLAN_TCP_SYN[..], IpProtocol::Tcp), (&fixtures::VXLAN_UDP[..], IpProtocol::Udp), (&fixtures::VXLAN_ICMP_ECHO_REQUEST[..], IpProtocol::Icmp)] {
            let mut p = inner(frame);
            assert!(checksums_hold(&p), "{proto:?}: the capture's checksums");
            let dst_port = port_of(&p, End::Destination).unwrap();
            rewrite(&mut p, End::Source, NODE, 61000).unwrap();
            assert!(checksums_hold(&p), "{proto:?} after the source rewrite");
            let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
            assert_eq!(ip.src_addr(), NODE);
            assert_eq!(port_of(&p, End::Source), Some(61000));
            if proto != IpProtocol::Icmp {
                assert_eq!(port_of(&p, End::Destination), Some(dst_port), "the other port stays");
            }
            // And back, as the reply's destination would be.
            let dst = ip.dst_addr();
            rewrite(&mut p, End::Destination, Ipv4Addr::new(10, 244, 9, 9), 7).unwrap();
            assert!(checksums_hold(&p), "{proto:?} after the destination rewrite");
            assert_eq!(Ipv4Packet::new_checked(&p[..]).unwrap().dst_addr(), Ipv4Addr::new(10, 244, 9, 9));
            assert_ne!(dst, Ipv4Addr::new(10, 244, 9, 9));
        }
    }

    #[test]
    fn a_udp_datagram_without_checksum_stays_without() {
        let mut p = inner(&fixtures::VXLAN_UDP);
        let at = Ipv4Packet::new_checked(&p[..]).unwrap().header_len() + 6;
        p[at..at + 2].copy_from_slice(&[0, 0]);
        rewrite(&mut p, End::Source, NODE, 62000).unwrap();
        assert_eq!(&p[at..at + 2], &[0, 0]);
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
    }

    #[test]
    fn refuses_fragments_other_icmp_and_short_headers() {
        let mut later = inner(&fixtures::VXLAN_UDP);
        Ipv4Packet::new_unchecked(&mut later[..]).set_frag_offset(8);
        assert_eq!(port_of(&later, End::Source), None);
        let before = later.clone();
        assert!(rewrite(&mut later, End::Source, NODE, 61000).is_err());
        assert_eq!(later, before, "nothing written on refusal");
        let unreachable = inner(&fixtures::VXLAN_ICMP_PORT_UNREACHABLE);
        assert_eq!(port_of(&unreachable, End::Source), None, "ICMP errors have no port");
        let syn = inner(&fixtures::VXLAN_TCP_SYN);
        let mut short = syn[..20 + 10].to_vec();
        Ipv4Packet::new_unchecked(&mut short[..]).set_total_len(30);
        assert_eq!(port_of(&short, End::Source), None, "a TCP header cut short");
    }

    #[test]
    fn an_icmp_error_about_a_translated_connection_goes_back_to_the_pod() {
        // The node sent a UDP datagram from 10.100.0.11:61000; a router answers port
        // unreachable, quoting it.
        let mut sent = inner(&fixtures::VXLAN_UDP);
        rewrite(&mut sent, End::Source, NODE, 61000).unwrap();
        let (pod, pod_port) = (Ipv4Addr::new(10, 244, 1, 2), 40000);
        let router = Ipv4Addr::new(10, 100, 0, 1);
        let mut err = [0u8; 128];
        let n = crate::icmpv4::emit_error(&mut err, router, &sent, crate::icmpv4::IcmpError::TtlExpired).unwrap();
        let mut err = err[..n].to_vec();
        assert_eq!(Ipv4Packet::new_checked(&err[..]).unwrap().dst_addr(), NODE);
        rewrite_icmp_error(&mut err, pod, pod_port).unwrap();
        let ip = Ipv4Packet::new_checked(&err[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (router, pod));
        assert!(Icmpv4Packet::new_checked(ip.payload()).unwrap().verify_checksum());
        let related = crate::flow::parse_flow_info(&err).unwrap().related.unwrap();
        assert_eq!((related.src, related.src_port), (pod, pod_port));
        let quoted = Ipv4Packet::new_checked(&ip.payload()[8..]).expect("the whole datagram is quoted");
        assert!(quoted.verify_checksum(), "the quoted header's checksum");
        assert!(UdpPacket::new_checked(quoted.payload()).unwrap().verify_checksum(pod, quoted.dst_addr()), "the quoted UDP checksum");
        // Not an error: refused, nothing written.
        let mut echo = inner(&fixtures::VXLAN_ICMP_ECHO_REQUEST);
        let before = echo.clone();
        assert!(rewrite_icmp_error(&mut echo, pod, pod_port).is_err());
        assert_eq!(echo, before);
    }

    proptest! {
        #[test]
        fn never_panics_and_refusals_write_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..120), port in any::<u16>()) {
            for end in [End::Source, End::Destination] {
                let mut p = bytes.clone();
                if rewrite(&mut p, end, NODE, port).is_err() {
                    prop_assert_eq!(&p, &bytes);
                }
                let _ = port_of(&bytes, end);
            }
            let mut p = bytes.clone();
            if rewrite_icmp_error(&mut p, NODE, port).is_err() {
                prop_assert_eq!(&p, &bytes);
            }
            let _ = ends(&bytes);
        }
    }
}
