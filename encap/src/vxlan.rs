//! VXLAN (RFC 7348): the overlay Flannel's `flannel.1` and Calico's `vxlan.calico` speak.
//!
//! Owns the 8-byte VXLAN header ([`VxlanPacket`], [`VxlanRepr`]), the two wire profiles
//! ([`VxlanProfile::FLANNEL`], [`VxlanProfile::CALICO`]), encapsulation with a precomputed
//! outer header ([`VxlanEncap`], the VPP way: copy 50 bytes, patch three length fields and
//! the IPv4 checksum from a precomputed partial sum), the outer UDP source port
//! ([`flow_src_port`], Linux's `udp_flow_src_port`) and validated decapsulation
//! ([`decap`]). It reads caller-owned frames and hands back byte ranges; which node a
//! tunnel leads to and which MACs to use is the forwarder's knowledge.
//!
//! Wire choices, per RFC 7348 §5 and what the Linux kernel does:
//! - Outer IPv4: DF set (a too-big inner packet is the sender's to fix, with the ICMP
//!   fragmentation-needed the forwarder sends; Linux's vxlan device leaves DF clear by
//!   default and lets the underlay fragment), TTL 64, ident 0 (RFC 6864 allows any value
//!   on atomic datagrams), DSCP/ECN 0.
//! - Outer UDP checksum 0 on transmit (RFC 7348 §5 "SHOULD be transmitted as zero"), and
//!   not verified on receive: a Linux sender behind a veth leaves a CHECKSUM_PARTIAL
//!   pseudo-header sum in that field (see the captured fixtures), which no receiver behind
//!   AF_XDP can finish. The inner packet carries its own end-to-end checksums.
//! - Receive is strict about the VXLAN header: flags must be exactly 0x08 (I) and every
//!   reserved bit zero. RFC 7348 says to ignore reserved bits, but Linux's `vxlan_rcv`
//!   drops frames with any flag or reserved bit it did not parse, so neither Flannel's nor
//!   Calico's kernel ever sends them; accepting them would accept what Linux rejects.
//!
//! Hot path: [`VxlanEncap::write`], [`flow_src_port`] and [`decap`] never allocate and never
//! panic on any input; after [`VxlanPacket::check_len`] no accessor panics.

use core::ops::Range;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::Error;
use crate::checksum;
use crate::ethernet::{self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use crate::ipv4::{self, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::net_endian::{read_u16, read_u32, write_u32};
use crate::udp::{self, UdpPacket};

pub use crate::tunnel::DecapError;
use crate::tunnel::outer_ipv4;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// Bytes VXLAN adds in front of the inner Ethernet frame: outer Ethernet 14 + IPv4 20 +
/// UDP 8 + VXLAN 8. A pod MTU of at most the underlay MTU minus 50 avoids fragmentation.
pub const OVERHEAD: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;

/// The I flag: the VNI is valid. The only flag a VXLAN header carries.
pub const FLAG_I: u8 = 0x08;

/// Longest inner frame [`VxlanEncap::write`] accepts: the outer IPv4 total length
/// (20 + 8 + 8 + inner) must fit 16 bits.
pub const MAX_INNER_LEN: usize = u16::MAX as usize - (OVERHEAD - ethernet::HEADER_LEN);

/// Lowest outer UDP source port [`flow_src_port`] returns (Linux's default
/// `ip_local_port_range` low end).
pub const SRC_PORT_MIN: u16 = 32768;

/// Upper bound of Linux's default `ip_local_port_range`; [`flow_src_port`], like Linux's
/// `udp_flow_src_port`, returns ports below it (at most 60998).
pub const SRC_PORT_MAX: u16 = 60999;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI_RESERVED2: Range<usize> = 4..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// A zero-copy view of a VXLAN header and the inner frame after it (the outer UDP payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
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

    /// The flags byte (0x08 when valid).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24 reserved bits after the flags.
    pub fn reserved1(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::RESERVED1];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::VNI_RESERVED2]) >> 8
    }

    /// The reserved byte after the VNI.
    pub fn reserved2(&self) -> u8 {
        self.buffer.as_ref()[field::VNI_RESERVED2.end - 1]
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the 24 reserved bits after the flags (the top 8 bits of `value` are ignored).
    pub fn set_reserved1(&mut self, value: u32) {
        self.buffer.as_mut()[field::RESERVED1].copy_from_slice(&value.to_be_bytes()[1..]);
    }

    /// Sets the VNI (the top 8 bits of `vni` are ignored), keeping the reserved byte.
    pub fn set_vni(&mut self, vni: u32) {
        let reserved2 = self.reserved2();
        write_u32(
            &mut self.buffer.as_mut()[field::VNI_RESERVED2],
            (vni << 8) | u32::from(reserved2),
        );
    }

    /// Sets the reserved byte after the VNI.
    pub fn set_reserved2(&mut self, value: u8) {
        self.buffer.as_mut()[field::VNI_RESERVED2.end - 1] = value;
    }

    /// The inner Ethernet frame, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VXLAN header as a value: only the VNI varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// VXLAN network identifier, 24 bits.
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a header; `Malformed` unless the flags are exactly 0x08 and every reserved
    /// bit is zero (see the module doc).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.flags() != FLAG_I || packet.reserved1() != 0 || packet.reserved2() != 0 {
            return Err(Error::Malformed);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// 8.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        packet.set_reserved1(0);
        packet.set_reserved2(0);
        packet.set_vni(self.vni);
    }
}

/// The VNI and UDP port a VXLAN deployment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanProfile {
    /// VXLAN network identifier, 24 bits.
    pub vni: u32,
    /// Outer UDP destination port.
    pub port: u16,
}

impl VxlanProfile {
    /// Flannel's `vxlan` backend: VNI 1 on `flannel.1`, UDP 8472 (the Linux kernel's
    /// pre-IANA default, which flanneld keeps).
    pub const FLANNEL: VxlanProfile = VxlanProfile { vni: 1, port: 8472 };
    /// Calico's `vxlan.calico`: VNI 4096, UDP 4789 (IANA).
    pub const CALICO: VxlanProfile = VxlanProfile {
        vni: 4096,
        port: 4789,
    };
}

/// A precomputed outer header (Ethernet + IPv4 + UDP + VXLAN) for one tunnel: one remote
/// node, one profile. Build it when the tables change; write it per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanEncap {
    header: [u8; OVERHEAD],
    /// One's-complement sum of the outer IPv4 header with total length and checksum 0.
    ip_partial_sum: u16,
}

const OUTER_IP: Range<usize> = ethernet::HEADER_LEN..ethernet::HEADER_LEN + ipv4::HEADER_LEN;
const OUTER_UDP: Range<usize> = OUTER_IP.end..OUTER_IP.end + udp::HEADER_LEN;

impl VxlanEncap {
    /// Precomputes the outer header from `outer_src_mac` / `outer_src_ip` (this node's
    /// uplink) to `outer_dst_mac` (the underlay next hop: the remote node's uplink, or a
    /// router) / `outer_dst_ip` (the remote node), with `profile`'s VNI and UDP port.
    pub fn new(
        outer_src_mac: EthernetAddress,
        outer_dst_mac: EthernetAddress,
        outer_src_ip: Ipv4Addr,
        outer_dst_ip: Ipv4Addr,
        profile: VxlanProfile,
    ) -> VxlanEncap {
        let mut header = [0u8; OVERHEAD];
        EthernetRepr {
            src_addr: outer_src_mac,
            dst_addr: outer_dst_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut header[..]));
        let ip = Ipv4Repr {
            src_addr: outer_src_ip,
            dst_addr: outer_dst_ip,
            protocol: IpProtocol::Udp,
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
        let mut udp_packet = UdpPacket::new_unchecked(&mut header[OUTER_UDP]);
        udp_packet.set_dst_port(profile.port);
        udp_packet.set_checksum(0);
        VxlanRepr { vni: profile.vni }.emit(&mut VxlanPacket::new_unchecked(
            &mut header[OUTER_UDP.end..],
        ));
        VxlanEncap {
            header,
            ip_partial_sum,
        }
    }

    /// The template: total lengths, IPv4 checksum and UDP source port are zero in it.
    pub const fn template(&self) -> &[u8; OVERHEAD] {
        &self.header
    }

    /// Writes the 50-byte outer header for an inner Ethernet frame of `inner_len` bytes
    /// into `out[..50]` (the inner frame goes at `out[50..]`, placed there by the caller
    /// before or after), with `src_port` as the outer UDP source port (use
    /// [`flow_src_port`]). Sets the IPv4 total length and checksum and the UDP length.
    ///
    /// `Truncated` if `out` is shorter than 50 bytes, `TooLong` if `inner_len` exceeds
    /// [`MAX_INNER_LEN`]; nothing is written then. Never panics, never allocates.
    pub fn write(&self, out: &mut [u8], inner_len: usize, src_port: u16) -> Result<(), Error> {
        let out = out.get_mut(..OVERHEAD).ok_or(Error::Truncated)?;
        if inner_len > MAX_INNER_LEN {
            return Err(Error::TooLong);
        }
        out.copy_from_slice(&self.header);
        // Both fit 16 bits because inner_len <= MAX_INNER_LEN.
        let ip_len = (OVERHEAD - ethernet::HEADER_LEN + inner_len) as u16;
        let udp_len = (udp::HEADER_LEN + HEADER_LEN + inner_len) as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut out[OUTER_IP]);
        ip.set_total_len(ip_len);
        ip.set_checksum(!checksum::combine(&[self.ip_partial_sum, ip_len]));
        let mut udp = UdpPacket::new_unchecked(&mut out[OUTER_UDP]);
        udp.set_src_port(src_port);
        udp.set_len(udp_len);
        Ok(())
    }
}

/// The outer UDP source port for an inner Ethernet frame, as Linux's `udp_flow_src_port`
/// chooses it: a hash of the flow, scaled into `SRC_PORT_MIN..SRC_PORT_MAX` (32768..=60998)
/// by `((hash * (max - min)) >> 32) + min`, so that ECMP and RSS on the underlay spread
/// flows while keeping each flow on one path.
///
/// The hash covers the inner IPv4 source, destination and protocol, plus the ports for
/// TCP and UDP (not for fragments, so all fragments of a datagram hash alike). An inner
/// IPv6 frame hashes the same way, each address folded to 32 bits ([`flow_hash_of6`] of
/// [`crate::flow::parse_flow_info6`]: extension headers are walked). Like Linux's flow hash
/// it is symmetric: both directions of a flow get the same port. Frames that are neither
/// (ARP, ...) or whose IP flow cannot be read hash their Ethernet addresses and type, as
/// Linux falls back to when it has no flow hash. The hash function itself is
/// not Linux's (that one is keyed by a random per-boot secret). Never panics.
pub fn flow_src_port(inner_frame: &[u8]) -> u16 {
    scale_src_port(flow_hash(inner_frame))
}

/// A flow hash scaled into the source-port range.
#[inline]
fn scale_src_port(hash: u32) -> u16 {
    // Linux: "obfuscate hash a bit"; only the upper 16 bits matter for the scaling below.
    let hash = hash ^ (hash << 16);
    let span = u64::from(SRC_PORT_MAX - SRC_PORT_MIN);
    SRC_PORT_MIN + ((u64::from(hash) * span) >> 32) as u16
}

fn flow_hash(frame: &[u8]) -> u32 {
    ipv4_flow_hash(frame).or_else(|| ipv6_flow_hash(frame)).unwrap_or_else(|| {
        // Ethernet fallback: destination, source and type, zero-padded if short.
        let mut key = [0u8; 16];
        let len = frame.len().min(ethernet::HEADER_LEN);
        key[..len].copy_from_slice(&frame[..len]);
        let (a, b) = key.split_at(8);
        let a = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
        let b = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        fold_hash(a, b)
    })
}

fn ipv4_flow_hash(frame: &[u8]) -> Option<u32> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.version() != 4 {
        return None;
    }
    let protocol = ip.protocol();
    let payload = ip.payload();
    let (src_port, dst_port) = match protocol {
        IpProtocol::Tcp | IpProtocol::Udp if !ip.is_fragment() && payload.len() >= 4 => {
            (read_u16(&payload[0..2]), read_u16(&payload[2..4]))
        }
        _ => (0, 0),
    };
    Some(tuple_hash(u32::from(ip.src_addr()), u32::from(ip.dst_addr()), u8::from(protocol), src_port, dst_port))
}

fn ipv6_flow_hash(frame: &[u8]) -> Option<u32> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::Ipv6 {
        return None;
    }
    crate::flow::parse_flow_info6(eth.payload()).ok().map(|info| flow_hash_of6(&info))
}

/// The flow hash [`flow_src_port`] uses, of a flow the caller has parsed already: the
/// stages before encapsulation parse the packet once and hand this on.
#[inline]
pub fn flow_hash_of(info: &crate::flow::FlowInfo) -> u32 {
    let t = &info.tuple;
    let ported = matches!(IpProtocol::from(t.proto), IpProtocol::Tcp | IpProtocol::Udp) && info.fragment == crate::flow::Fragment::Whole;
    let (sp, dp) = if ported { (t.src_port, t.dst_port) } else { (0, 0) };
    tuple_hash(u32::from(t.src), u32::from(t.dst), t.proto, sp, dp)
}

/// [`flow_hash_of`] for an IPv6 flow: each address folded to 32 bits (the xor of its four
/// words), then the same symmetric hash, ports only for whole TCP and UDP packets.
#[inline]
pub fn flow_hash_of6(info: &crate::flow::FlowInfo<Ipv6Addr>) -> u32 {
    let fold = |a: Ipv6Addr| {
        let a = u128::from(a);
        (a >> 96) as u32 ^ (a >> 64) as u32 ^ (a >> 32) as u32 ^ a as u32
    };
    let t = &info.tuple;
    let ported = matches!(IpProtocol::from(t.proto), IpProtocol::Tcp | IpProtocol::Udp) && info.fragment == crate::flow::Fragment::Whole;
    let (sp, dp) = if ported { (t.src_port, t.dst_port) } else { (0, 0) };
    tuple_hash(fold(t.src), fold(t.dst), t.proto, sp, dp)
}

/// [`flow_src_port`] from a [`flow_hash_of`] or [`flow_hash_of6`]: the same port, without reading the frame
/// again.
#[inline]
pub fn src_port_of_hash(hash: u32) -> u16 {
    scale_src_port(hash)
}

/// The symmetric hash of a flow's endpoints.
#[inline]
fn tuple_hash(src: u32, dst: u32, protocol: u8, src_port: u16, dst_port: u16) -> u32 {
    // Order the endpoints so both directions hash alike (Linux's __flow_hash_consistentify).
    let ((a, a_port), (b, b_port)) = if (src, src_port) <= (dst, dst_port) {
        ((src, src_port), (dst, dst_port))
    } else {
        ((dst, dst_port), (src, src_port))
    };
    let addrs = (u64::from(a) << 32) | u64::from(b);
    let rest = (u64::from(protocol) << 32) | (u64::from(a_port) << 16) | u64::from(b_port);
    fold_hash(addrs, rest)
}

/// Mixes two 64-bit words into 32 well-spread bits (MurmurHash3's 64-bit finalizer).
fn fold_hash(a: u64, b: u64) -> u32 {
    fn fmix64(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
    let h = fmix64(a ^ fmix64(b));
    (h >> 32) as u32 ^ h as u32
}

/// What [`decap`] found in a valid VXLAN frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decapsulated<A = Ipv4Addr> {
    /// Outer IP source: the sending node's underlay address. The forwarder accepts only
    /// known nodes.
    pub outer_src_ip: A,
    /// Outer Ethernet source: the underlay hop the frame came from.
    pub outer_src_mac: EthernetAddress,
    /// The VNI (equal to the profile's).
    pub vni: u32,
    /// Byte range of the inner Ethernet frame in the decapsulated buffer (at least 14
    /// bytes, ending where the outer UDP length says).
    pub inner: Range<usize>,
}


/// Validates `frame` as a VXLAN frame for this node (`local_ip`) and `profile` and returns
/// where the inner Ethernet frame is.
///
/// Checks, in order: Ethernet type IPv4; IPv4 version 4 and IHL >= 5; IHL and total length
/// within the frame (Ethernet padding after the total length is allowed); header checksum;
/// not a fragment; destination `local_ip`; protocol UDP; UDP destination port
/// `profile.port`; 8 <= UDP length <= IPv4 payload (bytes past the UDP length are ignored,
/// as Linux trims them); VXLAN flags exactly 0x08 with zero reserved bits; VNI
/// `profile.vni`; an inner frame of at least 14 bytes. The outer UDP checksum and source
/// port are not checked (see the module doc). Never panics, never allocates.
pub fn decap(
    frame: &[u8],
    local_ip: Ipv4Addr,
    profile: VxlanProfile,
) -> Result<Decapsulated, DecapError> {
    let outer = outer_ipv4(frame, local_ip, IpProtocol::Udp)?;
    let (vni, inner) = udp_vxlan(outer.payload, profile)?;
    let at = ethernet::HEADER_LEN + outer.header_len;
    Ok(Decapsulated {
        outer_src_ip: outer.src_ip,
        outer_src_mac: outer.src_mac,
        vni,
        inner: at + inner.start..at + inner.end,
    })
}

/// The checks of a VXLAN datagram's UDP and VXLAN headers, over either underlay:
/// destination port `profile.port`; 8 <= UDP length <= `udp_bytes` (bytes past the UDP
/// length are ignored); VXLAN flags exactly 0x08 with zero reserved bits; VNI
/// `profile.vni`; an inner frame of at least 14 bytes. Returns the VNI and the inner
/// frame's range in `udp_bytes`.
pub(crate) fn udp_vxlan(udp_bytes: &[u8], profile: VxlanProfile) -> Result<(u32, Range<usize>), DecapError> {
    if udp_bytes.len() < udp::HEADER_LEN {
        return Err(DecapError::Truncated);
    }
    let udp = UdpPacket::new_unchecked(udp_bytes);
    if udp.dst_port() != profile.port {
        return Err(DecapError::WrongPort);
    }
    let udp_len = usize::from(udp.len());
    if udp_len < udp::HEADER_LEN || udp_len > udp_bytes.len() {
        return Err(DecapError::BadLength);
    }
    let vxlan = VxlanPacket::new_checked(&udp_bytes[udp::HEADER_LEN..udp_len]).map_err(|_| DecapError::Truncated)?;
    let vni = VxlanRepr::parse(&vxlan).map_err(|_| DecapError::BadVxlanFlags)?.vni;
    if vni != profile.vni {
        return Err(DecapError::WrongVni);
    }
    if vxlan.payload().len() < ethernet::HEADER_LEN {
        return Err(DecapError::InnerTooShort);
    }
    Ok((vni, udp::HEADER_LEN + HEADER_LEN..udp_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const NODE_A_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x0a, 0x63, 0x00, 0x01]);
    const NODE_B_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x0a, 0x63, 0x00, 0x02]);
    const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    /// Every captured VXLAN frame with the node it was sent from and to.
    fn captured() -> [(&'static [u8], Ipv4Addr, EthernetAddress, Ipv4Addr); 6] {
        [
            (
                &fixtures::VXLAN_ICMP_ECHO_REQUEST,
                NODE_A,
                NODE_A_MAC,
                NODE_B,
            ),
            (&fixtures::VXLAN_ICMP_ECHO_REPLY, NODE_B, NODE_B_MAC, NODE_A),
            (&fixtures::VXLAN_UDP, NODE_A, NODE_A_MAC, NODE_B),
            (
                &fixtures::VXLAN_ICMP_PORT_UNREACHABLE,
                NODE_B,
                NODE_B_MAC,
                NODE_A,
            ),
            (&fixtures::VXLAN_TCP_SYN, NODE_A, NODE_A_MAC, NODE_B),
            (&fixtures::VXLAN_TCP_RST, NODE_B, NODE_B_MAC, NODE_A),
        ]
    }

    #[test]
    fn overhead_is_50() {
        assert_eq!(OVERHEAD, 50);
        assert_eq!(MAX_INNER_LEN, 65535 - 36);
    }

    #[test]
    fn parses_captured_vxlan_header() {
        let vxlan = VxlanPacket::new_checked(&fixtures::VXLAN_TCP_SYN[42..]).unwrap();
        assert_eq!(vxlan.flags(), FLAG_I);
        assert_eq!((vxlan.reserved1(), vxlan.reserved2()), (0, 0));
        assert_eq!(vxlan.vni(), 1);
        assert_eq!(vxlan.payload(), &fixtures::VXLAN_TCP_SYN[50..]);
        assert_eq!(VxlanRepr::parse(&vxlan), Ok(VxlanRepr { vni: 1 }));

        let mut bytes = [0xa5u8; 10];
        VxlanRepr { vni: 1 }.emit(&mut VxlanPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes[..8], fixtures::VXLAN_TCP_SYN[42..50]);
        assert_eq!(bytes[8..], [0xa5; 2]);
    }

    #[test]
    fn view_setters_keep_neighbouring_fields() {
        let mut bytes = [0u8; 8];
        let mut vxlan = VxlanPacket::new_unchecked(&mut bytes[..]);
        vxlan.set_reserved2(0x77);
        vxlan.set_vni(0xff12_3456);
        vxlan.set_reserved1(0xaabb_ccdd);
        vxlan.set_flags(0x0c);
        assert_eq!(bytes, [0x0c, 0xbb, 0xcc, 0xdd, 0x12, 0x34, 0x56, 0x77]);
        let vxlan = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (
                vxlan.flags(),
                vxlan.reserved1(),
                vxlan.vni(),
                vxlan.reserved2()
            ),
            (0x0c, 0xbb_ccdd, 0x12_3456, 0x77)
        );
        assert_eq!(VxlanRepr::parse(&vxlan), Err(Error::Malformed));
        assert_eq!(
            VxlanPacket::new_checked(&bytes[..7]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn decaps_every_captured_frame() {
        for (frame, from, from_mac, to) in captured() {
            let d = decap(frame, to, VxlanProfile::FLANNEL).unwrap();
            assert_eq!(
                d,
                Decapsulated {
                    outer_src_ip: from,
                    outer_src_mac: from_mac,
                    vni: 1,
                    inner: 50..frame.len()
                }
            );
            assert_eq!(
                decap(frame, from, VxlanProfile::FLANNEL),
                Err(DecapError::NotForUs)
            );
            assert_eq!(
                decap(frame, to, VxlanProfile::CALICO),
                Err(DecapError::WrongPort)
            );
            assert_eq!(
                decap(frame, to, VxlanProfile { vni: 2, port: 8472 }),
                Err(DecapError::WrongVni)
            );
        }
    }

    #[test]
    fn encap_header_matches_linux_but_for_documented_choices() {
        // Rebuild the outer header Linux's flannel.1 wrote for the echo request.
        let captured = &fixtures::VXLAN_ICMP_ECHO_REQUEST;
        let encap = VxlanEncap::new(
            NODE_A_MAC,
            NODE_B_MAC,
            NODE_A,
            NODE_B,
            VxlanProfile::FLANNEL,
        );
        let inner = &captured[50..];
        let src_port = 43388; // what Linux chose; flow_src_port's hash is not Linux's
        let mut out = vec![0xa5u8; 60];
        encap.write(&mut out, inner.len(), src_port).unwrap();
        assert_eq!(out[50..], [0xa5; 10]);

        // Linux: random ident, DF clear, CHECKSUM_PARTIAL UDP checksum. Ours: ident 0, DF,
        // UDP checksum 0. With those three set our way, every byte must be the same.
        let mut expected = captured[..50].to_vec();
        let mut ip = Ipv4Packet::new_unchecked(&mut expected[OUTER_IP]);
        ip.set_ident(0);
        ip.set_dont_frag(true);
        ip.fill_checksum();
        UdpPacket::new_unchecked(&mut expected[OUTER_UDP]).set_checksum(0);
        assert_eq!(out[..50], expected[..]);
    }

    #[test]
    fn encap_then_decap_gives_back_the_frame() {
        let inner = &fixtures::VXLAN_TCP_SYN[50..];
        let encap = VxlanEncap::new(NODE_A_MAC, NODE_B_MAC, NODE_A, NODE_B, VxlanProfile::CALICO);
        let mut frame = vec![0u8; OVERHEAD + inner.len()];
        frame[OVERHEAD..].copy_from_slice(inner);
        encap
            .write(&mut frame, inner.len(), flow_src_port(inner))
            .unwrap();
        let d = decap(&frame, NODE_B, VxlanProfile::CALICO).unwrap();
        assert_eq!(
            (d.outer_src_ip, d.outer_src_mac, d.vni),
            (NODE_A, NODE_A_MAC, 4096)
        );
        assert_eq!(&frame[d.inner], inner);
        assert_eq!(
            UdpPacket::new_checked(&frame[OUTER_UDP.start..])
                .unwrap()
                .dst_port(),
            4789
        );
    }

    #[test]
    fn write_refuses_short_buffers_and_giant_frames() {
        let encap = VxlanEncap::new(
            NODE_A_MAC,
            NODE_B_MAC,
            NODE_A,
            NODE_B,
            VxlanProfile::FLANNEL,
        );
        let mut out = [0xa5u8; 49];
        assert_eq!(encap.write(&mut out, 100, 40000), Err(Error::Truncated));
        assert_eq!(out, [0xa5; 49]);
        let mut out = [0xa5u8; 50];
        assert_eq!(
            encap.write(&mut out, MAX_INNER_LEN + 1, 40000),
            Err(Error::TooLong)
        );
        assert_eq!(out, [0xa5; 50]);
        encap.write(&mut out, MAX_INNER_LEN, 40000).unwrap();
        let ip = Ipv4Packet::new_unchecked(&out[OUTER_IP]);
        assert_eq!(ip.total_len(), 65535);
        assert!(ip.verify_checksum());
        assert_eq!(UdpPacket::new_unchecked(&out[OUTER_UDP]).len(), 65535 - 20);
    }

    #[test]
    fn decap_names_each_reason() {
        let good = fixtures::VXLAN_TCP_SYN;
        let check = |mutate: &dyn Fn(&mut Vec<u8>), expected: DecapError| {
            let mut frame = good.to_vec();
            mutate(&mut frame);
            assert_eq!(
                decap(&frame, NODE_B, VxlanProfile::FLANNEL),
                Err(expected),
                "expected {expected:?}"
            );
        };
        // Changes a byte of the outer IPv4 header and keeps its checksum right.
        fn ip_edit(frame: &mut [u8], edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[OUTER_IP]);
            edit(&mut ip);
            ip.fill_checksum();
        }
        check(&|f| f.truncate(13), DecapError::Truncated);
        check(&|f| f.truncate(33), DecapError::Truncated);
        check(&|f| f.truncate(f.len() - 1), DecapError::Truncated); // total length > frame
        check(&|f| f[12] = 0x86, DecapError::NotIpv4);
        check(
            &|f| ip_edit(f, |ip| ip.set_version(6)),
            DecapError::BadIpHeader,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_header_len(16)),
            DecapError::BadIpHeader,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_total_len(19)),
            DecapError::BadLength,
        );
        check(&|f| f[24] ^= 0x01, DecapError::BadIpChecksum);
        check(
            &|f| ip_edit(f, |ip| ip.set_more_frags(true)),
            DecapError::Fragment,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_frag_offset(8)),
            DecapError::Fragment,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_dst_addr(Ipv4Addr::new(10, 99, 0, 3))),
            DecapError::NotForUs,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_protocol(IpProtocol::Tcp)),
            DecapError::WrongProtocol,
        );
        check(
            &|f| ip_edit(f, |ip| ip.set_total_len(20 + 7)),
            DecapError::Truncated,
        ); // no room for UDP
        check(
            &|f| f[36..38].copy_from_slice(&4789u16.to_be_bytes()),
            DecapError::WrongPort,
        );
        check(
            &|f| f[38..40].copy_from_slice(&7u16.to_be_bytes()),
            DecapError::BadLength,
        );
        check(
            &|f| f[38..40].copy_from_slice(&(0x5a + 1u16).to_be_bytes()),
            DecapError::BadLength,
        );
        check(
            &|f| f[38..40].copy_from_slice(&15u16.to_be_bytes()),
            DecapError::Truncated,
        ); // no room for VXLAN
        check(&|f| f[42] = 0x0c, DecapError::BadVxlanFlags);
        check(&|f| f[42] = 0x00, DecapError::BadVxlanFlags);
        check(&|f| f[43] = 0x01, DecapError::BadVxlanFlags);
        check(&|f| f[49] = 0x01, DecapError::BadVxlanFlags);
        check(&|f| f[48] = 0x02, DecapError::WrongVni);
        check(
            &|f| f[38..40].copy_from_slice(&(16u16 + 13).to_be_bytes()),
            DecapError::InnerTooShort,
        );
    }

    #[test]
    fn decap_ignores_padding_and_honours_options() {
        // Ethernet padding after the datagram is not part of the inner frame.
        let mut padded = fixtures::VXLAN_TCP_SYN.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let d = decap(&padded, NODE_B, VxlanProfile::FLANNEL).unwrap();
        assert_eq!(d.inner, 50..fixtures::VXLAN_TCP_SYN.len());

        // A UDP length shorter than the IPv4 payload ends the inner frame early.
        let mut short_udp = fixtures::VXLAN_TCP_SYN.to_vec();
        short_udp[38..40].copy_from_slice(&(0x5a - 4u16).to_be_bytes());
        let d = decap(&short_udp, NODE_B, VxlanProfile::FLANNEL).unwrap();
        assert_eq!(d.inner, 50..fixtures::VXLAN_TCP_SYN.len() - 4);

        // An outer header with 4 bytes of options (NOP NOP NOP EOL) moves everything by 4.
        let syn = &fixtures::VXLAN_TCP_SYN;
        let mut with_options = syn[..34].to_vec();
        with_options.extend_from_slice(&[1, 1, 1, 0]);
        with_options.extend_from_slice(&syn[34..]);
        let mut ip = Ipv4Packet::new_unchecked(&mut with_options[OUTER_IP.start..OUTER_IP.end + 4]);
        ip.set_header_len(24);
        ip.set_total_len(ip.total_len() + 4);
        ip.fill_checksum();
        let d = decap(&with_options, NODE_B, VxlanProfile::FLANNEL).unwrap();
        assert_eq!(&with_options[d.inner], &syn[50..]);
    }

    #[test]
    fn src_port_is_in_range_stable_and_symmetric() {
        for (frame, ..) in captured() {
            let inner = &frame[50..];
            let port = flow_src_port(inner);
            assert!((SRC_PORT_MIN..SRC_PORT_MAX).contains(&port), "{port}");
            assert_eq!(flow_src_port(inner), port);
        }
        // Request and reply of one flow take the same port, as with Linux.
        let port = |f: &[u8]| flow_src_port(&f[50..]);
        assert_eq!(
            port(&fixtures::VXLAN_ICMP_ECHO_REQUEST),
            port(&fixtures::VXLAN_ICMP_ECHO_REPLY)
        );
        assert_eq!(
            port(&fixtures::VXLAN_TCP_SYN),
            port(&fixtures::VXLAN_TCP_RST)
        );
        assert_ne!(port(&fixtures::VXLAN_TCP_SYN), port(&fixtures::VXLAN_UDP));
        // The TTL, the payload and the MACs are not part of the flow.
        let mut changed = fixtures::VXLAN_TCP_SYN[50..].to_vec();
        changed[0] ^= 0xff;
        changed[14 + 8] = 3;
        *changed.last_mut().unwrap() ^= 0xff;
        assert_eq!(flow_src_port(&changed), port(&fixtures::VXLAN_TCP_SYN));
    }

    #[test]
    fn src_port_of_a_parsed_flow_is_the_frames_own() {
        let mut frames: Vec<Vec<u8>> = captured().into_iter().map(|(f, ..)| f[50..].to_vec()).collect();
        // A first fragment carries ports, but fragments hash without them.
        let mut first = fixtures::VXLAN_UDP[50..].to_vec();
        crate::ipv4::Ipv4Packet::new_unchecked(&mut first[14..]).set_more_frags(true);
        frames.push(first);
        for sport in [0u16, 1, 80, 40000, 65535] {
            let mut f = fixtures::VXLAN_TCP_SYN[50..].to_vec();
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            frames.push(f);
        }
        for f in &frames {
            let info = crate::flow::parse_flow_info(&f[14..]).expect("a flow");
            assert_eq!(src_port_of_hash(flow_hash_of(&info)), flow_src_port(f), "{info:?}");
        }
    }

    #[test]
    fn src_port_of_inner_ipv6_frames() {
        let echo = &fixtures::ICMPV6_ECHO_REQUEST;
        let info = crate::flow::parse_flow_info6(&echo[14..]).unwrap();
        let port = flow_src_port(echo);
        assert!((SRC_PORT_MIN..SRC_PORT_MAX).contains(&port));
        assert_eq!(src_port_of_hash(flow_hash_of6(&info)), port);
        // Not the Ethernet fallback: other MACs, same port; other addresses, another.
        let mut other_macs = *echo;
        other_macs[..12].fill(0x02);
        assert_eq!(flow_src_port(&other_macs), port);
        let mut other_dst = *echo;
        other_dst[53] ^= 0x01;
        assert_ne!(flow_src_port(&other_dst), port);

        // Symmetric: the reply takes the request's port (addresses and ident swapped).
        let mut reply = *echo;
        reply[22..38].copy_from_slice(&echo[38..54]);
        reply[38..54].copy_from_slice(&echo[22..38]);
        reply[54] = 129;
        assert_eq!(flow_src_port(&reply), port);

        // TCP/UDP ports count, and folding keeps each address word in play.
        let mut a = [0u8; 14 + 40 + 8];
        a[12..14].copy_from_slice(&[0x86, 0xdd]);
        a[14] = 0x60;
        a[19] = 8;
        a[20] = 17;
        a[54..58].copy_from_slice(&[0x9c, 0x40, 0x14, 0xe9]);
        let mut b = a;
        b[56] ^= 0x01;
        assert_ne!(flow_src_port(&a), flow_src_port(&b));
        let mut c = a;
        c[25] ^= 0x01; // the second word of the source address
        assert_ne!(flow_src_port(&a), flow_src_port(&c));
        // A broken IPv6 header falls back to the Ethernet header.
        assert!((SRC_PORT_MIN..SRC_PORT_MAX).contains(&flow_src_port(&echo[..50])));
    }

    #[test]
    fn src_port_spreads_flows() {
        let mut frame = fixtures::VXLAN_UDP[50..].to_vec();
        let mut ports = std::collections::HashSet::new();
        let mut low_half = 0;
        for sport in 0..2000u16 {
            frame[34..36].copy_from_slice(&sport.to_be_bytes());
            let port = flow_src_port(&frame);
            low_half += usize::from(port < SRC_PORT_MIN + (SRC_PORT_MAX - SRC_PORT_MIN) / 2);
            ports.insert(port);
        }
        // 2000 flows over 28231 ports: expect about 1930 distinct ones and a fair split.
        assert!(ports.len() > 1850, "{}", ports.len());
        assert!((850..1150).contains(&low_half), "{low_half}");
    }

    #[test]
    fn src_port_of_non_ipv4_uses_ethernet_header() {
        let arp = &fixtures::ARP_REQUEST;
        let mut other_requester = *arp;
        other_requester[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        assert_ne!(flow_src_port(arp), flow_src_port(&other_requester));
        let mut other_target = *arp;
        other_target[41] = 9; // outside the Ethernet header: same port
        assert_eq!(flow_src_port(arp), flow_src_port(&other_target));
        for len in 0..20 {
            assert!((SRC_PORT_MIN..SRC_PORT_MAX).contains(&flow_src_port(&arp[..len])));
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(vni in 0u32..1 << 24) {
            let repr = VxlanRepr { vni };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut VxlanPacket::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn decap_of_encap_gives_back_the_inner_frame(
            src_mac in any::<[u8; 6]>(), dst_mac in any::<[u8; 6]>(),
            src_ip in any::<[u8; 4]>(), dst_ip in any::<[u8; 4]>(),
            vni in 0u32..1 << 24, port in any::<u16>(), src_port in any::<u16>(),
            inner in proptest::collection::vec(any::<u8>(), 14..1600),
        ) {
            let profile = VxlanProfile { vni, port };
            let (src_ip, dst_ip) = (Ipv4Addr::from(src_ip), Ipv4Addr::from(dst_ip));
            let encap = VxlanEncap::new(EthernetAddress(src_mac), EthernetAddress(dst_mac), src_ip, dst_ip, profile);
            let mut frame = vec![0xa5; OVERHEAD + inner.len()];
            frame[OVERHEAD..].copy_from_slice(&inner);
            encap.write(&mut frame, inner.len(), src_port).unwrap();
            let d = decap(&frame, dst_ip, profile).unwrap();
            prop_assert_eq!(d.outer_src_ip, src_ip);
            prop_assert_eq!(d.outer_src_mac, EthernetAddress(src_mac));
            prop_assert_eq!(d.vni, vni);
            prop_assert_eq!(&frame[d.inner], &inner[..]);
        }

        #[test]
        fn written_header_equals_a_full_build(
            src_ip in any::<[u8; 4]>(), dst_ip in any::<[u8; 4]>(),
            vni in 0u32..1 << 24, port in any::<u16>(), src_port in any::<u16>(),
            inner_len in 0..=MAX_INNER_LEN,
        ) {
            let (src_ip, dst_ip) = (Ipv4Addr::from(src_ip), Ipv4Addr::from(dst_ip));
            let encap = VxlanEncap::new(NODE_A_MAC, NODE_B_MAC, src_ip, dst_ip, VxlanProfile { vni, port });
            let mut out = [0xa5u8; OVERHEAD];
            encap.write(&mut out, inner_len, src_port).unwrap();

            // The same header through the Repr types, checksum summed from scratch.
            let mut expected = [0xa5u8; OVERHEAD];
            EthernetRepr { src_addr: NODE_A_MAC, dst_addr: NODE_B_MAC, ethertype: EtherType::Ipv4 }
                .emit(&mut EthernetFrame::new_unchecked(&mut expected[..]));
            Ipv4Repr {
                src_addr: src_ip, dst_addr: dst_ip, protocol: IpProtocol::Udp,
                payload_len: 16 + inner_len, ttl: 64, ident: 0, dont_frag: true, dscp: 0, ecn: 0,
            }.emit(&mut Ipv4Packet::new_unchecked(&mut expected[OUTER_IP]));
            let mut udp = UdpPacket::new_unchecked(&mut expected[OUTER_UDP]);
            udp.set_src_port(src_port);
            udp.set_dst_port(port);
            udp.set_len((16 + inner_len) as u16);
            udp.set_checksum(0);
            VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut expected[OUTER_UDP.end..]));
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn src_port_always_in_range(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let port = flow_src_port(&bytes);
            prop_assert!((SRC_PORT_MIN..SRC_PORT_MAX).contains(&port));
        }
    }
}
