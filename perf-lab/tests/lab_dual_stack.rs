//! Dual stack end to end, in network namespaces with the real agents and `twill-cni`: pods
//! with an IPv4 and an IPv6 address (the node's `spec.podCIDRs`), IPv6 carried inside VXLAN
//! over the nodes' IPv6 underlay (to and from a kernel `vxlan-v6.calico` too), the IPv6
//! gateway fe80::1 answered by Neighbor Discovery; every
//! pod pair over ICMP / ICMPv6, TCP and UDP in both families; an IPv6 ipBlock policy
//! enforced (and kept apart from IPv4); malformed IPv6 and Neighbor Discovery from a pod and
//! from the underlay dropped under their counters while forwarding goes on. Needs root;
//! fails loudly otherwise.

mod common;

use std::{net::IpAddr, time::Duration};

use common::{down, forget_gateway, not_echoed_intact, setup, stats};
use perf_lab::{
    capture::Capture,
    manifests, netns,
    probe::{self, check_all_pairs},
    topology::{Dataplane, Lab, Topology, UNDERLAY_BRIDGE, UNDERLAY_NS},
};

fn dual_stack_lab(pods_per_node: u32) -> Lab {
    Topology::uniform(2, pods_per_node, Dataplane::Twill).dual_stack().up().unwrap()
}

fn assert_all_pairs_ok(lab: &Lab) {
    let n = lab.pods().len();
    let pairs = check_all_pairs(lab.pods()).expect("probing pod pairs");
    let v6 = pairs.iter().filter(|p| p.dst_ip.is_ipv6()).count();
    assert_eq!((pairs.len() - v6, v6), (n * (n - 1), n * (n - 1)), "every ordered pair once per family");
    let failed: Vec<_> = pairs.iter().filter(|p| !p.ok()).collect();
    assert!(failed.is_empty(), "pairs that failed: {failed:#?}");
}

#[test]
fn every_pod_pair_is_reachable_over_ipv4_and_ipv6() {
    let _g = setup();
    let lab = dual_stack_lab(2);
    for p in lab.pods() {
        let ip6 = p.ip6.unwrap_or_else(|| panic!("pod {} got no IPv6 address", p.name));
        let node = lab.node(&p.node).unwrap();
        assert!(ip6.to_string().starts_with(&format!("fd00:10:244:{}::", node.index)), "{} has {ip6}", p.name);
    }
    // Without twill-cni's permanent gateway entries, one pod a node solicits its gateways.
    for name in ["p1-n1", "p1-n2"] {
        forget_gateway(lab.pod(name).unwrap());
    }
    assert_all_pairs_ok(&lab);
    for n in ["n1", "n2"] {
        let s = stats(&lab, n);
        assert!(s["ndp_replies"] > 0, "{n} advertised no IPv6 gateway: {s:?}");
        assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{n}: {s:?}");
        assert_eq!(s["drop_ipv6_no_tunnel"] + s["drop_neighbour_unresolved"] + s["drop_bad_ip_header"], 0, "{n}: {s:?}");
    }
    down(lab);
}

/// Two twill nodes and a node wired exactly as calico-node wires `vxlan-v6.calico` (VNI
/// 4096, port 4789, over the nodes' IPv6 underlay addresses; permanent neighbour, FDB entry
/// and onlink route per peer), all dual-stack: every pod pair reachable over IPv4 and IPv6;
/// on the wire, IPv6 pod traffic crosses the IPv6 underlay inside VXLAN both ways between
/// twill and the kernel, and every frame twill sent there has a good UDP checksum (a Linux
/// receiver drops any other); the twill nodes' pod MTU is the uplink's less 70.
#[test]
fn ipv6_crosses_the_ipv6_underlay_to_and_from_the_kernel_calico_vxlan_v6_device() {
    let _g = setup();
    let lab = Topology::new().node(Dataplane::Twill, 1).node(Dataplane::Twill, 1).node(Dataplane::KernelCalico, 1).encap("vxlan-calico").dual_stack().up().unwrap();
    let calico = lab.node("n3").unwrap().clone();
    let wire = Capture::start(UNDERLAY_NS, UNDERLAY_BRIDGE, "ip6 and udp", &["udp.port==4789,vxlan"], &["ipv6.src", "ipv6.dst", "udp.dstport", "vxlan.vni", "udp.checksum.status", "ipv6.plen"], 2000, Duration::from_secs(30))
        .expect("tshark captures on the underlay");
    assert_all_pairs_ok(&lab);
    let rows = wire.finish().unwrap();
    let a6 = |n: &str| lab.node(n).unwrap().address6.expect("a dual-stack node has an IPv6 underlay address").to_string();
    let (n1, n2, n3) = (a6("n1"), a6("n2"), a6("n3"));
    for (from, to) in [(&n1, &n3), (&n3, &n1), (&n1, &n2), (&n2, &n1), (&n2, &n3)] {
        let sent: Vec<_> = rows.iter().filter(|r| (&r[0], &r[1]) == (from, to)).collect();
        assert!(!sent.is_empty(), "no VXLAN over IPv6 from {from} to {to}: {rows:?}");
        assert!(sent.iter().all(|r| r[2] == "4789" && r[3] == "4096"), "{from} → {to} sent other than VXLAN 4789 / VNI 4096: {sent:?}");
        if *from != n3 {
            assert!(sent.iter().all(|r| r[4] == "1"), "twill's frames from {from} carry a good UDP checksum: {sent:?}");
        }
    }
    for n in ["n1", "n2"] {
        let s = stats(&lab, n);
        assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{n}: {s:?}");
        assert_eq!(s["drop_unknown_vtep"] + s["drop_wrong_inner_mac"] + s["drop_wrong_vni"] + s["drop_neighbour_unresolved"] + s["drop_ipv6_no_tunnel"], 0, "{n}: {s:?}");
    }
    let p = lab.pod("p1-n1").unwrap();
    let mtu = netns::exec(&p.netns, "cat", &[&format!("/sys/class/net/{}/mtu", p.ifname)]).unwrap();
    assert_eq!(mtu.trim(), "1430", "the CNI plugin set the pod MTU VXLAN over IPv6 leaves");
    assert!(calico.vtep_mac6.is_some() && calico.vtep_mac6 != calico.vtep_mac, "vxlan-v6.calico has its own MAC: {calico:?}");
    down(lab);
}

/// Jumbo frames over the IPv6 underlay to a kernel `vxlan-v6.calico` (9000-byte uplinks,
/// pod MTU 8930): IPv6 UDP datagrams of one to three UMEM chunks and of the pod MTU's
/// largest, from a twill pod to a Calico pod's echo server and back, every one byte for
/// byte — the kernel takes twill's frames only with a right UDP checksum over the whole
/// chained frame, and twill decapsulates the kernel's.
#[test]
fn jumbo_ipv6_frames_cross_the_ipv6_underlay_to_the_kernel_intact() {
    let _g = setup();
    let lab = Topology::new().node(Dataplane::Twill, 1).node(Dataplane::KernelCalico, 1).encap("vxlan-calico").dual_stack().uplink_mtu(9000).up().unwrap();
    let (a, b) = (lab.pod("p1-n1").unwrap().clone(), lab.pod("p1-n2").unwrap().clone());
    let _echo = probe::EchoServers::start(std::slice::from_ref(&b)).expect("echo server");
    let mtu = netns::exec(&a.netns, "cat", &[&format!("/sys/class/net/{}/mtu", a.ifname)]).unwrap();
    assert_eq!(mtu.trim(), "8930", "9000 less VXLAN over IPv6's 70");
    // IPv6 and UDP take 48 bytes of the pod MTU; frames of one, two and three chunks.
    let sizes = [1usize, 1400, 3700, 3790, 3900, 7000, 7700, 8930 - 48];
    let to = std::net::SocketAddr::from((b.ip6.expect("the Calico pod has an IPv6 address"), probe::UDP_ECHO_PORT));
    let bad = not_echoed_intact(&a, to, &sizes);
    assert!(bad.is_empty(), "datagrams (index, bytes) not echoed intact: {bad:?}");
    let s = stats(&lab, "n1");
    assert_eq!((s["drop_too_long"], s["drop_no_free_frame"], s["drop_too_big"]), (0, 0, 0), "{s:?}");
    down(lab);
}

/// Direct routing (host-gw, Calico's BGP mode) in a dual-stack lab: every pod pair
/// reachable over IPv4 and IPv6, and on the wire IPv6 pod packets cross the IPv6 underlay
/// as they are, nothing encapsulated.
#[test]
fn direct_routing_carries_ipv6_over_the_ipv6_underlay_as_is() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).encap("direct").dual_stack().up().unwrap();
    let wire = Capture::start(UNDERLAY_NS, UNDERLAY_BRIDGE, "ip6 net fd00:10:244::/48", &[], &["ipv6.src", "ipv6.dst", "ipv6.nxt"], 2000, Duration::from_secs(30)).expect("tshark captures on the underlay");
    assert_all_pairs_ok(&lab);
    let rows = wire.finish().unwrap();
    for (from, to) in [("fd00:10:244:1::", "fd00:10:244:2::"), ("fd00:10:244:2::", "fd00:10:244:1::")] {
        assert!(rows.iter().any(|r| r[0].starts_with(from) && r[1].starts_with(to)), "no plain IPv6 from {from}/64 to {to}/64 on the wire: {rows:?}");
    }
    for n in ["n1", "n2"] {
        let s = stats(&lab, n);
        assert_eq!(s["encapsulated"] + s["decapsulated"] + s["drop_ipv6_no_tunnel"] + s["drop_neighbour_unresolved"], 0, "{n}: {s:?}");
        assert!(s["tx_packets"] > 0, "{n}: {s:?}");
    }
    down(lab);
}

/// Calico's per-family pools: the IPv4 pool in VXLAN and the IPv6 pool switched to
/// `vxlanMode: Never` while the lab runs — the agents report the IPv6 tunnel direct, IPv6
/// pod packets then cross the IPv6 underlay as they are while IPv4 ones stay in VXLAN, and
/// every pair still reaches every other in both families.
#[test]
fn an_ipv6_pool_decides_for_ipv6_pods_apart_from_the_ipv4_pool() {
    let _g = setup();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).encap("vxlan-calico").dual_stack().up().unwrap();
    let tunnels = |lab: &Lab| {
        let nodes = perf_lab::twill_node::request(&lab.node("n1").unwrap().agent.as_ref().unwrap().files.socket, &serde_json::json!({"op": "get", "kind": "nodes"}), Duration::from_secs(5)).unwrap();
        let n2 = nodes["items"].as_array().unwrap().iter().find(|n| n["name"] == "n2").expect("n2 listed").clone();
        (n2["tunnel"].as_str().unwrap_or("?").to_owned(), n2["tunnel6"].as_str().unwrap_or("?").to_owned())
    };
    assert_eq!(tunnels(&lab), ("vxlan".into(), "vxlan".into()));
    lab.apply_manifest(manifests::POOL6_FILE, &manifests::ip_pool6(Some("vxlan-calico"), Some("Never")).unwrap()).unwrap();
    let t = std::time::Instant::now();
    while tunnels(&lab).1 != "direct" && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tunnels(&lab), ("vxlan".into(), "direct".into()), "the IPv6 pool's vxlanMode Never took effect");
    let wire = Capture::start(UNDERLAY_NS, UNDERLAY_BRIDGE, "ip6 or (ip and udp port 4789)", &["udp.port==4789,vxlan"], &["ipv6.src", "ip.src", "udp.dstport"], 2000, Duration::from_secs(30)).expect("tshark captures on the underlay");
    assert_all_pairs_ok(&lab);
    let rows = wire.finish().unwrap();
    let plain6 = rows.iter().filter(|r| r[0].starts_with("fd00:10:244:")).count();
    let vxlan6 = rows.iter().filter(|r| r[0].starts_with("fd00:100:") && r[2] == "4789").count();
    let vxlan4 = rows.iter().filter(|r| r[1].starts_with("10.100.") && r[2] == "4789").count();
    assert!(plain6 > 0 && vxlan4 > 0 && vxlan6 == 0, "plain IPv6 {plain6}, IPv4 VXLAN {vxlan4}, IPv6 VXLAN {vxlan6}: {rows:?}");
    down(lab);
}

/// A Kubernetes NetworkPolicy admits p1-n2's ingress from n1's IPv6 pod subnet only: IPv6
/// from n1 passes, IPv6 from n2's other pod and IPv4 from anywhere (no IPv4 block is
/// allowed) are denied.
#[test]
fn an_ipv6_ip_block_policy_is_enforced_apart_from_ipv4() {
    let _g = setup();
    let lab = dual_stack_lab(2);
    let target = lab.pod("p1-n2").unwrap().clone();
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-n1-v6, namespace: default}
spec:
  podSelector: {matchLabels: {twill-lab/pod: p1-n2}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 'fd00:10:244:1::/64', except: ['fd00:10:244:1::3/128']}}]
"#;
    lab.apply_manifest("v6-policy.yaml", policy).unwrap();
    lab.wait_for_policies(1, Duration::from_secs(10)).unwrap();
    let _servers = probe::EchoServers::start(std::slice::from_ref(&target)).unwrap();
    let tcp = |from: &str, to: IpAddr| {
        let p = lab.pod(from).unwrap();
        netns::run_in(&p.netns, move || Ok(probe::tcp_exchange(to, probe::TCP_ECHO_PORT, Duration::from_millis(800)).is_ok())).unwrap()
    };
    let (v4, v6) = (IpAddr::from(target.ip.unwrap()), IpAddr::from(target.ip6.unwrap()));
    let p1n1 = lab.pod("p1-n1").unwrap().ip6.unwrap();
    assert_eq!(p1n1.to_string(), "fd00:10:244:1::2", "IPAM's first address, in the allowed block");
    assert!(tcp("p1-n1", v6), "IPv6 from n1's subnet is allowed");
    assert!(!tcp("p2-n1", v6), "p2-n1 (fd00:10:244:1::3) is in the except list");
    assert!(!tcp("p2-n2", v6), "IPv6 from n2's subnet is not allowed");
    assert!(!tcp("p1-n1", v4), "no IPv4 block is allowed: IPv4 is denied");
    let s = stats(&lab, "n2");
    assert!(s["drop_policy_denied_ingress"] >= 3, "{s:?}");
    down(lab);
}

/// Malformed IPv6, spoofed IPv6 sources and Neighbor Discovery the forwarder must not
/// answer, from inside a pod; a VXLAN frame whose inner IPv6 header is cut, from the
/// underlay. Each is dropped under its own counter as often as it was sent, and every pair
/// still reaches every other afterwards.
#[test]
fn malformed_ipv6_and_foreign_ndp_are_dropped_and_counted() {
    let _g = setup();
    let lab = dual_stack_lab(1);
    let pod = lab.pod("p1-n1").unwrap().clone();
    let pod_mac = netns::link_mac(&pod.netns, &pod.ifname).unwrap();
    let n1 = lab.node("n1").unwrap().clone();
    let n2 = lab.node("n2").unwrap().clone();
    let (n1_mac, n2_mac) = (netns::link_mac(&n1.netns, "eth0").unwrap(), netns::link_mac(&n2.netns, "eth0").unwrap());
    assert_all_pairs_ok(&lab);
    let before = stats(&lab, "n1");

    const N: u32 = 4;
    let script = format!(
        r#"
from scapy.all import Ether, IP, IPv6, UDP, ICMPv6ND_NS, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, Raw, sendp
N = {N}
me, mac = "{ip6}", "{pod_mac}"
def eth(dst="ee:ee:ee:ee:ee:ee"):
    return Ether(src=mac, dst=dst)
good = eth() / IPv6(src=me, dst="fd00:10:244:2::2") / UDP(sport=1, dport=2) / b"x"
long = bytearray(bytes(good)); long[18:20] = (1400).to_bytes(2, "big")   # payload length beyond the frame
v4 = bytearray(bytes(good)); v4[14] = 0x45                                 # version 4 under EtherType 0x86dd
frames = {{
    "bad_ip_header": [Ether(bytes(long)), Ether(bytes(v4))],
    "spoofed": [eth() / IPv6(src="fd00:10:244:1::99", dst="fd00:10:244:2::2") / UDP(sport=1, dport=2)],
    "ndp_ignored": [
        eth("33:33:ff:00:00:01") / IPv6(src=me, dst="ff02::1:ff00:1", hlim=254) / ICMPv6ND_NS(tgt="fe80::1") / ICMPv6NDOptSrcLLAddr(lladdr=mac),
        eth("33:33:ff:00:00:01") / IPv6(src="::", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt="fe80::1"),
        eth("33:33:00:00:00:02") / IPv6(src=me, dst="ff02::2", hlim=255) / ICMPv6ND_RS(),
        eth("33:33:ff:00:00:09") / IPv6(src=me, dst="ff02::1:ff00:9", hlim=255) / ICMPv6ND_NS(tgt="fd00:10:244:1::9"),
    ],
    "no_route": [eth() / IPv6(src=me, dst="2001:db8::1") / UDP(sport=1, dport=2)],
}}
for name, fs in frames.items():
    for f in fs:
        sendp([f] * N, iface="{ifname}", verbose=False)
"#,
        ip6 = pod.ip6.unwrap(),
        ifname = pod.ifname,
    );
    netns::exec(&pod.netns, "/usr/bin/python3", &["-c", &script]).expect("scapy (python3-scapy) sends from the pod");
    let underlay = format!(
        r#"
from scapy.all import Ether, IP, UDP, IPv6, Raw, sendp
inner = bytes(Ether(src="02:00:00:00:00:01", dst="{vtep}") / IPv6(src="fd00:10:244:2::2", dst="{ip6}") / UDP(sport=1, dport=2) / b"x")
cut = inner[:14 + 30]
vxlan = bytes([0x08, 0, 0, 0, 0, 0, 1, 0])
f = Ether(src="{n2_mac}", dst="{n1_mac}") / IP(src="{n2_ip}", dst="{n1_ip}", flags="DF") / UDP(sport=40000, dport=8472) / Raw(vxlan + cut)
sendp([f] * {N}, iface="{uplink_peer}", verbose=False)
"#,
        vtep = n1.vtep_mac.clone().unwrap(),
        ip6 = pod.ip6.unwrap(),
        n1_ip = n1.address,
        n2_ip = n2.address,
        uplink_peer = n1.underlay_link,
    );
    netns::exec("tw-ul", "/usr/bin/python3", &["-c", &underlay]).expect("scapy sends on the underlay");
    std::thread::sleep(Duration::from_millis(300));

    let after = stats(&lab, "n1");
    let delta = |k: &str| after[k] - before[k];
    let n = u64::from(N);
    assert_eq!(delta("drop_bad_ip_header"), 3 * n, "two kinds from the pod, one from the underlay: {after:?}");
    assert_eq!(delta("drop_spoofed"), n);
    // The pod's own stack may solicit the gateway meanwhile (answered, not dropped), or
    // send its own router solicitations and MLD reports (dropped): at least ours.
    assert!(delta("drop_ndp_ignored") >= 4 * n, "{after:?}");
    assert_eq!(delta("drop_no_route"), n);
    assert_all_pairs_ok(&lab);
    down(lab);
}
