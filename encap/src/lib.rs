//! Wire formats and overlay encapsulation for twill.
//!
//! This crate owns the bytes on the wire and nothing else: it reads and writes frames in
//! caller-owned buffers and hands back views, values and byte ranges. It knows no tables,
//! no sockets and no Kubernetes; the `forwarder` decides what to do with what it parses.
//!
//! Every protocol follows the smoltcp pattern:
//!
//! - `FooPacket<T: AsRef<[u8]>>` is a zero-copy view with accessors (setters where
//!   `T: AsMut<[u8]>`). Field offsets live in a private `mod field`. `new_checked` /
//!   `check_len` validate the lengths once; **after `check_len` succeeds no accessor
//!   panics**. `new_unchecked` skips the check and then accessors may panic on short input.
//! - `FooRepr` is the parsed, validated value with `parse`, `emit` and `buffer_len`.
//!   `emit` writes into a buffer of at least `buffer_len()` bytes and panics on a shorter one
//!   (it is for building packets, not for the receive path).
//! - Protocol numbers are enums with an `Unknown(_)` arm, so no wire value is lost.
//!
//! Modules: [`ethernet`], [`arp`] (RFC 826), [`ipv4`] (RFC 791), [`ipv6`] (RFC 8200),
//! [`udp`] (RFC 768), [`tcp`] (RFC 793), [`icmpv4`] (RFC 792, RFC 1191, RFC 1812),
//! [`icmpv6`] (RFC 4443, Neighbor Discovery of RFC 4861), [`checksum`] (RFC 1071,
//! RFC 1624, RFC 8200 §8.1), [`vxlan`] (RFC 7348), [`vxlan6`] (VXLAN over an IPv6 underlay), [`ipip`] (RFC 2003), [`tunnel`] (the outer-header checks both share), [`nat`] (address and port rewriting for source NAT), [`direct`] (MAC rewrite for host-gw / BGP routing) and
//! [`flow`] (the 5-tuple the pipeline classifies).
//!
//! Hot path: view accessors never allocate and never panic once `check_len` has succeeded;
//! [`vxlan::decap`], [`vxlan::VxlanEncap::write`], [`vxlan::flow_src_port`],
//! [`vxlan6::decap6`], [`vxlan6::VxlanEncap6::write`],
//! [`ipip::decap`], [`ipip::IpipEncap::write`],
//! [`ipv4::decrement_ttl`], [`ipv6::decrement_hop_limit`], [`arp::reply_in_place`],
//! [`icmpv6::advert_in_place`], [`icmpv6::message_type`], [`direct::rewrite_macs`],
//! [`flow::parse_ipv4_flow`], [`flow::parse_flow_info6`], [`nat::rewrite`],
//! [`icmpv4::emit_error`] and [`icmpv6::emit_error`] never allocate and never panic,
//! whatever bytes they are given (`tests/robustness.rs` throws random and mutated frames
//! at all of them).

#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod direct;
pub mod ethernet;
pub mod flow;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipip;
pub mod ipv4;
pub mod ipv6;
pub mod nat;
pub mod tcp;
pub mod tunnel;
pub mod udp;
pub mod vxlan;
pub mod vxlan6;

#[cfg(test)]
mod fixtures;

pub use ethernet::{EtherType, EthernetAddress};
pub use ipv4::IpProtocol;

/// Why a view could not be built, a `Repr` could not be parsed or a frame could not be
/// rewritten. `Copy`, so the forwarder can count it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field in the header declares.
    #[error("packet truncated: the buffer is shorter than the header or its declared length")]
    Truncated,
    /// A header field holds a value the protocol forbids (IPv4 IHL < 5, UDP length < 8, ...).
    #[error("malformed header: a field holds a value the protocol forbids")]
    Malformed,
    /// A valid packet of a kind this function does not handle (other ethertype, ARP over
    /// something other than Ethernet/IPv4, an ARP reply where a request was expected, ...).
    #[error("unrecognized packet: not the protocol, type or operation this function handles")]
    Unrecognized,
    /// The checksum does not match the bytes.
    #[error("checksum mismatch")]
    Checksum,
    /// An IPv4 fragment where a whole datagram (or the first fragment) is required.
    #[error("IPv4 fragment: a whole datagram or the first fragment is required")]
    Fragmented,
    /// TTL (IPv6: hop limit) is 0 or 1: a router must not forward the packet (RFC 1812
    /// §5.3.1, RFC 8200 §3); answer with ICMP / ICMPv6 time exceeded instead.
    #[error("TTL expired: TTL is 0 or 1, the packet must not be forwarded")]
    TtlExpired,
    /// The result would not fit a 16-bit length field (IPv4 total length is at most 65535).
    #[error("packet too long: the result would exceed the 65535-byte IPv4 total length")]
    TooLong,
}

/// Big-endian field access shared by the views. Callers pass slices whose length the
/// view's `check_len` has already guaranteed.
mod net_endian {
    use std::net::Ipv4Addr;

    pub(crate) fn read_u16(bytes: &[u8]) -> u16 {
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    pub(crate) fn read_u32(bytes: &[u8]) -> u32 {
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    pub(crate) fn read_ipv4(bytes: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
    }

    pub(crate) fn write_u16(bytes: &mut [u8], value: u16) {
        bytes[..2].copy_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn write_u32(bytes: &mut [u8], value: u32) {
        bytes[..4].copy_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn write_ipv4(bytes: &mut [u8], addr: Ipv4Addr) {
        bytes[..4].copy_from_slice(&addr.octets());
    }
}
