//! TCP segments (RFC 793, flags from RFC 3168 and RFC 3540) over IPv4.
//!
//! Owns the TCP header view [`TcpPacket`], the flag set [`TcpFlags`] and the segment value
//! [`TcpRepr`], with the checksum over the IPv4 pseudo header (RFC 793 §3.1). The forwarder
//! reads ports and flags for policy and conntrack; it does not terminate TCP. Options are
//! kept as raw bytes: nothing here interprets them.
//!
//! TCP has no length field of its own: a view spans the whole IPv4 payload it is given.
//! [`TcpPacket::check_len`] validates 20 <= data offset * 4 <= buffer; after it succeeds no
//! accessor panics. Nothing here allocates.

use core::fmt;
use std::net::Ipv4Addr;

use crate::Error;
use crate::checksum;
use crate::ipv4::IpProtocol;
use crate::net_endian::{read_u16, read_u32, write_u16, write_u32};

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// Longest options field: a data offset of 15 words is 60 bytes.
pub const MAX_OPTIONS_LEN: usize = 40;

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const OFF_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// The nine TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x001);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x002);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x004);
    /// Push.
    pub const PSH: TcpFlags = TcpFlags(0x008);
    /// Acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x010);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x020);
    /// ECN echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x040);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// ECN nonce (RFC 3540, historic).
    pub const NS: TcpFlags = TcpFlags(0x100);

    const NAMES: [(TcpFlags, &'static str); 9] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
        (Self::NS, "NS"),
    ];

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;

    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// `SYN|ACK`, or `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                f.write_str(if first { "" } else { "|" })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A zero-copy view of a TCP segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than 20 bytes or the data offset,
    /// `Malformed` if the data offset is below 5 words.
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

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::ACK_NUM])
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4) * 4
    }

    /// Control bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(read_u16(&self.buffer.as_ref()[field::OFF_FLAGS]) & 0x01ff)
    }

    /// Receive window.
    pub fn window_len(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::WINDOW])
    }

    /// Checksum as on the wire.
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::URGENT])
    }

    /// Options: the bytes between the fixed header and the data offset.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Data after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<u16> {
        let bytes = self.buffer.as_ref();
        let len = u16::try_from(bytes.len()).ok()?;
        Some(checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Tcp, len),
            checksum::data(bytes),
        ]))
    }

    /// Whether the checksum is right for a segment from `src` to `dst` (the whole buffer is
    /// the segment).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.sum(src, dst) == Some(0xffff)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::SEQ_NUM], value);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::ACK_NUM], value);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60), keeping the flags.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS.start];
        *b = (*b & 0x0f) | (((len / 4) as u8) << 4);
    }

    /// Sets the control bits, keeping the data offset; the reserved bits are cleared.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let bytes = &mut self.buffer.as_mut()[field::OFF_FLAGS];
        let value = (u16::from(bytes[0] & 0xf0) << 8) | (flags.0 & 0x01ff);
        write_u16(bytes, value);
    }

    /// Sets the receive window.
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::WINDOW], value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::URGENT], value);
    }

    /// Options, mutable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Data after the header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum over the whole buffer for a segment from `src` to `dst` and
    /// writes it. A buffer longer than 65535 bytes is left unchanged.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        if let Some(sum) = self.sum(src, dst) {
            self.set_checksum(!sum);
        }
    }
}

/// A TCP segment as a value, borrowing its options and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Receive window.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_at: u16,
    /// Raw options; at most 40 bytes. `emit` pads them with zero bytes (End of Option
    /// List) to a multiple of 4.
    pub options: &'a [u8],
    /// Data.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment from `src` to `dst`, verifying the checksum (`Checksum`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let bytes: &'a [u8] = packet.buffer.as_ref();
        let header_len = packet.header_len();
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
            options: &bytes[HEADER_LEN..header_len],
            payload: &bytes[header_len..],
        })
    }

    /// Header length: 20 plus the options rounded up to a multiple of 4.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len().next_multiple_of(4)
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment with its checksum into a buffer of exactly `buffer_len()` bytes
    /// (the checksum covers the whole buffer).
    ///
    /// # Panics
    /// If the options are longer than 40 bytes or the buffer is shorter than `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        assert!(
            self.options.len() <= MAX_OPTIONS_LEN,
            "TCP options longer than 40 bytes"
        );
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(self.urgent_at);
        let options = packet.options_mut();
        let (given, padding) = options.split_at_mut(self.options.len());
        given.copy_from_slice(self.options);
        padding.fill(0);
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

    #[test]
    fn parses_captured_syn() {
        let syn = TcpPacket::new_checked(&fixtures::VXLAN_TCP_SYN[84..]).unwrap();
        assert_eq!((syn.src_port(), syn.dst_port()), (40001, 8080));
        assert_eq!(syn.seq_number(), 0x9db3_3208);
        assert_eq!(syn.ack_number(), 0);
        assert_eq!(syn.header_len(), 40);
        assert_eq!(syn.flags(), TcpFlags::SYN);
        assert_eq!(syn.window_len(), 64860);
        assert_eq!(syn.urgent_at(), 0);
        // MSS 1410, SACK permitted, timestamps, NOP, window scale 10.
        assert_eq!(&syn.options()[..4], &[0x02, 0x04, 0x05, 0x82]);
        assert_eq!(syn.options().len(), 20);
        assert!(syn.payload().is_empty());
        // The pod's kernel left the partial pseudo-header sum (CHECKSUM_PARTIAL).
        assert_eq!(
            syn.checksum(),
            checksum::pseudo_header(POD_A, POD_B, IpProtocol::Tcp, 40)
        );
        assert!(!syn.verify_checksum(POD_A, POD_B));
    }

    #[test]
    fn parses_captured_rst_and_reemits_it() {
        let bytes = &fixtures::VXLAN_TCP_RST[84..];
        let rst = TcpPacket::new_checked(bytes).unwrap();
        assert!(rst.verify_checksum(POD_B, POD_A));
        let repr = TcpRepr::parse(&rst, POD_B, POD_A).unwrap();
        assert_eq!(
            repr,
            TcpRepr {
                src_port: 8080,
                dst_port: 40001,
                seq_number: 0,
                ack_number: 0x9db3_3209,
                flags: TcpFlags::RST | TcpFlags::ACK,
                window_len: 0,
                urgent_at: 0,
                options: &[],
                payload: &[],
            }
        );
        assert_eq!(format!("{:?}", repr.flags), "RST|ACK");
        let mut out = [0xa5u8; 20];
        repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), POD_B, POD_A);
        assert_eq!(out[..], bytes[..]);
        // (Swapping source and destination would not change the sum.)
        assert_eq!(
            TcpRepr::parse(&rst, POD_B, Ipv4Addr::new(10, 244, 0, 1)),
            Err(Error::Checksum)
        );
    }

    #[test]
    fn check_len_rejects_bad_offsets() {
        let mut bytes = fixtures::VXLAN_TCP_SYN[84..].to_vec();
        assert_eq!(
            TcpPacket::new_checked(&bytes[..39]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(
            TcpPacket::new_checked(&bytes[..19]).err(),
            Some(Error::Truncated)
        );
        bytes[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).err(),
            Some(Error::Malformed)
        );
    }

    #[test]
    fn emit_pads_options() {
        let repr = TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq_number: 3,
            ack_number: 4,
            flags: TcpFlags::SYN,
            window_len: 5,
            urgent_at: 0,
            options: &[0x01, 0x03, 0x03],
            payload: b"x",
        };
        assert_eq!((repr.header_len(), repr.buffer_len()), (24, 25));
        let mut out = [0xa5u8; 25];
        repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), POD_A, POD_B);
        let packet = TcpPacket::new_checked(&out[..]).unwrap();
        assert_eq!(packet.options(), &[0x01, 0x03, 0x03, 0x00]);
        assert_eq!(packet.payload(), b"x");
        assert!(packet.verify_checksum(POD_A, POD_B));
        assert_eq!(format!("{:?}", TcpFlags::default()), "-");
    }

    proptest! {
        #[test]
        fn repr_round_trip(src_port in any::<u16>(), dst_port in any::<u16>(),
                           seq_number in any::<u32>(), ack_number in any::<u32>(),
                           flags in 0u16..0x200, window_len in any::<u16>(), urgent_at in any::<u16>(),
                           option_words in 0usize..=10,
                           option_bytes in any::<[u8; 40]>(),
                           payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let repr = TcpRepr {
                src_port, dst_port, seq_number, ack_number, flags: TcpFlags(flags), window_len,
                urgent_at, options: &option_bytes[..option_words * 4], payload: &payload,
            };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), POD_A, POD_B);
            prop_assert_eq!(TcpRepr::parse(&TcpPacket::new_checked(&bytes[..]).unwrap(), POD_A, POD_B), Ok(repr));
        }

        #[test]
        fn never_panics_after_check_len(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = TcpPacket::new_checked(&bytes[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.flags());
                let _ = (p.window_len(), p.urgent_at(), p.options(), p.payload());
                let _ = TcpRepr::parse(&p, POD_A, POD_B);
            }
        }
    }
}
