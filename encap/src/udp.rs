//! UDP (RFC 768) over IPv4.
//!
//! Owns the UDP header view [`UdpPacket`] and the datagram value [`UdpRepr`], with the
//! checksum over the IPv4 pseudo header. A checksum field of zero means "no checksum"
//! (RFC 768): it verifies as correct, and a computed zero is sent as 0xffff. VXLAN uses
//! UDP as its carrier; the outer header is written by [`crate::vxlan::VxlanEncap`], not here.
//!
//! [`UdpPacket::check_len`] validates 8 <= length field <= buffer; after it succeeds no
//! accessor panics and `payload` ends at the length field (bytes after it are ignored, as
//! Linux trims them). Nothing here allocates.

use std::net::Ipv4Addr;

use crate::Error;
use crate::checksum;
use crate::ipv4::IpProtocol;
use crate::net_endian::{read_u16, write_u16};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A zero-copy view of a UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than 8 bytes or than the length field,
    /// `Malformed` if the length field is below 8.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if field_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// Length field: header plus payload.
    pub fn len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Whether the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum as on the wire (0 = none).
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the checksum is right for a datagram from `src` to `dst`; a zero checksum
    /// ("none") is accepted.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let sum = checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Udp, len),
            checksum::data(&self.buffer.as_ref()[..usize::from(len)]),
        ]);
        sum == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    /// Sets the checksum field (0 = none).
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Computes the checksum for a datagram from `src` to `dst` over the length field's
    /// bytes and writes it (a computed 0 is written as 0xffff).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let sum = checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Udp, len),
            checksum::data(&self.buffer.as_ref()[..usize::from(len)]),
        ]);
        self.set_checksum(match !sum {
            0 => 0xffff,
            csum => csum,
        });
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A UDP datagram as a value, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload; at most 65527 bytes.
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// Parses a datagram from `src` to `dst`, verifying a non-zero checksum (`Checksum`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &UdpPacket<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let bytes: &'a [u8] = packet.buffer.as_ref();
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: &bytes[HEADER_LEN..usize::from(packet.len())],
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header, payload and checksum for a datagram from `src` to `dst`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.buffer_len() as u16);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    #[test]
    fn parses_captured_vxlan_carrier() {
        let udp = UdpPacket::new_checked(&fixtures::VXLAN_ICMP_ECHO_REQUEST[34..]).unwrap();
        assert_eq!(udp.src_port(), 43388);
        assert_eq!(udp.dst_port(), 8472);
        assert_eq!(udp.len(), 0x62);
        assert_eq!(udp.payload().len(), 0x62 - 8);
        assert_eq!(udp.payload()[0], 0x08); // VXLAN I flag
        // Linux left the pseudo-header partial sum for the veth "hardware" to finish
        // (CHECKSUM_PARTIAL); it is not a valid checksum, and is exactly that partial sum.
        assert_eq!(udp.checksum(), 0x153c);
        assert!(!udp.verify_checksum(NODE_A, NODE_B));
        assert_eq!(
            checksum::pseudo_header(NODE_A, NODE_B, IpProtocol::Udp, 0x62),
            0x153c
        );
    }

    #[test]
    fn finishes_a_captured_partial_checksum() {
        // The datagram quoted in Linux's port unreachable, as the pod sent it: its checksum
        // field still holds the pseudo-header partial sum (CHECKSUM_PARTIAL over veth).
        let quoted = &fixtures::VXLAN_ICMP_PORT_UNREACHABLE[64 + 20 + 8 + 20..];
        let (pod_a, pod_b) = (Ipv4Addr::new(10, 244, 0, 0), Ipv4Addr::new(10, 244, 1, 0));
        let udp = UdpPacket::new_checked(quoted).unwrap();
        assert_eq!(
            (udp.src_port(), udp.dst_port(), udp.len()),
            (40000, 5353, 19)
        );
        assert_eq!(udp.payload(), b"hello twill");
        assert_eq!(
            udp.checksum(),
            checksum::pseudo_header(pod_a, pod_b, IpProtocol::Udp, 19)
        );
        assert!(!udp.verify_checksum(pod_a, pod_b));
        assert_eq!(UdpRepr::parse(&udp, pod_a, pod_b), Err(Error::Checksum));

        // fill_checksum gives what a NIC finishing the partial sum writes.
        let mut finished = quoted.to_vec();
        UdpPacket::new_unchecked(&mut finished[..]).fill_checksum(pod_a, pod_b);
        let udp = UdpPacket::new_checked(&finished[..]).unwrap();
        assert_eq!(udp.checksum(), !checksum::data(quoted));
        assert!(udp.verify_checksum(pod_a, pod_b));
        assert!(!udp.verify_checksum(pod_a, NODE_B));

        let repr = UdpRepr::parse(&udp, pod_a, pod_b).unwrap();
        assert_eq!(
            repr,
            UdpRepr {
                src_port: 40000,
                dst_port: 5353,
                payload: b"hello twill"
            }
        );
        let mut bytes = [0xa5u8; 21];
        repr.emit(&mut UdpPacket::new_unchecked(&mut bytes[..]), pod_a, pod_b);
        assert_eq!(bytes[..19], finished[..]);
        assert_eq!(bytes[19..], [0xa5; 2]);
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut bytes = fixtures::VXLAN_ICMP_ECHO_REQUEST[34..].to_vec();
        let mut udp = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        udp.set_checksum(0);
        assert!(udp.verify_checksum(NODE_A, NODE_B));
        assert!(
            UdpRepr::parse(&UdpPacket::new_checked(&bytes[..]).unwrap(), NODE_A, NODE_B).is_ok()
        );
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Pick a payload word that makes the sum 0xffff, i.e. the checksum 0.
        let (src, dst) = (Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(0, 0, 0, 0));
        let mut bytes = [0u8; 10];
        let mut udp = UdpPacket::new_unchecked(&mut bytes[..]);
        udp.set_len(10);
        let rest = checksum::combine(&[checksum::pseudo_header(src, dst, IpProtocol::Udp, 10), 10]);
        udp.payload_mut().copy_from_slice(&(!rest).to_be_bytes());
        udp.fill_checksum(src, dst);
        assert_eq!(udp.checksum(), 0xffff);
        assert!(udp.verify_checksum(src, dst));
    }

    #[test]
    fn check_len_rejects_inconsistent_lengths() {
        let check = |bytes: &[u8]| UdpPacket::new_checked(bytes).err();
        assert_eq!(check(&[0, 1, 0, 2, 0, 8, 0]), Some(Error::Truncated));
        assert_eq!(check(&[0, 1, 0, 2, 0, 7, 0, 0]), Some(Error::Malformed));
        assert_eq!(check(&[0, 1, 0, 2, 0, 9, 0, 0]), Some(Error::Truncated));
        let udp = UdpPacket::new_checked(&[0, 1, 0, 2, 0, 8, 0, 0, 0xff][..]).unwrap();
        assert!(udp.is_empty() && udp.payload().is_empty());
    }

    proptest! {
        #[test]
        fn repr_round_trip(src_port in any::<u16>(), dst_port in any::<u16>(),
                           payload in proptest::collection::vec(any::<u8>(), 0..300),
                           src in any::<[u8; 4]>(), dst in any::<[u8; 4]>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let repr = UdpRepr { src_port, dst_port, payload: &payload };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut UdpPacket::new_unchecked(&mut bytes[..]), src, dst);
            let packet = UdpPacket::new_checked(&bytes[..]).unwrap();
            prop_assert_ne!(packet.checksum(), 0);
            prop_assert_eq!(UdpRepr::parse(&packet, src, dst), Ok(repr));
        }

        #[test]
        fn never_panics_after_check_len(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = UdpPacket::new_checked(&bytes[..]) {
                let (a, b) = (Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
                let _ = (p.src_port(), p.dst_port(), p.payload(), p.verify_checksum(a, b));
                let _ = UdpRepr::parse(&p, a, b);
            }
        }
    }
}
