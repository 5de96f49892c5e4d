//! The whole per-packet work of a worker, in memory, on batches of 64 frames of 64 bytes:
//! parse → anti-spoof → conntrack → policy → LPM → VXLAN encapsulation → checksums, with
//! real data behind every stage: the full BGP table (901,899 IPv4 prefixes, each leading
//! to one of eight peer nodes) as routes, and ClassBench fw1_10k (9,416 rules, sources
//! opened to the pod) as the pod's compiled egress policy. The traffic is the fw1_10k
//! trace's headers (destinations, ports, protocols) sent by the pod, the ones whose
//! destination the BGP table routes (so no packet stops early at "no route").
//!
//! Cases (`Throughput::Elements` = packets):
//! - `pipeline/twill/established` — every packet belongs to a tracked connection (the
//!   steady state: conntrack hit, no policy lookup);
//! - `pipeline/twill/first-packets` — every packet opens a connection: judged by the
//!   10k-rule policy and inserted (the clock advances a second a batch, so the table
//!   churns instead of filling);
//! - `pipeline/twill-2-workers/established` — two threads, each on its own frames,
//!   sharing the snapshot and the connection table, as two workers do;
//! - `pipeline/naive/…` — the peer: the same stages written the obvious way with
//!   well-known crates (etherparse to parse and build, a std HashMap as the connection
//!   table, ip_network_table for LPM, a linear first-match scan for policy).
//!
//! Frames are copied from a template ring into the work buffer before each packet (64
//! bytes; the real worker processes in place), in both twill and the peer.

use std::{
    collections::HashMap,
    hint::black_box,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group};
use forwarder::{
    RouteTarget, Snapshot, WorkerCounters,
    conntrack::Flow,
    pipeline::{self, Verdict},
    policy::FlowTables,
    route::{Ipv4Prefix, Stage},
};
use benches::{
    classbench_policy,
    fixture::{self, BATCH, PEERS, POD, POD_PORT, peer_ip},
};
use policy_engine::{
    classbench,
    classifier::{ClassRule, Key, linear_first_match},
    compiler::PolicyCompiler,
    dataset,
    world::Endpoint as PolicyEndpoint,
};

/// Frames in the template ring (the trace's first headers).
const RING: usize = 1 << 15;

/// The BGP table's IPv4 prefixes.
fn bgp_v4() -> Vec<(u32, u8)> {
    let text = dataset::read("bgp/prefixes.txt.gz").unwrap_or_else(|e| panic!("the BGP table: {e}"));
    text.lines()
        .filter_map(|l| {
            let (a, len) = l.trim().split_once('/')?;
            let a: Ipv4Addr = a.parse().ok()?;
            Some((u32::from(a), len.parse().ok()?))
        })
        .collect()
}

fn peer_of_prefix(addr: u32, len: u8) -> u32 {
    (addr.wrapping_mul(0x9e37_79b9) ^ u32::from(len)).rotate_left(7) % PEERS
}

struct Setup {
    snap: Arc<Snapshot>,
    frames: Vec<[u8; 64]>,
    flows: Vec<Flow>,
    /// For the peer: the rules (sources opened) and the routes.
    rules: Vec<ClassRule>,
    table: ip_network_table::IpNetworkTable<u32>,
}

fn frame_for(dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> [u8; 64] {
    let mut f = [0u8; 64];
    fixture::frame(&mut f, dst, proto, sport, dport);
    f
}
fn setup() -> Setup {
    let mut snap = fixture::snapshot(1);
    let bgp = bgp_v4();
    let mut table = ip_network_table::IpNetworkTable::new();
    for &(a, l) in &bgp {
        let Some(p) = Ipv4Prefix::new(Ipv4Addr::from(a), l) else { continue };
        let k = peer_of_prefix(u32::from(p.addr()), l);
        snap.routes.insert(p, RouteTarget::Node(k));
        if let Ok(n) = ip_network::Ipv4Network::new_truncate(Ipv4Addr::from(a), l) {
            table.insert(n, k);
        }
    }

    let rules = classbench::parse_rules(&dataset::read("classbench/fw1_10k.gz").expect("ClassBench fw1_10k")).expect("parses");
    let opened: Vec<ClassRule> = rules.iter().map(|r| ClassRule { src: Vec::new(), ..r.clone() }).collect();
    let policy = classbench_policy::policy("fw1-10k", &rules, classbench_policy::ipv4);
    let mut c = PolicyCompiler::new();
    c.upsert_policy(policy).expect("policy compiles");
    c.upsert_endpoint(PolicyEndpoint::new("default", "pod", &[], POD)).expect("pod");
    snap.policy = c.tables().expect("tables");

    let trace = classbench::parse_trace(&dataset::read("classbench/fw1_10k_trace.gz").expect("trace")).expect("parses");
    let mut frames = Vec::new();
    let mut flows = Vec::new();
    // Only destinations the BGP table routes: every packet runs the whole pipeline, none
    // stops early as `no_route`.
    let routed = |d: u32| snap.routes.lookup(Ipv4Addr::from(d)).is_some();
    for e in trace.iter().filter(|e| matches!(e.key.proto, 6 | 17) && routed(e.key.dst)) {
        let dst = Ipv4Addr::from(e.key.dst);
        let f = frame_for(dst, e.key.proto, e.key.src_port, e.key.dst_port);
        frames.push(f);
        flows.push(Flow { src: u32::from(POD), dst: e.key.dst, proto: e.key.proto, src_port: e.key.src_port, dst_port: e.key.dst_port });
        if frames.len() == RING {
            break;
        }
    }
    eprintln!("pipeline: {} routes, {} rules, {} frames in the ring", bgp.len(), rules.len(), frames.len());
    // The ring is indexed with a mask (a division per packet would be the harness's cost).
    assert_eq!(frames.len(), RING, "the trace has fewer than {RING} routed TCP and UDP headers");
    Setup { snap: Arc::new(snap), frames, flows, rules: opened, table }
}

/// Runs `n` packets through twill's pipeline from `ring[start..]`, returns how many were
/// forwarded.
fn twill_batch(snap: &Snapshot, flows: &FlowTables, counters: &WorkerCounters, now: u64, ring: &[[u8; 64]], start: usize, buf: &mut [u8]) -> usize {
    let fs = flows.state(0, counters, now);
    let mut forwarded = 0;
    let frame = |i: usize| &ring[(start + i) & (RING - 1)][..];
    let (first, second) = (pipeline::PREFETCH_FIRST, pipeline::PREFETCH_SECOND);
    for i in 0..first.min(BATCH) {
        pipeline::prefetch(snap, &fs, frame(i), Stage::First);
    }
    for i in 0..second.min(BATCH) {
        pipeline::prefetch(snap, &fs, frame(i), Stage::Second);
    }
    for i in 0..BATCH {
        if i + first < BATCH {
            pipeline::prefetch(snap, &fs, frame(i + first), Stage::First);
        }
        if i + second < BATCH {
            pipeline::prefetch(snap, &fs, frame(i + second), Stage::Second);
        }
        template_prefetch(ring, start + i);
        let f = frame(i);
        buf[..64].copy_from_slice(f);
        if let Verdict::Forward { .. } = pipeline::process(snap, &fs, 0, POD_PORT, buf, 60) {
            forwarded += 1;
        }
    }
    forwarded
}

/// Asks for the template frame [`TEMPLATE_AHEAD`] frames after `i`: a real worker finds
/// its RX frames in the cache (the kernel has just written them), the bench's copies come
/// from a 2 MiB ring that does not fit; both pipelines get this.
#[inline(always)]
fn template_prefetch(ring: &[[u8; 64]], i: usize) {
    forwarder::huge::prefetch(&ring[(i + TEMPLATE_AHEAD) & (RING - 1)]);
}

const TEMPLATE_AHEAD: usize = 16;

/// The peer pipeline's connection table: the symmetric 5-tuple → opener.
type NaiveConntrack = HashMap<(u32, u32, u8, u16, u16), bool>;

/// One batch of the ring from `start` through the naive pipeline; returns how many were
/// forwarded.
fn naive_batch(s: &Setup, ct: &mut NaiveConntrack, start: usize, buf: &mut [u8], out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for i in 0..BATCH {
        template_prefetch(&s.frames, start + i);
        buf[..64].copy_from_slice(&s.frames[(start + i) & (RING - 1)]);
        n += usize::from(naive_packet(s, ct, &buf[..60], out));
    }
    n
}

fn naive_packet(s: &Setup, ct: &mut NaiveConntrack, frame: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) else { return false };
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { return false };
    let h = ip.header();
    if h.source_addr() != POD {
        return false;
    }
    let (sport, dport) = match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        Some(etherparse::TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        _ => (0, 0),
    };
    let (src, dst, proto) = (u32::from(h.source_addr()), u32::from(h.destination_addr()), h.protocol().0);
    let key = if (src, sport) <= (dst, dport) { (src, dst, proto, sport, dport) } else { (dst, src, proto, dport, sport) };
    if let std::collections::hash_map::Entry::Vacant(e) = ct.entry(key) {
        let k = Key { src, dst, proto, src_port: sport, dst_port: dport };
        if linear_first_match(&s.rules, &k).is_none() {
            return false;
        }
        e.insert(true);
    }
    let Some((_, &peer)) = s.table.longest_match(h.destination_addr()) else { return false };
    let inner = frame;
    out.clear();
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 1, peer as u8])
        .ipv4([10, 100, 0, 11], peer_ip(peer).octets(), 64)
        .udp(49152, 8472);
    let mut payload = Vec::with_capacity(8 + inner.len());
    payload.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
    payload.extend_from_slice(inner);
    builder.write(out, &payload).is_ok()
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = vec![0u8; 4096];

    // Established: every flow of the ring tracked, opened by the pod.
    let established = FlowTables::new(4 * s.flows.len(), 1024, 2);
    for f in &s.flows {
        established.conntrack.insert(f, 1);
    }
    let counters = WorkerCounters::default();
    let mut at = 0;
    let check = twill_batch(&s.snap, &established, &counters, 2, &s.frames, 0, &mut buf);
    assert_eq!(check, BATCH, "every established packet must be forwarded, or the bench would not measure the whole pipeline");
    g.bench_function("twill/established", |b| {
        b.iter(|| {
            at = (at + BATCH) & (RING - 1);
            black_box(twill_batch(&s.snap, &established, &counters, 2, &s.frames, at, &mut buf))
        })
    });

    let churn = FlowTables::new(1 << 16, 1024, 1);
    let mut now = 1_000u64;
    g.bench_function("twill/first-packets", |b| {
        b.iter(|| {
            at = (at + BATCH) & (RING - 1);
            now += 1000;
            black_box(twill_batch(&s.snap, &churn, &counters, now, &s.frames, at, &mut buf))
        })
    });

    g.bench_function("twill-2-workers/established", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            std::thread::scope(|scope| {
                for w in 0..2usize {
                    let (snap, frames, est) = (&s.snap, &s.frames, &established);
                    scope.spawn(move || {
                        let counters = WorkerCounters::default();
                        let mut buf = vec![0u8; 4096];
                        // Each worker its own half of the ring; together 2 batches per iteration.
                        let mut at = w * frames.len() / 2;
                        for _ in 0..iters {
                            at = (at + BATCH) & (RING - 1);
                            black_box(twill_batch(snap, est, &counters, 2, frames, at, &mut buf));
                        }
                    });
                }
            });
            // Two batches per iteration: report the time of one, so the rate is the sum.
            t.elapsed() / 2
        })
    });

    let mut ct: NaiveConntrack = HashMap::new();
    for f in &s.flows {
        let key = if (f.src, f.src_port) <= (f.dst, f.dst_port) { (f.src, f.dst, f.proto, f.src_port, f.dst_port) } else { (f.dst, f.src, f.proto, f.dst_port, f.src_port) };
        ct.insert(key, true);
    }
    let mut out = Vec::with_capacity(256);
    g.bench_function("naive/established", |b| {
        b.iter(|| {
            at = (at + BATCH) & (RING - 1);
            black_box(naive_batch(&s, &mut ct, at, &mut buf, &mut out))
        })
    });
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let mut fresh: NaiveConntrack = HashMap::new();
    g.bench_function("naive/first-packets", |b| {
        b.iter(|| {
            at = (at + BATCH) & (RING - 1);
            fresh.clear();
            black_box(naive_batch(&s, &mut fresh, at, &mut buf, &mut out))
        })
    });
    g.finish();
}

/// Exactly `n` established packets through twill's pipeline, for `valgrind --tool=callgrind
/// --toggle-collect=*callgrind_run*` (instructions per packet: the stable figure on a noisy
/// machine).
#[inline(never)]
fn callgrind_run(s: &Setup, flows: &FlowTables, n: usize) -> usize {
    let counters = WorkerCounters::default();
    let mut buf = vec![0u8; 4096];
    let mut forwarded = 0;
    for b in 0..n / BATCH {
        forwarded += twill_batch(&s.snap, flows, &counters, 2, &s.frames, b * BATCH, &mut buf);
    }
    forwarded
}

criterion_group!(benches, bench);

fn main() {
    // TWILL_PIPELINE_PACKETS=n: run n packets once (for callgrind) instead of criterion.
    if let Some(n) = std::env::var("TWILL_PIPELINE_PACKETS").ok().and_then(|v| v.parse::<usize>().ok()) {
        let s = setup();
        let flows = FlowTables::new(4 * s.flows.len(), 1024, 1);
        for f in &s.flows {
            flows.conntrack.insert(f, 1);
        }
        let forwarded = callgrind_run(&s, &flows, n);
        println!("pipeline: {forwarded} of {n} packets forwarded");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
