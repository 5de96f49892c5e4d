//! VXLAN over an IPv6 underlay (RFC 7348 §5's IPv6 outer header): what Calico's
//! `vxlan-v6.calico` and Flannel's `flannel-v6.1` speak between nodes with IPv6 addresses.
//!
//! The inner frame and the VXLAN header are those of [`crate::vxlan`] (same profiles, same
//! receive checks); only the outer header differs: IPv6 (40 bytes, no options, hop limit 64,
//! traffic class 0, the flow label from the flow hash as Linux's `auto_flowlabels` does,
//! RFC 6438) and UDP, 70 bytes in front of the inner frame instead of 50.
//!
//! Wire choices:
//! - The outer UDP checksum is computed on transmit. A zero UDP checksum over IPv6 is
//!   allowed for tunnels (RFC 6935, RFC 6936), but a Linux vxlan device takes zero checksums
//!   only with `udp6zerocsumrx`, which neither Calico nor Flannel sets: a peer kernel drops
//!   the datagram otherwise. The checksum covers the inner frame, so [`VxlanEncap6::write`]
//!   needs the inner frame in place.
//! - On receive the checksum is not verified, for the reason the IPv4 module gives (a
//!   Linux sender behind a veth leaves only the pseudo-header sum in it); zero is accepted.
//! - The outer IPv6 header must be followed directly by UDP: a fragment header (twill does
//!   not reassemble) is `Fragment`, any other extension header `WrongProtocol`. Neither
//!   Calico's nor Flannel's kernel sends extension headers on its tunnels.
//!
//! Hot path: [`VxlanEncap6::write`] and [`decap6`] never allocate and never panic on any
//! input.

use core::ops::Range;
use std::net::Ipv6Addr;

use crate::Error;
use crate::checksum;
use crate::ethernet::{self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use crate::ipv6::{self, Ipv6Packet, Ipv6Repr};
use crate::udp::{self, UdpPacket};
use crate::vxlan::{self, Decapsulated, DecapError, VxlanPacket, VxlanProfile, VxlanRepr};

/// IPv6's next header for UDP.
const NEXT_HEADER_UDP: u8 = 17;

/// Bytes VXLAN over IPv6 adds in front of the inner Ethernet frame: outer Ethernet 14 +
/// IPv6 40 + UDP 8 + VXLAN 8. A pod MTU of at most the underlay MTU minus 70 fits.
pub const OVERHEAD: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;

/// Longest inner frame [`VxlanEncap6::write`] accepts: the UDP length (8 + 8 + inner) must
/// fit 16 bits (it is also the IPv6 payload length).
pub const MAX_INNER_LEN: usize = u16::MAX as usize - udp::HEADER_LEN - vxlan::HEADER_LEN;

const OUTER_IP: Range<usize> = ethernet::HEADER_LEN..ethernet::HEADER_LEN + ipv6::HEADER_LEN;
const OUTER_UDP: Range<usize> = OUTER_IP.end..OUTER_IP.end + udp::HEADER_LEN;

/// A precomputed outer header (Ethernet + IPv6 + UDP + VXLAN) for one tunnel: one remote
/// node, one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanEncap6 {
    header: [u8; OVERHEAD],
    /// One's-complement sum of the fixed parts the UDP checksum covers: the pseudo
    /// header's addresses and next header, the UDP destination port and the VXLAN header.
    udp_partial_sum: u16,
}

impl VxlanEncap6 {
    /// Precomputes the outer header from `outer_src_mac` / `outer_src_ip` (this node's
    /// uplink) to `outer_dst_mac` (the underlay next hop) / `outer_dst_ip` (the remote
    /// node), with `profile`'s VNI and UDP port.
    pub fn new(outer_src_mac: EthernetAddress, outer_dst_mac: EthernetAddress, outer_src_ip: Ipv6Addr, outer_dst_ip: Ipv6Addr, profile: VxlanProfile) -> VxlanEncap6 {
        let mut header = [0u8; OVERHEAD];
        EthernetRepr { src_addr: outer_src_mac, dst_addr: outer_dst_mac, ethertype: EtherType::Ipv6 }.emit(&mut EthernetFrame::new_unchecked(&mut header[..]));
        let ip = Ipv6Repr { src_addr: outer_src_ip, dst_addr: outer_dst_ip, next_header: NEXT_HEADER_UDP, payload_len: 0, hop_limit: 64, traffic_class: 0, flow_label: 0 };
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut header[OUTER_IP]));
        let mut udp_packet = UdpPacket::new_unchecked(&mut header[OUTER_UDP]);
        udp_packet.set_dst_port(profile.port);
        VxlanRepr { vni: profile.vni }.emit(&mut VxlanPacket::new_unchecked(&mut header[OUTER_UDP.end..]));
        let udp_partial_sum = checksum::combine(&[checksum::pseudo_header6(outer_src_ip, outer_dst_ip, NEXT_HEADER_UDP, 0), checksum::data(&header[OUTER_UDP.start..])]);
        VxlanEncap6 { header, udp_partial_sum }
    }

    /// The template: lengths, flow label, UDP source port and checksum are zero in it.
    pub const fn template(&self) -> &[u8; OVERHEAD] {
        &self.header
    }

    /// Writes the 70-byte outer header into `frame[..70]` for the inner Ethernet frame of
    /// `inner_len` bytes already at `frame[70..]`, with `src_port` as the outer UDP source
    /// port and the low 20 bits of `flow_label` as the IPv6 flow label (both from the
    /// flow's hash). Sets the IPv6 payload length, the UDP length and the UDP checksum.
    ///
    /// `Truncated` if `frame` is shorter than 70 + `inner_len` bytes, `TooLong` if
    /// `inner_len` exceeds [`MAX_INNER_LEN`]; nothing is written then. Never panics, never
    /// allocates.
    pub fn write(&self, frame: &mut [u8], inner_len: usize, src_port: u16, flow_label: u32) -> Result<(), Error> {
        if inner_len > MAX_INNER_LEN {
            return Err(Error::TooLong);
        }
        let frame = frame.get_mut(..OVERHEAD + inner_len).ok_or(Error::Truncated)?;
        frame[..OVERHEAD].copy_from_slice(&self.header);
        // Fits 16 bits because inner_len <= MAX_INNER_LEN.
        let udp_len = (udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len) as u16;
        let mut ip = Ipv6Packet::new_unchecked(&mut frame[OUTER_IP]);
        ip.set_payload_len(udp_len);
        ip.set_flow_label(flow_label);
        // The length counts twice: in the pseudo header and in the UDP header.
        let sum = checksum::combine(&[self.udp_partial_sum, udp_len, udp_len, src_port, checksum::data(&frame[OVERHEAD..])]);
        let csum = match !sum {
            0 => 0xffff,
            c => c,
        };
        let mut udp = UdpPacket::new_unchecked(&mut frame[OUTER_UDP]);
        udp.set_src_port(src_port);
        udp.set_len(udp_len);
        udp.set_checksum(csum);
        Ok(())
    }
}

/// Validates `frame` as a VXLAN-over-IPv6 frame for this node (`local_ip`) and `profile`
/// and returns where the inner Ethernet frame is.
///
/// Checks, in order: Ethernet type IPv6 (`NotIpv6`); a whole IPv6 header, version 6 and the
/// payload length within the frame (Ethernet padding after it is allowed); destination
/// `local_ip`; next header UDP (a fragment header: `Fragment`); then the UDP and VXLAN
/// checks of [`crate::vxlan::decap`]. The outer UDP checksum and source port are not
/// checked (see the module doc). Never panics, never allocates.
pub fn decap6(frame: &[u8], local_ip: Ipv6Addr, profile: VxlanProfile) -> Result<Decapsulated<Ipv6Addr>, DecapError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DecapError::Truncated)?;
    if eth.ethertype() != EtherType::Ipv6 {
        return Err(DecapError::NotIpv6);
    }
    let ip = Ipv6Packet::new_checked(&frame[ethernet::HEADER_LEN..])
        .map_err(|e| if e == crate::Error::Malformed { DecapError::BadIpHeader } else { DecapError::Truncated })?;
    if ip.dst_addr() != local_ip {
        return Err(DecapError::NotForUs);
    }
    match ip.next_header() {
        NEXT_HEADER_UDP => {}
        ipv6::EXT_FRAGMENT => return Err(DecapError::Fragment),
        _ => return Err(DecapError::WrongProtocol),
    }
    let (vni, inner) = vxlan::udp_vxlan(ip.payload(), profile)?;
    Ok(Decapsulated { outer_src_ip: ip.src_addr(), outer_src_mac: eth.src_addr(), vni, inner: OUTER_UDP.start + inner.start..OUTER_UDP.start + inner.end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    const B_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
    const A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x12);

    /// `inner` sent from A to B inside VXLAN over IPv6 with the Calico profile.
    fn encapsulated(inner: &[u8], src_port: u16, flow_label: u32) -> Vec<u8> {
        let mut frame = vec![0u8; OVERHEAD + inner.len()];
        frame[OVERHEAD..].copy_from_slice(inner);
        VxlanEncap6::new(A_MAC, B_MAC, A, B, VxlanProfile::CALICO).write(&mut frame, inner.len(), src_port, flow_label).unwrap();
        frame
    }

    /// Whether the outer UDP checksum of `frame` is right (the sum over pseudo header and
    /// datagram, checksum included, is 0xffff).
    fn udp_checksum_ok(frame: &[u8]) -> bool {
        let udp_len = frame.len() - OUTER_UDP.start;
        checksum::combine(&[checksum::pseudo_header6(A, B, NEXT_HEADER_UDP, udp_len as u32), checksum::data(&frame[OUTER_UDP.start..])]) == 0xffff
    }

    #[test]
    fn overhead_is_70() {
        assert_eq!(OVERHEAD, 70);
        assert_eq!(MAX_INNER_LEN, 65535 - 16);
    }

    #[test]
    fn writes_every_outer_field() {
        let inner: Vec<u8> = (0..64u8).collect();
        let f = encapsulated(&inner, 40_000, 0xabcde);
        assert_eq!(&f[..6], &B_MAC.0);
        assert_eq!(&f[6..12], &A_MAC.0);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!((ip.version(), ip.traffic_class(), ip.flow_label()), (6, 0, 0xabcde));
        assert_eq!((ip.payload_len(), ip.next_header(), ip.hop_limit()), (8 + 8 + 64, 17, 64));
        assert_eq!((ip.src_addr(), ip.dst_addr()), (A, B));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (40_000, 4789, 80));
        assert_ne!(udp.checksum(), 0, "a zero checksum is dropped by a Linux peer");
        assert!(udp_checksum_ok(&f));
        let v = VxlanPacket::new_checked(udp.payload()).unwrap();
        assert_eq!((v.flags(), v.vni()), (vxlan::FLAG_I, 4096));
        assert_eq!(v.payload(), &inner[..]);
    }

    #[test]
    fn decapsulates_what_it_encapsulates() {
        let inner: Vec<u8> = (0..100u8).collect();
        let mut f = encapsulated(&inner, 33_000, 7);
        f.extend_from_slice(&[0; 6]); // Ethernet padding past the payload length
        let d = decap6(&f, B, VxlanProfile::CALICO).unwrap();
        assert_eq!((d.outer_src_ip, d.outer_src_mac, d.vni), (A, A_MAC, 4096));
        assert_eq!(&f[d.inner], &inner[..]);
    }

    #[test]
    fn refuses_what_is_not_for_this_node() {
        let inner = [0x11u8; 60];
        let f = encapsulated(&inner, 33_000, 0);
        assert_eq!(decap6(&f, A, VxlanProfile::CALICO), Err(DecapError::NotForUs));
        assert_eq!(decap6(&f, B, VxlanProfile::FLANNEL), Err(DecapError::WrongPort));
        let edit = |at: usize, v: u8| {
            let mut g = f.clone();
            g[at] = v;
            decap6(&g, B, VxlanProfile::CALICO)
        };
        assert_eq!(edit(12, 0x08), Err(DecapError::NotIpv6));
        assert_eq!(edit(14, 0x40), Err(DecapError::BadIpHeader));
        assert_eq!(edit(14 + 6, 44), Err(DecapError::Fragment));
        assert_eq!(edit(14 + 6, 0), Err(DecapError::WrongProtocol), "a hop-by-hop header");
        assert_eq!(edit(14 + 4, 0xff), Err(DecapError::Truncated), "payload length past the frame");
        assert_eq!(edit(OUTER_UDP.end, 0x0c), Err(DecapError::BadVxlanFlags));
        assert_eq!(edit(OUTER_UDP.end + 6, 0x01), Err(DecapError::WrongVni));
        assert_eq!(edit(OUTER_UDP.start + 5, 0x07), Err(DecapError::BadLength), "UDP length below 8");
        assert_eq!(decap6(&f[..OVERHEAD + 13], B, VxlanProfile::CALICO), Err(DecapError::Truncated));
        assert_eq!(VxlanEncap6::new(A_MAC, B_MAC, A, B, VxlanProfile::CALICO).write(&mut [0u8; 100], 31, 1, 0), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn checksum_is_right_for_any_inner_frame(inner in proptest::collection::vec(any::<u8>(), 14..2000), port in any::<u16>(), label in any::<u32>()) {
            let f = encapsulated(&inner, port, label);
            prop_assert!(udp_checksum_ok(&f));
            let d = decap6(&f, B, VxlanProfile::CALICO).unwrap();
            prop_assert_eq!(&f[d.inner], &inner[..]);
        }

        #[test]
        fn decap6_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decap6(&frame, B, VxlanProfile::CALICO);
        }
    }
}
