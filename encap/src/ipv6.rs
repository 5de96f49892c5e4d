//! IPv6 (RFC 8200).
//!
//! Owns the fixed 40-byte IPv6 header view [`Ipv6Packet`] and the forwarding step
//! [`decrement_hop_limit`] (RFC 8200 §3: a node that forwards decrements the hop limit and
//! discards the packet when it would reach zero). IPv6 has no header checksum, so there is
//! nothing to patch. Extension headers (RFC 8200 §4) are payload to this view: the flow
//! stage walks them ([`crate::flow::parse_flow_info6`]).
//!
//! [`Ipv6Packet::check_len`] validates buffer >= 40, version 6, and 40 + payload length <=
//! buffer; after it succeeds no accessor panics, and `payload` is exactly the payload
//! length (Ethernet padding after it is excluded). A jumbogram (payload length 0 with a
//! hop-by-hop Jumbo Payload option, RFC 2675) is read as an empty payload: no link twill
//! forwards on carries one. Nothing here allocates; [`decrement_hop_limit`] never panics.

use std::net::Ipv6Addr;

use crate::Error;
use crate::net_endian::{read_u16, read_u32, write_u16, write_u32};

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// Extension header numbers (RFC 8200 §4): hop-by-hop options, routing, fragment and
/// destination options.
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DST_OPTS: u8 = 60;

/// The minimum link MTU every IPv6 link must carry (RFC 8200 §5): the largest ICMPv6 error
/// may be (RFC 4443 §2.4 (c)).
pub const MIN_MTU: usize = 1280;

mod field {
    use core::ops::Range;

    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

const FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// Reads an IPv6 address from the first 16 bytes of `bytes`.
pub(crate) fn read_ipv6(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    Ipv6Addr::from(octets)
}

fn write_ipv6(bytes: &mut [u8], addr: Ipv6Addr) {
    bytes[..16].copy_from_slice(&addr.octets());
}

/// A zero-copy view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates what every accessor relies on: `Truncated` if the buffer is shorter than
    /// the 40-byte header or than 40 + the payload length; `Malformed` if the version is
    /// not 6. Bytes after the payload (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<(), Error> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > bytes.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::VER_TC_FLOW])
    }

    /// Version (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class: DSCP in the upper 6 bits, ECN in the lower 2 (RFC 2474, RFC 3168).
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// Flow label (20 bits, RFC 6437).
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & FLOW_LABEL_MASK
    }

    /// Payload length: everything after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Next header: the type of the first extension header or of the upper layer
    /// (an IP protocol number, RFC 8200 §4).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        read_ipv6(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        read_ipv6(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The payload: exactly `payload_len` bytes after the fixed header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_ver_tc_flow(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::VER_TC_FLOW], value);
    }

    /// Writes the first word of a fresh header: version 6, `traffic_class` and the low 20
    /// bits of `flow_label`.
    pub fn set_ver_tc_flow_label(&mut self, traffic_class: u8, flow_label: u32) {
        self.set_ver_tc_flow((6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & FLOW_LABEL_MASK));
    }

    /// Sets the version, keeping traffic class and flow label.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[0];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the traffic class, keeping version and flow label.
    pub fn set_traffic_class(&mut self, traffic_class: u8) {
        let v = self.ver_tc_flow() & !(0xff << 20);
        self.set_ver_tc_flow(v | (u32::from(traffic_class) << 20));
    }

    /// Sets the flow label (low 20 bits of `label`), keeping version and traffic class.
    pub fn set_flow_label(&mut self, label: u32) {
        let v = self.ver_tc_flow() & !FLOW_LABEL_MASK;
        self.set_ver_tc_flow(v | (label & FLOW_LABEL_MASK));
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = value;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        write_ipv6(&mut self.buffer.as_mut()[field::SRC_ADDR], addr);
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        write_ipv6(&mut self.buffer.as_mut()[field::DST_ADDR], addr);
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A fixed IPv6 header as a value (no extension headers: `next_header` is the upper layer
/// or the first extension header the caller writes itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length in bytes (at most 65535).
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Reads the fixed header after `check_len` (lengths and version).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// The header length, 40.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte header; the payload is left alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        packet.set_ver_tc_flow_label(self.traffic_class, self.flow_label);
        packet.set_payload_len(self.payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// Decrements the hop limit of the IPv6 packet at the start of `packet`. Returns the new
/// hop limit.
///
/// `Err(TtlExpired)` if the hop limit is 0 or 1 (RFC 8200 §3: discard and answer with
/// ICMPv6 time exceeded, RFC 4443 §3.3), `Err(Truncated)` if `packet` is shorter than the
/// 40-byte header; on error nothing is written. Only the hop limit byte is read: the caller
/// has validated the header. There is no checksum to patch.
#[inline]
pub fn decrement_hop_limit(packet: &mut [u8]) -> Result<u8, Error> {
    let Some(header) = packet.get_mut(..HEADER_LEN) else {
        return Err(Error::Truncated);
    };
    let hop_limit = header[field::HOP_LIMIT];
    if hop_limit <= 1 {
        return Err(Error::TtlExpired);
    }
    header[field::HOP_LIMIT] = hop_limit - 1;
    Ok(hop_limit - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// fd00:10:244::5 → fd00:10:244:1::6, traffic class 0xb8 (EF), flow label 0x12345,
    /// UDP 40000 → 5353 with 4 bytes of data, then 6 bytes of Ethernet padding.
    #[rustfmt::skip]
    const UDP6: [u8; 40 + 12 + 6] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x0c, 0x11, 0x40,
        0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05,
        0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06,
        0x9c, 0x40, 0x14, 0xe9, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
        0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn reads_every_field() {
        let p = Ipv6Packet::new_checked(&UDP6[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 12);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "fd00:10:244::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00:10:244:1::6".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &UDP6[40..52], "padding excluded");
    }

    #[test]
    fn check_len_rejects_short_wrong_version_and_long_payload() {
        let check = |bytes: &[u8]| Ipv6Packet::new_checked(bytes).err();
        assert_eq!(check(&UDP6[..52]), None, "no padding is fine too");
        assert_eq!(check(&UDP6[..39]), Some(Error::Truncated));
        assert_eq!(check(&[]), Some(Error::Truncated));
        assert_eq!(check(&UDP6[..51]), Some(Error::Truncated), "payload_len over buffer");
        let mut v4 = UDP6;
        v4[0] = 0x4b;
        assert_eq!(check(&v4), Some(Error::Malformed));
        let mut long = UDP6;
        long[4..6].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(check(&long), Some(Error::Truncated));
        long[4..6].copy_from_slice(&18u16.to_be_bytes());
        assert_eq!(check(&long), None, "the padding may be claimed");
    }

    #[test]
    fn setters_keep_neighbouring_fields() {
        let mut bytes = UDP6;
        let mut p = Ipv6Packet::new_unchecked(&mut bytes[..]);
        p.set_traffic_class(0x01);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0x01, 0x12345));
        p.set_flow_label(0xfff_ffff);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0x01, 0xf_ffff));
        p.set_version(4);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (4, 0x01, 0xf_ffff));
        p.set_ver_tc_flow_label(0xb8, 0x12345);
        p.set_hop_limit(1);
        p.set_next_header(6);
        assert_eq!(bytes[..8], [0x6b, 0x81, 0x23, 0x45, 0x00, 0x0c, 6, 1]);
    }

    #[test]
    fn emit_reproduces_the_fixture() {
        let repr = Ipv6Repr::parse(&Ipv6Packet::new_checked(&UDP6[..]).unwrap()).unwrap();
        let mut bytes = [0xa5u8; 42];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes[..40], UDP6[..40]);
        assert_eq!(bytes[40..], [0xa5; 2]);
    }

    #[test]
    fn decrement_hop_limit_and_expiry() {
        let mut bytes = UDP6;
        assert_eq!(decrement_hop_limit(&mut bytes), Ok(63));
        assert_eq!(bytes[7], 63);
        assert_eq!(bytes[..7], UDP6[..7]);
        assert_eq!(bytes[8..], UDP6[8..]);
        bytes[7] = 2;
        assert_eq!(decrement_hop_limit(&mut bytes), Ok(1));
        for hop_limit in [0, 1] {
            bytes[7] = hop_limit;
            let before = bytes;
            assert_eq!(decrement_hop_limit(&mut bytes), Err(Error::TtlExpired));
            assert_eq!(bytes, before);
        }
        assert_eq!(decrement_hop_limit(&mut [0x60; 39]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn repr_round_trip(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), next_header in any::<u8>(),
                           payload_len in 0u16..300, hop_limit in any::<u8>(), traffic_class in any::<u8>(),
                           flow_label in 0u32..1 << 20) {
            let repr = Ipv6Repr {
                src_addr: Ipv6Addr::from(src), dst_addr: Ipv6Addr::from(dst), next_header,
                payload_len, hop_limit, traffic_class, flow_label,
            };
            let mut bytes = vec![0xa5; HEADER_LEN + usize::from(payload_len)];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Ipv6Repr::parse(&Ipv6Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn never_panics_after_check_len(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Ipv6Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.traffic_class(), p.flow_label(), p.next_header(), p.hop_limit());
                let _ = (p.src_addr(), p.dst_addr(), p.payload(), Ipv6Repr::parse(&p));
            }
            let mut bytes = bytes;
            let _ = decrement_hop_limit(&mut bytes);
        }
    }
}
