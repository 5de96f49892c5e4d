//! IPv4 (RFC 791).
//!
//! Owns the IPv4 header view [`Ipv4Packet`], the header value [`Ipv4Repr`], protocol numbers
//! ([`IpProtocol`]) and the forwarding step [`decrement_ttl`], which patches the header
//! checksum incrementally (RFC 1624 eqn. 3) instead of summing the header again, as routers
//! do (RFC 1812 §5.3.1, VPP's `ip4_rewrite`).
//!
//! [`Ipv4Packet::check_len`] validates IHL >= 5, IHL*4 <= buffer, total length >= header
//! and <= buffer; after it succeeds no accessor panics, and `payload` is exactly the
//! datagram (Ethernet padding after `total_len` is excluded). [`Ipv4Repr::parse`] further
//! checks the version and the header checksum and rejects fragments. Options are kept in
//! the view and skipped by `Ipv4Repr`, which always emits a 20-byte header.
//! Nothing here allocates; [`decrement_ttl`] never panics.

use std::net::Ipv4Addr;

use crate::Error;
use crate::checksum;
use crate::net_endian::{read_ipv4, read_u16, write_ipv4, write_u16};

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// The IPv4 protocol field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1
    Icmp,
    /// 4: IPv4-in-IPv4 (RFC 2003), Calico's IP-in-IP mode.
    IpIp,
    /// 6
    Tcp,
    /// 17
    Udp,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            4 => IpProtocol::IpIp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::IpIp => 4,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the lengths every accessor relies on: `Truncated` if the buffer is shorter
    /// than 20 bytes, than IHL*4 or than the total length; `Malformed` if IHL < 5 or the
    /// total length is shorter than the header. The version is not checked here.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (4 for IPv4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Internet header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// Differentiated services code point (RFC 2474).
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification (RFC 3168).
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length: header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::IDENT])
    }

    fn flags_and_offset(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::FLG_OFF])
    }

    /// Don't fragment.
    pub fn dont_frag(&self) -> bool {
        self.flags_and_offset() & FLAG_DF != 0
    }

    /// More fragments.
    pub fn more_frags(&self) -> bool {
        self.flags_and_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_and_offset() & OFFSET_MASK) << 3
    }

    /// Part of a fragmented datagram: MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.flags_and_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum as on the wire.
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Options: the bytes between the fixed header and IHL*4.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Whether the header (IHL*4 bytes) sums to 0xffff, i.e. the checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }

    /// The payload: from IHL*4 to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP.
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    /// Sets the ECN bits.
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(&mut self.buffer.as_mut()[field::IDENT], ident);
    }

    fn set_flags_and_offset(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::FLG_OFF], value);
    }

    /// Clears DF, MF and the reserved flag, keeping the offset.
    pub fn clear_flags(&mut self) {
        let v = self.flags_and_offset() & OFFSET_MASK;
        self.set_flags_and_offset(v);
    }

    /// Sets or clears DF.
    pub fn set_dont_frag(&mut self, value: bool) {
        let v = self.flags_and_offset() & !FLAG_DF;
        self.set_flags_and_offset(if value { v | FLAG_DF } else { v });
    }

    /// Sets or clears MF.
    pub fn set_more_frags(&mut self, value: bool) {
        let v = self.flags_and_offset() & !FLAG_MF;
        self.set_flags_and_offset(if value { v | FLAG_MF } else { v });
    }

    /// Sets the fragment offset in bytes (a multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let v = self.flags_and_offset() & !OFFSET_MASK;
        self.set_flags_and_offset(v | (offset >> 3));
    }

    /// Sets the TTL.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.into();
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::SRC_ADDR], addr);
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::DST_ADDR], addr);
    }

    /// Computes the header checksum over IHL*4 bytes and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(!sum);
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// An unfragmented IPv4 header as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub protocol: IpProtocol,
    /// Payload length in bytes; `emit` writes `20 + payload_len` as the total length, so
    /// it must be at most 65515.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
    /// Don't fragment.
    pub dont_frag: bool,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
}

impl Ipv4Repr {
    /// Parses and validates a header: lengths (`check_len`), version 4 (`Malformed`),
    /// header checksum (`Checksum`), not a fragment (`Fragmented`). Options are skipped.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        if packet.is_fragment() {
            return Err(Error::Fragmented);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
        })
    }

    /// The header length, 20 (no options).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 20-byte header with its checksum; the payload is left alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len((HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(self.ident);
        packet.set_flags_and_offset(if self.dont_frag { FLAG_DF } else { 0 });
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

/// Decrements the TTL of the IPv4 packet at the start of `packet` and patches the header
/// checksum incrementally (RFC 1624 eqn. 3 on the TTL/protocol word). Returns the new TTL.
///
/// `Err(TtlExpired)` if the TTL is 0 or 1 (RFC 1812 §5.3.1: answer with ICMP time
/// exceeded), `Err(Truncated)` if `packet` is shorter than the fixed 20-byte header; on
/// error nothing is written. Only the TTL, protocol and checksum bytes are read: the caller
/// has validated the header (the forwarder has, once per packet). The header checksum is
/// not verified: an incremental update keeps a wrong checksum wrong, so corruption is
/// still caught downstream (RFC 1624 §5).
#[inline]
pub fn decrement_ttl(packet: &mut [u8]) -> Result<u8, Error> {
    let Some(header) = packet.get_mut(..HEADER_LEN) else {
        return Err(Error::Truncated);
    };
    let (ttl, protocol) = (header[8], header[9]);
    if ttl <= 1 {
        return Err(Error::TtlExpired);
    }
    let csum = checksum::update_u16(u16::from_be_bytes([header[10], header[11]]), u16::from_be_bytes([ttl, protocol]), u16::from_be_bytes([ttl - 1, protocol]));
    header[8] = ttl - 1;
    header[10..12].copy_from_slice(&csum.to_be_bytes());
    Ok(ttl - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    /// The inner IPv4 packet of the captured echo request: 10.244.0.0 → 10.244.1.0, DF.
    fn inner_echo() -> &'static [u8] {
        &fixtures::VXLAN_ICMP_ECHO_REQUEST[64..]
    }

    #[test]
    fn parses_captured_outer_header() {
        let p = Ipv4Packet::new_checked(&fixtures::VXLAN_ICMP_ECHO_REQUEST[14..]).unwrap();
        assert_eq!((p.version(), p.ihl(), p.header_len()), (4, 5, 20));
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 0x76);
        assert_eq!(p.ident(), 0x6db7);
        assert!(!p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0xf7f7);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 0x76 - 20);
    }

    #[test]
    fn parses_captured_inner_header() {
        let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(inner_echo()).unwrap());
        assert_eq!(
            repr,
            Ok(Ipv4Repr {
                src_addr: Ipv4Addr::new(10, 244, 0, 0),
                dst_addr: Ipv4Addr::new(10, 244, 1, 0),
                protocol: IpProtocol::Icmp,
                payload_len: 48,
                ttl: 64,
                ident: 0x28c6,
                dont_frag: true,
                dscp: 0,
                ecn: 0,
            })
        );
    }

    #[test]
    fn parses_dscp_of_captured_icmp_error() {
        // Linux sends ICMP errors with TOS 0xc0 (DSCP CS6).
        let p = Ipv4Packet::new_checked(&fixtures::VXLAN_ICMP_PORT_UNREACHABLE[64..]).unwrap();
        assert_eq!((p.dscp(), p.ecn()), (48, 0));
    }

    #[test]
    fn payload_excludes_ethernet_padding() {
        let mut bytes = inner_echo().to_vec();
        bytes.extend_from_slice(&[0; 10]);
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.payload(), &inner_echo()[20..]);
    }

    #[test]
    fn check_len_rejects_inconsistent_lengths() {
        let check = |bytes: &[u8]| Ipv4Packet::new_checked(bytes).err();
        let good = inner_echo();
        assert_eq!(check(good), None);
        assert_eq!(check(&good[..19]), Some(Error::Truncated));
        assert_eq!(check(&good[..good.len() - 1]), Some(Error::Truncated)); // total_len > buffer

        let mut ihl4 = good.to_vec();
        ihl4[0] = 0x44;
        assert_eq!(check(&ihl4), Some(Error::Malformed));

        let mut ihl15 = good.to_vec();
        ihl15[0] = 0x4f; // a 60-byte header, which fits the 68-byte buffer
        ihl15[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(check(&ihl15), Some(Error::Malformed)); // total_len 40 < header 60
        assert_eq!(check(&ihl15[..50]), Some(Error::Truncated)); // header 60 > buffer 50

        let mut short_total = good.to_vec();
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(check(&short_total), Some(Error::Malformed));
    }

    #[test]
    fn repr_parse_rejects_bad_version_checksum_and_fragments() {
        let parse = |bytes: &[u8]| Ipv4Repr::parse(&Ipv4Packet::new_unchecked(bytes));
        let mut v6 = inner_echo().to_vec();
        v6[0] = 0x65;
        assert_eq!(parse(&v6), Err(Error::Malformed));

        let mut bad_sum = inner_echo().to_vec();
        bad_sum[11] ^= 1;
        assert_eq!(parse(&bad_sum), Err(Error::Checksum));

        let mut frag = inner_echo().to_vec();
        let mut p = Ipv4Packet::new_unchecked(&mut frag[..]);
        p.set_more_frags(true);
        p.fill_checksum();
        assert!(p.more_frags() && p.dont_frag() && p.frag_offset() == 0);
        assert_eq!(parse(&frag), Err(Error::Fragmented));

        let mut p = Ipv4Packet::new_unchecked(&mut frag[..]);
        p.clear_flags();
        p.set_frag_offset(1480);
        p.fill_checksum();
        assert_eq!(p.frag_offset(), 1480);
        assert!(!p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(parse(&frag), Err(Error::Fragmented));
    }

    #[test]
    fn emit_reproduces_captured_header() {
        let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(inner_echo()).unwrap()).unwrap();
        let mut bytes = [0xa5u8; 20 + 48];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes[..20], inner_echo()[..20]);
        assert_eq!(bytes[20..], [0xa5; 48]);
    }

    #[test]
    fn decrement_ttl_patches_checksum() {
        let mut bytes = inner_echo().to_vec();
        assert_eq!(decrement_ttl(&mut bytes), Ok(63));
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        // Same bytes as a full recompute.
        let mut full = bytes.clone();
        Ipv4Packet::new_unchecked(&mut full[..]).fill_checksum();
        assert_eq!(bytes, full);
    }

    #[test]
    fn decrement_ttl_refuses_expired_and_short_packets() {
        for ttl in [0, 1] {
            let mut bytes = inner_echo().to_vec();
            bytes[8] = ttl;
            let before = bytes.clone();
            assert_eq!(decrement_ttl(&mut bytes), Err(Error::TtlExpired));
            assert_eq!(bytes, before);
        }
        let mut two = inner_echo().to_vec();
        two[8] = 2;
        Ipv4Packet::new_unchecked(&mut two[..]).fill_checksum();
        assert_eq!(decrement_ttl(&mut two), Ok(1));
        assert!(Ipv4Packet::new_checked(&two[..]).unwrap().verify_checksum());
        assert_eq!(decrement_ttl(&mut [0x45; 19]), Err(Error::Truncated));
    }

    #[test]
    fn protocol_numbers() {
        for (raw, known) in [
            (1, IpProtocol::Icmp),
            (4, IpProtocol::IpIp),
            (6, IpProtocol::Tcp),
            (17, IpProtocol::Udp),
        ] {
            assert_eq!(IpProtocol::from(raw), known);
            assert_eq!(u8::from(known), raw);
        }
        assert_eq!(IpProtocol::from(132), IpProtocol::Unknown(132));
        assert_eq!(u8::from(IpProtocol::Unknown(132)), 132);
    }

    prop_compose! {
        fn arb_repr()(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), protocol in any::<u8>(),
                      payload_len in 0usize..=65515, ttl in any::<u8>(), ident in any::<u16>(),
                      dont_frag in any::<bool>(), dscp in 0u8..64, ecn in 0u8..4) -> Ipv4Repr {
            Ipv4Repr {
                src_addr: Ipv4Addr::from(src), dst_addr: Ipv4Addr::from(dst),
                protocol: IpProtocol::from(protocol), payload_len, ttl, ident, dont_frag, dscp, ecn,
            }
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(repr in arb_repr()) {
            let mut bytes = vec![0xa5; repr.buffer_len() + repr.payload_len];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn decrement_ttl_equals_full_recompute(mut repr in arb_repr(), ttl in 2u8..=255) {
            repr.ttl = ttl;
            repr.payload_len = 0;
            let mut bytes = vec![0xa5; 20];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(decrement_ttl(&mut bytes), Ok(ttl - 1));
            let mut expected = vec![0xa5; 20];
            Ipv4Repr { ttl: ttl - 1, ..repr }.emit(&mut Ipv4Packet::new_unchecked(&mut expected[..]));
            prop_assert_eq!(bytes, expected);
        }

        #[test]
        fn never_panics_after_check_len(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.dscp(), p.ecn(), p.ident(), p.frag_offset(), p.ttl());
                let _ = (p.protocol(), p.src_addr(), p.dst_addr(), p.options(), p.payload());
                let _ = (p.verify_checksum(), Ipv4Repr::parse(&p));
            }
            let mut bytes = bytes;
            let _ = decrement_ttl(&mut bytes);
        }
    }
}
