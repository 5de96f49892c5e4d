//! The pipeline on byte frames: two nodes' snapshots, frames built with encap's Reprs,
//! every verdict and every rewritten field checked.

use std::net::Ipv4Addr;

use encap::{
    EtherType, EthernetAddress, IpProtocol,
    arp::{ArpPacket, ArpRepr, Operation},
    ethernet::{EthernetFrame, EthernetRepr},
    ipv4::{Ipv4Packet, Ipv4Repr},
    udp::{UdpPacket, UdpRepr},
    vxlan::{self, VxlanEncap, VxlanProfile},
};
use proptest::prelude::*;

use super::*;
use crate::{
    counters::WorkerCounters,
    policy::FlowTables,
    snapshot::{Endpoint, NodeConfig, Outside, RemoteNode, RouteTarget},
};
use encap::icmpv4::{Icmpv4Packet, Message};

/// A node's flow tables and counters, as its worker would hold them.
struct NodeFlows {
    tables: FlowTables,
    counters: WorkerCounters,
}

thread_local! {
    /// One set of flow tables per node address, for the test running on this thread.
    static FLOWS: std::cell::RefCell<std::collections::HashMap<Ipv4Addr, &'static NodeFlows>> = Default::default();
}

/// The flow tables of the node at `ip` in this test.
fn flows(ip: Ipv4Addr) -> &'static NodeFlows {
    FLOWS.with(|f| {
        *f.borrow_mut()
            .entry(ip)
            .or_insert_with(|| Box::leak(Box::new(NodeFlows { tables: FlowTables::new(1024, 1024, 1), counters: WorkerCounters::default() })))
    })
}

/// The pipeline, with the flow tables of the snapshot's node.
fn process(snap: &Snapshot, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let f = flows(snap.node.node_ip);
    super::process(snap, &f.tables.state(0, &f.counters, f.tables.now_ms()), worker, in_port, buf, len)
}

const BUF: usize = 4096 - 256;
/// Pod ports (ids below MAX_UPLINK_QUEUES are the uplink's queues).
const P1: PortId = crate::snapshot::MAX_UPLINK_QUEUES as PortId;
const P2: PortId = P1 + 1;
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 12);
const A_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x11]);
const B_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x12]);
const A_VTEP: EthernetAddress = EthernetAddress([0x0e, 0xaa, 0, 0, 0, 1]);
const B_VTEP: EthernetAddress = EthernetAddress([0x0e, 0xbb, 0, 0, 0, 2]);
const GW: EthernetAddress = EthernetAddress([0xee; 6]);
const POD_A1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const POD_B1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const MAC_A1: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 1, 2]);
const MAC_A2: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 1, 3]);
const MAC_B1: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 2, 2]);

fn node(ip: Ipv4Addr, mac: EthernetAddress, vtep: EthernetAddress) -> NodeConfig {
    NodeConfig { node_ip: ip, node_ip6: None, uplink_mac: mac, vtep_mac: vtep, gateway_mac: GW, vxlan: VxlanProfile::FLANNEL, uplink_mtu: 1500 }
}

/// Node A (pods .1.2 on port P1, .1.3 on port P2) and node B (pod .2.2 on port P1), each
/// knowing the other with a resolved next hop.
fn cluster(tunnel: Tunnel) -> (Snapshot, Snapshot) {
    let a = node(A_IP, A_MAC, A_VTEP);
    let b = node(B_IP, B_MAC, B_VTEP);
    let mut sa = Snapshot::new(1, a.clone());
    sa.routes.insert("10.244.1.0/24".parse().unwrap(), RouteTarget::LocalPods);
    sa.add_endpoint(Endpoint { ip: POD_A1, ip6: None, mac: MAC_A1, port: P1, worker: 0 });
    sa.add_endpoint(Endpoint { ip: POD_A2, ip6: None, mac: MAC_A2, port: P2, worker: 0 });
    let ib = sa.add_node(RemoteNode::new(&a, "b".into(), B_IP, B_VTEP, Some(B_MAC), tunnel));
    sa.routes.insert("10.244.2.0/24".parse().unwrap(), RouteTarget::Node(ib));
    let mut sb = Snapshot::new(1, b.clone());
    sb.routes.insert("10.244.2.0/24".parse().unwrap(), RouteTarget::LocalPods);
    sb.add_endpoint(Endpoint { ip: POD_B1, ip6: None, mac: MAC_B1, port: P1, worker: 0 });
    let ia = sb.add_node(RemoteNode::new(&b, "a".into(), A_IP, A_VTEP, Some(A_MAC), tunnel));
    sb.routes.insert("10.244.1.0/24".parse().unwrap(), RouteTarget::Node(ia));
    (sa, sb)
}

fn vxlan_cluster() -> (Snapshot, Snapshot) {
    cluster(Tunnel::Vxlan)
}

/// An Ethernet/IPv4/UDP frame in a UMEM-sized buffer; returns (buffer, frame length).
fn udp_frame(src_mac: EthernetAddress, dst_mac: EthernetAddress, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> (Vec<u8>, usize) {
    udp_ports_frame(src_mac, dst_mac, (src, 40000), (dst, 5201), ttl, payload)
}

/// [`udp_frame`] with chosen ports.
fn udp_ports_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    (src, src_port): (Ipv4Addr, u16),
    (dst, dst_port): (Ipv4Addr, u16),
    ttl: u8,
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let udp = UdpRepr { src_port, dst_port, payload };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::Udp,
        payload_len: udp.buffer_len(),
        ttl,
        ident: 7,
        dont_frag: true,
        dscp: 0,
        ecn: 0,
    };
    let eth = EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EtherType::Ipv4 };
    let len = 14 + ip.buffer_len() + ip.payload_len;
    let mut buf = vec![0xa5; BUF];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..len]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..len]));
    udp.emit(&mut UdpPacket::new_unchecked(&mut buf[34..len]), src, dst);
    (buf, len)
}

fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_checked(&frame[14..]).expect("valid IPv4")
}

#[test]
fn answers_arp_for_the_gateway_from_its_own_pod() {
    let (sa, _) = vxlan_cluster();
    let req = ArpRepr {
        operation: Operation::Request,
        source_hardware_addr: MAC_A1,
        source_protocol_addr: POD_A1,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY_IP,
    };
    let mut buf = vec![0xa5; BUF];
    EthernetRepr { src_addr: MAC_A1, dst_addr: EthernetAddress::BROADCAST, ethertype: EtherType::Arp }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[..42]));
    req.emit(&mut ArpPacket::new_unchecked(&mut buf[14..42]));
    let v = process(&sa, 0, P1, &mut buf, 42);
    assert_eq!(v, Verdict::Forward { port: P1, worker: 0, len: 42, kind: Kind::ArpReply });
    let eth = EthernetFrame::new_checked(&buf[..42]).unwrap();
    assert_eq!((eth.dst_addr(), eth.src_addr()), (MAC_A1, GW));
    let reply = ArpRepr::parse(&ArpPacket::new_checked(&buf[14..42]).unwrap()).unwrap();
    assert_eq!(reply.operation, Operation::Reply);
    assert_eq!((reply.source_hardware_addr, reply.source_protocol_addr), (GW, GATEWAY_IP));
    assert_eq!((reply.target_hardware_addr, reply.target_protocol_addr), (MAC_A1, POD_A1));

    // The same request claiming another pod's address is not answered.
    let mut spoof = buf.clone();
    EthernetRepr { src_addr: MAC_A1, dst_addr: EthernetAddress::BROADCAST, ethertype: EtherType::Arp }
        .emit(&mut EthernetFrame::new_unchecked(&mut spoof[..42]));
    ArpRepr { source_protocol_addr: POD_A2, ..req }.emit(&mut ArpPacket::new_unchecked(&mut spoof[14..42]));
    assert_eq!(process(&sa, 0, P1, &mut spoof, 42), Verdict::Drop(DropReason::ArpIgnored));
}

#[test]
fn routes_between_local_pods_rewriting_macs_and_ttl() {
    let (sa, _) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_A2, 64, b"hello");
    let v = process(&sa, 0, P1, &mut buf, len);
    assert_eq!(v, Verdict::Forward { port: P2, worker: 0, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_A2));
    let ip = ip_of(&buf[..len]);
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(POD_A1, POD_A2), "L4 untouched");
}

#[test]
fn vxlan_round_trip_between_two_nodes() {
    let (sa, sb) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"across nodes");
    let original_payload = ip_of(&buf[..len]).payload().to_vec();
    let Verdict::Forward { port, len: out, kind, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("dropped") };
    assert_eq!((port, kind, out), (UPLINK, Kind::Encapsulated, len + vxlan::OVERHEAD));
    let outer = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (A_MAC, B_MAC));
    let d = vxlan::decap(&buf[..out], B_IP, VxlanProfile::FLANNEL).expect("node B accepts it");
    assert_eq!((d.outer_src_ip, d.vni), (A_IP, 1));
    let inner = EthernetFrame::new_checked(&buf[d.inner.clone()]).unwrap();
    assert_eq!((inner.src_addr(), inner.dst_addr()), (A_VTEP, B_VTEP), "Flannel's inner MACs");

    let Verdict::Forward { port, len: delivered, kind, .. } = process(&sb, 0, UPLINK, &mut buf, out) else { panic!("dropped on B") };
    assert_eq!((port, kind, delivered), (P1, Kind::Decapsulated, len));
    let eth = EthernetFrame::new_checked(&buf[..delivered]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_B1));
    let ip = ip_of(&buf[..delivered]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.ttl()), (POD_A1, POD_B1, 62));
    assert!(ip.verify_checksum());
    assert_eq!(ip.payload(), &original_payload[..]);
}

#[test]
fn direct_profile_rewrites_to_the_next_hop_without_encapsulation() {
    let (sa, sb) = cluster(Tunnel::None);
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"host-gw");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (A_MAC, B_MAC));
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Forward { port: P1, worker: 0, len, kind: Kind::Routed });
    assert_eq!(ip_of(&buf[..len]).ttl(), 62);
}

#[test]
fn refuses_spoofed_sources_and_unknown_ports() {
    let (sa, _) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A2, POD_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::Spoofed), "wrong source IP");
    let (mut buf, len) = udp_frame(MAC_A2, GW, POD_A1, POD_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::Spoofed), "wrong source MAC");
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P2 + 7, &mut buf, len), Verdict::Drop(DropReason::NoEndpoint));
}

#[test]
fn counts_ttl_expiry_no_route_and_unresolved_neighbours() {
    let (mut sa, _) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 1, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::TtlExpired));
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, Ipv4Addr::new(8, 8, 8, 8), 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute));
    sa.nodes[0] = RemoteNode::new(&sa.node.clone(), "b".into(), B_IP, B_VTEP, None, Tunnel::Vxlan);
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NeighbourUnresolved));
}

#[test]
fn a_df_packet_too_big_for_the_tunnel_gets_fragmentation_needed_with_the_mtu() {
    for (tunnel, mtu) in [(Tunnel::Vxlan, 1450), (Tunnel::Ipip, 1480), (Tunnel::None, 1500)] {
        let (sa, _) = cluster(tunnel);
        let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, &vec![0u8; usize::from(mtu) - 28]);
        assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: UPLINK, .. }), "{tunnel:?}: exactly the tunnel MTU fits");
        let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, &vec![0u8; usize::from(mtu) - 28 + 1]);
        let original = buf[14..len].to_vec();
        let Verdict::Forward { port, len: out, kind: Kind::IcmpError, .. } = process(&sa, 0, P1, &mut buf, len) else {
            panic!("{tunnel:?}: no ICMP error for a DF packet one byte over")
        };
        assert_eq!(port, P1, "back to the sending pod");
        let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_A1));
        let ip = ip_of(&buf[..out]);
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.protocol()), (GATEWAY_IP, POD_A1, IpProtocol::Icmp));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.msg_code(), icmp.next_hop_mtu()), (Message::DstUnreachable, 4, mtu), "{tunnel:?}");
        assert_eq!(&icmp.data()[..28], &original[..28], "quotes the header and 8 bytes of what was sent");
    }
    // Without DF: dropped and counted, never fragmented.
    let (sa, _) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, &[0u8; 1450 - 28 + 1]);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[14..len]);
    ip.set_dont_frag(false);
    ip.fill_checksum();
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::TooBig));
}

#[test]
fn ipip_round_trip_between_two_nodes() {
    let (sa, sb) = cluster(Tunnel::Ipip);
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"over tunl0");
    let original_payload = ip_of(&buf[..len]).payload().to_vec();
    let Verdict::Forward { port, len: out, kind, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("dropped") };
    assert_eq!((port, kind, out), (UPLINK, Kind::Encapsulated, len + 20), "IP-in-IP adds 20 bytes");
    let outer = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (A_MAC, B_MAC));
    let d = encap::ipip::decap(&buf[..out], B_IP).expect("node B accepts it");
    assert_eq!(d.outer_src_ip, A_IP);
    let Verdict::Forward { port, len: delivered, kind, .. } = process(&sb, 0, UPLINK, &mut buf, out) else { panic!("dropped on B") };
    assert_eq!((port, kind, delivered), (P1, Kind::Decapsulated, len));
    let eth = EthernetFrame::new_checked(&buf[..delivered]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr(), eth.ethertype()), (GW, MAC_B1, EtherType::Ipv4));
    let ip = ip_of(&buf[..delivered]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.ttl()), (POD_A1, POD_B1, 62));
    assert!(ip.verify_checksum());
    assert_eq!(ip.payload(), &original_payload[..]);
    // From a node the tables do not know: refused.
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"x");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!() };
    buf[14 + 12..14 + 16].copy_from_slice(&[10, 100, 0, 99]);
    Ipv4Packet::new_unchecked(&mut buf[14..out]).fill_checksum();
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Drop(DropReason::UnknownVtep));
}

/// A VXLAN frame from `from` (outer source) carrying a frame for pod B1.
fn encapsulated(from: Ipv4Addr, vni: u32, inner_dst_mac: EthernetAddress) -> (Vec<u8>, usize) {
    let (mut buf, len) = udp_frame(A_VTEP, inner_dst_mac, POD_A1, POD_B1, 63, b"in");
    let profile = VxlanProfile { vni, port: 8472 };
    let e = VxlanEncap::new(A_MAC, B_MAC, from, B_IP, profile);
    buf.copy_within(..len, vxlan::OVERHEAD);
    e.write(&mut buf[..vxlan::OVERHEAD], len, 50000).unwrap();
    (buf, len + vxlan::OVERHEAD)
}

#[test]
fn decap_accepts_only_known_nodes_the_right_vni_and_our_vtep_mac() {
    let (_, sb) = vxlan_cluster();
    let (mut buf, len) = encapsulated(A_IP, 1, B_VTEP);
    assert!(matches!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Forward { port: P1, kind: Kind::Decapsulated, .. }));
    let (mut buf, len) = encapsulated(Ipv4Addr::new(10, 100, 0, 99), 1, B_VTEP);
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::UnknownVtep));
    let (mut buf, len) = encapsulated(A_IP, 4096, B_VTEP);
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::WrongVni));
    let (mut buf, len) = encapsulated(A_IP, 1, A_VTEP);
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::WrongInnerMac));
    let (mut buf, len) = encapsulated(A_IP, 1, B_VTEP);
    buf[14 + 20 + 8] = 0x0c; // VXLAN flags: I plus a reserved bit
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::BadVxlanFlags));
}

#[test]
fn malformed_outer_frames_are_dropped_with_reasons() {
    let (_, sb) = vxlan_cluster();
    let (good, len) = encapsulated(A_IP, 1, B_VTEP);
    for cut in [0, 5, 13, 14, 20, 33, 41, 49, 50, 63] {
        let mut buf = good.clone();
        let v = process(&sb, 0, UPLINK, &mut buf, cut);
        assert!(matches!(v, Verdict::Drop(_)), "truncated to {cut}: {v:?}");
    }
    let mut buf = good.clone();
    buf[14] = 0x44; // IHL 4
    assert!(matches!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::BadOuterHeader | DropReason::Truncated)));
    let mut buf = good.clone();
    buf[16] = 0xff; // total length beyond the frame
    buf[17] = 0xff;
    assert!(matches!(process(&sb, 0, UPLINK, &mut buf, len), Verdict::Drop(_)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No input panics, from a pod or from the uplink, and a forwarded frame fits its buffer.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), from_pod in any::<bool>()) {
        let (sa, sb) = vxlan_cluster();
        let mut buf = vec![0u8; BUF];
        buf[..bytes.len()].copy_from_slice(&bytes);
        let v = if from_pod { process(&sa, 0, P1, &mut buf, bytes.len()) } else { process(&sb, 0, UPLINK, &mut buf, bytes.len()) };
        if let Verdict::Forward { len, .. } = v {
            prop_assert!(len <= BUF);
        }
    }

    /// Mutating any byte of a valid VXLAN frame never panics.
    #[test]
    fn mutated_vxlan_never_panics(pos in 0usize..120, val in any::<u8>(), cut in 0usize..130) {
        let (_, sb) = vxlan_cluster();
        let (mut buf, len) = encapsulated(A_IP, 1, B_VTEP);
        buf[pos] = val;
        let _ = process(&sb, 0, UPLINK, &mut buf, len.min(cut.max(1)));
    }
}

// ---------------------------------------------------------------------------------------
// The stateful policy stage, in the pipeline

use policy_engine::{
    compiler::PolicyCompiler,
    model::{Direction, parse_manifests},
    world::{Endpoint as PolicyEndpoint, World},
};

/// Gives `snap` the compiled `yaml` policies, over pods a1, a2 (node A) and b1 (node B) of
/// namespace `default`, labelled `app: <name>`.
fn with_policy(snap: &mut Snapshot, yaml: &str) {
    let mut world = World::new();
    for (name, ip) in [("a1", POD_A1), ("a2", POD_A2), ("b1", POD_B1)] {
        world.add_endpoint(PolicyEndpoint::new("default", name, &[("app", name)], ip));
    }
    let policies = parse_manifests(yaml, "test.yaml").expect("test policy parses");
    let mut c = PolicyCompiler::from_world(&world, &policies).expect("test policy compiles");
    snap.policy = c.tables().expect("tables");
}

/// Ingress of `app` isolated, nothing allowed in.
fn deny_ingress(app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-{app}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  policyTypes: [Ingress]\n"
    )
}

fn counter(ip: Ipv4Addr, read: impl Fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    read(&flows(ip).counters).load(std::sync::atomic::Ordering::Relaxed)
}

/// B1's frame to A1 as node A's uplink receives it (encapsulated by node B).
fn from_b1(sb: &Snapshot, b1_port: u16, a1_port: u16) -> (Vec<u8>, usize) {
    let (mut buf, len) = udp_ports_frame(MAC_B1, GW, (POD_B1, b1_port), (POD_A1, a1_port), 64, b"reply");
    let Verdict::Forward { len, kind: Kind::Encapsulated, .. } = process(sb, 0, P1, &mut buf, len) else { panic!("node B refused") };
    (buf, len)
}

#[test]
fn the_destination_node_enforces_ingress_policy() {
    let (sa, mut sb) = vxlan_cluster();
    with_policy(&mut sb, &deny_ingress("b1"));
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"knock");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("node A has no policy for a1") };
    assert_eq!(process(&sb, 0, UPLINK, &mut buf, out), Verdict::Drop(DropReason::PolicyDeniedIngress));
    assert_eq!(counter(B_IP, |c| &c.ct_new), 0, "a denied connection is not tracked");
}

#[test]
fn replies_to_an_allowed_connection_pass_and_new_ones_are_judged() {
    let (mut sa, sb) = vxlan_cluster();
    with_policy(&mut sa, &deny_ingress("a1"));
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40000), (POD_B1, 5201), 64, b"ask");
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { kind: Kind::Encapsulated, .. }));
    assert_eq!(counter(A_IP, |c| &c.ct_new), 1);

    let (mut reply, len) = from_b1(&sb, 5201, 40000);
    assert!(matches!(process(&sa, 0, UPLINK, &mut reply, len), Verdict::Forward { port: P1, .. }), "the reply passes");
    assert_eq!(counter(A_IP, |c| &c.ct_established), 1);

    let (mut other, len) = from_b1(&sb, 6000, 40000);
    assert_eq!(process(&sa, 0, UPLINK, &mut other, len), Verdict::Drop(DropReason::PolicyDeniedIngress), "not a reply: judged, denied");
}

#[test]
fn a_policy_change_cuts_the_connections_it_denies_and_no_others() {
    let (mut sa, _) = vxlan_cluster();
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 1000), (POD_A2, 53), 64, b"q");
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, .. }));
    let (mut buf, len) = udp_ports_frame(MAC_A2, GW, (POD_A2, 2000), (POD_A1, 80), 64, b"q");
    assert!(matches!(process(&sa, 0, P2, &mut buf, len), Verdict::Forward { port: P1, .. }));

    // a1 may send nothing any more.
    with_policy(
        &mut sa,
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: mute-a1}\nspec:\n  selector: app == 'a1'\n  types: [Egress]\n  egress: [{action: Deny}]\n",
    );
    let f = flows(A_IP);
    let cut = crate::policy::rejudge(&f.tables, &sa.policy, |ip| matches!(ip, std::net::IpAddr::V4(v4) if sa.endpoints.contains_key(&v4)), f.tables.now_ms());
    assert_eq!(cut, 1, "only a1's own connection");
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 1000), (POD_A2, 53), 64, b"q");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::PolicyDeniedEgress));
    // a2's connection to a1 is untouched: a1's replies on it still pass.
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 80), (POD_A2, 2000), 64, b"r");
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, .. }));
}

/// A UDP datagram's fragment from a1 to a2: the first (with ports) or a later one.
fn fragment(ident: u16, first: bool) -> (Vec<u8>, usize) {
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_A2, 64, b"fragmented datagram");
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[14..len]);
    ip.set_ident(ident);
    ip.set_dont_frag(false);
    if first {
        ip.set_more_frags(true);
    } else {
        ip.set_frag_offset(64);
    }
    ip.fill_checksum();
    (buf, len)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let (sa, _) = vxlan_cluster();
    let (mut buf, len) = fragment(99, false);
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::FragmentUnmatched), "no first fragment yet");
    let (mut buf, len) = fragment(99, true);
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, .. }));
    let (mut buf, len) = fragment(99, false);
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, .. }), "its datagram was admitted");
    let (mut buf, len) = fragment(100, false);
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::FragmentUnmatched), "another datagram");
}

/// B1's ICMP port unreachable to A1 about `quoted` (a UDP datagram A1 sent), as node A's
/// uplink receives it.
fn port_unreachable(sb: &Snapshot, quoted: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0xa5; BUF];
    let ip_len = encap::icmpv4::emit_error(&mut buf[14..], POD_B1, &quoted[14..], encap::icmpv4::IcmpError::HostUnreachable).unwrap();
    EthernetRepr { src_addr: MAC_B1, dst_addr: GW, ethertype: EtherType::Ipv4 }.emit(&mut EthernetFrame::new_unchecked(&mut buf[..14]));
    let Verdict::Forward { len, kind: Kind::Encapsulated, .. } = process(sb, 0, P1, &mut buf, 14 + ip_len) else { panic!("node B refused") };
    (buf, len)
}

#[test]
fn icmp_errors_about_tracked_connections_pass_as_related() {
    let (mut sa, sb) = vxlan_cluster();
    with_policy(&mut sa, &deny_ingress("a1"));
    let (mut sent, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40000), (POD_B1, 5201), 64, b"ask");
    let original = sent[..len].to_vec();
    assert!(matches!(process(&sa, 0, P1, &mut sent, len), Verdict::Forward { .. }));
    let (mut err, elen) = port_unreachable(&sb, &original);
    assert!(matches!(process(&sa, 0, UPLINK, &mut err, elen), Verdict::Forward { port: P1, .. }));
    assert_eq!(counter(A_IP, |c| &c.ct_related), 1);
    let (other, olen) = udp_ports_frame(MAC_A1, GW, (POD_A1, 41000), (POD_B1, 5201), 64, b"never sent");
    let (mut err, elen) = port_unreachable(&sb, &other[..olen]);
    assert_eq!(process(&sa, 0, UPLINK, &mut err, elen), Verdict::Drop(DropReason::PolicyDeniedIngress), "about no connection of a1's");
}

#[test]
fn a_full_connection_table_refuses_new_connections_and_counts_them() {
    let (sa, _) = vxlan_cluster();
    let tables = FlowTables::new(8, 8, 1);
    let counters = WorkerCounters::default();
    let fs = tables.state(0, &counters, 1);
    let mut refused = 0;
    for port in 0..64u16 {
        let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 1000 + port), (POD_A2, 53), 64, b"q");
        match super::process(&sa, &fs, 0, P1, &mut buf, len) {
            Verdict::Drop(DropReason::ConntrackFull) => refused += 1,
            Verdict::Forward { .. } => {}
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(64 - refused, tables.conntrack.capacity(), "every slot used, the rest refused");
}

#[test]
fn log_rules_count_and_queue_an_event_for_the_control_thread() {
    let (mut sa, _) = vxlan_cluster();
    with_policy(
        &mut sa,
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: audit, namespace: default}\nspec:\n  selector: app == 'a2'\n  ingress: [{action: Log}, {action: Allow}]\n",
    );
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_A2, 64, b"audited");
    assert!(matches!(process(&sa, 0, P1, &mut buf, len), Verdict::Forward { port: P2, .. }));
    assert_eq!(counter(A_IP, |c| &c.policy_logged), 1);
    let event = flows(A_IP).tables.logs[0].pop().expect("a log event");
    assert_eq!((event.direction, event.tuple.src, event.tuple.dst), (Direction::Ingress, POD_A1.into(), POD_A2.into()));
    assert_eq!(event.rules.rule_ref(event.entry).policy, "audit");
}

const WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ROUTER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);

/// Node A with its pods in a NAT pool (10.244.0.0/16, natOutgoing) and a resolved gateway.
fn nat_node() -> Snapshot {
    let (mut sa, _) = vxlan_cluster();
    let pool = "10.244.0.0/16".parse().unwrap();
    sa.outside = Outside { nat_sources: vec![pool], pools: vec![pool], next_hop_mac: Some(ROUTER_MAC) };
    sa
}

/// The reply `world` sends to node A's `port` from its port `from_port`, as A's uplink gets it.
fn from_world(world: Ipv4Addr, from_port: u16, port: u16) -> (Vec<u8>, usize) {
    udp_ports_frame(ROUTER_MAC, A_MAC, (world, from_port), (A_IP, port), 63, b"reply")
}

#[test]
fn traffic_leaving_the_cluster_takes_the_node_address_and_its_reply_finds_the_pod() {
    let sa = nat_node();
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40000), (WORLD, 53), 64, b"query");
    let Verdict::Forward { port, len: out, kind: Kind::Routed, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    assert_eq!(port, UPLINK);
    let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (A_MAC, ROUTER_MAC));
    let ip = ip_of(&buf[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.ttl()), (A_IP, WORLD, 63));
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    let nat_port = udp.src_port();
    assert!(crate::nat::PORTS.contains(&nat_port), "{nat_port}");
    assert_eq!(udp.dst_port(), 53);
    assert!(udp.verify_checksum(A_IP, WORLD));
    assert_eq!(counter(A_IP, |c| &c.nat_out), 1);

    // The same connection keeps its port.
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40000), (WORLD, 53), 64, b"again");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    assert_eq!(UdpPacket::new_checked(ip_of(&buf[..out]).payload()).unwrap().src_port(), nat_port);

    // The reply reaches the pod, as the pod's own address and port.
    let (mut buf, len) = from_world(WORLD, 53, nat_port);
    let Verdict::Forward { port, len: out, .. } = process(&sa, 0, UPLINK, &mut buf, len) else { panic!("reply not delivered") };
    assert_eq!(port, P1);
    let ip = ip_of(&buf[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (WORLD, POD_A1));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (53, 40000));
    assert!(udp.verify_checksum(WORLD, POD_A1));
    assert_eq!(counter(A_IP, |c| &c.nat_in), 1);
}

#[test]
fn nat_refuses_strangers_and_what_it_cannot_translate() {
    let mut sa = nat_node();
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40001), (WORLD, 53), 64, b"query");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    let nat_port = UdpPacket::new_checked(ip_of(&buf[..out]).payload()).unwrap().src_port();
    // Another remote host, another remote port, a port nobody holds: all refused.
    for (world, from, port) in [(Ipv4Addr::new(198, 51, 100, 2), 53, nat_port), (WORLD, 54, nat_port), (WORLD, 53, 64000)] {
        let (mut buf, len) = from_world(world, from, port);
        assert_eq!(process(&sa, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::NatNoMapping), "{world}:{from} → {port}");
    }
    // A destination inside a pool is never translated (it has a route or none at all).
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, Ipv4Addr::new(10, 244, 77, 1), 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute));
    // An unresolved gateway holds the packet back, counted.
    sa.outside.next_hop_mac = None;
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, WORLD, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NeighbourUnresolved));
    // Pods outside every NAT pool have no way out.
    sa.outside = Outside::default();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, WORLD, 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute));
}

#[test]
fn an_icmp_error_about_a_translated_connection_reaches_the_pod() {
    let sa = nat_node();
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40002), (WORLD, 53), 64, b"query");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    // A router on the way answers "fragmentation needed" (path MTU discovery), quoting the
    // node's datagram.
    let router = Ipv4Addr::new(10, 100, 0, 1);
    let mut frame = vec![0u8; BUF];
    EthernetRepr { src_addr: ROUTER_MAC, dst_addr: A_MAC, ethertype: EtherType::Ipv4 }.emit(&mut EthernetFrame::new_unchecked(&mut frame[..14]));
    let n = encap::icmpv4::emit_error(&mut frame[14..], router, &buf[14..out], encap::icmpv4::IcmpError::FragNeeded { next_hop_mtu: 1400 }).unwrap();
    let related = counter(A_IP, |c| &c.ct_related);
    let Verdict::Forward { port, len: out, .. } = process(&sa, 0, UPLINK, &mut frame, 14 + n) else { panic!("the error did not reach the pod") };
    assert_eq!(port, P1);
    let ip = ip_of(&frame[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (router, POD_A1));
    let quoted = encap::flow::parse_flow_info(&frame[14..out]).unwrap().related.unwrap();
    assert_eq!((quoted.src, quoted.src_port, quoted.dst, quoted.dst_port), (POD_A1, 40002, WORLD, 53));
    assert_eq!(counter(A_IP, |c| &c.ct_related), related + 1, "passed as related to the pod's connection");
    // An error quoting a port nobody holds is dropped and counted.
    let mut stray = buf.clone();
    encap::nat::rewrite(&mut stray[14..out], encap::nat::End::Source, A_IP, 64999).unwrap();
    let n = encap::icmpv4::emit_error(&mut frame[14..], router, &stray[14..out], encap::icmpv4::IcmpError::FragNeeded { next_hop_mtu: 1400 }).unwrap();
    assert_eq!(process(&sa, 0, UPLINK, &mut frame, 14 + n), Verdict::Drop(DropReason::NatNoMapping));
}

#[test]
fn an_outside_route_carries_pods_out_with_their_own_address_and_brings_the_reply_back() {
    // Node A's pool without natOutgoing, a BGP-style route to 198.51.100.0/24 and one
    // covering everything, as a full table's default would.
    let (mut sa, _) = vxlan_cluster();
    sa.outside = Outside { nat_sources: vec![], pools: vec!["10.244.0.0/16".parse().unwrap()], next_hop_mac: Some(ROUTER_MAC) };
    sa.routes.insert("198.51.100.0/24".parse().unwrap(), RouteTarget::Outside);
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40000), (WORLD, 53), 64, b"query");
    let Verdict::Forward { port, len: out, kind: Kind::Routed, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    assert_eq!((port, out), (UPLINK, len));
    let eth = EthernetFrame::new_checked(&buf[..out]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (A_MAC, ROUTER_MAC));
    let ip = ip_of(&buf[..out]);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.ttl()), (POD_A1, WORLD, 63), "the pod's own address, one hop less");
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (40000, 53));
    assert_eq!((counter(A_IP, |c| &c.routed_out), counter(A_IP, |c| &c.nat_out)), (1, 0));

    // The reply, routed to the pod's address by the network beyond, reaches the pod.
    let (mut buf, len) = udp_ports_frame(ROUTER_MAC, A_MAC, (WORLD, 53), (POD_A1, 40000), 63, b"reply");
    assert!(matches!(process(&sa, 0, UPLINK, &mut buf, len), Verdict::Forward { port: P1, .. }));

    // Other nodes do not transit through A to the outside; an address no route covers has none.
    let (mut buf, len) = udp_frame(B_MAC, A_MAC, POD_B1, WORLD, 64, b"transit");
    assert_eq!(process(&sa, 0, UPLINK, &mut buf, len), Verdict::Drop(DropReason::NotLocal));
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, Ipv4Addr::new(203, 0, 113, 9), 64, b"x");
    assert_eq!(process(&sa, 0, P1, &mut buf, len), Verdict::Drop(DropReason::NoRoute));

    // With natOutgoing on the pool, the same route leaves through NAT instead.
    sa.outside.nat_sources = sa.outside.pools.clone();
    let (mut buf, len) = udp_ports_frame(MAC_A1, GW, (POD_A1, 40001), (WORLD, 53), 64, b"query");
    let Verdict::Forward { len: out, .. } = process(&sa, 0, P1, &mut buf, len) else { panic!("not forwarded") };
    assert_eq!(ip_of(&buf[..out]).src_addr(), A_IP);
    assert_eq!(counter(A_IP, |c| &c.nat_out), 1);
}

/// The I/O ceiling on the frames of this file.
fn ceiling(snap: &Snapshot, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let f = flows(snap.node.node_ip);
    super::ceiling(snap, &f.tables.state(0, &f.counters, f.tables.now_ms()), 0, in_port, buf, len)
}

#[test]
fn the_ceiling_routes_by_destination_and_rewrites_only_the_macs() {
    let (sa, sb) = vxlan_cluster();
    let (mut buf, len) = udp_frame(MAC_A1, GW, POD_A1, POD_B1, 64, b"ceiling");
    let sent = buf[14..len].to_vec();
    assert_eq!(ceiling(&sa, P1, &mut buf, len), Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (A_MAC, B_MAC), "straight to the next hop, no tunnel");
    assert_eq!(&buf[14..len], &sent[..], "the IPv4 packet untouched: no TTL, no checksum");
    // On node B, from the uplink, to the pod.
    assert_eq!(ceiling(&sb, UPLINK, &mut buf, len), Verdict::Forward { port: P1, worker: 0, len, kind: Kind::Routed });
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW, MAC_B1));
    // Nothing is checked: a spoofed source goes through; ARP still gets its answer.
    let (mut spoofed, len) = udp_frame(MAC_A2, GW, POD_A2, POD_B1, 64, b"x");
    assert!(matches!(ceiling(&sa, P1, &mut spoofed, len), Verdict::Forward { port: UPLINK, .. }));
    let (mut stray, len) = udp_frame(B_MAC, A_MAC, POD_B1, Ipv4Addr::new(10, 244, 9, 9), 64, b"x");
    assert_eq!(ceiling(&sa, UPLINK, &mut stray, len), Verdict::Drop(DropReason::NotLocal));
    let mut arp = vec![0xa5; BUF];
    EthernetRepr { src_addr: MAC_A1, dst_addr: EthernetAddress::BROADCAST, ethertype: EtherType::Arp }.emit(&mut EthernetFrame::new_unchecked(&mut arp[..42]));
    ArpRepr { operation: Operation::Request, source_hardware_addr: MAC_A1, source_protocol_addr: POD_A1, target_hardware_addr: EthernetAddress([0; 6]), target_protocol_addr: GATEWAY_IP }
        .emit(&mut ArpPacket::new_unchecked(&mut arp[14..42]));
    assert_eq!(ceiling(&sa, P1, &mut arp, 42), Verdict::Forward { port: P1, worker: 0, len: 42, kind: Kind::ArpReply });
}

mod ipv6;
