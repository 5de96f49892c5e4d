//! ARP for IPv4 over Ethernet (RFC 826).
//!
//! Owns the 28-byte Ethernet/IPv4 ARP packet ([`ArpPacket`], [`ArpRepr`]) and
//! [`reply_in_place`], with which the forwarder answers a pod's ARP request for its gateway
//! (169.254.1.1, proxy-ARP style as Calico does) by turning the request frame into the
//! reply in the same buffer. Other hardware or protocol types are not handled: the view
//! reads them, [`ArpRepr::parse`] rejects them as `Unrecognized`.
//!
//! After [`ArpPacket::check_len`] succeeds no accessor panics. [`reply_in_place`] never
//! panics and never allocates.

use std::net::Ipv4Addr;

use crate::Error;
use crate::ethernet::{EtherType, EthernetAddress, EthernetFrame};
use crate::net_endian::{read_ipv4, read_u16, write_ipv4, write_u16};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use core::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// 1
    Request,
    /// 2
    Reply,
    /// Any other value (RARP, InARP, ...).
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(value: Operation) -> Self {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an Ethernet/IPv4 ARP packet (the payload of an ARP frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` if the buffer cannot hold a 28-byte Ethernet/IPv4 ARP packet.
    /// Bytes after it (Ethernet padding) are ignored.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::HTYPE])
    }

    /// Protocol type (an EtherType; IPv4 here).
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(&self.buffer.as_ref()[field::PTYPE]))
    }

    /// Hardware address length (6 for Ethernet).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (4 for IPv4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation.
    pub fn operation(&self) -> Operation {
        Operation::from(read_u16(&self.buffer.as_ref()[field::OPER]))
    }

    /// Sender hardware address.
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    /// Sender protocol address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::SPA])
    }

    /// Target hardware address (zero in a request).
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    /// Target protocol address: the address asked about.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::TPA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::HTYPE], value);
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(&mut self.buffer.as_mut()[field::PTYPE], value.into());
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: Operation) {
        write_u16(&mut self.buffer.as_mut()[field::OPER], value.into());
    }

    /// Sets the sender hardware address.
    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::SPA], addr);
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::TPA], addr);
    }
}

/// An Ethernet/IPv4 ARP packet as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request, reply or another code.
    pub operation: Operation,
    /// Sender hardware address.
    pub source_hardware_addr: EthernetAddress,
    /// Sender protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target hardware address.
    pub target_hardware_addr: EthernetAddress,
    /// Target protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet; other hardware/protocol types or address lengths
    /// are `Unrecognized`.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unrecognized);
        }
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// 28.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes all 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

/// Turns `frame`, a whole Ethernet frame carrying an Ethernet/IPv4 ARP request, into the
/// reply saying that the requested address is at `our_mac`, in place.
///
/// The ARP sender becomes `our_mac` and the requested address, the target becomes the
/// requester; the Ethernet destination becomes the requester's hardware address and the
/// source `our_mac`. The frame keeps its length (padding included). The caller decides
/// whether to answer at all (read [`ArpPacket::target_protocol_addr`] first).
///
/// Errors: `Truncated` for a short frame, `Unrecognized` if it is not an Ethernet/IPv4
/// ARP request. On error the frame is unchanged.
pub fn reply_in_place(frame: &mut [u8], our_mac: EthernetAddress) -> Result<(), Error> {
    let mut eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != EtherType::Arp {
        return Err(Error::Unrecognized);
    }
    let mut arp = ArpPacket::new_checked(eth.payload_mut())?;
    let request = ArpRepr::parse(&arp)?;
    if request.operation != Operation::Request {
        return Err(Error::Unrecognized);
    }
    ArpRepr {
        operation: Operation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: request.target_protocol_addr,
        target_hardware_addr: request.source_hardware_addr,
        target_protocol_addr: request.source_protocol_addr,
    }
    .emit(&mut arp);
    eth.set_dst_addr(request.source_hardware_addr);
    eth.set_src_addr(our_mac);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    const GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);

    #[test]
    fn parses_captured_request() {
        let arp = ArpPacket::new_checked(&fixtures::ARP_REQUEST_POD[14..]).unwrap();
        assert_eq!(arp.hardware_type(), 1);
        assert_eq!(arp.protocol_type(), EtherType::Ipv4);
        assert_eq!((arp.hardware_len(), arp.protocol_len()), (6, 4));
        assert_eq!(
            ArpRepr::parse(&arp),
            Ok(ArpRepr {
                operation: Operation::Request,
                source_hardware_addr: EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05]),
                source_protocol_addr: Ipv4Addr::new(10, 244, 0, 5),
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: Ipv4Addr::new(169, 254, 1, 1),
            })
        );
    }

    #[test]
    fn reply_matches_what_the_kernel_sends() {
        // Node B's kernel answered ARP_REQUEST with ARP_REPLY; we must produce the same bytes.
        let mut frame = fixtures::ARP_REQUEST;
        reply_in_place(
            &mut frame,
            EthernetAddress([0x02, 0x00, 0x0a, 0x63, 0x00, 0x02]),
        )
        .unwrap();
        assert_eq!(frame, fixtures::ARP_REPLY);
    }

    #[test]
    fn answers_a_pod_asking_for_its_gateway() {
        let mut frame = fixtures::ARP_REQUEST_POD.to_vec();
        frame.resize(60, 0); // as padded by a NIC; the padding must survive untouched
        reply_in_place(&mut frame, GATEWAY_MAC).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
            0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 169, 254, 1, 1,
            0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05, 10, 244, 0, 5,
        ];
        assert_eq!(frame[..42], expected);
        assert_eq!(frame[42..], [0; 18]);
    }

    #[test]
    fn refuses_what_is_not_a_request_and_leaves_it_alone() {
        let mut reply = fixtures::ARP_REPLY;
        assert_eq!(
            reply_in_place(&mut reply, GATEWAY_MAC),
            Err(Error::Unrecognized)
        );
        assert_eq!(reply, fixtures::ARP_REPLY);

        let mut ipv4 = fixtures::VXLAN_UDP;
        assert_eq!(
            reply_in_place(&mut ipv4, GATEWAY_MAC),
            Err(Error::Unrecognized)
        );
        assert_eq!(ipv4, fixtures::VXLAN_UDP);

        let mut not_ethernet = fixtures::ARP_REQUEST;
        not_ethernet[15] = 6; // hardware type IEEE 802
        assert_eq!(
            reply_in_place(&mut not_ethernet, GATEWAY_MAC),
            Err(Error::Unrecognized)
        );

        let mut short = fixtures::ARP_REQUEST;
        assert_eq!(
            reply_in_place(&mut short[..41], GATEWAY_MAC),
            Err(Error::Truncated)
        );
        assert_eq!(
            reply_in_place(&mut short[..13], GATEWAY_MAC),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn emit_writes_every_byte() {
        let repr =
            ArpRepr::parse(&ArpPacket::new_checked(&fixtures::ARP_REPLY[14..]).unwrap()).unwrap();
        let mut bytes = [0xa5u8; PACKET_LEN + 2];
        repr.emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes[..PACKET_LEN], fixtures::ARP_REPLY[14..]);
        assert_eq!(bytes[PACKET_LEN..], [0xa5; 2]);
    }

    proptest! {
        #[test]
        fn repr_round_trip(op in any::<u16>(), sha in any::<[u8; 6]>(), spa in any::<[u8; 4]>(),
                           tha in any::<[u8; 6]>(), tpa in any::<[u8; 4]>()) {
            let repr = ArpRepr {
                operation: Operation::from(op),
                source_hardware_addr: EthernetAddress(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: EthernetAddress(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            };
            let mut bytes = vec![0xa5; repr.buffer_len()];
            repr.emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn reply_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = reply_in_place(&mut bytes, GATEWAY_MAC);
        }
    }
}
