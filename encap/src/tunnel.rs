//! What every tunnel shares on receive: the checks of the outer Ethernet and IPv4 headers,
//! and one [`DecapError`] for all of them, so the forwarder maps each refusal to its drop
//! counter in one place.
//!
//! Hot path: [`outer_ipv4`] never allocates and never panics on any input.

use std::net::Ipv4Addr;

use crate::ethernet::{EtherType, EthernetAddress, EthernetFrame};
use crate::ipv4::{self, IpProtocol, Ipv4Packet};

/// Why a tunnel's `decap` refused a frame: one variant per drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecapError {
    /// The frame ends before a header or a length the headers declare.
    #[error("frame truncated before the end of a header or of a declared length")]
    Truncated,
    /// The outer EtherType is not IPv4 (VLAN-tagged frames included).
    #[error("outer EtherType is not IPv4")]
    NotIpv4,
    /// The outer EtherType is not IPv6 (VXLAN over an IPv6 underlay).
    #[error("outer EtherType is not IPv6")]
    NotIpv6,
    /// The outer IPv4 version is not 4 or its IHL is below 5 (IPv6: the version is not 6).
    #[error("outer IPv4 header invalid: version is not 4 or IHL is below 5")]
    BadIpHeader,
    /// The outer IPv4 header checksum is wrong.
    #[error("outer IPv4 header checksum is wrong")]
    BadIpChecksum,
    /// A length field contradicts another (IPv4 total length below the header length, UDP
    /// length below 8 or beyond the IPv4 payload).
    #[error("outer IPv4 or UDP length field inconsistent")]
    BadLength,
    /// The outer datagram is a fragment; twill does not reassemble.
    #[error("outer IPv4 datagram is a fragment")]
    Fragment,
    /// The outer destination is not this node.
    #[error("outer IPv4 destination is not this node")]
    NotForUs,
    /// The outer protocol is not the tunnel's (UDP for VXLAN, 4 for IP-in-IP).
    #[error("outer IPv4 protocol is not the tunnel's")]
    WrongProtocol,
    /// The outer UDP destination port is not the VXLAN profile's.
    #[error("outer UDP destination port is not the VXLAN port")]
    WrongPort,
    /// The VXLAN I flag is clear or a reserved bit is set.
    #[error("VXLAN flags invalid: I flag clear or reserved bits set")]
    BadVxlanFlags,
    /// The VNI is not the profile's.
    #[error("VXLAN VNI does not match the profile")]
    WrongVni,
    /// The inner frame is shorter than an Ethernet header (VXLAN).
    #[error("inner frame shorter than an Ethernet header")]
    InnerTooShort,
    /// The inner packet is not a whole IPv4 header and packet (IP-in-IP).
    #[error("inner packet is not a whole IPv4 packet")]
    BadInner,
}

/// The outer headers of a tunnel frame that passed [`outer_ipv4`].
pub(crate) struct Outer<'a> {
    /// The outer Ethernet source.
    pub src_mac: EthernetAddress,
    /// The outer IPv4 source.
    pub src_ip: Ipv4Addr,
    /// The outer IPv4 header length (20 plus options).
    pub header_len: usize,
    /// The outer IPv4 payload, ending where its total length says.
    pub payload: &'a [u8],
}

/// Checks the outer Ethernet and IPv4 headers of a tunnel frame addressed to `local_ip`
/// with `protocol`, in the order the drop counters promise (lengths, checksum, fragment,
/// destination, protocol).
pub(crate) fn outer_ipv4(
    frame: &[u8],
    local_ip: Ipv4Addr,
    protocol: IpProtocol,
) -> Result<Outer<'_>, DecapError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DecapError::Truncated)?;
    if eth.ethertype() != EtherType::Ipv4 {
        return Err(DecapError::NotIpv4);
    }
    let src_mac = eth.src_addr();
    let ip_bytes = &frame[crate::ethernet::HEADER_LEN..];
    if ip_bytes.len() < ipv4::HEADER_LEN {
        return Err(DecapError::Truncated);
    }
    let ip = Ipv4Packet::new_unchecked(ip_bytes);
    let header_len = ip.header_len();
    if ip.version() != 4 || header_len < ipv4::HEADER_LEN {
        return Err(DecapError::BadIpHeader);
    }
    let total_len = usize::from(ip.total_len());
    if header_len > ip_bytes.len() || total_len > ip_bytes.len() {
        return Err(DecapError::Truncated);
    }
    if total_len < header_len {
        return Err(DecapError::BadLength);
    }
    // Ipv4Packet::check_len holds from here on.
    if !ip.verify_checksum() {
        return Err(DecapError::BadIpChecksum);
    }
    if ip.is_fragment() {
        return Err(DecapError::Fragment);
    }
    if ip.dst_addr() != local_ip {
        return Err(DecapError::NotForUs);
    }
    if ip.protocol() != protocol {
        return Err(DecapError::WrongProtocol);
    }
    Ok(Outer {
        src_mac,
        src_ip: ip.src_addr(),
        header_len,
        payload: &ip_bytes[header_len..total_len],
    })
}
