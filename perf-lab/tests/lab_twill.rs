//! twill end to end, in network namespaces, with the real `twill agent` and `twill-cni`
//! (built beside this test by `cargo build --workspace --bins`): pod connectivity, interop
//! with a node running the kernel's own Flannel VXLAN device, a node joining while traffic
//! flows, and malformed input dropped with a reason while forwarding goes on.
//! Needs root; fails loudly otherwise.

use std::time::Duration;

use perf_lab::{
    generator::{self, Stream},
    netns,
    probe::check_all_pairs,
    topology::{Dataplane, Lab, Topology},
};
use serde_json::Value;

mod common;

use common::{down, forget_gateway, neighbours, setup, stats};

fn assert_all_pairs_ok(lab: &Lab, expected: usize) {
    let pairs = check_all_pairs(lab.pods()).expect("probing pod pairs");
    assert_eq!(pairs.len(), expected);
    let failed: Vec<_> = pairs.iter().filter(|p| !p.ok()).collect();
    assert!(failed.is_empty(), "pairs that failed: {failed:#?}");
}

#[test]
fn two_nodes_every_pod_pair_reachable_over_vxlan() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).up().unwrap();
    // twill-cni gives each pod its gateway's MAC as a permanent entry; one pod a node does
    // without it, and resolves the gateway by ARP.
    for p in lab.pods() {
        let gateway = p.cni_result.as_ref().and_then(|r| r["ips"][0]["gateway"].as_str()).expect("a gateway in the CNI result").to_owned();
        assert_eq!(neighbours(p), vec![(gateway, "ee:ee:ee:ee:ee:ee".to_owned(), vec!["PERMANENT".to_owned()])], "{}", p.name);
    }
    for name in ["p1-n1", "p1-n2"] {
        forget_gateway(lab.pod(name).unwrap());
    }
    assert_all_pairs_ok(&lab, 12);
    for n in ["n1", "n2"] {
        let s = stats(&lab, n);
        assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{n}: {s:?}");
        assert!(s["arp_replies"] > 0, "{n} answered no ARP for the gateway: {s:?}");
        assert_eq!(s["drop_neighbour_unresolved"] + s["drop_tx_ring_full"] + s["drop_no_such_port"], 0, "{n}: {s:?}");
    }
    down(lab);
}

/// Two workers per node (one per core, each on its own uplink queue): pods are spread over
/// the workers, so frames between pods of different workers are handed over by descriptor.
#[test]
fn two_workers_per_node_hand_frames_to_each_other() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).cores("0,1").up().unwrap();
    let pods = perf_lab::twill_node::request(
        &lab.node("n1").unwrap().agent.as_ref().unwrap().files.socket,
        &serde_json::json!({"op": "get", "kind": "pods"}),
        Duration::from_secs(5),
    )
    .unwrap();
    let workers: std::collections::BTreeSet<u64> =
        pods["items"].as_array().unwrap().iter().filter_map(|p| p["worker"].as_u64()).collect();
    assert_eq!(workers.len(), 2, "n1's two pods should be on different workers: {pods}");
    assert_all_pairs_ok(&lab, 12);
    let v = lab.agent_stats("n1").unwrap();
    let per_worker = v["workers"].as_array().unwrap();
    assert_eq!(per_worker.len(), 2);
    for w in per_worker {
        assert!(w["tx_packets"].as_u64().unwrap() > 0, "a worker moved nothing: {w}");
    }
    let s = stats(&lab, "n1");
    assert_eq!(s["drop_handoff_full"] + s["drop_no_such_port"], 0, "{s:?}");
    down(lab);
}

/// `--idle yield` and `--idle spin` workers (two per node, so hand-offs too) carry every
/// pod pair without ever sleeping; the default adaptive ones nap while frames come and
/// sleep in poll(2) after.
#[test]
fn workers_that_never_sleep_carry_every_pod_pair() {
    let _g = setup();
    for idle in ["yield", "spin", "adaptive"] {
        let lab = Topology::uniform(2, 2, Dataplane::Twill).cores("0,1").idle(idle).up().unwrap();
        assert_all_pairs_ok(&lab, 12);
        std::thread::sleep(Duration::from_millis(100));
        for n in ["n1", "n2"] {
            let s = stats(&lab, n);
            assert_eq!(s["drop_handoff_full"] + s["drop_no_such_port"], 0, "{idle}, {n}: {s:?}");
            let (sleeps, naps) = (s["idle_sleeps"], s["idle_naps"]);
            if idle == "adaptive" {
                assert!(sleeps > 0 && naps > 0, "{idle}, {n}: an adaptive worker naps while frames come and sleeps after: {s:?}");
            } else {
                assert_eq!((sleeps, naps), (0, 0), "{idle}, {n}: {s:?}");
            }
        }
        down(lab);
    }
}

/// The UMEM is shared by every socket of a node, and each uplink queue's fill ring takes its
/// part first: a UMEM too small for full fill rings on every queue gets smaller rings and
/// still carries traffic (the lab's uplinks have one queue per core); one too
/// small for any is refused at start with the fix named.
#[test]
fn a_small_umem_shrinks_the_fill_rings_and_still_forwards() {
    let _g = setup();
    // 16,384 frames: 12,288 for one worker's fill rings, a third each for the two uplink
    // queues and for the pods, 4,096 where 8,192 is the default.
    let lab = Topology::uniform(2, 1, Dataplane::Twill).frames(16384).up().unwrap();
    assert_all_pairs_ok(&lab, 2);
    let (a, b) = (lab.pod("p1-n1").unwrap(), lab.pod("p1-n2").unwrap());
    let s = generator::run(a, b, &Stream::new(1.0).paced(50_000.0)).unwrap();
    assert!(s.received as f64 > 0.999 * s.sent as f64, "{s:?}");
    down(lab);

    let err = Topology::uniform(1, 0, Dataplane::Twill).frames(1024).up().map(down).unwrap_err();
    let (msg, queues) = (format!("{err:#}"), std::thread::available_parallelism().unwrap());
    assert!(msg.contains(&format!("--frames 1024 is too few for {queues} uplink RX queue(s)")) && msg.contains("give --frames"), "{msg}");
}

#[test]
fn direct_routing_profile_reaches_every_pod() {
    let _g = setup();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).encap("direct").up().unwrap();
    assert_all_pairs_ok(&lab, 2);
    let s = stats(&lab, "n1");
    assert_eq!(s["encapsulated"] + s["decapsulated"], 0, "host-gw must not encapsulate: {s:?}");
    assert!(s["tx_packets"] > 0, "{s:?}");
    down(lab);
}

/// A node configured exactly as flanneld configures `flannel.1` (VNI 1, port 8472,
/// nolearning, permanent neighbour + FDB entry and onlink route per peer) beside twill nodes.
#[test]
fn interoperates_with_the_kernel_flannel_vxlan_device() {
    let _g = setup();
    let lab = Topology::new()
        .node(Dataplane::Twill, 2)
        .node(Dataplane::KernelFlannel, 2)
        .up()
        .unwrap();
    // The twill node knows the flannel node by its backend-data annotation.
    let nodes = perf_lab::twill_node::request(
        &lab.node("n1").unwrap().agent.as_ref().unwrap().files.socket,
        &serde_json::json!({"op": "get", "kind": "nodes"}),
        Duration::from_secs(5),
    )
    .unwrap();
    let flannel = nodes["items"].as_array().unwrap().iter().find(|n| n["name"] == "n2").expect("n2 listed").clone();
    assert_eq!(flannel["vtep_mac_source"], "annotation", "{flannel}");
    assert_eq!(flannel["vtep_mac"].as_str(), lab.node("n2").unwrap().vtep_mac.as_deref());

    assert_all_pairs_ok(&lab, 12);
    let s = stats(&lab, "n1");
    assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{s:?}");
    assert_eq!(s["drop_wrong_inner_mac"] + s["drop_wrong_vni"] + s["drop_unknown_vtep"], 0, "{s:?}");
    down(lab);
}

/// A node configured exactly as calico-node configures `vxlan.calico` (VNI 4096, port 4789,
/// permanent neighbour + FDB entry and onlink route per peer, pods on /32 veths with proxy
/// ARP) beside a twill node running `--encap vxlan-calico`: pod traffic both ways, and on
/// the underlay wire only VXLAN with VNI 4096 to port 4789, from both nodes.
#[test]
fn interoperates_with_the_kernel_calico_vxlan_device() {
    let _g = setup();
    let lab = Topology::new().node(Dataplane::Twill, 2).node(Dataplane::KernelCalico, 2).encap("vxlan-calico").up().unwrap();
    let nodes = perf_lab::twill_node::request(
        &lab.node("n1").unwrap().agent.as_ref().unwrap().files.socket,
        &serde_json::json!({"op": "get", "kind": "nodes"}),
        Duration::from_secs(5),
    )
    .unwrap();
    let calico = nodes["items"].as_array().unwrap().iter().find(|n| n["name"] == "n2").expect("n2 listed").clone();
    assert_eq!(calico["vtep_mac"].as_str(), lab.node("n2").unwrap().vtep_mac.as_deref(), "VTEP MAC from Calico's annotation: {calico}");
    assert_eq!(calico["subnet"], "10.100.0.0/24", "{calico}");

    let wire = perf_lab::capture::Capture::start(
        perf_lab::topology::UNDERLAY_NS,
        perf_lab::topology::UNDERLAY_BRIDGE,
        "udp",
        &["udp.port==4789,vxlan"],
        &["ip.src", "udp.dstport", "vxlan.vni"],
        400,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_all_pairs_ok(&lab, 12);
    let rows = wire.finish().unwrap();
    let (n1, n2) = (lab.node("n1").unwrap().address.to_string(), lab.node("n2").unwrap().address.to_string());
    for from in [&n1, &n2] {
        let sent: Vec<_> = rows.iter().filter(|r| r[0].starts_with(from.as_str())).collect();
        assert!(!sent.is_empty(), "nothing from {from} on the wire: {rows:?}");
        assert!(sent.iter().all(|r| r[1] == "4789" && r[2] == "4096"), "{from} sent other than VXLAN 4789 / VNI 4096: {sent:?}");
    }
    let s = stats(&lab, "n1");
    assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{s:?}");
    assert_eq!(s["drop_wrong_inner_mac"] + s["drop_wrong_vni"] + s["drop_unknown_vtep"], 0, "{s:?}");
    down(lab);
}

#[test]
fn a_third_node_joins_while_traffic_flows() {
    let _g = setup();
    let mut lab = Topology::uniform(2, 1, Dataplane::Twill).up().unwrap();
    let pids: Vec<u32> = lab.nodes().iter().map(|n| n.agent.as_ref().unwrap().pid).collect();
    let (a, b) = (lab.pod("p1-n1").unwrap().clone(), lab.pod("p1-n2").unwrap().clone());
    let flow = generator::start(&a, &b, &Stream::new(60.0).paced(2000.0)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let idx = lab.add_node(Dataplane::Twill, 1).unwrap();
    assert_eq!(idx, 3);
    std::thread::sleep(Duration::from_millis(500));
    let flow_stats = flow.stop().unwrap();
    assert!(flow_stats.sent > 1000, "{flow_stats:?}");
    assert_eq!(flow_stats.lost, 0, "the running flow lost packets while n3 joined: {flow_stats:?}");
    assert_eq!(flow_stats.duplicates, 0, "{flow_stats:?}");
    let after: Vec<u32> = lab.nodes().iter().take(2).map(|n| n.agent.as_ref().unwrap().pid).collect();
    assert_eq!(pids, after, "agents were restarted");
    assert_all_pairs_ok(&lab, 6);
    down(lab);
}

/// Frames built with scapy and injected on the wire: from the underlay toward n1's uplink
/// (every one addressed to n1's VXLAN port, so the XDP hook hands it to the forwarder) and
/// from inside a pod. Each kind must be dropped under its own counter, exactly as often as
/// it was sent, and the pods must still reach each other afterwards.
#[test]
fn malformed_input_is_dropped_and_counted_while_forwarding_goes_on() {
    let _g = setup();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).up().unwrap();
    assert_all_pairs_ok(&lab, 2);
    let n1 = lab.node("n1").unwrap().clone();
    let n2 = lab.node("n2").unwrap().clone();
    let n1_mac = netns::link_mac(&n1.netns, "eth0").unwrap();
    let n2_mac = netns::link_mac(&n2.netns, "eth0").unwrap();
    let pod = lab.pod("p1-n1").unwrap().clone();
    let pod_mac = netns::link_mac(&pod.netns, &pod.ifname).unwrap();
    let before = stats(&lab, "n1");

    const N: u32 = 5;
    let script = format!(
        r#"
import sys
from scapy.all import Ether, IP, UDP, Raw, sendp
N = {N}
n1_mac, n1_ip, n2_mac, n2_ip, vtep = "{n1_mac}", "{n1_ip}", "{n2_mac}", "{n2_ip}", "{vtep}"
def vxlan(vni, flags=0x08):
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00"
inner = bytes(Ether(src="02:00:00:00:00:01", dst=vtep) / IP(src="10.244.2.2", dst="{pod_ip}") / UDP(sport=1, dport=2) / b"x")
def outer(payload, src=n2_ip, **ip):
    return Ether(src=n2_mac, dst=n1_mac) / IP(src=src, dst=n1_ip, flags="DF", **ip) / UDP(sport=40000, dport=8472) / Raw(payload)
bad_ihl = bytearray(inner); bad_ihl[14] = 0x43
wrong_mac = bytes(Ether(src="02:00:00:00:00:01", dst="02:de:ad:be:ef:00")) + inner[12:]
frames = {{
    "wrong_vni": outer(vxlan(2) + inner),
    "bad_vxlan_flags": outer(vxlan(1, 0x0c) + inner),
    "unknown_vtep": outer(vxlan(1) + inner, src="10.100.0.99"),
    "truncated": outer(vxlan(1)[:5]),
    "bad_length": outer(vxlan(1) + inner, len=1400),
    "bad_checksum": outer(vxlan(1) + inner, chksum=0x1234),
    "bad_inner_ihl": outer(vxlan(1) + bytes(bad_ihl)),
    "wrong_inner_mac": outer(vxlan(1) + wrong_mac),
}}
for name, f in frames.items():
    sendp([f] * N, iface="{uplink_peer}", verbose=False)
"#,
        n1_ip = n1.address,
        n2_ip = n2.address,
        vtep = n1.vtep_mac.clone().unwrap(),
        pod_ip = pod.ip.unwrap(),
        uplink_peer = n1.underlay_link,
    );
    netns::exec("tw-ul", "/usr/bin/python3", &["-c", &script]).expect("scapy (python3-scapy) sends the frames");

    let pod_script = format!(
        r#"
from scapy.all import Ether, IP, UDP, sendp
N = {N}
good = Ether(src="{pod_mac}", dst="ee:ee:ee:ee:ee:ee") / IP(src="{pod_ip}", dst="10.244.2.2") / UDP(sport=1, dport=2) / b"x"
spoofed = Ether(src="{pod_mac}", dst="ee:ee:ee:ee:ee:ee") / IP(src="10.244.1.200", dst="10.244.2.2") / UDP(sport=1, dport=2) / b"x"
b = bytearray(bytes(good)); b[14] = 0x4f   # IHL 15: header longer than the packet
sendp([spoofed] * N, iface="{ifname}", verbose=False)
sendp([Ether(bytes(b))] * N, iface="{ifname}", verbose=False)
"#,
        pod_ip = pod.ip.unwrap(),
        ifname = pod.ifname,
    );
    netns::exec(&pod.netns, "/usr/bin/python3", &["-c", &pod_script]).expect("scapy sends from the pod");
    std::thread::sleep(Duration::from_millis(300));

    let after = stats(&lab, "n1");
    let delta = |k: &str| after[k] - before[k];
    let n = u64::from(N);
    assert_eq!(delta("drop_wrong_vni"), n, "{after:?}");
    assert_eq!(delta("drop_bad_vxlan_flags"), n);
    assert_eq!(delta("drop_unknown_vtep"), n);
    // An outer IPv4 total length beyond the frame is a frame shorter than it announces.
    assert_eq!(delta("drop_truncated"), 2 * n, "cut VXLAN header + outer length beyond the frame");
    assert_eq!(delta("drop_bad_outer_header"), n, "bad outer IPv4 checksum");
    assert_eq!(delta("drop_wrong_inner_mac"), n);
    assert_eq!(delta("drop_bad_ip_header"), 2 * n, "inner IHL from the uplink + IHL from the pod");
    assert_eq!(delta("drop_spoofed"), n);
    assert_all_pairs_ok(&lab, 2);
    let v: Value = lab.agent_stats("n1").unwrap();
    assert_eq!(v["ok"], true);
    down(lab);
}
