//! The IPv6 half of the pipeline (`pipeline/ipv6.rs`) on byte frames: Neighbor Discovery
//! for the gateway, local and cross-node forwarding inside VXLAN, anti-spoofing, Packet Too
//! Big, hop limit, policy on IPv6, and arbitrary IPv6 bytes.

use std::net::Ipv6Addr;

use encap::{icmpv6, ipv6::{Ipv6Packet, Ipv6Repr}, vxlan6};

use super::*;
use crate::snapshot::GATEWAY_IP6;

const V6_A1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const V6_A2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 3);
const V6_B1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 2);

/// [`cluster`] with an IPv6 pod subnet per node and an IPv6 address per pod.
fn dual_stack(tunnel: Tunnel) -> (Snapshot, Snapshot) {
    let (mut sa, mut sb) = cluster(tunnel);
    for (snap, local, remote, pods) in [
        (&mut sa, "fd00:10:244:1::/64", "fd00:10:244:2::/64", &[(POD_A1, V6_A1, MAC_A1, P1), (POD_A2, V6_A2, MAC_A2, P2)][..]),
        (&mut sb, "fd00:10:244:2::/64", "fd00:10:244:1::/64", &[(POD_B1, V6_B1, MAC_B1, P1)][..]),
    ] {
        snap.routes6.insert(local.parse().unwrap(), RouteTarget::LocalPods);
        snap.routes6.insert(remote.parse().unwrap(), RouteTarget::Node(0));
        for &(ip, ip6, mac, port) in pods {
            snap.add_endpoint(Endpoint { ip, ip6: Some(ip6), mac, port, worker: 0 });
        }
    }
    (sa, sb)
}

/// An Ethernet/IPv6 frame with `next_header` and `payload`, in a UMEM-sized buffer.
fn v6_frame(src_mac: EthernetAddress, dst_mac: EthernetAddress, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, next_header: u8, payload: &[u8]) -> (Vec<u8>, usize) {
    let ip = Ipv6Repr { src_addr: src, dst_addr: dst, next_header, payload_len: payload.len() as u16, hop_limit, traffic_class: 0, flow_label: 0 };
    let len = 14 + 40 + payload.len();
    let mut buf = vec![0xa5; BUF];
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EtherType::Ipv6 }.emit(&mut EthernetFrame::new_unchecked(&mut buf[..len]));
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..len]));
    buf[54..len].copy_from_slice(payload);
    (buf, len)
}

/// UDP (checksum 0: the pipeline does not read it) from port 40000 to 5201.
fn v6_udp(src_mac: EthernetAddress, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, data: &[u8]) -> (Vec<u8>, usize) {
    let mut udp = vec![0x9c, 0x40, 0x14, 0x51];
    udp.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    v6_frame(src_mac, GW, src, dst, hop_limit, 17, &udp)
}

/// An ICMPv6 message from `src` to `dst` with a valid checksum.
fn v6_icmp(src_mac: EthernetAddress, dst_mac: EthernetAddress, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, mut msg: Vec<u8>) -> (Vec<u8>, usize) {
    let c = icmpv6::checksum(src, dst, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    v6_frame(src_mac, dst_mac, src, dst, hop_limit, icmpv6::NEXT_HEADER, &msg)
}

/// A Neighbor Solicitation for `target` from `src` with a source link-layer option.
fn solicit(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8) -> (Vec<u8>, usize) {
    let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[1, 1]);
    msg.extend_from_slice(&MAC_A1.0);
    let t = target.octets();
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(t[13]), u16::from_be_bytes([t[14], t[15]]));
    v6_icmp(MAC_A1, EthernetAddress([0x33, 0x33, 0xff, t[13], t[14], t[15]]), src, group, hop_limit, msg)
}

fn v6_of(frame: &[u8]) -> Ipv6Packet<&[u8]> {
    Ipv6Packet::new_checked(&frame[14..]).expect("valid IPv6")
}

#[test]
fn advertises_the_gateway_to_its_pod() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    let (mut buf, len) = solicit(V6_A1, GATEWAY_IP6, 255);
    let Verdict::Forward { port: P1, len: out, kind: Kind::NdpReply, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("no advertisement") };
    let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_A1));
    let ip = v6_of(&buf[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (GATEWAY_IP6, V6_A1, 255));
    let icmp = ip.payload();
    assert!(icmpv6::verify(GATEWAY_IP6, V6_A1, icmp));
    assert_eq!(icmp[0], 136, "a neighbor advertisement");
    assert_eq!(icmp[4] & 0xe0, 0xe0, "router, solicited, override");
    assert_eq!(&icmp[8..24], &GATEWAY_IP6.octets());
    assert_eq!((icmp[24], icmp[25], &icmp[26..32]), (2, 1, &GW.0[..]), "target link-layer address: the gateway MAC");
}

#[test]
fn other_neighbor_discovery_is_dropped_and_counted() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    for (mut buf, len) in [
        solicit(V6_A1, GATEWAY_IP6, 254),
        solicit(V6_A1, V6_A2, 255),
        solicit(Ipv6Addr::UNSPECIFIED, GATEWAY_IP6, 255),
        v6_icmp(MAC_A1, GW, V6_A1, "ff02::2".parse().unwrap(), 255, vec![133, 0, 0, 0, 0, 0, 0, 0]),
    ] {
        assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NdpIgnored));
    }
}

#[test]
fn routes_ipv6_between_local_pods() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_A2, 64, b"hello");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, worker: 0, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_A2));
    assert_eq!(v6_of(&buf[..len]).hop_limit(), 63);
    assert_eq!(&buf[len - 5..len], b"hello");
}

#[test]
fn carries_ipv6_inside_vxlan_over_the_ipv4_underlay() {
    let (sa, sb) = dual_stack(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"across");
    let Verdict::Forward { port: UPLINK, len: out, kind: Kind::Encapsulated, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not encapsulated") };
    assert_eq!(out, len + vxlan::OVERHEAD);
    let outer = ip_of(&buf[..out]);
    assert_eq!((outer.src_addr(), outer.dst_addr()), (A_IP, B_IP));
    let inner = &buf[vxlan::OVERHEAD..out];
    let eth = EthernetFrame::new_checked(inner).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr(), eth.ethertype()), (A_VTEP, B_VTEP, EtherType::Ipv6));
    assert_eq!(v6_of(inner).hop_limit(), 63);

    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Forward { port: P1, worker: 0, len, kind: Kind::Decapsulated });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_B1));
    assert_eq!((v6_of(&buf[..len]).dst_addr(), v6_of(&buf[..len]).hop_limit()), (V6_B1, 62));
}

const A_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11);
const B_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x12);
/// B's `vxlan-v6.calico` MAC, which is not its IPv4 VTEP's (Calico gives each device its own).
const B_VTEP6: EthernetAddress = EthernetAddress([0x0e, 0xbb, 0, 0, 0, 6]);

/// [`dual_stack`] with an IPv6 underlay address on both nodes (next hops resolved).
fn dual_stack_underlay6(tunnel: Tunnel) -> (Snapshot, Snapshot) {
    let (mut sa, mut sb) = dual_stack(tunnel);
    sa.node.node_ip6 = Some(A_IP6);
    sb.node.node_ip6 = Some(B_IP6);
    // B answers to one VTEP MAC; A knows it as B's IPv6 one (its IPv4 view keeps B_VTEP, as
    // for a Calico node with two devices).
    sb.node.vtep_mac = B_VTEP6;
    for (snap, ip6, vtep6, mac) in [(&mut sa, B_IP6, B_VTEP6, B_MAC), (&mut sb, A_IP6, A_VTEP, A_MAC)] {
        let node = snap.nodes.pop().unwrap().with_underlay6(&snap.node, ip6, vtep6, Some(mac), tunnel);
        snap.nodes_by_ip.clear();
        snap.add_node(node);
    }
    (sa, sb)
}

#[test]
fn carries_ipv6_inside_vxlan_over_the_ipv6_underlay_with_its_udp_checksum() {
    let (sa, sb) = dual_stack_underlay6(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"over ipv6");
    let Verdict::Forward { port: UPLINK, len: out, kind: Kind::Encapsulated, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not encapsulated") };
    assert_eq!(out, len + vxlan6::OVERHEAD);
    let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr(), eth.ethertype()), (A_MAC, B_MAC, EtherType::Ipv6));
    let outer = v6_of(&buf[..out]);
    assert_eq!((outer.src_addr(), outer.dst_addr(), outer.next_header(), outer.hop_limit()), (A_IP6, B_IP6, 17, 64));
    let udp = outer.payload();
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), VxlanProfile::FLANNEL.port);
    let sum = encap::checksum::combine(&[encap::checksum::pseudo_header6(A_IP6, B_IP6, 17, udp.len() as u32), encap::checksum::data(udp)]);
    assert_eq!(sum, 0xffff, "the outer UDP checksum is right");
    let inner = &buf[vxlan6::OVERHEAD..out];
    let ie = EthernetFrame::new_checked(inner).unwrap();
    assert_eq!((ie.src_addr(), ie.dst_addr()), (A_VTEP, B_VTEP6), "inner destination: B's IPv6 VTEP MAC");
    assert_eq!(v6_of(inner).hop_limit(), 63);

    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Forward { port: P1, worker: 0, len, kind: Kind::Decapsulated });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_B1));
    assert_eq!((v6_of(&buf[..len]).dst_addr(), &buf[len - 9..len]), (V6_B1, &b"over ipv6"[..]));

    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"v4");
    let Verdict::Forward { len: out, kind: Kind::Encapsulated, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not encapsulated") };
    assert_eq!((out, ip_of(&buf[..out]).dst_addr()), (len + vxlan::OVERHEAD, B_IP), "IPv4 pods stay on the IPv4 underlay");
}

#[test]
fn ipv6_underlay_decap_accepts_only_known_nodes_and_counts_the_rest() {
    let (sa, sb) = dual_stack_underlay6(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"x");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!() };
    let frame = buf.clone();
    let mut stranger = frame.clone();
    stranger[14 + 8 + 15] ^= 1; // the outer source address
    assert_eq!(process(&sb, 0, UPLINK, &mut stranger, out), Verdict::Drop(DropReason::UnknownVtep));
    let mut wrong_vni = frame.clone();
    wrong_vni[14 + 40 + 8 + 6] ^= 1;
    assert_eq!(process(&sb, 0, UPLINK, &mut wrong_vni, out), Verdict::Drop(DropReason::WrongVni));
    let mut not_ours = frame.clone();
    not_ours[14 + 24 + 15] ^= 1; // the outer destination address
    assert_eq!(process(&sb, 0, UPLINK, &mut not_ours, out), Verdict::Drop(DropReason::NotLocal), "to another address: a plain IPv6 packet, for no local pod");
    let mut cut = frame.clone();
    assert_eq!(process(&sb, 0, UPLINK, &mut cut, 14 + 40 + 4), Verdict::Drop(DropReason::Truncated));
    let (_, sb4) = dual_stack(Tunnel::Vxlan);
    let mut buf = frame;
    assert_eq!(process(&sb4, 0, UPLINK, &mut buf, out), Verdict::Drop(DropReason::UnsupportedEtherType), "a node without an IPv6 underlay");
}

#[test]
fn the_ipv6_underlay_leaves_70_bytes_less_for_the_packet() {
    let (sa, _) = dual_stack_underlay6(Tunnel::Vxlan);
    let room = 1500 - vxlan6::OVERHEAD;
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, &vec![7; room - 48]);
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { kind: Kind::Encapsulated, .. }), "{room} bytes fit");
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, &vec![7; room - 47]);
    let Verdict::Forward { kind: Kind::IcmpError, len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("no packet too big") };
    let icmp = v6_of(&buf[..out]).payload().to_vec();
    assert_eq!((icmp[0], u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]])), (2, room as u32), "packet too big with the MTU that fits");
}

#[test]
fn direct_routing_carries_ipv6_to_the_nodes_ipv6_next_hop_and_back() {
    let (sa, sb) = dual_stack_underlay6(Tunnel::None);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"direct");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr(), eth.ethertype()), (A_MAC, B_MAC, EtherType::Ipv6));
    assert_eq!((v6_of(&buf[..len]).dst_addr(), v6_of(&buf[..len]).hop_limit()), (V6_B1, 63));
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Forward { port: P1, worker: 0, len, kind: Kind::Routed });
    assert_eq!(EthernetFrame::new_checked(&buf[..len]).unwrap().dst_addr(), MAC_B1);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_A2, 64, b"x");
    buf[..6].copy_from_slice(&B_MAC.0);
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::NotLocal), "plain IPv6 from the underlay reaches local pods only");
    let (sa4, _) = dual_stack(Tunnel::None);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"x");
    assert_eq!(process(&sa4, 0, P1, &mut buf, len), Verdict::Drop(DropReason::Ipv6NoTunnel), "no IPv6 underlay to route over");
}

#[test]
fn an_unresolved_ipv6_next_hop_is_a_counted_drop() {
    let (mut sa, _) = dual_stack_underlay6(Tunnel::Vxlan);
    let node = sa.nodes.pop().unwrap();
    let node = RemoteNode { underlay6: None, ..node }.with_underlay6(&sa.node, B_IP6, B_VTEP6, None, Tunnel::Vxlan);
    sa.nodes.push(node);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NeighbourUnresolved), "never over IPv4 instead, never to a guessed MAC");
}

#[test]
fn refuses_spoofed_sources_and_what_it_cannot_carry() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_A1, V6_A2, V6_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::Spoofed), "a2's address from a1's port");
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, "2001:db8::1".parse().unwrap(), 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute), "no IPv6 way out of the cluster");
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_A2, 1, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::TtlExpired));
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"x");
    buf[19] = 200;
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::BadIpHeader), "payload length beyond the frame");
    for tunnel in [Tunnel::Ipip, Tunnel::None] {
        let (sa, _) = dual_stack(tunnel);
        let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"x");
        assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::Ipv6NoTunnel), "{tunnel:?}");
    }
    let (_, sb) = dual_stack(Tunnel::Vxlan);
    let (mut buf, len) = v6_udp(MAC_B1, V6_B1, V6_A1, 64, b"x");
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::UnsupportedEtherType), "plain IPv6 on the uplink");
}

#[test]
fn a_packet_too_big_for_the_tunnel_gets_packet_too_big_back() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    let data = vec![7u8; 1500 - 50 - 40 - 8 + 1];
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, &data);
    let Verdict::Forward { port: P1, len: out, kind: Kind::IcmpError, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("no ICMPv6 error") };
    let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr(), eth.ethertype()), (GW, MAC_A1, EtherType::Ipv6));
    let ip = v6_of(&buf[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.next_header()), (GATEWAY_IP6, V6_A1, icmpv6::NEXT_HEADER));
    let icmp = ip.payload();
    assert!(icmpv6::verify(GATEWAY_IP6, V6_A1, icmp));
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]), 1450, "the uplink MTU less VXLAN's 50 bytes");
    assert!(out - 14 <= 1280, "an ICMPv6 error fits the IPv6 minimum MTU");
    assert_eq!(&icmp[8 + 24..8 + 40], &V6_B1.octets(), "quotes the offending packet");
}

#[test]
fn ipv6_policy_denies_by_ip_block_and_passes_replies() {
    let (sa, mut sb) = dual_stack(Tunnel::Vxlan);
    let mut world = World::new();
    for (name, ip, ip6) in [("a1", POD_A1, V6_A1), ("a2", POD_A2, V6_A2), ("b1", POD_B1, V6_B1)] {
        world.add_endpoint(PolicyEndpoint::new("default", name, &[("app", name)], ip).with_ip6(ip6));
    }
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b1, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: b1}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{ipBlock: {cidr: 'fd00:10:244:1::/64', except: ['fd00:10:244:1::3/128']}}]}]\n";
    let policies = parse_manifests(yaml, "test.yaml").unwrap();
    sb.policy = PolicyCompiler::from_world(&world, &policies).unwrap().tables().unwrap();

    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, b"in the block");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!() };
    assert!(matches!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Forward { port: P1, .. }));
    let (mut buf, len) = v6_udp(MAC_A2, V6_A2, V6_B1, 64, b"excepted");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P2, &mut buf, len) else { panic!() };
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Drop(DropReason::PolicyDeniedIngress));
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"v4");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!() };
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Drop(DropReason::PolicyDeniedIngress), "an IPv6 block allows no IPv4");

    // b1's reply to a1 is part of the connection a1 opened: tracked in the IPv6 table.
    let before = counter(B_IP, |c| &c.ct_established);
    let mut reply = vec![0x14, 0x51, 0x9c, 0x40, 0, 9, 0, 0, b'r'];
    let (mut buf, len) = v6_frame(MAC_B1, GW, V6_B1, V6_A1, 64, 17, &reply);
    assert!(matches!(process(&sb, 0, P1, &mut buf, len), Verdict::Forward { kind: Kind::Encapsulated, .. }));
    assert_eq!(counter(B_IP, |c| &c.ct_established), before + 1);
    reply[0] = 0x20;
    let (mut buf, len) = v6_frame(MAC_B1, GW, V6_B1, V6_A1, 64, 17, &reply);
    assert!(matches!(process(&sb, 0, P1, &mut buf, len), Verdict::Forward { .. }), "b1 may open its own (no egress policy)");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No IPv6 input panics, from a pod or inside VXLAN from another node.
    #[test]
    fn arbitrary_ipv6_never_panics(body in proptest::collection::vec(any::<u8>(), 0..160), from_pod in any::<bool>(), hdr in any::<u8>()) {
        let (sa, sb) = dual_stack(Tunnel::Vxlan);
        let (mut buf, _) = v6_udp(MAC_A1, V6_A1, V6_B1, 64, &[]);
        buf[54..54 + body.len()].copy_from_slice(&body);
        buf[20] = hdr;
        buf[18..20].copy_from_slice(&(body.len() as u16).to_be_bytes());
        let len = 54 + body.len();
        let v = if from_pod {
            process(&sa, 0, P1, &mut buf, len)
        } else {
            buf[6..12].copy_from_slice(&A_VTEP.0);
            buf[..6].copy_from_slice(&B_VTEP.0);
            let e = VxlanEncap::new(A_MAC, B_MAC, A_IP, B_IP, VxlanProfile::FLANNEL);
            buf.copy_within(..len, vxlan::OVERHEAD);
            e.write(&mut buf[..vxlan::OVERHEAD], len, 50000).unwrap();
            process(&sb, 0, UPLINK, &mut buf, len + vxlan::OVERHEAD)
        };
        if let Verdict::Forward { len, .. } = v {
            prop_assert!(len <= BUF);
        }
    }

    /// Nor any frame inside VXLAN over the IPv6 underlay, or cut short anywhere.
    #[test]
    fn arbitrary_frames_over_the_ipv6_underlay_never_panic(inner in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
        let (_, sb) = dual_stack_underlay6(Tunnel::Vxlan);
        let mut buf = vec![0u8; BUF];
        let len = vxlan6::OVERHEAD + inner.len();
        buf[vxlan6::OVERHEAD..len].copy_from_slice(&inner);
        vxlan6::VxlanEncap6::new(A_MAC, B_MAC, A_IP6, B_IP6, VxlanProfile::FLANNEL).write(&mut buf, inner.len(), 50000, 1).unwrap();
        let len = cut.index(len + 1);
        if let Verdict::Forward { len, .. } = process(&sb, 0, UPLINK, &mut buf, len) {
            prop_assert!(len <= BUF);
        }
    }
}

#[test]
fn listener_reports_behind_a_hop_by_hop_header_count_as_mld_and_other_multicast_stays() {
    let (sa, _) = dual_stack(Tunnel::Vxlan);
    // MLDv2 report: hop-by-hop (router alert) then ICMPv6 143.
    let mut hbh_icmp = vec![58, 0, 5, 2, 0, 0, 1, 0];
    hbh_icmp.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    let (mut buf, len) = v6_frame(MAC_A1, EthernetAddress([0x33, 0x33, 0, 0, 0, 0x16]), V6_A1, "ff02::16".parse().unwrap(), 1, 0, &hbh_icmp);
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NdpIgnored));
    let (mut buf, len) = v6_udp(MAC_A1, V6_A1, "ff02::fb".parse().unwrap(), 255, b"mdns");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute));
}
