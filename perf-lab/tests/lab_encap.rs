//! Calico's modes on the wire, end to end with the real agents: IP-in-IP between twill
//! nodes (and IP-in-IP frames built by scapy decapsulated by twill), cross-subnet (direct
//! inside an underlay subnet, VXLAN across it), the pod MTU each uplink MTU allows reached
//! by TCP, and path MTU discovery through twill (ICMP fragmentation-needed). Every claim
//! about the wire is checked in a tshark capture on the underlay bridge. Needs root.

mod common;

use std::time::Duration;

use common::{down, echoes_out_of_order, not_echoed_intact, setup, stats};
use perf_lab::{
    capture::Capture,
    netns,
    probe::{EchoServers, UDP_ECHO_PORT, check_all_pairs},
    topology::{Dataplane, Lab, Topology, UNDERLAY_BRIDGE, UNDERLAY_NS},
};

fn assert_all_pairs_ok(lab: &Lab, expected: usize) {
    let pairs = check_all_pairs(lab.pods()).expect("probing pod pairs");
    assert_eq!(pairs.len(), expected);
    let failed: Vec<_> = pairs.iter().filter(|p| !p.ok()).collect();
    assert!(failed.is_empty(), "pairs that failed: {failed:#?}");
}

/// Captures outer source, destination, protocol, UDP destination port and IP length on the
/// underlay while `f` runs.
fn on_the_wire(filter: &str, f: impl FnOnce()) -> Vec<Vec<String>> {
    let cap = Capture::start(UNDERLAY_NS, UNDERLAY_BRIDGE, filter, &["udp.port==4789,vxlan", "udp.port==8472,vxlan"], &["ip.src", "ip.dst", "ip.proto", "udp.dstport", "ip.len"], 5000, Duration::from_secs(30))
        .expect("tshark captures on the underlay");
    f();
    cap.finish().expect("capture ends")
}

#[test]
fn ip_in_ip_between_twill_nodes() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).encap("ipip").up().unwrap();
    let rows = on_the_wire("ip proto 4 or udp port 4789 or udp port 8472", || assert_all_pairs_ok(&lab, 12));
    let (n1, n2) = (lab.node("n1").unwrap().address.to_string(), lab.node("n2").unwrap().address.to_string());
    for (from, to) in [(&n1, &n2), (&n2, &n1)] {
        let sent = rows.iter().filter(|r| r[0] == *from && r[1] == *to).count();
        assert!(sent > 0, "no IP-in-IP from {from} to {to}: {rows:?}");
    }
    assert!(rows.iter().all(|r| r[2] == "4"), "something other than IP-in-IP between the nodes: {rows:?}");
    let s = stats(&lab, "n1");
    assert!(s["encapsulated"] > 0 && s["decapsulated"] > 0, "{s:?}");
    down(lab);
}

/// IP-in-IP frames built by scapy on the underlay: a well-formed one from n2 reaches the
/// pod; one from an unknown node and one with a broken inner header are dropped and
/// counted, each under its own reason.
#[test]
fn twill_decapsulates_ip_in_ip_built_by_scapy() {
    let _g = setup();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).encap("ipip").up().unwrap();
    assert_all_pairs_ok(&lab, 2);
    let (n1, n2) = (lab.node("n1").unwrap().clone(), lab.node("n2").unwrap().clone());
    let n1_mac = netns::link_mac(&n1.netns, "eth0").unwrap();
    let n2_mac = netns::link_mac(&n2.netns, "eth0").unwrap();
    let pod = lab.pod("p1-n1").unwrap().clone();
    let pod_ip = pod.ip().unwrap();
    let receiver = netns::spawn_ready(&pod.netns, |ready| {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 7777))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        ready.signal();
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((buf[..n].to_vec(), from))
    })
    .unwrap();
    let before = stats(&lab, "n1");
    const N: u32 = 3;
    let script = format!(
        r#"
from scapy.all import Ether, IP, UDP, Raw, sendp
def ipip(inner, src="{n2_ip}"):
    return Ether(src="{n2_mac}", dst="{n1_mac}") / IP(src=src, dst="{n1_ip}", proto=4, flags="DF") / Raw(bytes(inner))
good = IP(src="10.244.2.2", dst="{pod_ip}", ttl=63) / UDP(sport=5555, dport=7777) / b"built by scapy"
bad_inner = bytearray(bytes(good)); bad_inner[0] = 0x43
sendp(ipip(good), iface="{bridge}", verbose=False)
for _ in range({N}):
    sendp(ipip(good, src="10.100.0.99"), iface="{bridge}", verbose=False)
    sendp(ipip(bytes(bad_inner)), iface="{bridge}", verbose=False)
"#,
        n1_ip = n1.address,
        n2_ip = n2.address,
        bridge = UNDERLAY_BRIDGE,
    );
    netns::exec(UNDERLAY_NS, "/usr/bin/python3", &["-c", &script]).expect("scapy (python3-scapy) sends the frames");
    let (payload, from) = netns::join(receiver).expect("the pod receives the datagram scapy tunnelled");
    assert_eq!(payload, b"built by scapy");
    assert_eq!(from.ip().to_string(), "10.244.2.2");
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&lab, "n1");
    let delta = |k: &str| after[k] - before[k];
    assert_eq!(delta("drop_unknown_vtep"), u64::from(N), "{after:?}");
    assert_eq!(delta("drop_bad_ip_header"), u64::from(N), "{after:?}");
    assert!(delta("decapsulated") >= 1);
    down(lab);
}

/// Cross-subnet: n1 and n2 share 10.100.0.0/24, n3 is on 10.100.1.0/24 behind the lab's
/// router. Between n1 and n2 pods' packets cross the wire as they are; to and from n3 they
/// are VXLAN (VNI 4096, port 4789).
#[test]
fn cross_subnet_routes_within_a_subnet_and_encapsulates_across() {
    let _g = setup();
    let lab = Topology::new()
        .node_in_subnet(Dataplane::Twill, 1, 0)
        .node_in_subnet(Dataplane::Twill, 1, 0)
        .node_in_subnet(Dataplane::Twill, 1, 1)
        .encap("cross-subnet")
        .up()
        .unwrap();
    let rows = on_the_wire("net 10.244.0.0/16 or udp port 4789", || assert_all_pairs_ok(&lab, 6));
    let n3 = lab.node("n3").unwrap().address.to_string();
    assert_eq!(n3, "10.100.1.13");
    let plain: Vec<_> = rows.iter().filter(|r| r[0].starts_with("10.244.")).collect();
    let vxlan: Vec<_> = rows.iter().filter(|r| r[3] == "4789").collect();
    assert!(!plain.is_empty(), "no direct-routed pod traffic between n1 and n2: {rows:?}");
    for r in &plain {
        let ends = [&r[0], &r[1]];
        assert!(ends.iter().all(|a| a.starts_with("10.244.1.") || a.starts_with("10.244.2.")), "pod traffic of n3 went unencapsulated: {r:?}");
    }
    assert!(!vxlan.is_empty() && vxlan.iter().all(|r| r[0] == n3 || r[1] == n3), "VXLAN only to and from n3: {vxlan:?}");
    assert!(vxlan.iter().any(|r| r[0] == n3) && vxlan.iter().any(|r| r[1] == n3), "both ways: {vxlan:?}");
    down(lab);
}

/// A pod that sends a DF datagram larger than the tunnel allows (its MTU raised past what
/// the CNI plugin set) gets ICMP fragmentation-needed from twill with the tunnel MTU, and
/// its kernel learns the path MTU.
#[test]
fn path_mtu_discovery_works_through_twill() {
    let _g = setup();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).up().unwrap();
    let (a, b) = (lab.pod("p1-n1").unwrap().clone(), lab.pod("p1-n2").unwrap().clone());
    let mtu = netns::exec(&a.netns, "cat", &[&format!("/sys/class/net/{}/mtu", a.ifname)]).unwrap();
    assert_eq!(mtu.trim(), "1450", "the CNI plugin set the VXLAN pod MTU");
    // Both ends of the pod's veth (veth drops what exceeds the peer's MTU).
    let pods = perf_lab::twill_node::request(&lab.node("n1").unwrap().agent.as_ref().unwrap().files.socket, &serde_json::json!({"op": "get", "kind": "pods"}), Duration::from_secs(5)).unwrap();
    let host = pods["items"].as_array().unwrap().iter().find(|p| p["pod"] == a.name).and_then(|p| p["host_ifname"].as_str()).expect("the pod's host veth").to_string();
    netns::ip(&lab.node("n1").unwrap().netns, &["link", "set", &host, "mtu", "1500"]).unwrap();
    netns::ip(&a.netns, &["link", "set", &a.ifname, "mtu", "1500"]).unwrap();
    let script = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)   # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF set
s.connect(("{dst}", 9999))
s.send(b"x" * 1472)                        # 1500 bytes of IPv4: 50 too many for VXLAN
time.sleep(0.5)
try:
    s.send(b"x" * 1472)
    print("sent")
except OSError as e:
    print("refused", e.errno)
print(s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU: the path MTU the kernel learnt
"#,
        dst = b.ip().unwrap()
    );
    let out = netns::exec(&a.netns, "/usr/bin/python3", &["-c", &script]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.last().map(|l| l.trim()), Some("1450"), "the pod's kernel did not learn the path MTU: {out}");
    assert!(lines.iter().any(|l| l.starts_with("refused 90")), "the second send should fail with EMSGSIZE: {out}");
    let s = stats(&lab, "n1");
    assert!(s["icmp_errors_sent"] >= 1, "{s:?}");
    down(lab);
}

/// TCP between pods reaches the pod MTU the tunnel allows: with a 1500-byte underlay 1450
/// (VXLAN), with jumbo frames 8950 — each frame three UMEM chunks on multi-buffer sockets.
#[test]
fn tcp_reaches_the_pod_mtu_at_1500_and_9000_byte_uplinks() {
    let _g = setup();
    for (uplink, pod_mtu) in [(1500u32, 1450u32), (9000, 8950)] {
        let lab = Topology::uniform(2, 1, Dataplane::Twill).uplink_mtu(uplink).up().unwrap();
        let (a, b) = (lab.pod("p1-n1").unwrap().clone(), lab.pod("p1-n2").unwrap().clone());
        let mtu = netns::exec(&a.netns, "cat", &[&format!("/sys/class/net/{}/mtu", a.ifname)]).unwrap();
        assert_eq!(mtu.trim(), pod_mtu.to_string(), "uplink MTU {uplink}");
        let rows = on_the_wire("udp port 8472", || {
            let t = perf_lab::traffic::tcp_throughput(&a, &b, Duration::from_secs(1)).expect("TCP transfer");
            assert!(t.bytes > 1_000_000, "uplink {uplink}: {t:?}");
        });
        let largest = rows.iter().filter_map(|r| r[4].split(',').next()?.parse::<u32>().ok()).max().unwrap_or(0);
        assert_eq!(largest, pod_mtu + 50, "uplink {uplink}: the largest outer packet carries a full pod MTU");
        down(lab);
    }
}

/// Jumbo frames, each spread over several UMEM chunks, cross intact: UDP datagrams from one
/// byte to the full pod MTU (8950 on a 9000-byte uplink), their payloads pseudo-random,
/// echoed by the other pod of the same node and by both pods of the other node (VXLAN), with
/// two workers per node so that frames are handed between workers too. Every echo is byte
/// for byte what was sent, and no frame was dropped for its length.
#[test]
fn jumbo_frames_cross_nodes_and_workers_intact() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).uplink_mtu(9000).cores("0,1").up().unwrap();
    let _echo = EchoServers::start(lab.pods()).expect("echo servers");
    let a = lab.pod("p1-n1").unwrap().clone();
    // Around one chunk (3,840 bytes of frame), two and three, and the pod MTU's largest.
    let sizes = [1usize, 1400, 3700, 3770, 3790, 3900, 7000, 7640, 7700, 8922];
    for dst in ["p2-n1", "p1-n2", "p2-n2"] {
        let to = std::net::SocketAddr::from((lab.pod(dst).unwrap().ip.expect("an IPv4 address"), UDP_ECHO_PORT));
        let echoed = not_echoed_intact(&a, to, &sizes);
        assert!(echoed.is_empty(), "to {dst}: datagrams (index, bytes) not echoed intact: {echoed:?}");
    }
    for node in ["n1", "n2"] {
        let s = stats(&lab, node);
        assert_eq!((s["drop_too_long"], s["drop_no_free_frame"]), (0, 0), "{node}: {s:?}");
    }
    down(lab);
}

/// One flow of jumbo frames (several UMEM chunks each) and small ones, interleaved in
/// bursts, keeps its order through both nodes with two workers each: a frame handed from
/// the worker that received it to the one serving its pod is not overtaken by a later,
/// shorter frame of the same flow (both kinds travel through one hand-off ring).
#[test]
fn a_flow_of_jumbo_and_small_frames_keeps_its_order_across_workers() {
    let _g = setup();
    let lab = Topology::uniform(2, 2, Dataplane::Twill).uplink_mtu(9000).cores("0,1").up().unwrap();
    let _echo = EchoServers::start(lab.pods()).expect("echo servers");
    let a = lab.pod("p1-n1").unwrap().clone();
    let sizes = [8000usize, 64, 7000, 200, 64, 8900, 100, 64];
    for dst in ["p1-n2", "p2-n2"] {
        let to = std::net::SocketAddr::from((lab.pod(dst).unwrap().ip.expect("an IPv4 address"), UDP_ECHO_PORT));
        let (sent, echoed, late) = echoes_out_of_order(&a, to, &sizes, 250);
        println!("to {dst}: {sent} sent, {echoed} echoed, {late} out of order");
        assert!(echoed > sent / 2, "to {dst}: only {echoed} of {sent} datagrams echoed");
        assert_eq!(late, 0, "to {dst}: {late} of {echoed} echoes came back after a later datagram");
    }
    down(lab);
}
