//! The IPv4 5-tuple: what the pipeline's conntrack and policy stages key on.
//!
//! Owns [`FiveTuple`] and [`parse_ipv4_flow`], which reads it from an IPv4 packet
//! (RFC 791) with a TCP (RFC 793), UDP (RFC 768) or ICMP (RFC 792) payload. The
//! policy engine sees nothing of a packet but this tuple.
//!
//! Ports by protocol:
//! - TCP, UDP: the ports of the L4 header (the whole fixed header, 20 / 8 bytes, must be
//!   present).
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
    let ip = Ipv4Packet::new_checked(ip_packet)?;
    if ip.version() != 4 {
        return Err(Error::Malformed);
    }
    if ip.frag_offset() != 0 {
        return Err(Error::Fragmented);
    }
    let protocol = ip.protocol();
    let payload = ip.payload();
    let (src_port, dst_port) = match protocol {
        IpProtocol::Tcp | IpProtocol::Udp => {
            let header_len = if protocol == IpProtocol::Tcp {
                tcp::HEADER_LEN
            } else {
                udp::HEADER_LEN
            };
            if payload.len() < header_len {
                return Err(Error::Truncated);
            }
            (read_u16(&payload[0..2]), read_u16(&payload[2..4]))
        }
        IpProtocol::Icmp => {
            if payload.len() < icmpv4::HEADER_LEN {
                return Err(Error::Truncated);
            }
            let icmp = Icmpv4Packet::new_unchecked(payload);
            match icmp.msg_type() {
                Message::EchoRequest | Message::EchoReply => (icmp.echo_ident(), icmp.echo_ident()),
                _ => (0, 0),
            }
        }
        _ => (0, 0),
    };
    Ok(FiveTuple {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto: protocol.into(),
        src_port,
        dst_port,
    })
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

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_ipv4_flow(&bytes);
        }

        #[test]
        fn reversed_twice_is_identity(src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(),
                                      src_port in any::<u16>(), dst_port in any::<u16>()) {
            let t = FiveTuple { src: src.into(), dst: dst.into(), proto, src_port, dst_port };
            prop_assert_eq!(t.reversed().reversed(), t);
        }
    }
}
