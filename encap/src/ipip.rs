//! IPv4-in-IPv4 (RFC 2003): the overlay Calico's `tunl0` speaks in its IP-in-IP mode.
//!
//! An IP-in-IP frame is the node's Ethernet header, an outer IPv4 header with protocol 4,
//! and the pod's IPv4 packet — no inner Ethernet header, so the tunnel costs 20 bytes.
//! Owns encapsulation with a precomputed outer header ([`IpipEncap`]: copy 34 bytes, patch
//! the total length, TOS and checksum from a precomputed partial sum) and validated
//! decapsulation ([`decap`]). Which node a tunnel leads to is the forwarder's knowledge.
//!
//! Wire choices, per RFC 2003 §3.1 and what Linux's `ipip` driver sends for Calico's
//! `tunl0` (`ttl inherit` off, `pmtudisc` on):
//! - Outer TOS copied from the inner header (DSCP and ECN, RFC 2003 §3.1, RFC 6040's
//!   normal mode), TTL 64, DF set (a too-big inner packet is the sender's to fix, with the
//!   ICMP fragmentation-needed the forwarder sends), ident 0 (RFC 6864), no options.
//! - Receive accepts an outer header with options (IHL > 5) and Ethernet padding, refuses
//!   fragments (twill does not reassemble), a wrong checksum, and an inner packet that is
//!   not a whole IPv4 header.
//!
//! Hot path: [`IpipEncap::write`] and [`decap`] never allocate and never panic on any input.

use core::ops::Range;
use std::net::Ipv4Addr;

use crate::Error;
use crate::checksum;
use crate::ethernet::{self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use crate::ipv4::{self, IpProtocol, Ipv4Packet, Ipv4Repr};

pub use crate::tunnel::DecapError;
use crate::tunnel::outer_ipv4;

/// Bytes of outer header written in front of the inner IPv4 packet: Ethernet 14 + IPv4 20.
pub const HEADER_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

/// Bytes the tunnel adds to a pod's frame (it loses its 14-byte Ethernet header and gains
/// the node's Ethernet and the outer IPv4 header): a pod MTU of the underlay MTU minus 20.
pub const OVERHEAD: usize = ipv4::HEADER_LEN;

/// Longest inner IPv4 packet [`IpipEncap::write`] accepts: the outer total length must fit
/// 16 bits.
pub const MAX_INNER_LEN: usize = u16::MAX as usize - ipv4::HEADER_LEN;

const OUTER_IP: Range<usize> = ethernet::HEADER_LEN..HEADER_LEN;

/// A precomputed outer header for one tunnel (one remote node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipEncap {
    header: [u8; HEADER_LEN],
    /// One's-complement sum of the outer IPv4 header with TOS, total length and checksum 0.
    ip_partial_sum: u16,
}

impl IpipEncap {
    /// Precomputes the outer header from `outer_src_mac` / `outer_src_ip` (this node's
    /// uplink) to `outer_dst_mac` (the underlay next hop) / `outer_dst_ip` (the remote node).
    pub fn new(outer_src_mac: EthernetAddress, outer_dst_mac: EthernetAddress, outer_src_ip: Ipv4Addr, outer_dst_ip: Ipv4Addr) -> IpipEncap {
        let mut header = [0u8; HEADER_LEN];
        EthernetRepr { src_addr: outer_src_mac, dst_addr: outer_dst_mac, ethertype: EtherType::Ipv4 }
            .emit(&mut EthernetFrame::new_unchecked(&mut header[..]));
        let ip = Ipv4Repr {
            src_addr: outer_src_ip,
            dst_addr: outer_dst_ip,
            protocol: IpProtocol::IpIp,
            payload_len: 0,
            ttl: 64,
            ident: 0,
            dont_frag: true,
            dscp: 0,
            ecn: 0,
        };
        let mut ip_packet = Ipv4Packet::new_unchecked(&mut header[OUTER_IP]);
        ip.emit(&mut ip_packet);
        ip_packet.set_total_len(0);
        ip_packet.set_checksum(0);
        let ip_partial_sum = checksum::data(&header[OUTER_IP]);
        IpipEncap { header, ip_partial_sum }
    }

    /// The template: TOS, total length and checksum are zero in it.
    pub const fn template(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Writes the 34-byte outer header into `out[..34]` for the inner IPv4 packet that is
    /// (or will be) at `out[34..34 + inner_len]` with TOS byte `inner_tos`; sets the outer
    /// TOS, total length and checksum.
    ///
    /// `Truncated` if `out` is shorter than 34 bytes, `TooLong` if `inner_len` exceeds
    /// [`MAX_INNER_LEN`]; nothing is written then. Never panics, never allocates.
    pub fn write(&self, out: &mut [u8], inner_len: usize, inner_tos: u8) -> Result<(), Error> {
        let out = out.get_mut(..HEADER_LEN).ok_or(Error::Truncated)?;
        if inner_len > MAX_INNER_LEN {
            return Err(Error::TooLong);
        }
        out.copy_from_slice(&self.header);
        // Fits 16 bits because inner_len <= MAX_INNER_LEN.
        let total = (ipv4::HEADER_LEN + inner_len) as u16;
        let ip = &mut out[OUTER_IP];
        ip[1] = inner_tos;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        // The TOS byte is the low half of the header's first 16-bit word (version/IHL, TOS).
        let sum = !checksum::combine(&[self.ip_partial_sum, total, u16::from(inner_tos)]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        Ok(())
    }
}

/// What [`decap`] found in a valid IP-in-IP frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decapsulated {
    /// Outer IPv4 source: the sending node's underlay address (the forwarder accepts only
    /// known nodes).
    pub outer_src_ip: Ipv4Addr,
    /// Outer Ethernet source: the underlay hop the frame came from.
    pub outer_src_mac: EthernetAddress,
    /// Byte range of the inner IPv4 packet (a whole IPv4 header at least, ending where its
    /// own total length says).
    pub inner: Range<usize>,
}


/// Validates `frame` as an IP-in-IP frame for this node (`local_ip`) and returns where the
/// inner IPv4 packet is.
///
/// Checks, in order: Ethernet type IPv4; outer version 4 and IHL >= 5; IHL and total length
/// within the frame (Ethernet padding allowed); header checksum; not a fragment;
/// destination `local_ip`; protocol 4; the inner packet version 4, IHL >= 5 and its total
/// length within the outer payload (bytes past it are ignored). Never panics, never
/// allocates.
pub fn decap(frame: &[u8], local_ip: Ipv4Addr) -> Result<Decapsulated, DecapError> {
    let outer = outer_ipv4(frame, local_ip, IpProtocol::IpIp)?;
    let inner_bytes = outer.payload;
    let inner = Ipv4Packet::new_checked(inner_bytes).map_err(|_| DecapError::BadInner)?;
    if inner.version() != 4 {
        return Err(DecapError::BadInner);
    }
    let start = ethernet::HEADER_LEN + outer.header_len;
    Ok(Decapsulated {
        outer_src_ip: outer.src_ip,
        outer_src_mac: outer.src_mac,
        inner: start..start + usize::from(inner.total_len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::{UdpPacket, UdpRepr};
    use proptest::prelude::*;

    const A_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0x0a, 0x63, 0, 1]);
    const B_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0x0a, 0x63, 0, 2]);
    const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

    /// A pod's UDP datagram (IPv4 packet only) with TOS `tos`.
    fn inner(tos: u8) -> Vec<u8> {
        let udp = UdpRepr { src_port: 40000, dst_port: 5201, payload: b"tunnelled" };
        let ip = Ipv4Repr {
            src_addr: POD_A,
            dst_addr: POD_B,
            protocol: IpProtocol::Udp,
            payload_len: udp.buffer_len(),
            ttl: 63,
            ident: 9,
            dont_frag: true,
            dscp: tos >> 2,
            ecn: tos & 3,
        };
        let mut buf = vec![0xa5; ip.buffer_len() + ip.payload_len];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        udp.emit(&mut UdpPacket::new_unchecked(&mut buf[20..]), POD_A, POD_B);
        buf
    }

    fn encapsulated(tos: u8) -> (Vec<u8>, Vec<u8>) {
        let pkt = inner(tos);
        let mut frame = vec![0xa5; HEADER_LEN + pkt.len()];
        frame[HEADER_LEN..].copy_from_slice(&pkt);
        IpipEncap::new(A_MAC, B_MAC, NODE_A, NODE_B).write(&mut frame, pkt.len(), tos).unwrap();
        (frame, pkt)
    }

    #[test]
    fn encap_writes_a_valid_outer_header_and_decap_finds_the_packet() {
        for tos in [0u8, 0xb8, 0x03, 0xff] {
            let (frame, pkt) = encapsulated(tos);
            let outer = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            assert!(outer.verify_checksum(), "tos {tos:#x}");
            assert_eq!((outer.protocol(), outer.ttl(), outer.dont_frag()), (IpProtocol::IpIp, 64, true));
            assert_eq!((outer.dscp(), outer.ecn()), (tos >> 2, tos & 3), "TOS copied from the inner packet");
            assert_eq!(usize::from(outer.total_len()), 20 + pkt.len());
            assert_eq!((outer.src_addr(), outer.dst_addr()), (NODE_A, NODE_B));
            let d = decap(&frame, NODE_B).unwrap();
            assert_eq!((d.outer_src_ip, d.outer_src_mac), (NODE_A, A_MAC));
            assert_eq!(&frame[d.inner.clone()], &pkt[..]);
        }
    }

    #[test]
    fn decap_refuses_what_is_not_ipip_for_us() {
        let (frame, _) = encapsulated(0);
        assert_eq!(decap(&frame, NODE_A), Err(DecapError::NotForUs));
        let mut f = frame.clone();
        f[14 + 9] = 17;
        assert_eq!(decap(&f, NODE_B), Err(DecapError::BadIpChecksum), "checksum first");
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        assert_eq!(decap(&f, NODE_B), Err(DecapError::WrongProtocol));
        let mut f = frame.clone();
        Ipv4Packet::new_unchecked(&mut f[14..]).set_more_frags(true);
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        assert_eq!(decap(&f, NODE_B), Err(DecapError::Fragment));
        let mut f = frame.clone();
        f[34] = 0x65; // inner version 6
        assert_eq!(decap(&f, NODE_B), Err(DecapError::BadInner));
        let mut f = frame.clone();
        f[34 + 3] = 0xff; // inner total length beyond the outer payload
        assert_eq!(decap(&f, NODE_B), Err(DecapError::BadInner));
        assert_eq!(decap(&frame[..30], NODE_B), Err(DecapError::Truncated));
        let mut f = frame.clone();
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(decap(&f, NODE_B), Err(DecapError::NotIpv4));
        // Padding after the outer total length is allowed.
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(decap(&padded, NODE_B).is_ok());
    }

    #[test]
    fn write_refuses_short_buffers_and_long_packets() {
        let e = IpipEncap::new(A_MAC, B_MAC, NODE_A, NODE_B);
        let mut short = [0xa5u8; 33];
        assert_eq!(e.write(&mut short, 20, 0), Err(Error::Truncated));
        assert!(short.iter().all(|b| *b == 0xa5), "nothing written");
        let mut buf = [0u8; HEADER_LEN];
        assert_eq!(e.write(&mut buf, MAX_INNER_LEN + 1, 0), Err(Error::TooLong));
        assert!(e.write(&mut buf, MAX_INNER_LEN, 0).is_ok());
        assert!(Ipv4Packet::new_unchecked(&buf[14..]).verify_checksum());
    }

    proptest! {
        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120), local in any::<u32>()) {
            let _ = decap(&bytes, Ipv4Addr::from(local));
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..70, val in any::<u8>(), cut in 0usize..80) {
            let (mut frame, _) = encapsulated(0);
            let pos = pos % frame.len();
            frame[pos] = val;
            let _ = decap(&frame[..cut.min(frame.len())], NODE_B);
        }
    }
}
