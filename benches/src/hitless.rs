//! Hitless updates, proven: worker threads run the real pipeline flat out on in-memory
//! frames while a control thread publishes route and policy changes at a fixed rate, and
//! every packet's fate is checked against the table version it was judged with.
//!
//! Node A has one pod and eight peer nodes. 256 routes (10.200.i.0/24) each lead to one
//! peer; every change moves one route to another peer and, every other change, moves the
//! one denied destination port of the pod's egress policy (a Calico GlobalNetworkPolicy,
//! compiled by the policy compiler as the agent would). A packet from the pod to
//! 10.200.i.x:p must come out VXLAN-encapsulated to exactly the peer the route named in
//! the version its batch loaded — or be dropped as denied by egress policy when `p` was
//! that version's denied port. Each packet opens a new connection (the harness forgets it
//! afterwards), so every one is judged by policy, not passed by conntrack.
//!
//! Reported: packets checked, wrong decisions (must be 0), versions published, and the
//! time from a version's publication until every worker has used it or a later one (p50,
//! p99, max).

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use encap::{ipv4::Ipv4Packet, vxlan};
use forwarder::{
    DropReason, RouteTarget, Snapshot, Tables, WorkerCounters,
    conntrack::Flow,
    pipeline::{self, Verdict},
    policy::FlowTables,
    route::Ipv4Prefix,
};
use crate::fixture::{self, BATCH, PEERS, POD, POD_PORT, peer_ip};
use policy_engine::{
    compiler::PolicyCompiler,
    model::parse_manifests,
    world::Endpoint as PolicyEndpoint,
};

const ROUTES: u32 = 256;
/// Destination ports the workers use; the policy denies one of them at a time.
const PORTS: u16 = 16;
const PORT_BASE: u16 = 2000;

/// What a run found.
#[derive(Debug, Clone)]
pub struct HitlessReport {
    pub packets: u64,
    /// Packets whose fate differed from what their table version said.
    pub wrong: u64,
    /// Of the right ones, how many were dropped by policy.
    pub denied: u64,
    pub versions: u64,
    pub workers: usize,
    pub changes_per_second: f64,
    /// Publication → every worker on it or later, in microseconds.
    pub takeover_p50_us: f64,
    pub takeover_p99_us: f64,
    pub takeover_max_us: f64,
    /// The first wrong decisions, described.
    pub examples: Vec<String>,
}

/// The peer route `i` leads to in version `v`: route `v % ROUTES` moved at each version.
fn peer_of(i: u32, v: u64) -> u32 {
    // Version u moves route (u - 1) % ROUTES one peer on: route i has moved once for each
    // u in 1..=v with (u - 1) % ROUTES == i.
    let route = u64::from(i);
    let moves = if v > route { (v - 1 - route) / u64::from(ROUTES) + 1 } else { 0 };
    ((route + moves) % u64::from(PEERS)) as u32
}

/// The port the egress policy denies in version `v` (it moves every other version).
fn denied_port(v: u64) -> u16 {
    PORT_BASE + ((v / 2) % u64::from(PORTS)) as u16
}

fn policy_yaml(port: u16) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: egress}}\nspec:\n  selector: all()\n  types: [Egress]\n  egress:\n  - action: Deny\n    protocol: UDP\n    destination: {{ports: [{port}]}}\n  - action: Allow\n"
    )
}

/// Version `v` of the tables.
fn snapshot(v: u64, compiler: &mut PolicyCompiler) -> Snapshot {
    let mut s = fixture::snapshot(v);
    for i in 0..ROUTES {
        let prefix = Ipv4Prefix::new(Ipv4Addr::new(10, 200, i as u8, 0), 24).expect("prefix");
        s.routes.insert(prefix, RouteTarget::Node(peer_of(i, v)));
    }
    let policy = parse_manifests(&policy_yaml(denied_port(v)), "hitless.yaml").expect("policy parses");
    compiler.upsert_policy(policy.into_iter().next().expect("one policy")).expect("policy compiles");
    s.policy = compiler.tables().expect("tables");
    s
}

/// Route `i`'s destination address.
fn destination(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, i as u8, 9)
}

struct WorkerResult {
    packets: u64,
    wrong: u64,
    denied: u64,
    /// (version, first time seen) at each change of version.
    seen: Vec<(u64, Instant)>,
    examples: Vec<String>,
}

fn run_worker(index: usize, tables: &Tables, flows: &FlowTables, stop: &AtomicBool) -> WorkerResult {
    let counters = WorkerCounters::default();
    let mut buf = vec![0u8; 4096];
    let mut r = WorkerResult { packets: 0, wrong: 0, denied: 0, seen: Vec::with_capacity(1 << 16), examples: Vec::new() };
    let mut next = fixture::rng(0x9e37_79b9_7f4a_7c15u64 ^ index as u64);
    let mut sport = 1024u16;
    while !stop.load(Ordering::Relaxed) {
        let snap = tables.load();
        let v = snap.version;
        if r.seen.last().is_none_or(|(last, _)| *last != v) {
            r.seen.push((v, Instant::now()));
        }
        let fs = flows.state(index, &counters, flows.now_ms());
        for _ in 0..BATCH {
            let x = next();
            let i = (x % u64::from(ROUTES)) as u32;
            let port = PORT_BASE + ((x >> 32) % u64::from(PORTS)) as u16;
            sport = sport.wrapping_add(1).max(1024);
            let len = fixture::frame(&mut buf, destination(i), 17, sport, port);
            let verdict = pipeline::process(&snap, &fs, index as u16, POD_PORT, &mut buf, len);
            flows.conntrack.remove(&Flow { src: u32::from(POD), dst: u32::from(destination(i)), proto: 17, src_port: sport, dst_port: port }, flows.now_ms());
            r.packets += 1;
            let ok = match verdict {
                Verdict::Drop(DropReason::PolicyDeniedEgress) => {
                    r.denied += 1;
                    port == denied_port(v)
                }
                Verdict::Forward { len: out, .. } if port != denied_port(v) => {
                    let outer = Ipv4Packet::new_checked(&buf[14..out]).map(|p| p.dst_addr()).ok();
                    out == len + vxlan::OVERHEAD && outer == Some(peer_ip(peer_of(i, v)))
                }
                _ => false,
            };
            if !ok {
                r.wrong += 1;
                if r.examples.len() < 5 {
                    r.examples.push(format!("version {v}: route {i} port {port} → {verdict:?} (wanted peer {} / denied port {})", peer_of(i, v), denied_port(v)));
                }
            }
        }
    }
    r
}

/// Runs `workers` workers for `duration` while `changes_per_second` versions are published.
pub fn run(workers: usize, duration: Duration, changes_per_second: u32) -> HitlessReport {
    let mut compiler = PolicyCompiler::new();
    compiler.upsert_endpoint(PolicyEndpoint::new("default", "pod", &[("app", "x")], POD)).expect("pod compiles");
    let tables = Arc::new(Tables::new(snapshot(0, &mut compiler)));
    let flows = Arc::new(FlowTables::new(1 << 16, 1024, workers));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (tables, flows, stop, start) = (Arc::clone(&tables), Arc::clone(&flows), Arc::clone(&stop), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                run_worker(w, &tables, &flows, &stop)
            })
        })
        .collect();
    start.wait();
    let period = Duration::from_secs_f64(1.0 / f64::from(changes_per_second.max(1)));
    let t0 = Instant::now();
    let mut published: Vec<Instant> = vec![t0];
    let mut v = 0u64;
    while t0.elapsed() < duration {
        v += 1;
        let next = snapshot(v, &mut compiler);
        let due = t0 + period * v as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        tables.publish(next);
        published.push(Instant::now());
    }
    // Let every worker take the last version before stopping.
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<WorkerResult> = handles.into_iter().map(|h| h.join().expect("worker thread")).collect();

    // For each version, when every worker had used it or a later one.
    let mut takeover_us: Vec<f64> = Vec::new();
    for (version, at) in published.iter().enumerate().skip(1) {
        let mut latest = *at;
        let mut all = true;
        for r in &results {
            match r.seen.iter().find(|(sv, _)| *sv >= version as u64) {
                Some((_, t)) => latest = latest.max(*t),
                None => all = false,
            }
        }
        if all {
            takeover_us.push(latest.duration_since(*at).as_secs_f64() * 1e6);
        }
    }
    takeover_us.sort_by(f64::total_cmp);
    let q = |p: f64| takeover_us.get(((takeover_us.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    HitlessReport {
        packets: results.iter().map(|r| r.packets).sum(),
        wrong: results.iter().map(|r| r.wrong).sum(),
        denied: results.iter().map(|r| r.denied).sum(),
        versions: v,
        workers,
        changes_per_second: v as f64 / duration.as_secs_f64(),
        takeover_p50_us: q(0.5),
        takeover_p99_us: q(0.99),
        takeover_max_us: takeover_us.last().copied().unwrap_or(f64::NAN),
        examples: results.into_iter().flat_map(|r| r.examples).take(5).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_moves_one_route_per_version() {
        for v in 1..600u64 {
            let moved: Vec<u32> = (0..ROUTES).filter(|i| peer_of(*i, v) != peer_of(*i, v - 1)).collect();
            assert_eq!(moved, vec![((v - 1) % u64::from(ROUTES)) as u32], "version {v}");
        }
        assert_ne!(denied_port(0), denied_port(2));
    }
}
