//! NAT outgoing, end to end with the real agents: pods reach an address outside the
//! cluster (the lab router's 198.51.100.1, which has no route back to any pod) over TCP,
//! UDP and ICMP echo, leaving with their node's address; an ICMP error about a translated
//! connection reaches the pod's socket; 1,000 concurrent UDP flows from
//! one pod keep distinct ports and every reply finds its own socket; a datagram to a NAT
//! port nobody holds is dropped and counted; a pool without natOutgoing leaves its pods no
//! way out — unless the agents carry an outside route (`--routes`), which takes them out
//! with their own addresses to a world that routes the pools back. Needs root.

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{down, setup, stats};
use perf_lab::{
    manifests, netns,
    probe::{icmp_echo, tcp_exchange},
    topology::{Dataplane, Lab, ROUTER_NS, Topology, WORLD_IP},
};

const UDP_PORT: u16 = 7100;
const TCP_PORT: u16 = 7101;
const FLOWS: usize = 1000;
/// The node ports twill's NAT hands out (`forwarder::nat::PORTS`).
const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// The protocol a [`World`] server heard a peer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Udp,
    Tcp,
}

/// UDP and TCP echo servers on [`WORLD_IP`] in the router namespace that remember who
/// talked to them (protocol, address and port, as the world sees them).
struct World {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<(Proto, SocketAddrV4)>>>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl World {
    fn start() -> World {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let udp = netns::spawn_ready(ROUTER_NS, move |ready| {
            let u = UdpSocket::bind((WORLD_IP, UDP_PORT))?;
            u.set_read_timeout(Some(Duration::from_millis(20)))?;
            ready.signal();
            let mut buf = [0u8; 256];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, std::net::SocketAddr::V4(from))) = u.recv_from(&mut buf) {
                    v.lock().unwrap().insert((Proto::Udp, from));
                    // A reply that cannot leave is the client's loss, not the world's end.
                    let _ = u.send_to(&buf[..n], from);
                }
            }
            Ok(())
        })
        .expect("UDP server in the router namespace");
        let (s, v) = (stop.clone(), seen.clone());
        let tcp = netns::spawn_ready(ROUTER_NS, move |ready| {
            let l = std::net::TcpListener::bind((WORLD_IP, TCP_PORT))?;
            l.set_nonblocking(true)?;
            ready.signal();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, std::net::SocketAddr::V4(from))) => {
                        v.lock().unwrap().insert((Proto::Tcp, from));
                        // Each connection on its own thread, and its errors its own: a
                        // client that gave up (as the probes of a cut-off pod do, whose
                        // data never arrives) must neither stop the world nor hold up
                        // the next client.
                        std::thread::spawn(move || echo_once(c));
                    }
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            Ok(())
        })
        .expect("TCP server in the router namespace");
        World { stop, seen, threads: vec![udp, tcp] }
    }

    fn seen(&self) -> BTreeSet<(Proto, SocketAddrV4)> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Err(e) = netns::join(t) {
                eprintln!("world server: {e:#}");
            }
        }
    }
}

/// Echoes the first read of one TCP connection; an error ends only this connection.
fn echo_once(mut c: std::net::TcpStream) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut c, &mut buf)?;
    std::io::Write::write_all(&mut c, &buf[..n])
}

/// From inside the pod's namespace: `FLOWS` UDP sockets, each sending its own index to the
/// world until it has its own reply back (or 10 s pass). Returns the replies received.
fn many_flows(pod_ns: &str) -> usize {
    netns::run_in(pod_ns, || {
        let socks: Vec<UdpSocket> = (0..FLOWS)
            .map(|_| {
                let s = UdpSocket::bind(("0.0.0.0", 0))?;
                s.set_nonblocking(true)?;
                s.connect((WORLD_IP, UDP_PORT))?;
                Ok(s)
            })
            .collect::<std::io::Result<_>>()?;
        let mut answered = vec![false; FLOWS];
        let deadline = Instant::now() + Duration::from_secs(10);
        while answered.iter().any(|a| !a) && Instant::now() < deadline {
            for (i, s) in socks.iter().enumerate().filter(|(i, _)| !answered[*i]) {
                let _ = s.send(&(i as u32).to_be_bytes());
            }
            let round = Instant::now() + Duration::from_millis(300);
            while Instant::now() < round {
                for (i, s) in socks.iter().enumerate() {
                    let mut b = [0u8; 8];
                    if let Ok(4) = s.recv(&mut b) {
                        assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, i, "a reply reached another flow's socket");
                        answered[i] = true;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(answered.iter().filter(|a| **a).count())
    })
    .expect("flows from the pod")
}

fn raise_fd_limit() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
}

fn node_addr(lab: &Lab, node: &str) -> Ipv4Addr {
    lab.node(node).unwrap().address
}

#[test]
fn pods_reach_the_outside_world_through_nat_and_only_through_it() {
    let _g = setup();
    raise_fd_limit();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).up().unwrap();
    let world = World::start();
    let (p1, p2) = (lab.pods_on(1).next().unwrap().clone(), lab.pods_on(2).next().unwrap().clone());
    let (n1, n2) = (node_addr(&lab, "n1"), node_addr(&lab, "n2"));

    // TCP and ICMP echo from a pod of each node; the world sees the nodes, not the pods.
    for p in [&p1, &p2] {
        netns::run_in(&p.netns, || tcp_exchange(WORLD_IP, TCP_PORT, Duration::from_secs(3))).unwrap_or_else(|e| panic!("TCP from {}: {e:#}", p.name));
        netns::run_in(&p.netns, || icmp_echo(WORLD_IP, 5, Duration::from_millis(500))).unwrap_or_else(|e| panic!("ping from {}: {e:#}", p.name));
    }
    let seen = world.seen();
    assert!(seen.iter().any(|(_, a)| *a.ip() == n1) && seen.iter().any(|(_, a)| *a.ip() == n2), "the world saw {seen:?}");
    assert!(seen.iter().all(|(_, a)| (*a.ip() == n1 || *a.ip() == n2) && NAT_PORTS.contains(&a.port())), "{seen:?}");

    // The world's kernel answers a datagram to a closed port with port unreachable,
    // quoting the node's packet: twill turns it back to the pod, whose socket hears it.
    let refused = netns::run_in(&p1.netns, || {
        let u = UdpSocket::bind(("0.0.0.0", 0))?;
        u.connect((WORLD_IP, 7999))?;
        u.set_read_timeout(Some(Duration::from_millis(500)))?;
        for _ in 0..5 {
            u.send(b"anyone?")?;
            match u.recv(&mut [0u8; 16]) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(true),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(false)
    })
    .unwrap();
    assert!(refused, "the pod never heard the world's port unreachable");

    // 1,000 concurrent UDP flows from one pod: distinct node ports, every reply home.
    let answered = many_flows(&p1.netns);
    assert_eq!(answered, FLOWS, "replies that found their socket");
    // (TCP and UDP have port tables of their own: only the UDP ports must be distinct.)
    let udp_ports: BTreeSet<u16> = world.seen().iter().filter(|(p, a)| *p == Proto::Udp && *a.ip() == n1).map(|(_, a)| a.port()).collect();
    assert_eq!(udp_ports.len(), FLOWS, "distinct node ports from n1 for {FLOWS} UDP flows");
    let s = stats(&lab, "n1");
    assert!(s["nat_out"] >= FLOWS as u64 && s["nat_in"] >= FLOWS as u64, "{s:?}");
    assert_eq!(s["drop_nat_ports_exhausted"], 0, "{s:?}");

    // A datagram from the world to a NAT port nobody holds: dropped by twill and counted.
    let free = NAT_PORTS.into_iter().find(|p| !udp_ports.contains(p)).unwrap();
    let before = s["drop_nat_no_mapping"];
    netns::run_in(ROUTER_NS, move || {
        let u = UdpSocket::bind((WORLD_IP, 0))?;
        for _ in 0..3 {
            u.send_to(b"stranger", (n1, free))?;
        }
        Ok(())
    })
    .unwrap();
    let t = Instant::now();
    while stats(&lab, "n1")["drop_nat_no_mapping"] < before + 3 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stats(&lab, "n1")["drop_nat_no_mapping"], before + 3);

    // The same pool without natOutgoing: no way out (counted as no route), and back.
    let off = manifests::ip_pool(None).unwrap().replace("natOutgoing: true", "natOutgoing: false");
    assert!(off.contains("natOutgoing: false"), "{off}");
    lab.apply_manifest(manifests::POOL_FILE, &off).unwrap();
    let no_route = stats(&lab, "n1")["drop_no_route"];
    let t = Instant::now();
    let mut cut = false;
    while !cut && t.elapsed() < Duration::from_secs(5) {
        cut = netns::run_in(&p1.netns, || Ok(tcp_exchange(WORLD_IP, TCP_PORT, Duration::from_millis(300)).is_err())).unwrap();
    }
    assert!(cut, "a pool without natOutgoing still let the pod out");
    assert!(stats(&lab, "n1")["drop_no_route"] > no_route);
    lab.apply_manifest(manifests::POOL_FILE, &manifests::ip_pool(None).unwrap()).unwrap();
    let t = Instant::now();
    let mut back = false;
    while !back && t.elapsed() < Duration::from_secs(5) {
        back = netns::run_in(&p1.netns, || Ok(tcp_exchange(WORLD_IP, TCP_PORT, Duration::from_millis(300)).is_ok())).unwrap();
    }
    assert!(back, "natOutgoing back on, the pod still has no way out");

    drop(world);
    down(lab);
}

#[test]
fn an_outside_route_takes_pods_out_with_their_own_addresses() {
    let _g = setup();
    let file = std::env::temp_dir().join(format!("twill-outside-routes-{}.txt", std::process::id()));
    std::fs::write(&file, "# the world, as the router advertises it\n198.51.100.0/24\n").unwrap();
    let lab = Topology::uniform(2, 1, Dataplane::Twill).routes(&file).up().unwrap();
    let off = manifests::ip_pool(None).unwrap().replace("natOutgoing: true", "natOutgoing: false");
    lab.apply_manifest(manifests::POOL_FILE, &off).unwrap();
    // The world routes each node's pod subnet back to that node (as a BGP peer would).
    for n in ["n1", "n2"] {
        let node = lab.node(n).unwrap();
        netns::ip(ROUTER_NS, &["route", "add", &node.pod_cidr, "via", &node.address.to_string()]).unwrap();
    }
    let world = World::start();
    let pods: Vec<_> = [1, 2].map(|i| lab.pods_on(i).next().unwrap().clone()).into();
    // The pool change reaches each agent within a poll: until then a pod still leaves
    // through NAT. Wait until the world sees each pod as itself, then start afresh.
    for p in &pods {
        let t = Instant::now();
        while !world.seen().iter().any(|(_, a)| *a.ip() == p.ip().unwrap()) {
            assert!(t.elapsed() < Duration::from_secs(5), "the world never saw {} as itself: {:?}", p.name, world.seen());
            let _ = netns::run_in(&p.netns, || tcp_exchange(WORLD_IP, TCP_PORT, Duration::from_millis(300)));
        }
    }
    world.clear();
    let before: Vec<_> = ["n1", "n2"].iter().map(|n| stats(&lab, n)).collect();
    for p in &pods {
        netns::run_in(&p.netns, || tcp_exchange(WORLD_IP, TCP_PORT, Duration::from_secs(3))).unwrap_or_else(|e| panic!("TCP from {}: {e:#}", p.name));
        netns::run_in(&p.netns, || icmp_echo(WORLD_IP, 5, Duration::from_millis(500))).unwrap_or_else(|e| panic!("ping from {}: {e:#}", p.name));
    }
    let seen = world.seen();
    let own: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip().unwrap()).collect();
    assert_eq!(seen.iter().map(|(_, a)| *a.ip()).collect::<BTreeSet<_>>(), own, "the world saw {seen:?}");
    for (n, b) in ["n1", "n2"].iter().zip(&before) {
        let s = stats(&lab, n);
        assert!(s["routed_out"] > b["routed_out"] && s["nat_out"] == b["nat_out"], "{n}: before {b:?}, after {s:?}");
    }
    drop(world);
    down(lab);
    std::fs::remove_file(&file).ok();
}
