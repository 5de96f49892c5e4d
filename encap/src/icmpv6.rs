//! ICMPv6 (RFC 4443) and the Neighbor Discovery a gateway answers (RFC 4861).
//!
//! Owns the ICMPv6 message view [`Icmpv6Packet`], its checksum over the IPv6 pseudo-header
//! ([`checksum()`], [`verify`], RFC 4443 §2.3), the cheap classifier [`message_type`],
//! [`advert_in_place`], with which the forwarder answers a pod's Neighbor Solicitation for
//! its gateway address by turning the request frame into the advertisement in the same
//! buffer (the IPv6 twin of [`crate::arp::reply_in_place`]), and [`emit_error`] /
//! [`emit_packet_too_big`], which build the IPv6 + ICMPv6 error the forwarder sends back
//! when a packet cannot be forwarded (the twin of [`crate::icmpv4::emit_error`]; the
//! forwarder puts the Ethernet header in front of it).
//!
//! [`Icmpv6Packet::check_len`] validates the 8-byte header; after it succeeds no accessor
//! panics. [`message_type`], [`advert_in_place`] and [`emit_error`] never panic and never
//! allocate, whatever bytes they are given.

use std::net::Ipv6Addr;

use crate::Error;
use crate::checksum;
use crate::ethernet::{self, EtherType, EthernetAddress, EthernetFrame};
use crate::ipv6::{self, Ipv6Packet, Ipv6Repr};
use crate::net_endian::{read_u16, read_u32, write_u16, write_u32};

/// The IPv6 next-header value of ICMPv6.
pub const NEXT_HEADER: u8 = 58;

/// Length of the ICMPv6 header (type, code, checksum and the 4-byte message body start).
pub const HEADER_LEN: usize = 8;

/// Hop limit of every Neighbor Discovery message; a received one with another value was
/// forwarded by a router and is dropped (RFC 4861 §7.1.1).
pub const NDP_HOP_LIMIT: u8 = 255;

/// Length of a Neighbor Solicitation or Advertisement without options: header, target.
pub const NEIGHBOR_MSG_LEN: usize = HEADER_LEN + 16;

/// Length of the advertisement [`advert_in_place`] writes: message and one 8-byte target
/// link-layer address option.
pub const ADVERT_LEN: usize = NEIGHBOR_MSG_LEN + 8;

/// Length of the frame [`advert_in_place`] returns: Ethernet 14 + IPv6 40 + 32.
pub const ADVERT_FRAME_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + ADVERT_LEN;

/// Hop limit of the errors [`emit_error`] builds (Linux's default `hop_limit`).
pub const ERROR_HOP_LIMIT: u8 = 64;

/// Neighbor Advertisement flags (RFC 4861 §4.4), in the first byte of the message body.
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;

/// Neighbor Discovery option types (RFC 4861 §4.6).
const OPT_SOURCE_LL_ADDR: u8 = 1;
const OPT_TARGET_LL_ADDR: u8 = 2;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    /// Packet Too Big's MTU; the pointer of Parameter Problem; unused in other errors.
    pub const MTU: Range<usize> = 4..8;
    /// Neighbor Advertisement flags (R, S, O) and 29 reserved bits.
    pub const NA_FLAGS: Range<usize> = 4..8;
    pub const TARGET: Range<usize> = 8..24;
    pub const NDP_OPTIONS: RangeFrom<usize> = 24..;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// ICMPv6 message type (RFC 4443 §2.1, RFC 4861 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// 1
    DstUnreachable,
    /// 2
    PacketTooBig,
    /// 3
    TimeExceeded,
    /// 4
    ParamProblem,
    /// 128
    EchoRequest,
    /// 129
    EchoReply,
    /// 133
    RouterSolicit,
    /// 134
    RouterAdvert,
    /// 135
    NeighborSolicit,
    /// 136
    NeighborAdvert,
    /// 137
    Redirect,
    /// Any other type (MLD 130-132 and 143 among them).
    Unknown(u8),
}

impl Message {
    /// Whether this is an error message: types 0-127 (RFC 4443 §2.1), never answered with
    /// an error (§2.4 (e.1)).
    pub fn is_error(self) -> bool {
        u8::from(self) < 128
    }
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            1 => Message::DstUnreachable,
            2 => Message::PacketTooBig,
            3 => Message::TimeExceeded,
            4 => Message::ParamProblem,
            128 => Message::EchoRequest,
            129 => Message::EchoReply,
            133 => Message::RouterSolicit,
            134 => Message::RouterAdvert,
            135 => Message::NeighborSolicit,
            136 => Message::NeighborAdvert,
            137 => Message::Redirect,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> Self {
        match value {
            Message::DstUnreachable => 1,
            Message::PacketTooBig => 2,
            Message::TimeExceeded => 3,
            Message::ParamProblem => 4,
            Message::EchoRequest => 128,
            Message::EchoReply => 129,
            Message::RouterSolicit => 133,
            Message::RouterAdvert => 134,
            Message::NeighborSolicit => 135,
            Message::NeighborAdvert => 136,
            Message::Redirect => 137,
            Message::Unknown(other) => other,
        }
    }
}

/// The checksum field value of the ICMPv6 message `icmp` sent from `src` to `dst`: the
/// complement of the one's-complement sum of the IPv6 pseudo-header (next header 58, RFC
/// 8200 §8.1) and the message, whose checksum field (bytes 2..4) is taken as zero whatever
/// it holds. Never panics.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let pseudo = checksum::pseudo_header6(src, dst, NEXT_HEADER, icmp.len() as u32);
    let sum = match (icmp.get(..field::CHECKSUM.start), icmp.get(field::CHECKSUM.end..)) {
        (Some(head), Some(tail)) => checksum::combine(&[pseudo, checksum::data(head), checksum::data(tail)]),
        _ => checksum::combine(&[pseudo, checksum::data(icmp)]),
    };
    !sum
}

/// Whether the ICMPv6 message `icmp` from `src` to `dst` carries a correct checksum: the
/// pseudo-header and the whole message sum to 0xffff.
pub fn verify(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> bool {
    let pseudo = checksum::pseudo_header6(src, dst, NEXT_HEADER, icmp.len() as u32);
    checksum::combine(&[pseudo, checksum::data(icmp)]) == 0xffff
}

/// The ICMPv6 type of the IPv6 packet `ipv6_packet` when ICMPv6 follows the fixed header
/// directly (next header 58); `None` for anything else, a broken header or an empty
/// payload. Cheap: reads three bytes once the lengths are checked.
pub fn message_type(ipv6_packet: &[u8]) -> Option<u8> {
    message_type_of(&Ipv6Packet::new_checked(ipv6_packet).ok()?)
}

/// [`message_type`] of an IPv6 packet already checked.
pub fn message_type_of<T: AsRef<[u8]>>(ip: &Ipv6Packet<T>) -> Option<u8> {
    if ip.next_header() != NEXT_HEADER {
        return None;
    }
    ip.payload().first().copied()
}

/// A zero-copy view of an ICMPv6 message (the whole upper-layer payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` if the buffer cannot hold the 8-byte header. The Neighbor
    /// Discovery accessors ([`target_addr`](Self::target_addr),
    /// [`ndp_options`](Self::ndp_options)) need 24 bytes: check `len() >= 24` first.
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

    /// Message length.
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Whether the buffer is empty (never, after `check_len`).
    pub fn is_empty(&self) -> bool {
        self.buffer.as_ref().is_empty()
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

    /// MTU of a Packet Too Big message (RFC 4443 §3.2).
    pub fn mtu(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::MTU])
    }

    /// Router, Solicited and Override flags of a Neighbor Advertisement, in the top three
    /// bits (RFC 4861 §4.4).
    pub fn na_flags(&self) -> u8 {
        self.buffer.as_ref()[field::NA_FLAGS.start]
    }

    /// Target address of a Neighbor Solicitation or Advertisement (needs 24 bytes).
    pub fn target_addr(&self) -> Ipv6Addr {
        ipv6::read_ipv6(&self.buffer.as_ref()[field::TARGET])
    }

    /// Options of a Neighbor Solicitation or Advertisement (needs 24 bytes).
    pub fn ndp_options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::NDP_OPTIONS]
    }

    /// Everything after the 8-byte header: echo data, the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the message carries a correct checksum for `src` → `dst` ([`verify`]).
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        verify(src, dst, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
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

    /// Sets the MTU of a Packet Too Big message (or zeroes the unused word of another
    /// error with 0).
    pub fn set_mtu(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::MTU], value);
    }

    /// Sets the Neighbor Advertisement flags byte and zeroes the reserved bits after it.
    pub fn set_na_flags(&mut self, flags: u8) {
        write_u32(&mut self.buffer.as_mut()[field::NA_FLAGS], u32::from(flags) << 24);
    }

    /// Sets the Neighbor Discovery target address (needs 24 bytes).
    pub fn set_target_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::TARGET].copy_from_slice(&addr.octets());
    }

    /// Data after the header, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the pseudo-header for `src` → `dst` and the whole
    /// buffer, and writes it.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let sum = checksum(src, dst, self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// Why [`advert_in_place`] did not answer a frame. `Copy`, so the forwarder can count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NdpError {
    /// Not a Neighbor Solicitation: not IPv6, not ICMPv6 right after the fixed header, or
    /// another ICMPv6 type (router solicitation 133, MLD report 143, ...).
    #[error("not a neighbor solicitation: not IPv6, not ICMPv6 or another ICMPv6 type")]
    NotSolicitation,
    /// A solicitation RFC 4861 §7.1.1 says to discard silently: truncated, hop limit not
    /// 255, code not 0, bad checksum, shorter than 24 bytes, multicast target, an option of
    /// length 0 or running past the message, or from the unspecified address with a source
    /// link-layer address option.
    #[error("malformed neighbor solicitation: RFC 4861 §7.1.1 says to discard it")]
    Malformed,
    /// Duplicate address detection (source is the unspecified address): not answered.
    #[error("duplicate address detection probe: the source is the unspecified address")]
    Dad,
    /// A valid solicitation for another address than the gateway's.
    #[error("neighbor solicitation for another target than the gateway address")]
    NotForGateway,
    /// The buffer cannot hold the 86-byte advertisement (a solicitation without options is
    /// 78 bytes): pass the frame with its tailroom.
    #[error("buffer too short for the 86-byte neighbor advertisement")]
    NoRoom,
}

/// Turns `frame`, a whole Ethernet frame carrying an IPv6 Neighbor Solicitation for
/// `gateway_ip`, into the solicited Neighbor Advertisement saying that `gateway_ip` is at
/// `gateway_mac`, in place. Returns the new frame length, [`ADVERT_FRAME_LEN`] (86).
///
/// The solicitation is validated as RFC 4861 §7.1.1 requires (see [`NdpError::Malformed`]);
/// its length is the IPv6 payload length, so `frame` may run past it (padding, tailroom).
/// The advertisement (RFC 4861 §4.4, §7.2.4) has flags Router, Solicited and Override,
/// target `gateway_ip`, one target link-layer address option `gateway_mac`; it goes from
/// `gateway_ip` to the solicitation's IPv6 source with hop limit 255, traffic class and flow
/// label 0, from `gateway_mac` to the solicitation's Ethernet source. Byte for byte what
/// Linux sends as a router (see the tests).
///
/// Not answered: duplicate address detection probes (`Dad`, even for the gateway address:
/// defending it is the caller's choice), solicitations for other targets (`NotForGateway`).
/// On error the frame is unchanged. Never panics, never allocates.
pub fn advert_in_place(frame: &mut [u8], gateway_ip: Ipv6Addr, gateway_mac: EthernetAddress) -> Result<usize, NdpError> {
    let eth = EthernetFrame::new_checked(&*frame).map_err(|_| NdpError::Malformed)?;
    if eth.ethertype() != EtherType::Ipv6 {
        return Err(NdpError::NotSolicitation);
    }
    let requester_mac = eth.src_addr();
    let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| NdpError::Malformed)?;
    if ip.next_header() != NEXT_HEADER {
        return Err(NdpError::NotSolicitation);
    }
    match ip.payload().first() {
        Some(&t) if Message::from(t) == Message::NeighborSolicit => {}
        Some(_) => return Err(NdpError::NotSolicitation),
        None => return Err(NdpError::Malformed),
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let icmp = Icmpv6Packet::new_unchecked(ip.payload());
    if ip.hop_limit() != NDP_HOP_LIMIT || icmp.len() < NEIGHBOR_MSG_LEN || icmp.msg_code() != 0 || !icmp.verify_checksum(src, dst) {
        return Err(NdpError::Malformed);
    }
    let target = icmp.target_addr();
    if target.is_multicast() {
        return Err(NdpError::Malformed);
    }
    let mut options = icmp.ndp_options();
    let mut source_ll_addr = false;
    while let [kind, len, ..] = *options {
        let len = usize::from(len) * 8;
        if len == 0 || len > options.len() {
            return Err(NdpError::Malformed);
        }
        source_ll_addr |= kind == OPT_SOURCE_LL_ADDR;
        options = &options[len..];
    }
    if !options.is_empty() {
        return Err(NdpError::Malformed); // one byte left: an option cut short
    }
    if src.is_unspecified() {
        // §7.1.1: from the unspecified address there must be no source link-layer option.
        return Err(if source_ll_addr { NdpError::Malformed } else { NdpError::Dad });
    }
    if target != gateway_ip {
        return Err(NdpError::NotForGateway);
    }

    let frame = frame.get_mut(..ADVERT_FRAME_LEN).ok_or(NdpError::NoRoom)?;
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_dst_addr(requester_mac);
    eth.set_src_addr(gateway_mac);
    eth.set_ethertype(EtherType::Ipv6);
    let mut ip = Ipv6Packet::new_unchecked(eth.payload_mut());
    Ipv6Repr {
        src_addr: gateway_ip,
        dst_addr: src,
        next_header: NEXT_HEADER,
        payload_len: ADVERT_LEN as u16,
        hop_limit: NDP_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut ip);
    let mut icmp = Icmpv6Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(Message::NeighborAdvert);
    icmp.set_msg_code(0);
    icmp.set_na_flags(NA_FLAG_ROUTER | NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE);
    icmp.set_target_addr(gateway_ip);
    let option = &mut icmp.data_mut()[NEIGHBOR_MSG_LEN - HEADER_LEN..];
    option[0] = OPT_TARGET_LL_ADDR;
    option[1] = 1;
    option[2..8].copy_from_slice(gateway_mac.as_bytes());
    icmp.fill_checksum(gateway_ip, src);
    Ok(ADVERT_FRAME_LEN)
}

/// The ICMPv6 errors the forwarder sends (the twin of [`crate::icmpv4::IcmpError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv6Error {
    /// The packet does not fit the egress (tunnel) MTU: Packet Too Big (type 2) with the
    /// MTU the sender should use (RFC 4443 §3.2, RFC 8201). IPv6 routers never fragment.
    PacketTooBig {
        /// The largest IPv6 packet that fits.
        mtu: u32,
    },
    /// Hop limit exceeded in transit (type 3 code 0; [`crate::ipv6::decrement_hop_limit`]
    /// returned `TtlExpired`).
    HopLimitExceeded,
    /// No route to the destination (type 1 code 0).
    NoRoute,
    /// Denied by policy, when the policy asks for a reject (type 1 code 1).
    AdminProhibited,
    /// The destination's address cannot be resolved (type 1 code 3).
    AddressUnreachable,
}

/// Builds, at the start of `out`, the IPv6 packet carrying the ICMPv6 `error` about
/// `original` (an IPv6 packet), from `from` to the original's source. Returns its length.
///
/// The error quotes as much of the original (its payload length, Ethernet padding
/// excluded) as fits without the error exceeding 1280 bytes, the IPv6 minimum MTU (RFC 4443
/// §2.4 (c)), nor `out`; it is sent with hop limit 64, traffic class and flow label 0.
/// As RFC 4443 §2.4 (e) requires, no error is built (`Unrecognized`) about an ICMPv6 error
/// message (when ICMPv6 follows the fixed header directly: extension headers are not
/// walked), about a packet from an address that does not name one node (unspecified,
/// multicast, loopback), or, except Packet Too Big, about a packet sent to a multicast
/// address. `Truncated` / `Malformed` if `original` is not a whole IPv6 header (the
/// errors of [`Ipv6Packet::check_len`]); `Truncated` if `out` cannot hold the 48 bytes of
/// headers and the original's 40-byte header. Never panics, never allocates.
pub fn emit_error(out: &mut [u8], from: Ipv6Addr, original: &[u8], error: Icmpv6Error) -> Result<usize, Error> {
    let packet = Ipv6Packet::new_checked(original)?;
    let src = packet.src_addr();
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return Err(Error::Unrecognized);
    }
    if packet.dst_addr().is_multicast() && !matches!(error, Icmpv6Error::PacketTooBig { .. }) {
        return Err(Error::Unrecognized);
    }
    if packet.next_header() == NEXT_HEADER {
        match packet.payload().first() {
            Some(&t) if !Message::from(t).is_error() => {}
            _ => return Err(Error::Unrecognized),
        }
    }

    const HEADERS: usize = ipv6::HEADER_LEN + HEADER_LEN;
    let quote_len = (ipv6::HEADER_LEN + usize::from(packet.payload_len())).min(ipv6::MIN_MTU - HEADERS).min(out.len().saturating_sub(HEADERS));
    if quote_len < ipv6::HEADER_LEN {
        return Err(Error::Truncated);
    }
    let (msg_type, code, word) = match error {
        Icmpv6Error::PacketTooBig { mtu } => (Message::PacketTooBig, 0, mtu),
        Icmpv6Error::HopLimitExceeded => (Message::TimeExceeded, 0, 0),
        Icmpv6Error::NoRoute => (Message::DstUnreachable, 0, 0),
        Icmpv6Error::AdminProhibited => (Message::DstUnreachable, 1, 0),
        Icmpv6Error::AddressUnreachable => (Message::DstUnreachable, 3, 0),
    };
    let len = HEADERS + quote_len;
    let out = &mut out[..len];
    let mut ip = Ipv6Packet::new_unchecked(&mut *out);
    Ipv6Repr {
        src_addr: from,
        dst_addr: src,
        next_header: NEXT_HEADER,
        payload_len: (HEADER_LEN + quote_len) as u16,
        hop_limit: ERROR_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut ip);
    let mut icmp = Icmpv6Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(msg_type);
    icmp.set_msg_code(code);
    icmp.set_mtu(word);
    icmp.data_mut().copy_from_slice(&original[..quote_len]);
    icmp.fill_checksum(from, src);
    Ok(len)
}

/// [`emit_error`] with [`Icmpv6Error::PacketTooBig`]: a Packet Too Big about `offending`,
/// from `src`, advertising `mtu`. Returns the IPv6 packet's length (no Ethernet header).
pub fn emit_packet_too_big(out: &mut [u8], src: Ipv6Addr, offending: &[u8], mtu: u32) -> Result<usize, Error> {
    emit_error(out, src, offending, Icmpv6Error::PacketTooBig { mtu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    const GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee; 6]);
    const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 5);
    const POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05]);

    /// RFC 1071 §4.1 word by word over an explicitly laid out RFC 8200 §8.1 pseudo-header,
    /// sharing no code with `checksum`.
    fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        bytes.extend_from_slice(&icmp[..2]);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&icmp[4..]);
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The IPv6 packet of a frame, its addresses and its ICMPv6 message.
    fn split(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, &[u8]) {
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        (ip.src_addr(), ip.dst_addr(), &frame[54..54 + usize::from(ip.payload_len())])
    }

    #[test]
    fn checksum_matches_the_kernels_and_a_reference() {
        for (frame, wire) in [
            (&fixtures::NDP_NEIGHBOR_SOLICIT[..], 0x6671),
            (&fixtures::NDP_NEIGHBOR_ADVERT[..], 0xcc78),
            (&fixtures::ICMPV6_ECHO_REQUEST[..], 0x7165),
        ] {
            let (src, dst, icmp) = split(frame);
            assert_eq!(checksum(src, dst, icmp), wire);
            assert_eq!(reference_checksum(src, dst, icmp), wire);
            assert!(verify(src, dst, icmp));
            assert!(!verify(src, Ipv6Addr::LOCALHOST, icmp), "the pseudo-header counts");
            let mut flipped = icmp.to_vec();
            flipped[10] ^= 0x01;
            assert!(!verify(src, dst, &flipped));
        }
    }

    #[test]
    fn reads_captured_messages() {
        let (_, _, ns) = split(&fixtures::NDP_NEIGHBOR_SOLICIT);
        let ns = Icmpv6Packet::new_checked(ns).unwrap();
        assert_eq!((ns.msg_type(), ns.msg_code(), ns.checksum()), (Message::NeighborSolicit, 0, 0x6671));
        assert_eq!(ns.target_addr(), GATEWAY);
        assert_eq!(ns.ndp_options(), [1, 1, 0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05]);
        let (_, _, na) = split(&fixtures::NDP_NEIGHBOR_ADVERT);
        let na = Icmpv6Packet::new_checked(na).unwrap();
        assert_eq!((na.msg_type(), na.na_flags()), (Message::NeighborAdvert, 0xe0));
        let (_, _, echo) = split(&fixtures::ICMPV6_ECHO_REQUEST);
        let echo = Icmpv6Packet::new_checked(echo).unwrap();
        assert_eq!((echo.msg_type(), echo.echo_ident(), echo.echo_seq_no(), echo.data().len()), (Message::EchoRequest, 0x315d, 1, 56));
        assert_eq!(Icmpv6Packet::new_checked(&[0x80; 7][..]).err(), Some(Error::Truncated));
    }

    #[test]
    fn message_type_classifies() {
        assert_eq!(message_type(&fixtures::NDP_NEIGHBOR_SOLICIT[14..]), Some(135));
        assert_eq!(message_type(&fixtures::ICMPV6_ECHO_REQUEST[14..]), Some(128));
        let mut udp = fixtures::ICMPV6_ECHO_REQUEST[14..].to_vec();
        udp[6] = 17;
        assert_eq!(message_type(&udp), None);
        assert_eq!(message_type(&fixtures::NDP_NEIGHBOR_SOLICIT[14..50]), None);
        let mut empty = fixtures::NDP_NEIGHBOR_SOLICIT[14..54].to_vec();
        empty[4..6].fill(0);
        assert_eq!(message_type(&empty), None);
    }

    #[test]
    fn advert_is_what_linux_sends() {
        let mut frame = fixtures::NDP_NEIGHBOR_SOLICIT;
        assert_eq!(advert_in_place(&mut frame, GATEWAY, GATEWAY_MAC), Ok(86));
        assert_eq!(frame, fixtures::NDP_NEIGHBOR_ADVERT);
    }

    #[test]
    fn advert_field_by_field_from_a_bare_solicitation() {
        // A unicast solicitation without options (neighbour unreachability detection), 78
        // bytes in a buffer with tailroom pre-filled with 0xa5.
        let mut frame = [0xa5u8; 100];
        frame[..78].copy_from_slice(&fixtures::NDP_NEIGHBOR_SOLICIT[..78]);
        frame[..6].copy_from_slice(GATEWAY_MAC.as_bytes());
        frame[18..20].copy_from_slice(&24u16.to_be_bytes());
        frame[38..54].copy_from_slice(&GATEWAY.octets());
        let sum = checksum(POD, GATEWAY, &frame[54..78]);
        frame[56..58].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(advert_in_place(&mut frame[..77], GATEWAY, GATEWAY_MAC), Err(NdpError::Malformed), "IPv6 payload past the buffer");
        assert_eq!(advert_in_place(&mut frame[..78], GATEWAY, GATEWAY_MAC), Err(NdpError::NoRoom));
        assert_eq!(advert_in_place(&mut frame, GATEWAY, GATEWAY_MAC), Ok(86));

        assert_eq!(frame[0..6], POD_MAC.0, "Ethernet destination: the requester");
        assert_eq!(frame[6..12], GATEWAY_MAC.0);
        assert_eq!(frame[12..14], [0x86, 0xdd]);
        let ip = Ipv6Packet::new_checked(&frame[14..86]).unwrap();
        assert_eq!((ip.version(), ip.traffic_class(), ip.flow_label()), (6, 0, 0));
        assert_eq!((ip.payload_len(), ip.next_header(), ip.hop_limit()), (32, 58, 255));
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, POD));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (Message::NeighborAdvert, 0));
        assert_eq!(frame[58..62], [0xe0, 0, 0, 0], "R, S, O; reserved zero");
        assert_eq!(icmp.target_addr(), GATEWAY);
        assert_eq!(icmp.ndp_options(), [2, 1, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
        assert!(verify(GATEWAY, POD, ip.payload()));
        assert_eq!(icmp.checksum(), reference_checksum(GATEWAY, POD, ip.payload()));
        assert_eq!(frame[86..], [0xa5; 14], "nothing written past the advertisement");
    }

    /// The captured solicitation with `edit` applied to its IPv6 packet, checksum fixed
    /// when `fix_checksum`.
    fn solicitation(edit: impl FnOnce(&mut [u8]), fix_checksum: bool) -> Vec<u8> {
        let mut frame = fixtures::NDP_NEIGHBOR_SOLICIT.to_vec();
        edit(&mut frame[14..]);
        if fix_checksum {
            let (src, dst, icmp) = split(&frame);
            let sum = checksum(src, dst, icmp);
            frame[56..58].copy_from_slice(&sum.to_be_bytes());
        }
        frame
    }

    #[test]
    fn each_refusal_has_its_reason_and_leaves_the_frame_alone() {
        let check = |frame: Vec<u8>, expected: NdpError| {
            let mut copy = frame.clone();
            assert_eq!(advert_in_place(&mut copy, GATEWAY, GATEWAY_MAC), Err(expected));
            assert_eq!(copy, frame, "{expected:?}: frame changed");
        };
        // DAD: from ::, to the solicited-node address, no source link-layer option.
        check(solicitation(|ip| { ip[5] = 24; ip[8..24].fill(0); }, true), NdpError::Dad);
        check(solicitation(|ip| ip[8..24].fill(0), true), NdpError::Malformed); // :: with an SLLA option
        check(solicitation(|ip| ip[55] = 2, true), NdpError::NotForGateway);
        check(solicitation(|ip| ip[7] = 254, true), NdpError::Malformed);
        check(solicitation(|ip| ip[43] ^= 0x01, false), NdpError::Malformed); // bad checksum
        check(solicitation(|ip| ip[70] ^= 0x01, false), NdpError::Malformed); // bad checksum: MAC changed
        check(solicitation(|ip| ip[41] = 1, true), NdpError::Malformed); // code 1
        check(solicitation(|ip| ip[65] = 0, true), NdpError::Malformed); // option length 0
        check(solicitation(|ip| ip[65] = 2, true), NdpError::Malformed); // option past the end
        check(solicitation(|ip| ip[48] = 0xff, true), NdpError::Malformed); // multicast target
        check(solicitation(|ip| ip[5] = 23, true), NdpError::Malformed); // 23 bytes of message
        check(solicitation(|ip| ip[5] = 25, true), NdpError::Malformed); // one byte of option
        check(fixtures::NDP_NEIGHBOR_SOLICIT[..85].to_vec(), NdpError::Malformed); // payload past the frame
        check(fixtures::NDP_NEIGHBOR_SOLICIT[..53].to_vec(), NdpError::Malformed);
        check(fixtures::NDP_NEIGHBOR_SOLICIT[..13].to_vec(), NdpError::Malformed);
        // Other ICMPv6: router solicitation, MLDv2 report, echo; not ICMPv6; not IPv6.
        check(solicitation(|ip| ip[40] = 133, true), NdpError::NotSolicitation);
        check(solicitation(|ip| ip[40] = 143, true), NdpError::NotSolicitation);
        check(fixtures::ICMPV6_ECHO_REQUEST.to_vec(), NdpError::NotSolicitation);
        check(fixtures::NDP_NEIGHBOR_ADVERT.to_vec(), NdpError::NotSolicitation);
        check(solicitation(|ip| ip[6] = 0, true), NdpError::NotSolicitation);
        check(fixtures::ARP_REQUEST_POD.to_vec(), NdpError::NotSolicitation);
    }

    /// The captured echo request as an IPv6 packet padded out to `len` bytes of payload.
    fn big_echo(payload_len: usize) -> Vec<u8> {
        let mut ip = fixtures::ICMPV6_ECHO_REQUEST[14..].to_vec();
        ip.resize(40 + payload_len, 0x5a);
        ip[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        ip
    }

    #[test]
    fn packet_too_big_quotes_up_to_1280_bytes() {
        let original = big_echo(1400);
        let mut out = [0xa5u8; 1500];
        assert_eq!(emit_packet_too_big(&mut out, GATEWAY, &original, 1230), Ok(1280));
        assert_eq!(out[1280..], [0xa5; 220]);
        let ip = Ipv6Packet::new_checked(&out[..1280]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit(), ip.next_header(), ip.payload_len()), (GATEWAY, POD, 64, 58, 1240));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code(), icmp.mtu()), (Message::PacketTooBig, 0, 1230));
        assert_eq!(icmp.data(), &original[..1232]);
        assert!(icmp.verify_checksum(GATEWAY, POD));
        assert_eq!(icmp.checksum(), reference_checksum(GATEWAY, POD, ip.payload()));

        // A short packet is quoted whole, padding excluded; `out` caps the quote too.
        let mut padded = fixtures::ICMPV6_ECHO_REQUEST[14..].to_vec();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(emit_packet_too_big(&mut out, GATEWAY, &padded, 1280), Ok(48 + 104));
        assert_eq!(out[48..152], fixtures::ICMPV6_ECHO_REQUEST[14..]);
        assert_eq!(emit_packet_too_big(&mut out[..100], GATEWAY, &original, 1280), Ok(100));
        assert!(verify(GATEWAY, POD, &out[40..100]));
        assert_eq!(emit_packet_too_big(&mut out[..88], GATEWAY, &original, 1280), Ok(88));
        assert_eq!(emit_packet_too_big(&mut out[..87], GATEWAY, &original, 1280), Err(Error::Truncated));
        assert_eq!(emit_packet_too_big(&mut out, GATEWAY, &original[..39], 1280), Err(Error::Truncated));
    }

    #[test]
    fn errors_refuse_what_rfc4443_forbids() {
        let mut out = [0u8; 1280];
        let echo = &fixtures::ICMPV6_ECHO_REQUEST[14..];
        assert!(emit_error(&mut out, GATEWAY, echo, Icmpv6Error::HopLimitExceeded).is_ok());
        let (code, kind) = (out[41], out[40]);
        assert_eq!((kind, code), (3, 0));
        emit_error(&mut out, GATEWAY, echo, Icmpv6Error::AdminProhibited).unwrap();
        assert_eq!((out[40], out[41], &out[44..48]), (1, 1, &[0u8; 4][..]));

        let mut error = big_echo(100);
        error[40] = 1; // a destination unreachable
        assert_eq!(emit_packet_too_big(&mut out, GATEWAY, &error, 1280), Err(Error::Unrecognized));
        for src in [Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST, "ff02::1".parse().unwrap()] {
            let mut bad = echo.to_vec();
            bad[8..24].copy_from_slice(&Ipv6Addr::octets(&src));
            assert_eq!(emit_error(&mut out, GATEWAY, &bad, Icmpv6Error::NoRoute), Err(Error::Unrecognized));
        }
        let mut to_multicast = echo.to_vec();
        to_multicast[24] = 0xff;
        assert_eq!(emit_error(&mut out, GATEWAY, &to_multicast, Icmpv6Error::AddressUnreachable), Err(Error::Unrecognized));
        assert!(emit_packet_too_big(&mut out, GATEWAY, &to_multicast, 1280).is_ok(), "RFC 4443 §2.4 (e.2)");
        let mut v4 = echo.to_vec();
        v4[0] = 0x45;
        assert_eq!(emit_error(&mut out, GATEWAY, &v4, Icmpv6Error::NoRoute), Err(Error::Malformed));
    }

    #[test]
    fn codes_keep_unknown_values() {
        for t in 0..=255u8 {
            assert_eq!(u8::from(Message::from(t)), t);
            assert_eq!(Message::from(t).is_error(), t < 128);
        }
        assert_eq!(Message::from(143), Message::Unknown(143));
    }

    proptest! {
        #[test]
        fn checksum_equals_reference(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
                                     icmp in proptest::collection::vec(any::<u8>(), 4..100)) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let sum = checksum(src, dst, &icmp);
            prop_assert_eq!(sum, reference_checksum(src, dst, &icmp));
            let mut filled = icmp.clone();
            filled[2..4].copy_from_slice(&sum.to_be_bytes());
            prop_assert!(verify(src, dst, &filled));
        }

        #[test]
        fn advert_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = message_type(&bytes);
            if advert_in_place(&mut bytes, GATEWAY, GATEWAY_MAC).is_ok() {
                prop_assert!(verify(GATEWAY, split(&bytes).1, &bytes[54..86]));
            }
        }

        #[test]
        fn advert_of_mutated_solicitations(edits in proptest::collection::vec((0usize..86, any::<u8>()), 0..4),
                                           fix in any::<bool>(), cut in 0usize..=86) {
            // Mutations behind a repaired checksum reach the option and target checks.
            let mut frame = fixtures::NDP_NEIGHBOR_SOLICIT.to_vec();
            for &(at, b) in &edits {
                frame[at] = b;
            }
            if let Ok(ip) = Ipv6Packet::new_checked(&frame[14..]) {
                let (src, dst, payload_len) = (ip.src_addr(), ip.dst_addr(), usize::from(ip.payload_len()));
                if fix && payload_len >= 4 {
                    let sum = checksum(src, dst, &frame[54..54 + payload_len]);
                    frame[56..58].copy_from_slice(&sum.to_be_bytes());
                }
            }
            frame.truncate(cut);
            let _ = advert_in_place(&mut frame, GATEWAY, GATEWAY_MAC);
        }

        #[test]
        fn emit_error_never_panics(original in proptest::collection::vec(any::<u8>(), 0..200),
                                   out_len in 0usize..1400, mtu in any::<u32>()) {
            let mut out = vec![0; out_len];
            if let Ok(len) = emit_packet_too_big(&mut out, GATEWAY, &original, mtu) {
                let ip = Ipv6Packet::new_checked(&out[..len]).unwrap();
                prop_assert!(len <= 1280 && verify(GATEWAY, ip.dst_addr(), ip.payload()));
            }
        }
    }
}
