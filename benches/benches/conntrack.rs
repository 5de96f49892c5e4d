//! Connection tracking at scale: lookups of live flows in a table holding 1,000,000 of
//! them (the forwarder's per-packet conntrack step), 2^20 random flows in random direction
//! per iteration, so the table is read the way a packet stream over a million flows reads
//! it, not from a cache-warm handful.
//!
//! - `conntrack/twill/…`: `forwarder::conntrack::Conntrack::track`, the lock-free shared
//!   table the workers use (refreshing deadlines as a packet would);
//! - `conntrack/twill-batch/…`: the same through `track_batch`, a vector of 64 at a time;
//! - `conntrack/dashmap/…`: the dashmap crate (sharded RwLock hash map), the usual choice
//!   for a concurrent Rust map;
//! - `conntrack/std-hashmap/…`: a single-threaded `std::collections::HashMap` with the same
//!   symmetric key and a fast hasher — no concurrency at all, a lower bound on the work.
//!
//! `Throughput::Elements` = lookups.

use std::{collections::HashMap, hint::black_box, hash::BuildHasherDefault};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use benches::fixture::rng;
use forwarder::conntrack::{Conntrack, Flow, Timeouts};
use policy_engine::fxhash::FxHasher;

const FLOWS: usize = 1_000_000;
/// Lookups per iteration: spread over the whole table, so they miss the caches as a
/// packet stream over a million flows does.
const LOOKUPS: usize = 1 << 20;

fn flows() -> Vec<Flow> {
    let mut next = rng(0x2545_f491_4f6c_dd1d);
    (0..FLOWS)
        .map(|_| {
            let r = next();
            Flow {
                src: 0x0af4_0000 | (r as u32 & 0xffff),
                dst: 0x0af5_0000 | ((r >> 16) as u32 & 0xffff),
                proto: if r >> 63 == 0 { 6 } else { 17 },
                src_port: (r >> 32) as u16 | 1024,
                dst_port: [80, 443, 53, 8080][(r >> 48) as usize % 4],
            }
        })
        .collect()
}

/// The symmetric key the peers store (either direction finds the entry).
fn sym(f: &Flow) -> (u64, u64) {
    let a = (u64::from(f.src) << 16) | u64::from(f.src_port);
    let b = (u64::from(f.dst) << 16) | u64::from(f.dst_port);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo | (u64::from(f.proto) << 56), hi)
}

fn bench(c: &mut Criterion) {
    let mut all = flows();
    // Twice the flows in slots, as the module doc advises; the few refused are left out.
    let ct = Conntrack::new(2 * FLOWS, Timeouts::default());
    all.retain(|f| ct.insert(f, 1) == forwarder::conntrack::Insert::Inserted);
    assert!(all.len() > FLOWS - FLOWS / 1000, "{} flows refused", FLOWS - all.len());
    let mut next = rng(7);
    let lookups: Vec<Flow> = (0..LOOKUPS)
        .map(|_| {
            let f = all[next() as usize % all.len()];
            if next() & 1 == 0 { f } else { f.reversed() }
        })
        .collect();
    eprintln!("conntrack: {FLOWS} flows in {} slots, {} MiB", ct.capacity(), ct.memory_bytes() >> 20);

    let dm: dashmap::DashMap<(u64, u64), u64, BuildHasherDefault<FxHasher>> = dashmap::DashMap::default();
    let mut hm: HashMap<(u64, u64), u64, BuildHasherDefault<FxHasher>> = HashMap::default();
    for f in &all {
        dm.insert(sym(f), 1);
        hm.insert(sym(f), 1);
    }

    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    let id = "lookup-1M-flows";
    g.bench_function(format!("twill/{id}"), |b| {
        b.iter(|| {
            let mut hits = 0;
            for f in &lookups {
                hits += usize::from(ct.track(f, 2, false).is_some());
            }
            assert_eq!(hits, LOOKUPS);
            black_box(hits)
        })
    });
    g.bench_function(format!("twill-batch/{id}"), |b| {
        b.iter_batched_ref(
            || vec![None; LOOKUPS],
            |out| {
                for (flows, out) in lookups.chunks(64).zip(out.chunks_mut(64)) {
                    ct.track_batch(flows, 2, out);
                }
                black_box(out.iter().filter(|o| o.is_some()).count())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(format!("dashmap/{id}"), |b| {
        b.iter(|| {
            let mut hits = 0;
            for f in &lookups {
                hits += usize::from(dm.get(&sym(f)).is_some());
            }
            black_box(hits)
        })
    });
    g.bench_function(format!("std-hashmap/{id}"), |b| {
        b.iter(|| {
            let mut hits = 0;
            for f in &lookups {
                hits += usize::from(hm.contains_key(&sym(f)));
            }
            black_box(hits)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
