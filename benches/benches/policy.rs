//! Packet classification on ClassBench rule sets: twill's compiled cutting trees
//! (`policy_engine::classifier::Classifier`) beside the linear first-match scan it must
//! agree with. Cases: `policy/{compiled,linear}/<set>` classify a batch of trace headers
//! (`Throughput::Elements` = lookups; compiled = `classify_batch`), `policy/single/<set>`
//! the same batch one `classify` call per key, `policy-build/compiled/<set>` compiles the
//! rule set.
//! Sets: acl1, fw1, ipc1 at 1k and 10k rules, from `shared/data/classbench` (see its
//! README). acl1_10k has no trace; its batch is generated from the rules (one corner of
//! each rule), mixed with random headers.
//!
//! Memory, node and tree counts are printed once per set on stderr.

use std::{hint::black_box, io::Read, path::PathBuf, time::Duration};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::{
    classbench,
    classifier::{ClassRule, Classifier, Key, linear_first_match},
};

const SETS: [&str; 6] = [
    "acl1_1k", "fw1_1k", "ipc1_1k", "acl1_10k", "fw1_10k", "ipc1_10k",
];
const BATCH: usize = 4096;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/classbench")
}

fn read_gz(name: &str) -> Option<String> {
    let path = data_dir().join(format!("{name}.gz"));
    let file = std::fs::File::open(&path).ok()?;
    let mut s = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut s)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(s)
}

/// A batch of headers: the set's trace, or keys generated from its rules plus random ones.
fn keys(set: &str, rules: &[ClassRule]) -> Vec<Key> {
    if let Some(t) = read_gz(&format!("{set}_trace")) {
        let trace = classbench::parse_trace(&t).expect("trace parses");
        return trace.iter().take(BATCH).map(|e| e.key).collect();
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(BATCH);
    while out.len() < BATCH {
        let r = &rules[next() as usize % rules.len()];
        let r_val = next();
        let random = r_val % 4 == 0;
        let pick = |p: &[(u32, u8)], v: u32| match p.first() {
            Some(&(a, len)) if !random => {
                let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                (a & !host) | (v & host)
            }
            _ => v,
        };
        let port = |p: &[(u16, u16)], v: u16| match p.first() {
            Some(&(a, b)) if !random => a + (v % (b - a).saturating_add(1).max(1)),
            _ => v,
        };
        let v = next();
        out.push(Key {
            src: pick(&r.src, v as u32),
            dst: pick(&r.dst, (v >> 32) as u32),
            src_port: port(&r.src_ports, (r_val >> 8) as u16),
            dst_port: port(&r.dst_ports, (r_val >> 24) as u16),
            proto: match r.protocols.first() {
                Some(&p) if !random => p,
                _ => (r_val >> 40) as u8,
            },
        });
    }
    out
}

fn policy(c: &mut Criterion) {
    let loaded: Vec<(&str, Vec<ClassRule>)> = SETS
        .iter()
        .map(|&s| {
            let text = read_gz(s).unwrap_or_else(|| {
                panic!("ClassBench set {s} missing under {}", data_dir().display())
            });
            (s, classbench::parse_rules(&text).expect("rule set parses"))
        })
        .collect();

    let mut g = c.benchmark_group("policy");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (set, rules) in &loaded {
        let cls = Classifier::build(rules).expect("rule set compiles");
        let keys = keys(set, rules);
        eprintln!(
            "{set}: {} rules, {} trees, {} nodes, {} KiB",
            rules.len(),
            cls.tree_count(),
            cls.node_count(),
            cls.memory_bytes() / 1024
        );
        let mut out = vec![None; keys.len()];
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(format!("compiled/{set}"), |b| {
            b.iter(|| {
                cls.classify_batch(black_box(&keys), &mut out);
                black_box(&out);
            })
        });
        g.bench_function(format!("single/{set}"), |b| {
            b.iter(|| {
                for k in black_box(&keys) {
                    black_box(cls.classify(k));
                }
            })
        });
        let linear_keys = &keys[..keys.len().min(256)];
        g.throughput(Throughput::Elements(linear_keys.len() as u64));
        g.bench_function(format!("linear/{set}"), |b| {
            b.iter(|| {
                for k in black_box(linear_keys) {
                    black_box(linear_first_match(rules, k));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy-build");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    for (set, rules) in &loaded {
        g.bench_function(format!("compiled/{set}"), |b| {
            b.iter_batched(
                || (),
                |()| Classifier::build(black_box(rules)),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
