//! The IPv4 5-tuple: what the pipeline's conntrack and policy stages key on.
//!
//! Owns [`FiveTuple`] and [`parse_ipv4_flow`], which reads it from an IPv4 packet
//! (RFC 791) with a TCP (RFC 793), UDP (RFC 768), SCTP (RFC 9260), UDP-Lite (RFC 3828)
//! or ICMP (RFC 792) payload, and [`parse_flow_info`], which adds what the stateful policy
//! stage needs besides: TCP flags, ICMP type and code, fragment identity, and for an ICMP
//! error the tuple of the packet it reports on. The policy engine sees nothing of a packet
//! but the tuple.
//!
//! Ports by protocol:
//! - TCP, UDP, SCTP, UDP-Lite: the ports of the L4 header (the whole fixed header, 20 / 8 /
//!   12 / 8 bytes, must be present).
//! - ICMP echo request and echo reply: *both* ports carry the echo identifier, so that the
//!   reply's tuple is the request's [`FiveTuple::reversed`] and conntrack matches them
//!   the way it matches TCP and UDP. Every other ICMP message (errors included) and every
//!   other protocol: ports 0.
//!
//! Hot path: never allocates, never panics.

use std::net::Ipv4Addr;

use crate::icmpv4::{self, Icmpv4Packet, Message};
use crate::ipv4::{IpProtocol, Ipv4Packet};
use crate::net_endian::read_u16;
use crate::{Error, tcp, udp};

/// Source and destination address, protocol number and ports of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IPv4 protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub proto: u8,
    /// Source port; the echo identifier for ICMP echo; 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port; the echo identifier for ICMP echo; 0 when the protocol has none.
    pub dst_port: u16,
}

impl FiveTuple {
    /// The tuple of the other direction of the same flow.
    pub const fn reversed(&self) -> FiveTuple {
        FiveTuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Reads the 5-tuple of the IPv4 packet `ip_packet` (starting at the IPv4 header; Ethernet
/// padding after the total length is allowed).
///
/// Errors: the length errors of [`Ipv4Packet::check_len`]; `Malformed` if the version is
/// not 4; `Fragmented` for a non-first fragment, which carries no ports (the first fragment
/// has them and is parsed); `Truncated` if a TCP, UDP or ICMP header is cut short. The
/// header checksum is not verified.
pub fn parse_ipv4_flow(ip_packet: &[u8]) -> Result<FiveTuple, Error> {
    let info = parse_flow_info(ip_packet)?;
    if info.fragment == Fragment::Later {
        return Err(Error::Fragmented);
    }
    Ok(info.tuple)
}

/// SCTP (RFC 9260): ports in the first four bytes of a 12-byte common header.
pub const PROTO_SCTP: u8 = 132;
/// UDP-Lite (RFC 3828): ports as UDP's, 8-byte header.
pub const PROTO_UDPLITE: u8 = 136;
const SCTP_HEADER_LEN: usize = 12;

/// Where a packet stands among the fragments of its datagram (RFC 791 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    Whole,
    /// Offset 0 with more fragments to come: it carries the L4 header.
    First,
    /// Offset above 0: no L4 header; only the datagram's identity links it to the first.
    Later,
}

/// Everything the stateful policy stage reads of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    /// The 5-tuple (ports 0 for a later fragment).
    pub tuple: FiveTuple,
    /// Fragment position.
    pub fragment: Fragment,
    /// The IPv4 identification field (links fragments of one datagram).
    pub ident: u16,
    /// TCP control bits (0 for other protocols and later fragments).
    pub tcp_flags: u16,
    /// ICMP type and code, for ICMP.
    pub icmp: Option<(u8, u8)>,
    /// For an ICMP error (destination unreachable, time exceeded, parameter problem,
    /// redirect, source quench): the tuple of the packet it reports on, as that packet was
    /// sent, read from the quoted header and first 8 bytes (RFC 792). `None` when the quote
    /// is too short or not IPv4.
    pub related: Option<FiveTuple>,
}

impl FlowInfo {
    /// The TCP FIN or RST bit is set.
    pub fn closes(&self) -> bool {
        self.tcp_flags & (tcp::TcpFlags::FIN.0 | tcp::TcpFlags::RST.0) != 0
    }
}

/// Ports of the L4 header `l4` of protocol `proto` (`Truncated` when the fixed header is
/// not all there); (0, 0) for protocols without ports.
fn ports(proto: IpProtocol, l4: &[u8]) -> Result<(u16, u16), Error> {
    let header_len = match proto {
        IpProtocol::Tcp => tcp::HEADER_LEN,
        IpProtocol::Udp | IpProtocol::Unknown(PROTO_UDPLITE) => udp::HEADER_LEN,
        IpProtocol::Unknown(PROTO_SCTP) => SCTP_HEADER_LEN,
        _ => return Ok((0, 0)),
    };
    if l4.len() < header_len {
        return Err(Error::Truncated);
    }
    Ok((read_u16(&l4[0..2]), read_u16(&l4[2..4])))
}

/// The tuple of a packet quoted in an ICMP error: its IPv4 header and at least 8 bytes
/// of what followed it (lengths and checksum are not checked: the quote is cut short).
fn quoted_tuple(quote: &[u8]) -> Option<FiveTuple> {
    let ver_ihl = *quote.first()?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < crate::ipv4::HEADER_LEN || quote.len() < ihl + 8 {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(&quote[..ihl]);
    let proto = ip.protocol();
    let l4 = &quote[ihl..];
    let (src_port, dst_port) = match proto {
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_unchecked(l4);
            match icmp.msg_type() {
                Message::EchoRequest | Message::EchoReply => (icmp.echo_ident(), icmp.echo_ident()),
                _ => (0, 0),
            }
        }
        // 8 bytes hold the ports of every protocol that has them.
        IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Unknown(PROTO_SCTP | PROTO_UDPLITE) => {
            (read_u16(&l4[0..2]), read_u16(&l4[2..4]))
        }
        _ => (0, 0),
    };
    Some(FiveTuple { src: ip.src_addr(), dst: ip.dst_addr(), proto: proto.into(), src_port, dst_port })
}

/// Reads [`FlowInfo`] from the IPv4 packet `ip_packet` (starting at the IPv4 header;
/// Ethernet padding after the total length is allowed).
///
/// Errors: the length errors of [`Ipv4Packet::check_len`]; `Malformed` if the version is
/// not 4; `Truncated` if a TCP, UDP, SCTP, UDP-Lite or ICMP header of a whole packet or a
/// first fragment is cut short. The header checksum is not verified.
pub fn parse_flow_info(ip_packet: &[u8]) -> Result<FlowInfo, Error> {
    let ip = Ipv4Packet::new_checked(ip_packet)?;
    if ip.version() != 4 {
        return Err(Error::Malformed);
    }
    let protocol = ip.protocol();
    let mut info = FlowInfo {
        tuple: FiveTuple { src: ip.src_addr(), dst: ip.dst_addr(), proto: protocol.into(), src_port: 0, dst_port: 0 },
        fragment: match (ip.frag_offset(), ip.more_frags()) {
            (0, false) => Fragment::Whole,
            (0, true) => Fragment::First,
            _ => Fragment::Later,
        },
        ident: ip.ident(),
        tcp_flags: 0,
        icmp: None,
        related: None,
    };
    if info.fragment == Fragment::Later {
        return Ok(info);
    }
    let payload = ip.payload();
    if protocol == IpProtocol::Icmp {
        if payload.len() < icmpv4::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let icmp = Icmpv4Packet::new_unchecked(payload);
        let msg = icmp.msg_type();
        info.icmp = Some((msg.into(), icmp.msg_code()));
        match msg {
            Message::EchoRequest | Message::EchoReply => {
                info.tuple.src_port = icmp.echo_ident();
                info.tuple.dst_port = icmp.echo_ident();
            }
            // Source quench (4) is an error too.
            Message::DstUnreachable | Message::TimeExceeded | Message::ParamProblem | Message::Redirect | Message::Unknown(4) => {
                info.related = quoted_tuple(&payload[icmpv4::HEADER_LEN..]);
            }
            _ => {}
        }
        return Ok(info);
    }
    (info.tuple.src_port, info.tuple.dst_port) = ports(protocol, payload)?;
    if protocol == IpProtocol::Tcp {
        info.tcp_flags = tcp::TcpPacket::new_unchecked(payload).flags().0;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

    fn inner_ip(frame: &[u8]) -> &[u8] {
        &frame[64..]
    }

    #[test]
    fn tcp_flow_and_its_reply() {
        let syn = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_TCP_SYN)).unwrap();
        assert_eq!(
            syn,
            FiveTuple {
                src: POD_A,
                dst: POD_B,
                proto: 6,
                src_port: 40001,
                dst_port: 8080
            }
        );
        let rst = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_TCP_RST)).unwrap();
        assert_eq!(rst, syn.reversed());
    }

    #[test]
    fn udp_flow() {
        let udp = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_UDP)).unwrap();
        assert_eq!(
            udp,
            FiveTuple {
                src: POD_A,
                dst: POD_B,
                proto: 17,
                src_port: 40000,
                dst_port: 5353
            }
        );
    }

    #[test]
    fn icmp_echo_puts_the_ident_in_both_ports() {
        let request = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_ICMP_ECHO_REQUEST)).unwrap();
        assert_eq!(
            request,
            FiveTuple {
                src: POD_A,
                dst: POD_B,
                proto: 1,
                src_port: 0x1234,
                dst_port: 0x1234
            }
        );
        let reply = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_ICMP_ECHO_REPLY)).unwrap();
        assert_eq!(reply, request.reversed());
        let error = parse_ipv4_flow(inner_ip(&fixtures::VXLAN_ICMP_PORT_UNREACHABLE)).unwrap();
        assert_eq!(
            error,
            FiveTuple {
                src: POD_B,
                dst: POD_A,
                proto: 1,
                src_port: 0,
                dst_port: 0
            }
        );
    }

    #[test]
    fn fragments_and_short_headers() {
        let mut first = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        Ipv4Packet::new_unchecked(&mut first[..]).set_more_frags(true);
        assert_eq!(parse_ipv4_flow(&first).map(|t| t.dst_port), Ok(5353));
        let mut later = first.clone();
        Ipv4Packet::new_unchecked(&mut later[..]).set_frag_offset(8);
        assert_eq!(parse_ipv4_flow(&later), Err(Error::Fragmented));

        // Other protocols have no ports.
        let mut ipip = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        Ipv4Packet::new_unchecked(&mut ipip[..]).set_protocol(IpProtocol::IpIp);
        assert_eq!(
            parse_ipv4_flow(&ipip).map(|t| (t.proto, t.src_port, t.dst_port)),
            Ok((4, 0, 0))
        );

        // IPv4 total length cutting the TCP header short.
        let mut cut = inner_ip(&fixtures::VXLAN_TCP_RST).to_vec();
        Ipv4Packet::new_unchecked(&mut cut[..]).set_total_len(20 + 19);
        assert_eq!(parse_ipv4_flow(&cut), Err(Error::Truncated));
        let mut cut_udp = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        Ipv4Packet::new_unchecked(&mut cut_udp[..]).set_total_len(20 + 7);
        assert_eq!(parse_ipv4_flow(&cut_udp), Err(Error::Truncated));
        let mut cut_icmp = inner_ip(&fixtures::VXLAN_ICMP_ECHO_REQUEST).to_vec();
        Ipv4Packet::new_unchecked(&mut cut_icmp[..]).set_total_len(20 + 7);
        assert_eq!(parse_ipv4_flow(&cut_icmp), Err(Error::Truncated));

        let mut v6 = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        v6[0] = 0x65;
        assert_eq!(parse_ipv4_flow(&v6), Err(Error::Malformed));
        assert_eq!(parse_ipv4_flow(&[0x45; 10]), Err(Error::Truncated));
    }

    #[test]
    fn flow_info_flags_fragments_and_icmp_errors() {
        let rst = parse_flow_info(inner_ip(&fixtures::VXLAN_TCP_RST)).unwrap();
        assert!(rst.closes());
        assert_eq!(rst.fragment, Fragment::Whole);
        let syn = parse_flow_info(inner_ip(&fixtures::VXLAN_TCP_SYN)).unwrap();
        assert!(!syn.closes() && syn.tcp_flags & tcp::TcpFlags::SYN.0 != 0);

        // The port unreachable quotes the UDP datagram p1 sent: its tuple is the flow's.
        let err = parse_flow_info(inner_ip(&fixtures::VXLAN_ICMP_PORT_UNREACHABLE)).unwrap();
        assert_eq!(err.icmp, Some((3, 3)));
        let quoted = err.related.expect("the quote is read");
        assert_eq!((quoted.src, quoted.dst, quoted.proto), (POD_A, POD_B, 17));
        let echo = parse_flow_info(inner_ip(&fixtures::VXLAN_ICMP_ECHO_REQUEST)).unwrap();
        assert_eq!((echo.icmp, echo.related), (Some((8, 0)), None));

        let mut first = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        Ipv4Packet::new_unchecked(&mut first[..]).set_more_frags(true);
        let f = parse_flow_info(&first).unwrap();
        assert_eq!((f.fragment, f.tuple.dst_port), (Fragment::First, 5353));
        Ipv4Packet::new_unchecked(&mut first[..]).set_frag_offset(8);
        let l = parse_flow_info(&first).unwrap();
        assert_eq!((l.fragment, l.ident, l.tuple.dst_port), (Fragment::Later, f.ident, 0));

        let mut sctp = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        Ipv4Packet::new_unchecked(&mut sctp[..]).set_protocol(IpProtocol::Unknown(PROTO_SCTP));
        assert_eq!(parse_flow_info(&sctp).map(|i| i.tuple.dst_port), Ok(5353), "SCTP ports where UDP has them");
        Ipv4Packet::new_unchecked(&mut sctp[..]).set_total_len(20 + 8);
        assert_eq!(parse_flow_info(&sctp).map(|i| i.tuple.dst_port), Err(Error::Truncated), "8 bytes is no SCTP header");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_ipv4_flow(&bytes);
            let _ = parse_flow_info(&bytes);
        }

        #[test]
        fn reversed_twice_is_identity(src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(),
                                      src_port in any::<u16>(), dst_port in any::<u16>()) {
            let t = FiveTuple { src: src.into(), dst: dst.into(), proto, src_port, dst_port };
            prop_assert_eq!(t.reversed().reversed(), t);
        }
    }
}
