//! The hot-path functions must never panic, whatever the wire hands them: random bytes, and
//! captured / freshly built frames with bytes flipped and tails cut off. Where a function
//! succeeds, what it returns must be consistent with the input.

use std::net::{Ipv4Addr, Ipv6Addr};

use encap::arp::{self, ArpPacket, ArpRepr, Operation};
use encap::ethernet::{EthernetAddress, EthernetFrame};
use encap::icmpv4::{self, IcmpError, Icmpv4Packet, Icmpv4Repr};
use encap::icmpv6::{self, Icmpv6Error};
use encap::ipv4::{self, Ipv4Packet, Ipv4Repr};
use encap::ipv6::{self, Ipv6Packet};
use encap::tcp::{TcpPacket, TcpRepr};
use encap::udp::{UdpPacket, UdpRepr};
use encap::vxlan::{self, VxlanEncap, VxlanPacket, VxlanProfile, VxlanRepr};
use encap::vxlan6::{self, VxlanEncap6};
use encap::{direct, flow, ipip};
use proptest::prelude::*;

#[path = "../src/fixtures.rs"]
mod fixtures;

const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const NODE_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11);
const NODE_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x12);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Valid frames to mutate: every capture, plus frames built by `VxlanEncap` for both
/// profiles and by `VxlanEncap6`.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = vec![
        fixtures::ARP_REQUEST_POD.to_vec(),
        fixtures::ARP_REQUEST.to_vec(),
        fixtures::ARP_REPLY.to_vec(),
        fixtures::VXLAN_ICMP_ECHO_REQUEST.to_vec(),
        fixtures::VXLAN_ICMP_ECHO_REPLY.to_vec(),
        fixtures::VXLAN_UDP.to_vec(),
        fixtures::VXLAN_ICMP_PORT_UNREACHABLE.to_vec(),
        fixtures::VXLAN_TCP_SYN.to_vec(),
        fixtures::VXLAN_TCP_RST.to_vec(),
        fixtures::frag_needed(),
        fixtures::NDP_NEIGHBOR_SOLICIT.to_vec(),
        fixtures::NDP_NEIGHBOR_ADVERT.to_vec(),
        fixtures::ICMPV6_ECHO_REQUEST.to_vec(),
    ];
    for profile in [VxlanProfile::FLANNEL, VxlanProfile::CALICO] {
        let inner = &fixtures::VXLAN_TCP_RST[50..];
        let mut frame = vec![0; vxlan::OVERHEAD + inner.len()];
        frame[vxlan::OVERHEAD..].copy_from_slice(inner);
        VxlanEncap::new(MAC, MAC, NODE_A, NODE_B, profile)
            .write(&mut frame, inner.len(), vxlan::flow_src_port(inner))
            .unwrap();
        seeds.push(frame);
    }
    let inner = &fixtures::VXLAN_TCP_RST[50..];
    let mut frame = vec![0; vxlan6::OVERHEAD + inner.len()];
    frame[vxlan6::OVERHEAD..].copy_from_slice(inner);
    VxlanEncap6::new(MAC, MAC, NODE_A6, NODE_B6, VxlanProfile::CALICO).write(&mut frame, inner.len(), 40_000, 1).unwrap();
    seeds.push(frame);
    seeds
}

/// A seed with up to 8 bytes changed, maybe cut short, and maybe with the outer IPv4
/// checksum repaired so that the mutation reaches the layers behind it.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (
        0..seeds.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
        any::<bool>(),
    )
        .prop_map(move |(which, edits, cut, fix_checksum)| {
            let mut frame = seeds[which].clone();
            for (at, value) in edits {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            if let Some(cut) = cut {
                frame.truncate(cut.index(frame.len() + 1));
            }
            match frame.get_mut(14..).map(Ipv4Packet::new_checked) {
                Some(Ok(mut ip)) if fix_checksum => ip.fill_checksum(),
                _ => {}
            }
            frame
        })
}

fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        mutated_frame()
    ]
}

/// Calls every parser and hot-path function on `frame` and checks what they return.
fn exercise(frame: &[u8]) -> Result<(), TestCaseError> {
    for profile in [VxlanProfile::FLANNEL, VxlanProfile::CALICO] {
        if let Ok(d) = vxlan::decap(frame, NODE_B, profile) {
            prop_assert!(d.inner.start <= d.inner.end && d.inner.end <= frame.len());
            prop_assert!(d.inner.len() >= 14);
            prop_assert_eq!(d.vni, profile.vni);
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            prop_assert!(ip.verify_checksum() && !ip.is_fragment());
            prop_assert_eq!(ip.dst_addr(), NODE_B);
        }
    }
    if let Ok(d) = vxlan6::decap6(frame, NODE_B6, VxlanProfile::CALICO) {
        prop_assert!(d.inner.start <= d.inner.end && d.inner.end <= frame.len());
        prop_assert!(d.inner.len() >= 14);
        prop_assert_eq!(Ipv6Packet::new_checked(&frame[14..]).unwrap().dst_addr(), NODE_B6);
    }
    if let Ok(d) = ipip::decap(frame, NODE_B) {
        prop_assert!(d.inner.start <= d.inner.end && d.inner.end <= frame.len());
        let inner = Ipv4Packet::new_checked(&frame[d.inner.clone()]).unwrap();
        prop_assert_eq!(usize::from(inner.total_len()), d.inner.len());
        let outer = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        prop_assert!(outer.verify_checksum() && !outer.is_fragment());
        prop_assert_eq!(outer.dst_addr(), NODE_B);
    }
    let _ = flow::parse_flow_info(frame.get(14..).unwrap_or(&[]));
    let port = vxlan::flow_src_port(frame);
    prop_assert!((vxlan::SRC_PORT_MIN..vxlan::SRC_PORT_MAX).contains(&port));

    let mut copy = frame.to_vec();
    if arp::reply_in_place(&mut copy, MAC).is_ok() {
        let reply = ArpRepr::parse(&ArpPacket::new_checked(&copy[14..]).unwrap()).unwrap();
        let request = ArpRepr::parse(&ArpPacket::new_checked(&frame[14..]).unwrap()).unwrap();
        prop_assert_eq!(reply.operation, Operation::Reply);
        prop_assert_eq!(reply.source_protocol_addr, request.target_protocol_addr);
        prop_assert_eq!(reply.target_hardware_addr, request.source_hardware_addr);
        prop_assert_eq!(
            EthernetFrame::new_checked(&copy[..]).unwrap().dst_addr(),
            request.source_hardware_addr
        );
    } else {
        prop_assert_eq!(&copy[..], frame);
    }
    let mut copy = frame.to_vec();
    let _ = direct::rewrite_macs(&mut copy, MAC, MAC);

    let mut copy = frame.to_vec();
    copy.resize(frame.len().max(icmpv6::ADVERT_FRAME_LEN), 0);
    match icmpv6::advert_in_place(&mut copy, GATEWAY6, MAC) {
        Ok(len) => {
            let ip = Ipv6Packet::new_checked(&copy[14..len]).unwrap();
            prop_assert_eq!(ip.src_addr(), GATEWAY6);
            prop_assert!(icmpv6::verify(GATEWAY6, ip.dst_addr(), ip.payload()));
            prop_assert_eq!(EthernetFrame::new_checked(&copy[..]).unwrap().dst_addr(), EthernetFrame::new_checked(frame).unwrap().src_addr());
        }
        Err(_) => prop_assert_eq!(&copy[..frame.len()], frame),
    }

    let _ = EthernetFrame::new_checked(frame)
        .map(|f| (f.src_addr(), f.dst_addr(), f.ethertype(), f.payload().len()));
    for ip_at in [0, 14, 64] {
        let Some(bytes) = frame.get(ip_at..) else {
            continue;
        };
        let _ = flow::parse_ipv4_flow(bytes);
        let _ = flow::parse_flow_info6(bytes);
        let _ = icmpv6::message_type(bytes);
        let _ = Ipv6Packet::new_checked(bytes).map(|p| (p.flow_label(), p.src_addr(), p.payload().len()));
        let mut copy = bytes.to_vec();
        if let Ok(hop_limit) = ipv6::decrement_hop_limit(&mut copy) {
            prop_assert_eq!(copy[7], hop_limit);
        }
        let mut out = [0u8; ipv6::MIN_MTU];
        if let Ok(len) = icmpv6::emit_error(&mut out, GATEWAY6, bytes, Icmpv6Error::PacketTooBig { mtu: 1280 }) {
            let ip = Ipv6Packet::new_checked(&out[..len]).unwrap();
            prop_assert!(icmpv6::verify(GATEWAY6, ip.dst_addr(), ip.payload()));
        }
        let mut copy = bytes.to_vec();
        let before = Ipv4Packet::new_checked(bytes).map(|p| p.verify_checksum());
        if let Ok(ttl) = ipv4::decrement_ttl(&mut copy) {
            // Only the TTL and the checksum change; a valid header stays valid.
            prop_assert_eq!(copy[8], ttl);
            for (i, (a, b)) in copy.iter().zip(bytes).enumerate() {
                prop_assert!(a == b || matches!(i, 8 | 10 | 11), "byte {} changed", i);
            }
            if let Ok(valid) = before {
                prop_assert_eq!(Ipv4Packet::new_checked(&copy[..]).unwrap().verify_checksum(), valid);
            }
        }
        let mut out = [0u8; icmpv4::MAX_ERROR_LEN];
        let _ = icmpv4::emit_error(&mut out, NODE_A, bytes, IcmpError::TtlExpired);
        if let Ok(ip) = Ipv4Packet::new_checked(bytes) {
            let _ = Ipv4Repr::parse(&ip);
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let l4 = ip.payload();
            let _ = UdpPacket::new_checked(l4)
                .map(|p| UdpRepr::parse(&p, src, dst).map(|r| r.payload.len()));
            let _ = TcpPacket::new_checked(l4)
                .map(|p| TcpRepr::parse(&p, src, dst).map(|r| r.payload.len()));
            let _ = Icmpv4Packet::new_checked(l4)
                .map(|p| Icmpv4Repr::parse(&p).map(|r| r.buffer_len()));
        }
    }
    for vxlan_at in [0, 42] {
        if let Some(bytes) = frame.get(vxlan_at..) {
            let _ = VxlanPacket::new_checked(bytes).map(|p| VxlanRepr::parse(&p));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn nothing_panics_on_random_or_mutated_frames(frame in any_frame()) {
        exercise(&frame)?;
    }

    #[test]
    fn encap_write_never_panics(out_len in 0usize..80, inner_len in any::<usize>(), src_port in any::<u16>()) {
        let encap = VxlanEncap::new(MAC, MAC, NODE_A, NODE_B, VxlanProfile::FLANNEL);
        let mut out = vec![0xa5; out_len];
        match encap.write(&mut out, inner_len, src_port) {
            Ok(()) => prop_assert!(out_len >= vxlan::OVERHEAD && inner_len <= vxlan::MAX_INNER_LEN),
            Err(_) => prop_assert!(out.iter().all(|&b| b == 0xa5)),
        }
    }
}

#[test]
fn every_seed_is_valid_before_mutation() {
    // Guards the mutation test: its seeds must start out as what they claim to be.
    for seed in seeds() {
        let frame = EthernetFrame::new_checked(&seed[..]).unwrap();
        match frame.ethertype() {
            encap::EtherType::Arp => {
                ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
            }
            encap::EtherType::Ipv6 if vxlan6::decap6(&seed, NODE_B6, VxlanProfile::CALICO).is_ok() => {}
            encap::EtherType::Ipv6 => {
                let ip = Ipv6Packet::new_checked(frame.payload()).unwrap();
                assert!(icmpv6::verify(ip.src_addr(), ip.dst_addr(), ip.payload()));
                flow::parse_flow_info6(frame.payload()).unwrap();
            }
            _ => {
                let ip =
                    Ipv4Repr::parse(&Ipv4Packet::new_checked(frame.payload()).unwrap()).unwrap();
                if ip.protocol == encap::IpProtocol::Udp {
                    let profile = if seed[36..38] == 4789u16.to_be_bytes() {
                        VxlanProfile::CALICO
                    } else {
                        VxlanProfile::FLANNEL
                    };
                    vxlan::decap(&seed, ip.dst_addr, profile).unwrap();
                }
            }
        }
    }
}
