//! Ethernet II frames (IEEE 802.3 with an EtherType, RFC 894).
//!
//! Owns MAC addresses ([`EthernetAddress`]), EtherTypes and the 14-byte header view
//! [`EthernetFrame`] / [`EthernetRepr`]. VLAN tags are not parsed: a tagged frame shows
//! EtherType `Unknown(0x8100)` and the forwarder drops it (pod veths and the uplink carry
//! untagged frames). The frame check sequence is never part of the buffer (AF_XDP and
//! pcap hand over frames without it).
//!
//! After [`EthernetFrame::check_len`] succeeds no accessor panics; no function allocates
//! except `FromStr` / `Display` of addresses.

use core::fmt;
use core::str::FromStr;

use crate::Error;
use crate::net_endian::{read_u16, write_u16};

/// Length of the Ethernet II header: destination, source, EtherType.
pub const HEADER_LEN: usize = 14;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// Reads an address from the first six bytes of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than six bytes.
    pub fn from_bytes(bytes: &[u8]) -> EthernetAddress {
        let mut addr = [0; 6];
        addr.copy_from_slice(&bytes[..6]);
        EthernetAddress(addr)
    }

    /// The six address bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// A unicast address: the I/G bit (least significant bit of the first byte) is clear.
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// A group address (multicast or broadcast): the I/G bit is set.
    pub const fn is_multicast(&self) -> bool {
        !self.is_unicast()
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// A locally administered address: the U/L bit (0x02 of the first byte) is set, as in
    /// the addresses Linux gives veths and VXLAN devices.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// A unicast address that is not all zeros: usable as a frame's source.
    pub fn is_valid_source(&self) -> bool {
        self.is_unicast() && self.0 != [0; 6]
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not a MAC address in the `aa:bb:cc:dd:ee:ff` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {input:?}: expected six two-digit hexadecimal bytes separated by ':', \
     such as 0a:58:0a:f4:00:05"
)]
pub struct ParseEthernetAddressError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for EthernetAddress {
    type Err = ParseEthernetAddressError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case), the form `ip link`, Flannel's `VtepMAC`
    /// and Calico's `VXLANTunnelMACAddr` use.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEthernetAddressError {
            input: s.to_owned(),
        };
        let mut addr = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut addr {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(EthernetAddress(addr))
    }
}

/// The EtherType of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800
    Ipv4,
    /// 0x0806
    Arp,
    /// 0x86dd
    Ipv6,
    /// Any other value, kept as it was on the wire.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` if the buffer cannot hold the 14-byte header.
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

    /// Header length plus `payload_len`.
    pub const fn buffer_len(payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// EtherType.
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(&self.buffer.as_ref()[field::ETHERTYPE]))
    }

    /// Everything after the header (including any padding to the 60-byte minimum).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(
            &mut self.buffer.as_mut()[field::ETHERTYPE],
            ethertype.into(),
        );
    }

    /// Everything after the header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The Ethernet II header as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC address.
    pub src_addr: EthernetAddress,
    /// Destination MAC address.
    pub dst_addr: EthernetAddress,
    /// EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, Error> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// The header length, 14.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; the payload is left alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const NODE_A: EthernetAddress = EthernetAddress([0x02, 0x00, 0x0a, 0x63, 0x00, 0x01]);
    const NODE_B: EthernetAddress = EthernetAddress([0x02, 0x00, 0x0a, 0x63, 0x00, 0x02]);

    #[test]
    fn parses_captured_vxlan_outer_header() {
        let frame = EthernetFrame::new_checked(&fixtures::VXLAN_ICMP_ECHO_REQUEST[..]).unwrap();
        assert_eq!(frame.dst_addr(), NODE_B);
        assert_eq!(frame.src_addr(), NODE_A);
        assert_eq!(frame.ethertype(), EtherType::Ipv4);
        assert_eq!(frame.payload().len(), 132 - 14);
        assert_eq!(frame.payload()[0], 0x45);
    }

    #[test]
    fn parses_captured_arp_broadcast() {
        let repr =
            EthernetRepr::parse(&EthernetFrame::new_checked(&fixtures::ARP_REQUEST[..]).unwrap());
        assert_eq!(
            repr,
            Ok(EthernetRepr {
                src_addr: NODE_A,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EtherType::Arp
            })
        );
    }

    #[test]
    fn rejects_short_frames() {
        assert_eq!(
            EthernetFrame::new_checked(&[0u8; 13][..]).err(),
            Some(Error::Truncated)
        );
        assert!(
            EthernetFrame::new_checked(&[0u8; 14][..])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn emit_writes_exactly_the_header() {
        let repr = EthernetRepr {
            src_addr: NODE_A,
            dst_addr: NODE_B,
            ethertype: EtherType::Ipv4,
        };
        let mut bytes = [0xa5u8; 20];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..14], &fixtures::VXLAN_ICMP_ECHO_REQUEST[..14]);
        assert_eq!(bytes[14..], [0xa5; 6]);
    }

    #[test]
    fn ethertype_keeps_unknown_values() {
        for (raw, known) in [
            (0x0800, EtherType::Ipv4),
            (0x0806, EtherType::Arp),
            (0x86dd, EtherType::Ipv6),
        ] {
            assert_eq!(EtherType::from(raw), known);
            assert_eq!(u16::from(known), raw);
        }
        assert_eq!(EtherType::from(0x8100), EtherType::Unknown(0x8100));
        assert_eq!(u16::from(EtherType::Unknown(0x8100)), 0x8100);
    }

    #[test]
    fn address_classes() {
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert!(!EthernetAddress::BROADCAST.is_unicast());
        assert!(EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(NODE_A.is_unicast() && NODE_A.is_local() && NODE_A.is_valid_source());
        assert!(!EthernetAddress([0x00, 0x1b, 0x21, 1, 2, 3]).is_local());
        assert!(!EthernetAddress([0; 6]).is_valid_source());
        assert_eq!(NODE_A.as_bytes(), &[0x02, 0x00, 0x0a, 0x63, 0x00, 0x01]);
    }

    #[test]
    fn address_text_form() {
        assert_eq!(NODE_A.to_string(), "02:00:0a:63:00:01");
        assert_eq!(
            "0E:AA:00:00:00:01".parse(),
            Ok(EthernetAddress([0x0e, 0xaa, 0, 0, 0, 1]))
        );
        for bad in [
            "",
            "02:00:0a:63:00",
            "02:00:0a:63:00:01:02",
            "2:00:0a:63:00:01",
            "02-00-0a-63-00-01",
            "+2:00:0a:63:00:01",
            "02:00:0a:63:00:0g",
            "02:00:0a:63:00:01:",
        ] {
            let err = bad.parse::<EthernetAddress>().unwrap_err();
            assert_eq!(err.input, bad);
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.contains("such as 0a:58:0a:f4:00:05"), "{message}");
        }
    }

    proptest! {
        #[test]
        fn address_display_parse_round_trip(bytes in any::<[u8; 6]>()) {
            let addr = EthernetAddress(bytes);
            prop_assert_eq!(addr.to_string().parse::<EthernetAddress>(), Ok(addr));
        }

        #[test]
        fn repr_round_trip(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), ethertype in any::<u16>()) {
            let repr = EthernetRepr {
                src_addr: EthernetAddress(src),
                dst_addr: EthernetAddress(dst),
                ethertype: EtherType::from(ethertype),
            };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut EthernetFrame::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }
    }
}
