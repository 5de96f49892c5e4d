//! The 5-tuple: what the pipeline's conntrack and policy stages key on.
//!
//! Owns [`FiveTuple`] and [`parse_ipv4_flow`], which reads it from an IPv4 packet
//! (RFC 791) with a TCP (RFC 793), UDP (RFC 768), SCTP (RFC 9260), UDP-Lite (RFC 3828)
//! or ICMP (RFC 792) payload, and [`parse_flow_info`], which adds what the stateful policy
//! stage needs besides: TCP flags, ICMP type and code, fragment identity, and for an ICMP
//! error the tuple of the packet it reports on. The policy engine sees nothing of a packet
//! but the tuple.
//!
//! Both types are generic over the address family ([`FlowAddress`]: `Ipv4Addr`, the
//! default, or `Ipv6Addr`). [`parse_flow_info6`] reads an IPv6 packet (RFC 8200): it walks
//! the hop-by-hop, routing and destination options headers by their length fields (at
//! most [`MAX_EXT_HEADERS`] extension headers), reads the fragment header (RFC 8200 §4.5;
//! an atomic fragment, offset 0 and M clear, is whole), and stops at anything else: ESP,
//! AH, no next header (59) and unknown headers are the protocol, with ports 0. ICMPv6
//! (RFC 4443) follows the ICMP rules below with echo 128/129 and errors 1-4, whose quote is
//! read without walking its extension headers.
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

use core::fmt::Debug;
use core::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::icmpv4::{self, Icmpv4Packet, Message};
use crate::icmpv6::{self, Icmpv6Packet};
use crate::ipv4::{IpProtocol, Ipv4Packet};
use crate::ipv6::{self, EXT_DST_OPTS, EXT_FRAGMENT, EXT_HOP_BY_HOP, EXT_ROUTING, Ipv6Packet};
use crate::net_endian::{read_u16, read_u32};
use crate::{Error, tcp, udp};

/// An address family a flow is keyed on: `Ipv4Addr` or `Ipv6Addr`.
pub trait FlowAddress: Copy + Eq + Ord + Hash + Debug {
    /// The family's fragment identification: 16 bits in IPv4 (RFC 791), 32 bits in the
    /// IPv6 fragment header (RFC 8200 §4.5).
    type Ident: Copy + Eq + Ord + Hash + Debug + Default;
}

impl FlowAddress for Ipv4Addr {
    type Ident = u16;
}

impl FlowAddress for Ipv6Addr {
    type Ident = u32;
}

/// Source and destination address, protocol number and ports of an IPv4 (or, with
/// `A = Ipv6Addr`, IPv6) packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple<A = Ipv4Addr> {
    /// Source address.
    pub src: A,
    /// Destination address.
    pub dst: A,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...); for IPv6 the upper
    /// layer after the extension headers.
    pub proto: u8,
    /// Source port; the echo identifier for ICMP echo; 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port; the echo identifier for ICMP echo; 0 when the protocol has none.
    pub dst_port: u16,
}

impl<A: Copy> FiveTuple<A> {
    /// The tuple of the other direction of the same flow.
    pub const fn reversed(&self) -> FiveTuple<A> {
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

/// Where a packet stands among the fragments of its datagram (RFC 791 §3.2, RFC 8200
/// §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    Whole,
    /// Offset 0 with more fragments to come: it carries the L4 header.
    First,
    /// Offset above 0: no L4 header; only the datagram's identity links it to the first.
    Later,
}

/// Everything the stateful policy stage reads of an IPv4 (or, with `A = Ipv6Addr`, IPv6)
/// packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo<A: FlowAddress = Ipv4Addr> {
    /// The 5-tuple (ports 0 for a later fragment).
    pub tuple: FiveTuple<A>,
    /// Fragment position.
    pub fragment: Fragment,
    /// The identification that links fragments of one datagram: the IPv4 identification
    /// field (u16), the IPv6 fragment header's (u32; 0 without a fragment header).
    pub ident: A::Ident,
    /// TCP control bits (0 for other protocols and later fragments).
    pub tcp_flags: u16,
    /// ICMP type and code, for ICMP.
    pub icmp: Option<(u8, u8)>,
    /// For an ICMP error (destination unreachable, time exceeded, parameter problem,
    /// redirect, source quench; for ICMPv6 types 1-4): the tuple of the packet it reports
    /// on, as that packet was sent, read from the quoted header and first 8 bytes (RFC 792,
    /// RFC 4443 §2.4 (c)). `None` when the quote is too short or not of the family.
    pub related: Option<FiveTuple<A>>,
}

impl<A: FlowAddress> FlowInfo<A> {
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

/// Most extension headers [`parse_flow_info6`] walks before it gives up (`Malformed`).
/// RFC 8200 §4.1 orders at most six kinds, each once but destination options twice.
pub const MAX_EXT_HEADERS: usize = 8;

const FRAGMENT_HEADER_LEN: usize = 8;

/// ICMPv6 echo request and reply (RFC 4443 §4).
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Ports of an ICMPv6 message of type `msg_type` whose identifier is `ident`.
fn icmpv6_ports(msg_type: u8, ident: u16) -> (u16, u16) {
    match msg_type {
        ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => (ident, ident),
        _ => (0, 0),
    }
}

/// The tuple of a packet quoted in an ICMPv6 error: its fixed header and at least 8 bytes
/// after it, read as the upper layer (extension headers are not walked: a quote's next
/// header names the protocol, with ports 0 when it is an extension header).
fn quoted_tuple6(quote: &[u8]) -> Option<FiveTuple<Ipv6Addr>> {
    let quote = quote.get(..ipv6::HEADER_LEN + 8)?;
    if quote[0] >> 4 != 6 {
        return None;
    }
    let ip = Ipv6Packet::new_unchecked(quote);
    let proto = ip.next_header();
    let l4 = &quote[ipv6::HEADER_LEN..];
    let (src_port, dst_port) = match IpProtocol::from(proto) {
        IpProtocol::Unknown(icmpv6::NEXT_HEADER) => icmpv6_ports(l4[0], read_u16(&l4[4..6])),
        IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Unknown(PROTO_SCTP | PROTO_UDPLITE) => (read_u16(&l4[0..2]), read_u16(&l4[2..4])),
        _ => (0, 0),
    };
    Some(FiveTuple { src: ip.src_addr(), dst: ip.dst_addr(), proto, src_port, dst_port })
}

/// Reads [`FlowInfo`] from the IPv6 packet `ip_packet` (starting at the IPv6 header;
/// Ethernet padding after the payload length is allowed), walking its extension headers as
/// the module documentation says. `proto` is the upper-layer protocol; for a later
/// fragment it is the fragment header's next header and the ports are 0.
///
/// Errors: the errors of [`Ipv6Packet::check_len`] (`Malformed` if the version is not 6);
/// `Malformed` for more than [`MAX_EXT_HEADERS`] extension headers or a hop-by-hop header
/// anywhere but first (RFC 8200 §4.3); `Truncated` if an extension header, or the TCP, UDP,
/// SCTP, UDP-Lite or ICMPv6 header of a whole packet or a first fragment, is cut short.
/// Never panics, never allocates.
pub fn parse_flow_info6(ip_packet: &[u8]) -> Result<FlowInfo<Ipv6Addr>, Error> {
    let ip = Ipv6Packet::new_checked(ip_packet)?;
    let mut info = FlowInfo {
        tuple: FiveTuple { src: ip.src_addr(), dst: ip.dst_addr(), proto: 0, src_port: 0, dst_port: 0 },
        fragment: Fragment::Whole,
        ident: 0,
        tcp_flags: 0,
        icmp: None,
        related: None,
    };
    let mut next = ip.next_header();
    let mut rest = ip.payload();
    let mut headers = 0;
    while matches!(next, EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DST_OPTS | EXT_FRAGMENT) {
        if next == EXT_HOP_BY_HOP && headers > 0 {
            return Err(Error::Malformed);
        }
        headers += 1;
        if headers > MAX_EXT_HEADERS {
            return Err(Error::Malformed);
        }
        // Every extension header is at least 8 bytes; the fragment header exactly 8.
        let [nh, hdr_len, ..] = *rest else {
            return Err(Error::Truncated);
        };
        let len = if next == EXT_FRAGMENT { FRAGMENT_HEADER_LEN } else { (usize::from(hdr_len) + 1) * 8 };
        let (header, after) = rest.split_at_checked(len).ok_or(Error::Truncated)?;
        if next == EXT_FRAGMENT {
            let offset_m = read_u16(&header[2..4]);
            info.ident = read_u32(&header[4..8]);
            info.fragment = match (offset_m >> 3, offset_m & 1 != 0) {
                (0, false) => Fragment::Whole,
                (0, true) => Fragment::First,
                _ => Fragment::Later,
            };
            if info.fragment == Fragment::Later {
                info.tuple.proto = nh;
                return Ok(info);
            }
        }
        next = nh;
        rest = after;
    }
    info.tuple.proto = next;
    if next == icmpv6::NEXT_HEADER {
        if rest.len() < icmpv6::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let icmp = Icmpv6Packet::new_unchecked(rest);
        let msg_type = u8::from(icmp.msg_type());
        info.icmp = Some((msg_type, icmp.msg_code()));
        (info.tuple.src_port, info.tuple.dst_port) = icmpv6_ports(msg_type, icmp.echo_ident());
        if matches!(msg_type, 1..=4) {
            info.related = quoted_tuple6(icmp.data());
        }
        return Ok(info);
    }
    let protocol = IpProtocol::from(next);
    (info.tuple.src_port, info.tuple.dst_port) = ports(protocol, rest)?;
    if protocol == IpProtocol::Tcp {
        info.tcp_flags = tcp::TcpPacket::new_unchecked(rest).flags().0;
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

    const POD6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 5);
    const POD6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 6);

    /// An IPv6 packet from `src` to `dst` whose payload (extension headers and upper layer,
    /// already laid out) follows next header `next`.
    fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// A 20-byte TCP header with `flags`, or an 8-byte UDP header with 4 bytes of data.
    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = [sport.to_be_bytes(), dport.to_be_bytes()].concat();
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        [sport.to_be_bytes(), dport.to_be_bytes(), 12u16.to_be_bytes(), [0, 0], [0xde, 0xad], [0xbe, 0xef]].concat()
    }

    /// An 8-byte extension header (hop-by-hop / destination options with a PadN option)
    /// followed by `rest`.
    fn options_header(next: u8, rest: &[u8]) -> Vec<u8> {
        [&[next, 0, 1, 4, 0, 0, 0, 0][..], rest].concat()
    }

    /// A fragment header (`offset` in bytes, M flag, identification) followed by `rest`.
    fn fragment_header(next: u8, offset: u16, more: bool, ident: u32, rest: &[u8]) -> Vec<u8> {
        let offset_m = (offset & !7) | u16::from(more);
        [&[next, 0][..], &offset_m.to_be_bytes(), &ident.to_be_bytes(), rest].concat()
    }

    #[test]
    fn ipv6_tcp_and_udp_flows() {
        let syn = parse_flow_info6(&ipv6(POD6_A, POD6_B, 6, &tcp(40001, 8080, 0x02))).unwrap();
        assert_eq!(syn.tuple, FiveTuple { src: POD6_A, dst: POD6_B, proto: 6, src_port: 40001, dst_port: 8080 });
        assert_eq!((syn.fragment, syn.ident, syn.tcp_flags, syn.icmp, syn.related), (Fragment::Whole, 0, 0x02, None, None));
        assert!(!syn.closes());
        let rst = parse_flow_info6(&ipv6(POD6_B, POD6_A, 6, &tcp(8080, 40001, 0x14))).unwrap();
        assert_eq!(rst.tuple, syn.tuple.reversed());
        assert!(rst.closes());

        let mut padded = ipv6(POD6_A, POD6_B, 17, &udp(40000, 5353));
        padded.extend_from_slice(&[0; 6]);
        let udp = parse_flow_info6(&padded).unwrap();
        assert_eq!(udp.tuple, FiveTuple { src: POD6_A, dst: POD6_B, proto: 17, src_port: 40000, dst_port: 5353 });
        let sctp = parse_flow_info6(&ipv6(POD6_A, POD6_B, PROTO_SCTP, &tcp(1, 2, 0)[..12])).unwrap();
        assert_eq!((sctp.tuple.proto, sctp.tuple.src_port, sctp.tuple.dst_port), (132, 1, 2));
    }

    #[test]
    fn ipv6_icmp_echo_puts_the_ident_in_both_ports() {
        let request = parse_flow_info6(&fixtures::ICMPV6_ECHO_REQUEST[14..]).unwrap();
        let pinged: Ipv6Addr = "fd00:99::1".parse().unwrap();
        assert_eq!(request.tuple, FiveTuple { src: POD6_A, dst: pinged, proto: 58, src_port: 0x315d, dst_port: 0x315d });
        assert_eq!((request.icmp, request.related), (Some((128, 0)), None));
        let mut reply = ipv6(pinged, POD6_A, 58, &fixtures::ICMPV6_ECHO_REQUEST[54..]);
        reply[40] = 129;
        assert_eq!(parse_flow_info6(&reply).unwrap().tuple, request.tuple.reversed());
        // Neighbour discovery has no ports.
        let ns = parse_flow_info6(&fixtures::NDP_NEIGHBOR_SOLICIT[14..]).unwrap();
        assert_eq!((ns.tuple.proto, ns.tuple.src_port, ns.tuple.dst_port, ns.icmp), (58, 0, 0, Some((135, 0))));
    }

    #[test]
    fn ipv6_icmp_error_relates_to_the_quoted_packet() {
        let gateway: Ipv6Addr = "fe80::1".parse().unwrap();
        let sent = ipv6(POD6_A, POD6_B, 17, &udp(40000, 5353));
        let mut out = [0u8; 200];
        let len = icmpv6::emit_packet_too_big(&mut out, gateway, &sent, 1280).unwrap();
        let err = parse_flow_info6(&out[..len]).unwrap();
        assert_eq!(err.tuple, FiveTuple { src: gateway, dst: POD6_A, proto: 58, src_port: 0, dst_port: 0 });
        assert_eq!(err.icmp, Some((2, 0)));
        assert_eq!(err.related, Some(parse_flow_info6(&sent).unwrap().tuple));

        // A quoted echo carries its identifier; a quote too short for 8 bytes is no quote.
        let len = icmpv6::emit_error(&mut out, gateway, &fixtures::ICMPV6_ECHO_REQUEST[14..], icmpv6::Icmpv6Error::HopLimitExceeded).unwrap();
        let err = parse_flow_info6(&out[..len]).unwrap();
        assert_eq!(err.icmp, Some((3, 0)));
        assert_eq!(err.related.map(|t| (t.proto, t.src_port, t.dst_port)), Some((58, 0x315d, 0x315d)));
        let short = ipv6(gateway, POD6_A, 58, &[&[1, 3, 0, 0, 0, 0, 0, 0][..], &sent[..47]].concat());
        assert_eq!(parse_flow_info6(&short).map(|i| (i.icmp, i.related)), Ok((Some((1, 3)), None)));
        // A quote's extension headers are not walked: the protocol is the header's number.
        let with_options = ipv6(POD6_A, POD6_B, 60, &options_header(17, &udp(40000, 5353)));
        let len = icmpv6::emit_packet_too_big(&mut out, gateway, &with_options, 1280).unwrap();
        assert_eq!(parse_flow_info6(&out[..len]).unwrap().related.map(|t| (t.proto, t.src_port)), Some((60, 0)));
    }

    #[test]
    fn ipv6_fragments() {
        let first = ipv6(POD6_A, POD6_B, 44, &fragment_header(17, 0, true, 0xdead_beef, &udp(40000, 5353)));
        let f = parse_flow_info6(&first).unwrap();
        assert_eq!((f.fragment, f.ident, f.tuple.proto, f.tuple.dst_port), (Fragment::First, 0xdead_beef, 17, 5353));
        let later = ipv6(POD6_A, POD6_B, 44, &fragment_header(17, 1448, false, 0xdead_beef, &[0x5a; 16]));
        let l = parse_flow_info6(&later).unwrap();
        assert_eq!((l.fragment, l.ident, l.tuple.proto, l.tuple.src_port, l.tuple.dst_port), (Fragment::Later, 0xdead_beef, 17, 0, 0));
        let middle = ipv6(POD6_A, POD6_B, 44, &fragment_header(17, 8, true, 7, &[0x5a; 16]));
        assert_eq!(parse_flow_info6(&middle).map(|i| i.fragment), Ok(Fragment::Later));
        // An atomic fragment (RFC 6946) is whole.
        let atomic = ipv6(POD6_A, POD6_B, 44, &fragment_header(6, 0, false, 9, &tcp(1, 2, 0x10)));
        let a = parse_flow_info6(&atomic).unwrap();
        assert_eq!((a.fragment, a.ident, a.tuple.dst_port, a.tcp_flags), (Fragment::Whole, 9, 2, 0x10));
        // A first fragment must hold the L4 header.
        let cut = ipv6(POD6_A, POD6_B, 44, &fragment_header(6, 0, true, 9, &tcp(1, 2, 0)[..12]));
        assert_eq!(parse_flow_info6(&cut), Err(Error::Truncated));
    }

    #[test]
    fn ipv6_extension_headers() {
        let hbh = ipv6(POD6_A, POD6_B, 0, &options_header(17, &udp(40000, 5353)));
        assert_eq!(parse_flow_info6(&hbh).map(|i| (i.tuple.proto, i.tuple.dst_port)), Ok((17, 5353)));
        // Hop-by-hop, a 24-byte routing header, destination options, then TCP.
        let routing = [&[60, 2, 4, 1, 0, 0, 0, 0][..], &POD6_B.octets()].concat();
        let chain = options_header(43, &[&routing[..], &options_header(6, &tcp(5, 6, 0x01))].concat());
        let info = parse_flow_info6(&ipv6(POD6_A, POD6_B, 0, &chain)).unwrap();
        assert_eq!((info.tuple.proto, info.tuple.src_port, info.tuple.dst_port, info.closes()), (6, 5, 6, true));
        // Hop-by-hop only first.
        let late_hbh = ipv6(POD6_A, POD6_B, 60, &options_header(0, &options_header(17, &udp(1, 2))));
        assert_eq!(parse_flow_info6(&late_hbh), Err(Error::Malformed));

        // Eight extension headers are walked, nine are too many.
        let mut chain = options_header(17, &udp(40000, 5353));
        for _ in 1..MAX_EXT_HEADERS {
            chain = options_header(60, &chain);
        }
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 60, &chain)).map(|i| i.tuple.dst_port), Ok(5353));
        let nine = ipv6(POD6_A, POD6_B, 60, &options_header(60, &chain));
        assert_eq!(parse_flow_info6(&nine), Err(Error::Malformed));

        // ESP, AH, no next header and unknown protocols: that number, ports 0.
        for proto in [50, 51, 59, 4, 253] {
            let info = parse_flow_info6(&ipv6(POD6_A, POD6_B, 60, &options_header(proto, &udp(1, 2)))).unwrap();
            assert_eq!((info.tuple.proto, info.tuple.src_port, info.tuple.dst_port), (proto, 0, 0));
        }
    }

    #[test]
    fn ipv6_truncated_and_malformed() {
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 6, &tcp(1, 2, 0)[..19])), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 17, &udp(1, 2)[..7])), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 58, &[128, 0, 0, 0, 0, 1, 0])), Err(Error::Truncated));
        // An extension header cut short, or claiming more than the payload.
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 0, &[17])), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 0, &[17, 0, 1, 4, 0, 0, 0])), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 60, &[17, 1, 1, 4, 0, 0, 0, 0])), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&ipv6(POD6_A, POD6_B, 44, &[17, 0, 0, 1, 0, 0, 0])), Err(Error::Truncated));
        // The fixed header's own errors; an IPv4 packet is not IPv6.
        let udp6 = ipv6(POD6_A, POD6_B, 17, &udp(1, 2));
        assert_eq!(parse_flow_info6(&udp6[..39]), Err(Error::Truncated));
        assert_eq!(parse_flow_info6(&udp6[..udp6.len() - 1]), Err(Error::Truncated));
        let mut v4 = inner_ip(&fixtures::VXLAN_UDP).to_vec();
        v4.resize(60, 0);
        assert_eq!(parse_flow_info6(&v4), Err(Error::Malformed));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_ipv4_flow(&bytes);
            let _ = parse_flow_info(&bytes);
            let _ = parse_flow_info6(&bytes);
        }

        #[test]
        fn ipv6_never_panics(next in prop::sample::select(vec![0u8, 6, 17, 43, 44, 58, 60, 132]),
                             payload in proptest::collection::vec(any::<u8>(), 0..120),
                             cut in any::<prop::sample::Index>()) {
            // A valid fixed header, so the random bytes reach the extension header walk.
            let packet = ipv6(POD6_A, POD6_B, next, &payload);
            let _ = parse_flow_info6(&packet);
            let _ = parse_flow_info6(&packet[..cut.index(packet.len() + 1)]);
        }

        #[test]
        fn reversed_twice_is_identity(src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(),
                                      src_port in any::<u16>(), dst_port in any::<u16>()) {
            let t: FiveTuple = FiveTuple { src: src.into(), dst: dst.into(), proto, src_port, dst_port };
            prop_assert_eq!(t.reversed().reversed(), t);
        }
    }
}
