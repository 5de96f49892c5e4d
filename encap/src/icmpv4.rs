//! ICMP for IPv4 (RFC 792), with the next-hop MTU of RFC 1191 and the error rules of
//! RFC 1122 §3.2.2 and RFC 1812 §4.3.2.
//!
//! Owns the ICMP message view [`Icmpv4Packet`], the message value [`Icmpv4Repr`] (echo
//! request/reply, destination unreachable incl. fragmentation needed, time exceeded) and
//! [`emit_error`], which builds the IPv4 + ICMP error the forwarder sends back to a pod
//! when a packet cannot be forwarded (DF set and too big for the tunnel, TTL expired, no
//! route). The forwarder puts the Ethernet header in front of it.
//!
//! [`Icmpv4Packet::check_len`] validates the 8-byte header; after it succeeds no accessor
//! panics. Nothing here allocates.

use std::net::Ipv4Addr;

use crate::Error;
use crate::checksum;
use crate::ipv4::{self, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::net_endian::{read_u16, write_u16};

/// Length of the ICMP header (type, code, checksum and the 4-byte rest of header).
pub const HEADER_LEN: usize = 8;

/// Longest IPv4 datagram an ICMP error may be (RFC 1812 §4.3.2.3): it quotes as much of
/// the offending datagram as fits.
pub const MAX_ERROR_LEN: usize = 576;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const UNUSED: Range<usize> = 4..8;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// ICMP message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// 0
    EchoReply,
    /// 3
    DstUnreachable,
    /// 5
    Redirect,
    /// 8
    EchoRequest,
    /// 11
    TimeExceeded,
    /// 12
    ParamProblem,
    /// Any other type.
    Unknown(u8),
}

impl Message {
    /// Whether this is an error message (RFC 1122 §3.2.2: never answered with an error).
    /// Unknown types count as errors, to be safe.
    pub const fn is_error(self) -> bool {
        !matches!(self, Message::EchoReply | Message::EchoRequest)
    }
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> Self {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Unknown(other) => other,
        }
    }
}

/// Code of a destination unreachable message (RFC 792, RFC 1812 §5.2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DstUnreachable {
    /// 0
    NetUnreachable,
    /// 1
    HostUnreachable,
    /// 2
    ProtoUnreachable,
    /// 3
    PortUnreachable,
    /// 4: fragmentation needed and DF set; carries the next-hop MTU (RFC 1191).
    FragRequired,
    /// 5
    SrcRouteFailed,
    /// 13: communication administratively prohibited (RFC 1812).
    AdminProhibited,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for DstUnreachable {
    fn from(value: u8) -> Self {
        match value {
            0 => DstUnreachable::NetUnreachable,
            1 => DstUnreachable::HostUnreachable,
            2 => DstUnreachable::ProtoUnreachable,
            3 => DstUnreachable::PortUnreachable,
            4 => DstUnreachable::FragRequired,
            5 => DstUnreachable::SrcRouteFailed,
            13 => DstUnreachable::AdminProhibited,
            other => DstUnreachable::Unknown(other),
        }
    }
}

impl From<DstUnreachable> for u8 {
    fn from(value: DstUnreachable) -> Self {
        match value {
            DstUnreachable::NetUnreachable => 0,
            DstUnreachable::HostUnreachable => 1,
            DstUnreachable::ProtoUnreachable => 2,
            DstUnreachable::PortUnreachable => 3,
            DstUnreachable::FragRequired => 4,
            DstUnreachable::SrcRouteFailed => 5,
            DstUnreachable::AdminProhibited => 13,
            DstUnreachable::Unknown(other) => other,
        }
    }
}

/// Code of a time exceeded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeExceeded {
    /// 0: TTL exceeded in transit.
    TtlExpired,
    /// 1: fragment reassembly time exceeded.
    FragExpired,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for TimeExceeded {
    fn from(value: u8) -> Self {
        match value {
            0 => TimeExceeded::TtlExpired,
            1 => TimeExceeded::FragExpired,
            other => TimeExceeded::Unknown(other),
        }
    }
}

impl From<TimeExceeded> for u8 {
    fn from(value: TimeExceeded) -> Self {
        match value {
            TimeExceeded::TtlExpired => 0,
            TimeExceeded::FragExpired => 1,
            TimeExceeded::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an ICMP message (the whole IPv4 payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` if the buffer cannot hold the 8-byte header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code (meaning depends on the type).
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum as on the wire.
    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Identifier of an echo request/reply.
    pub fn echo_ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// Sequence number of an echo request/reply.
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_SEQNO])
    }

    /// Next-hop MTU of a fragmentation-needed message (RFC 1191 §4).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::NEXT_HOP_MTU])
    }

    /// Everything after the 8-byte header: echo data, or the quoted datagram of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the whole message sums to 0xffff.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the type.
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }

    /// Sets the code.
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], value);
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_SEQNO], value);
    }

    /// Zeroes the 4-byte rest of header (the "unused" field of error messages).
    pub fn clear_rest_of_header(&mut self) {
        self.buffer.as_mut()[field::UNUSED].fill(0);
    }

    /// Sets the next-hop MTU.
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::NEXT_HOP_MTU], value);
    }

    /// Data after the header, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }
}

/// An ICMP message as a value, borrowing its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr<'a> {
    /// Echo request (ping).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data, echoed back.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data of the request.
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// Code.
        reason: DstUnreachable,
        /// Next-hop MTU for `FragRequired` (RFC 1191); 0 for every other code, whose
        /// rest-of-header is unused and written as zeros.
        next_hop_mtu: u16,
        /// The quoted datagram: its IPv4 header and at least 8 bytes of its payload.
        data: &'a [u8],
    },
    /// Time exceeded.
    TimeExceeded {
        /// Code.
        reason: TimeExceeded,
        /// The quoted datagram.
        data: &'a [u8],
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Parses a message, verifying the checksum (`Checksum`). Types other than the four
    /// above are `Unrecognized`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Icmpv4Packet<&'a T>) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let bytes: &'a [u8] = packet.buffer.as_ref();
        let data = &bytes[field::DATA];
        match packet.msg_type() {
            Message::EchoRequest if packet.msg_code() == 0 => Ok(Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            Message::EchoReply if packet.msg_code() == 0 => Ok(Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            Message::DstUnreachable => {
                let reason = DstUnreachable::from(packet.msg_code());
                let next_hop_mtu = match reason {
                    DstUnreachable::FragRequired => packet.next_hop_mtu(),
                    _ => 0,
                };
                Ok(Icmpv4Repr::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    data,
                })
            }
            Message::TimeExceeded => Ok(Icmpv4Repr::TimeExceeded {
                reason: TimeExceeded::from(packet.msg_code()),
                data,
            }),
            _ => Err(Error::Unrecognized),
        }
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            Icmpv4Repr::EchoRequest { data, .. }
            | Icmpv4Repr::EchoReply { data, .. }
            | Icmpv4Repr::DstUnreachable { data, .. }
            | Icmpv4Repr::TimeExceeded { data, .. } => data,
        }
    }

    /// Header plus data length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the message with its checksum into a buffer of exactly `buffer_len()` bytes
    /// (the checksum covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        packet.clear_rest_of_header();
        match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no, .. } => {
                packet.set_msg_type(Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv4Repr::EchoReply { ident, seq_no, .. } => {
                packet.set_msg_type(Message::EchoReply);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv4Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                ..
            } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                if reason == DstUnreachable::FragRequired {
                    packet.set_next_hop_mtu(next_hop_mtu);
                }
            }
            Icmpv4Repr::TimeExceeded { reason, .. } => {
                packet.set_msg_type(Message::TimeExceeded);
                packet.set_msg_code(reason.into());
            }
        }
        let data = self.data();
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

/// The ICMP errors the forwarder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpError {
    /// DF set and the packet does not fit the egress (tunnel) MTU: destination unreachable,
    /// fragmentation needed, with the MTU the sender should use (RFC 1191).
    FragNeeded {
        /// The largest IPv4 datagram that fits.
        next_hop_mtu: u16,
    },
    /// TTL exceeded in transit ([`crate::ipv4::decrement_ttl`] returned `TtlExpired`).
    TtlExpired,
    /// No route to the destination.
    HostUnreachable,
    /// Denied by policy, when the policy asks for a reject rather than a silent drop.
    AdminProhibited,
}

/// Builds, at the start of `out`, the IPv4 datagram carrying the ICMP `error` about
/// `original` (an IPv4 packet), from `from` to the original's source. Returns its length.
///
/// The error quotes as much of the original as fits in 576 bytes (RFC 1812 §4.3.2.3, as
/// Linux does), is sent with TTL 64, DSCP CS6 (Linux's TOS 0xc0) and ident 0, DF clear.
/// As RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7 require, no error is built (`Unrecognized`)
/// about an ICMP error, a non-first fragment, or a datagram from an address that does not
/// name one host (0.0.0.0, broadcast, multicast, loopback). `Truncated` / `Malformed` if
/// `original` is not a whole IPv4 header, `Truncated` if `out` is too short for the result.
/// Never panics, never allocates.
pub fn emit_error(
    out: &mut [u8],
    from: Ipv4Addr,
    original: &[u8],
    error: IcmpError,
) -> Result<usize, Error> {
    let packet = Ipv4Packet::new_checked(original)?;
    let src = packet.src_addr();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return Err(Error::Unrecognized);
    }
    if packet.frag_offset() != 0 {
        return Err(Error::Unrecognized);
    }
    if packet.protocol() == IpProtocol::Icmp {
        let payload = packet.payload();
        match payload.first() {
            Some(&t) if !Message::from(t).is_error() => {}
            _ => return Err(Error::Unrecognized),
        }
    }

    let quote_len =
        usize::from(packet.total_len()).min(MAX_ERROR_LEN - ipv4::HEADER_LEN - HEADER_LEN);
    let quote = &original[..quote_len];
    let icmp = match error {
        IcmpError::FragNeeded { next_hop_mtu } => Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu,
            data: quote,
        },
        IcmpError::TtlExpired => Icmpv4Repr::TimeExceeded {
            reason: TimeExceeded::TtlExpired,
            data: quote,
        },
        IcmpError::HostUnreachable => Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::HostUnreachable,
            next_hop_mtu: 0,
            data: quote,
        },
        IcmpError::AdminProhibited => Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::AdminProhibited,
            next_hop_mtu: 0,
            data: quote,
        },
    };
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: src,
        protocol: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        ttl: 64,
        ident: 0,
        dont_frag: false,
        dscp: 48,
        ecn: 0,
    };
    let len = ip.buffer_len() + icmp.buffer_len();
    let out = out.get_mut(..len).ok_or(Error::Truncated)?;
    let mut ip_packet = Ipv4Packet::new_unchecked(&mut *out);
    ip.emit(&mut ip_packet);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(ip_packet.payload_mut()));
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    #[test]
    fn parses_captured_echo_request_and_reply() {
        let request = Icmpv4Packet::new_checked(&fixtures::VXLAN_ICMP_ECHO_REQUEST[84..]).unwrap();
        assert_eq!(request.msg_type(), Message::EchoRequest);
        assert_eq!(request.msg_code(), 0);
        assert_eq!(request.checksum(), 0x26f8);
        assert!(request.verify_checksum());
        let data: Vec<u8> = (0x10..0x38).collect();
        assert_eq!(
            Icmpv4Repr::parse(&request),
            Ok(Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: &data
            })
        );
        let reply = Icmpv4Packet::new_checked(&fixtures::VXLAN_ICMP_ECHO_REPLY[84..]).unwrap();
        let reply_repr = Icmpv4Repr::parse(&reply).unwrap();
        assert_eq!(
            reply_repr,
            Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq_no: 1,
                data: &data
            }
        );

        // Emitting the reply reproduces the kernel's bytes.
        let mut out = [0xa5u8; 48];
        reply_repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out[..], fixtures::VXLAN_ICMP_ECHO_REPLY[84..]);
    }

    #[test]
    fn parses_captured_port_unreachable() {
        let packet =
            Icmpv4Packet::new_checked(&fixtures::VXLAN_ICMP_PORT_UNREACHABLE[84..]).unwrap();
        let repr = Icmpv4Repr::parse(&packet).unwrap();
        let quoted = &fixtures::VXLAN_ICMP_PORT_UNREACHABLE[92..];
        assert_eq!(
            repr,
            Icmpv4Repr::DstUnreachable {
                reason: DstUnreachable::PortUnreachable,
                next_hop_mtu: 0,
                data: quoted
            }
        );
    }

    #[test]
    fn parses_captured_frag_needed() {
        let frame = fixtures::frag_needed();
        let packet = Icmpv4Packet::new_checked(&frame[34..]).unwrap();
        assert_eq!(packet.msg_type(), Message::DstUnreachable);
        assert_eq!(packet.next_hop_mtu(), 1000);
        let Ok(Icmpv4Repr::DstUnreachable {
            reason,
            next_hop_mtu,
            data,
        }) = Icmpv4Repr::parse(&packet)
        else {
            panic!("not a destination unreachable");
        };
        assert_eq!(
            (reason, next_hop_mtu, data.len()),
            (DstUnreachable::FragRequired, 1000, 548)
        );
        let quoted = Ipv4Packet::new_unchecked(data);
        assert_eq!(quoted.dst_addr(), Ipv4Addr::new(10, 98, 0, 5));
        assert_eq!(quoted.total_len(), 1228);
    }

    #[test]
    fn emit_error_matches_linux_frag_needed() {
        // Rebuild the datagram router B refused, then build B's error ourselves.
        let frame = fixtures::frag_needed();
        let mut original = frame[42..].to_vec();
        original.resize(1228, 0);
        let mut out = [0xa5u8; 600];
        let router_b = Ipv4Addr::new(10, 99, 0, 2);
        let len = emit_error(
            &mut out,
            router_b,
            &original,
            IcmpError::FragNeeded { next_hop_mtu: 1000 },
        );
        assert_eq!(len, Ok(576));
        assert_eq!(out[576..], [0xa5; 24]);
        // Identical to Linux's bytes except the IPv4 ident (Linux counts, we send 0) and
        // therefore the header checksum.
        let mut linux = frame[14..].to_vec();
        let mut header = Ipv4Packet::new_unchecked(&mut linux[..]);
        header.set_ident(0);
        header.fill_checksum();
        assert_eq!(out[..576], linux[..]);
    }

    #[test]
    fn emit_error_time_exceeded_quotes_short_datagrams_whole() {
        let original = &fixtures::VXLAN_TCP_SYN[64..];
        let mut out = [0u8; 100];
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let len = emit_error(&mut out, gw, original, IcmpError::TtlExpired).unwrap();
        assert_eq!(len, 20 + 8 + 60);
        let ip = Ipv4Packet::new_checked(&out[..len]).unwrap();
        let repr = Ipv4Repr::parse(&ip).unwrap();
        assert_eq!(
            (repr.src_addr, repr.dst_addr, repr.protocol),
            (gw, Ipv4Addr::new(10, 244, 0, 0), IpProtocol::Icmp)
        );
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            Icmpv4Repr::parse(&icmp),
            Ok(Icmpv4Repr::TimeExceeded {
                reason: TimeExceeded::TtlExpired,
                data: original
            })
        );
        assert_eq!(
            emit_error(&mut out[..87], gw, original, IcmpError::TtlExpired),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn emit_error_refuses_what_rfc1122_forbids() {
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let mut out = [0u8; 600];
        let port_unreachable = &fixtures::VXLAN_ICMP_PORT_UNREACHABLE[64..];
        assert_eq!(
            emit_error(&mut out, gw, port_unreachable, IcmpError::TtlExpired),
            Err(Error::Unrecognized)
        );
        let echo = &fixtures::VXLAN_ICMP_ECHO_REQUEST[64..];
        assert!(emit_error(&mut out, gw, echo, IcmpError::HostUnreachable).is_ok());

        let mut fragment = echo.to_vec();
        Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag_offset(8);
        assert_eq!(
            emit_error(&mut out, gw, &fragment, IcmpError::TtlExpired),
            Err(Error::Unrecognized)
        );
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::LOCALHOST,
        ] {
            let mut from_bad = echo.to_vec();
            Ipv4Packet::new_unchecked(&mut from_bad[..]).set_src_addr(src);
            assert_eq!(
                emit_error(&mut out, gw, &from_bad, IcmpError::TtlExpired),
                Err(Error::Unrecognized)
            );
        }
        assert_eq!(
            emit_error(&mut out, gw, &echo[..10], IcmpError::TtlExpired),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn codes_keep_unknown_values() {
        assert_eq!(Message::from(42), Message::Unknown(42));
        assert_eq!(u8::from(Message::Unknown(42)), 42);
        assert!(Message::Unknown(42).is_error() && !Message::EchoRequest.is_error());
        assert_eq!(DstUnreachable::from(9), DstUnreachable::Unknown(9));
        assert_eq!(u8::from(DstUnreachable::AdminProhibited), 13);
        assert_eq!(TimeExceeded::from(7), TimeExceeded::Unknown(7));
        for t in 0..=255u8 {
            assert_eq!(u8::from(Message::from(t)), t);
            assert_eq!(u8::from(DstUnreachable::from(t)), t);
            assert_eq!(u8::from(TimeExceeded::from(t)), t);
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(kind in 0u8..4, a in any::<u16>(), b in any::<u16>(), code in any::<u8>(),
                           data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let data = &data[..];
            let repr = match kind {
                0 => Icmpv4Repr::EchoRequest { ident: a, seq_no: b, data },
                1 => Icmpv4Repr::EchoReply { ident: a, seq_no: b, data },
                2 => {
                    let reason = DstUnreachable::from(code);
                    let next_hop_mtu = if reason == DstUnreachable::FragRequired { a } else { 0 };
                    Icmpv4Repr::DstUnreachable { reason, next_hop_mtu, data }
                }
                _ => Icmpv4Repr::TimeExceeded { reason: TimeExceeded::from(code), data },
            };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn emit_error_never_panics(original in proptest::collection::vec(any::<u8>(), 0..120),
                                   out_len in 0usize..700, mtu in any::<u16>()) {
            let mut out = vec![0; out_len];
            let from = Ipv4Addr::new(169, 254, 1, 1);
            if let Ok(len) = emit_error(&mut out, from, &original, IcmpError::FragNeeded { next_hop_mtu: mtu }) {
                let ip = Ipv4Packet::new_checked(&out[..len]).unwrap();
                prop_assert!(Ipv4Repr::parse(&ip).is_ok());
                prop_assert!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ip.payload()).unwrap()).is_ok());
            }
        }
    }
}
