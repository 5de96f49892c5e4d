//! Longest-prefix match on the real BGP table (shared/data/bgp/prefixes.txt.gz: 901,899
//! IPv4 and 160,147 IPv6 prefixes), twill's `forwarder::route` beside the peer crates.
//!
//! `lpm/<impl>/<case>`, `Throughput::Elements` = lookups; 2^20 addresses per iteration, so
//! the table is read from memory the way a packet stream reads it, not from a warm cache:
//! - impls: `twill` (`RouteTable::lookup`, one address at a time), `twill-batch`
//!   (`lookup_batch` over RX-sized batches of 64), `prefix-trie` (`PrefixMap::get_lpm`),
//!   `ip_network_table` (a tree bitmap), `poptrie` (the `poptrie` crate, Asai & Ohara's
//!   structure without direct pointing);
//! - cases: `v4-full` (every IPv4 prefix), `v4-100k` / `v4-10k` / `v4-1k` (random subsets),
//!   uniformly random IPv4 addresses; `v6-full` (every IPv6 prefix), addresses drawn inside
//!   random table prefixes with random host bits (uniform 128-bit addresses would almost
//!   all miss at the first step: the table covers a tiny part of the space).
//!
//! twill's tables are built by inserts and then laid out afresh with `compacted()`, as the
//! control thread does after its first full load. Every implementation's results are
//! stored, as returned, in an output array.
//!
//! Every route's value is one of 1,024 next hops, as in a FIB (twill interns values; the
//! peers store them in their nodes). `lpm-update/<impl>/<case>`: inserts and removes per
//! second on the full table (a held-out random set of its prefixes inserted, then removed,
//! per iteration); `twill-publish-1k` / `-10k` do the same the way the control thread does
//! it, on a clone per batch of 1,000 / 10,000 changes (copy-on-write of the parts the batch
//! touches), the old version dropped. Memory per table goes to stderr: twill's `memory_bytes()` and, for
//! every implementation, the growth of the resident set while building it (approximate).

use std::{
    hint::black_box,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use benches::fixture::rng;
use forwarder::route::{Ipv4Prefix, Ipv6Prefix, Route6Table, RouteTable};

const LOOKUPS: usize = 1 << 20;
const NEXT_HOPS: u32 = 1024;
/// Prefixes inserted then removed per update iteration.
const UPDATES: usize = 20_000;
/// The poptrie crate rebuilds its arrays per insert: fewer updates, or an iteration takes minutes.
const POPTRIE_UPDATES: usize = 200;

fn shuffle<T>(v: &mut [T], next: &mut impl FnMut() -> u64) {
    for i in (1..v.len()).rev() {
        v.swap(i, next() as usize % (i + 1));
    }
}

fn bgp() -> (Vec<Ipv4Prefix>, Vec<Ipv6Prefix>) {
    let text = policy_engine::dataset::read("bgp/prefixes.txt.gz").unwrap_or_else(|e| panic!("lpm bench needs the BGP table: {e}"));
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.contains(':') {
            v6.push(line.parse().unwrap_or_else(|e| panic!("{e}")));
        } else {
            v4.push(line.parse().unwrap_or_else(|e| panic!("{e}")));
        }
    }
    (v4, v6)
}

/// Resident bytes of this process (the growth while building a table approximates its size).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn measured<T>(what: &str, build: impl FnOnce() -> T) -> T {
    let before = rss();
    let t = build();
    eprintln!("lpm memory: {what}: resident growth {:.1} MiB", rss().saturating_sub(before) as f64 / (1 << 20) as f64);
    t
}

/// Times `lookup` over every address, each result stored in an output array as a pipeline
/// stage fills its next-hop vector (no branch on the result in the loop: random addresses
/// miss three times in ten, and a consumer's mispredicted branch would dominate the figure).
fn fill<A: Copy, R>(b: &mut criterion::Bencher<'_>, addrs: &[A], lookup: impl Fn(A) -> R) {
    let mut out: Vec<R> = Vec::with_capacity(addrs.len());
    b.iter(|| {
        out.clear();
        out.extend(addrs.iter().map(|&a| lookup(a)));
        black_box(&out);
    })
}

fn hop(i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761) % NEXT_HOPS
}

/// The IPv4 tables of one case.
struct V4 {
    twill: RouteTable<u32>,
    prefix_trie: prefix_trie::PrefixMap<ipnet::Ipv4Net, u32>,
    ipnt: ip_network_table::IpNetworkTable<u32>,
    poptrie: poptrie::Poptrie<(Ipv4Addr, u8), u32>,
}

fn v4_tables(case: &str, prefixes: &[Ipv4Prefix]) -> V4 {
    let twill = measured(&format!("twill/{case}"), || {
        let mut t = RouteTable::default();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(*p, hop(i));
        }
        t.compacted()
    });
    eprintln!("lpm memory: twill/{case}: memory_bytes {:.1} MiB", twill.memory_bytes() as f64 / (1 << 20) as f64);
    let prefix_trie = measured(&format!("prefix-trie/{case}"), || {
        let mut t = prefix_trie::PrefixMap::new();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(ipnet::Ipv4Net::new(p.addr(), p.len()).expect("valid prefix"), hop(i));
        }
        t
    });
    let ipnt = measured(&format!("ip_network_table/{case}"), || {
        let mut t = ip_network_table::IpNetworkTable::new();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(ip_network::Ipv4Network::new(p.addr(), p.len()).expect("valid prefix"), hop(i));
        }
        t
    });
    let poptrie = measured(&format!("poptrie/{case}"), || prefixes.iter().enumerate().map(|(i, p)| ((p.addr(), p.len()), hop(i))).collect());
    V4 { twill, prefix_trie, ipnt, poptrie }
}

fn bench_v4(c: &mut Criterion, case: &str, t: &V4, addrs: &[Ipv4Addr]) {
    // All five agree before any is timed.
    for &a in addrs.iter().take(100_000) {
        let want = t.twill.lookup(a);
        assert_eq!(t.prefix_trie.get_lpm(&ipnet::Ipv4Net::from(a)).map(|(_, v)| *v), want, "prefix-trie on {a}");
        assert_eq!(t.ipnt.longest_match_ipv4(a).map(|(_, v)| *v), want, "ip_network_table on {a}");
        assert_eq!(t.poptrie.lookup(a).copied(), want, "poptrie on {a}");
    }
    let mut g = c.benchmark_group("lpm");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function(format!("twill/{case}"), |b| fill(b, addrs, |a| t.twill.lookup(a)));
    let mut out = vec![None; addrs.len()];
    g.bench_function(format!("twill-batch/{case}"), |b| {
        b.iter(|| {
            for (a, o) in addrs.chunks(64).zip(out.chunks_mut(64)) {
                t.twill.lookup_batch(a, o);
            }
            black_box(&out);
        })
    });
    g.bench_function(format!("prefix-trie/{case}"), |b| {
        fill(b, addrs, |a| t.prefix_trie.get_lpm(&ipnet::Ipv4Net::from(a)))
    });
    g.bench_function(format!("ip_network_table/{case}"), |b| {
        fill(b, addrs, |a| t.ipnt.longest_match_ipv4(a))
    });
    g.bench_function(format!("poptrie/{case}"), |b| fill(b, addrs, |a| t.poptrie.lookup(a)));
    g.finish();
}

fn bench_v6(c: &mut Criterion, prefixes: &[Ipv6Prefix], next: &mut impl FnMut() -> u64) {
    let case = "v6-full";
    let twill = measured(&format!("twill/{case}"), || {
        let mut t = Route6Table::default();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(*p, hop(i));
        }
        t.compacted()
    });
    eprintln!("lpm memory: twill/{case}: memory_bytes {:.1} MiB", twill.memory_bytes() as f64 / (1 << 20) as f64);
    let pt = measured(&format!("prefix-trie/{case}"), || {
        let mut t = prefix_trie::PrefixMap::new();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(ipnet::Ipv6Net::new(p.addr(), p.len()).expect("valid prefix"), hop(i));
        }
        t
    });
    let ipnt = measured(&format!("ip_network_table/{case}"), || {
        let mut t = ip_network_table::IpNetworkTable::new();
        for (i, p) in prefixes.iter().enumerate() {
            t.insert(ip_network::Ipv6Network::new(p.addr(), p.len()).expect("valid prefix"), hop(i));
        }
        t
    });
    let pop: poptrie::Poptrie<(Ipv6Addr, u8), u32> =
        measured(&format!("poptrie/{case}"), || prefixes.iter().enumerate().map(|(i, p)| ((p.addr(), p.len()), hop(i))).collect());
    let addrs: Vec<Ipv6Addr> = (0..LOOKUPS)
        .map(|_| {
            let p = prefixes[next() as usize % prefixes.len()];
            let host = (u128::from(next()) << 64 | u128::from(next())) & u128::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
            Ipv6Addr::from(u128::from(p.addr()) | host)
        })
        .collect();
    for &a in addrs.iter().take(100_000) {
        let want = twill.lookup(a);
        assert_eq!(pt.get_lpm(&ipnet::Ipv6Net::from(a)).map(|(_, v)| *v), want, "prefix-trie on {a}");
        assert_eq!(ipnt.longest_match_ipv6(a).map(|(_, v)| *v), want, "ip_network_table on {a}");
        assert_eq!(pop.lookup(a).copied(), want, "poptrie on {a}");
    }
    let mut g = c.benchmark_group("lpm");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function(format!("twill/{case}"), |b| fill(b, &addrs, |a| twill.lookup(a)));
    let mut out = vec![None; addrs.len()];
    g.bench_function(format!("twill-batch/{case}"), |b| {
        b.iter(|| {
            for (a, o) in addrs.chunks(64).zip(out.chunks_mut(64)) {
                twill.lookup_batch(a, o);
            }
            black_box(&out);
        })
    });
    g.bench_function(format!("prefix-trie/{case}"), |b| {
        fill(b, &addrs, |a| pt.get_lpm(&ipnet::Ipv6Net::from(a)))
    });
    g.bench_function(format!("ip_network_table/{case}"), |b| {
        fill(b, &addrs, |a| ipnt.longest_match_ipv6(a))
    });
    g.bench_function(format!("poptrie/{case}"), |b| fill(b, &addrs, |a| pop.lookup(a)));
    g.finish();

    // Updates.
    let mut shuffled = prefixes.to_vec();
    shuffle(&mut shuffled, next);
    let held: Vec<(Ipv6Prefix, u32)> = shuffled[..UPDATES].iter().map(|&p| (p, 5000)).collect();
    let (mut twill, mut pt, mut ipnt, mut pop) = (twill, pt, ipnt, pop);
    for (i, (p, _)) in held.iter().enumerate() {
        twill.remove(*p);
        pt.remove(&ipnet::Ipv6Net::new(p.addr(), p.len()).expect("valid"));
        ipnt.remove(ip_network::Ipv6Network::new(p.addr(), p.len()).expect("valid"));
        if i < POPTRIE_UPDATES {
            pop.remove((p.addr(), p.len()));
        }
    }
    let mut g = c.benchmark_group("lpm-update");
    g.throughput(Throughput::Elements(2 * held.len() as u64));
    g.bench_function(format!("twill/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in &held {
                twill.insert(p, v);
            }
            for &(p, _) in &held {
                twill.remove(p);
            }
        })
    });
    g.bench_function(format!("twill-publish-1k/{case}"), |b| b.iter(|| publish(&mut twill, &held, 1000)));
    g.bench_function(format!("twill-publish-10k/{case}"), |b| b.iter(|| publish(&mut twill, &held, 10_000)));
    g.bench_function(format!("prefix-trie/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in &held {
                pt.insert(ipnet::Ipv6Net::new(p.addr(), p.len()).expect("valid"), v);
            }
            for &(p, _) in &held {
                pt.remove(&ipnet::Ipv6Net::new(p.addr(), p.len()).expect("valid"));
            }
        })
    });
    g.bench_function(format!("ip_network_table/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in &held {
                ipnt.insert(ip_network::Ipv6Network::new(p.addr(), p.len()).expect("valid"), v);
            }
            for &(p, _) in &held {
                ipnt.remove(ip_network::Ipv6Network::new(p.addr(), p.len()).expect("valid"));
            }
        })
    });
    g.throughput(Throughput::Elements(2 * POPTRIE_UPDATES as u64));
    g.bench_function(format!("poptrie/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in &held[..POPTRIE_UPDATES] {
                pop.insert((p.addr(), p.len()), v);
            }
            for &(p, _) in &held[..POPTRIE_UPDATES] {
                pop.remove((p.addr(), p.len()));
            }
        })
    });
    g.finish();
}

/// The control thread's way: clone the published table, apply a batch, publish the clone
/// (here: replace the old version, which is dropped).
fn publish<P: forwarder::route::Prefix>(current: &mut RouteTable<u32, P>, changes: &[(P, u32)], per_batch: usize) {
    for batch in changes.chunks(per_batch) {
        let mut next = current.clone();
        for &(p, v) in batch {
            next.insert(p, v);
        }
        *current = next;
    }
    for batch in changes.chunks(per_batch) {
        let mut next = current.clone();
        for &(p, _) in batch {
            next.remove(p);
        }
        *current = next;
    }
}

fn bench_v4_updates(c: &mut Criterion, mut t: V4, held: &[(Ipv4Prefix, u32)]) {
    let case = "v4-full";
    let mut g = c.benchmark_group("lpm-update");
    g.throughput(Throughput::Elements(2 * held.len() as u64));
    g.bench_function(format!("twill/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in held {
                t.twill.insert(p, v);
            }
            for &(p, _) in held {
                t.twill.remove(p);
            }
        })
    });
    g.bench_function(format!("twill-publish-1k/{case}"), |b| b.iter(|| publish(&mut t.twill, held, 1000)));
    g.bench_function(format!("twill-publish-10k/{case}"), |b| b.iter(|| publish(&mut t.twill, held, 10_000)));
    g.bench_function(format!("prefix-trie/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in held {
                t.prefix_trie.insert(ipnet::Ipv4Net::new(p.addr(), p.len()).expect("valid"), v);
            }
            for &(p, _) in held {
                t.prefix_trie.remove(&ipnet::Ipv4Net::new(p.addr(), p.len()).expect("valid"));
            }
        })
    });
    g.bench_function(format!("ip_network_table/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in held {
                t.ipnt.insert(ip_network::Ipv4Network::new(p.addr(), p.len()).expect("valid"), v);
            }
            for &(p, _) in held {
                t.ipnt.remove(ip_network::Ipv4Network::new(p.addr(), p.len()).expect("valid"));
            }
        })
    });
    g.throughput(Throughput::Elements(2 * POPTRIE_UPDATES as u64));
    g.bench_function(format!("poptrie/{case}"), |b| {
        b.iter(|| {
            for &(p, v) in &held[..POPTRIE_UPDATES] {
                t.poptrie.insert((p.addr(), p.len()), v);
            }
            for &(p, _) in &held[..POPTRIE_UPDATES] {
                t.poptrie.remove((p.addr(), p.len()));
            }
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let (v4, v6) = bgp();
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let addrs: Vec<Ipv4Addr> = (0..LOOKUPS).map(|_| Ipv4Addr::from(next() as u32)).collect();
    let mut shuffled = v4.clone();
    shuffle(&mut shuffled, &mut next);
    for (case, n) in [("v4-1k", 1_000), ("v4-10k", 10_000), ("v4-100k", 100_000)] {
        let t = v4_tables(case, &shuffled[..n]);
        bench_v4(c, case, &t, &addrs);
    }
    let t = v4_tables("v4-full", &v4);
    bench_v4(c, "v4-full", &t, &addrs);
    // For the updates: the full table less the prefixes each iteration inserts and removes.
    let held: Vec<(Ipv4Prefix, u32)> = shuffled[..UPDATES].iter().map(|&p| (p, 5000)).collect();
    let mut t = t;
    for (i, (p, _)) in held.iter().enumerate() {
        t.twill.remove(*p);
        t.prefix_trie.remove(&ipnet::Ipv4Net::new(p.addr(), p.len()).expect("valid"));
        t.ipnt.remove(ip_network::Ipv4Network::new(p.addr(), p.len()).expect("valid"));
        if i < POPTRIE_UPDATES {
            t.poptrie.remove((p.addr(), p.len()));
        }
    }
    bench_v4_updates(c, t, &held);
    bench_v6(c, &v6, &mut next);
}

fn config() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
