//! The compiled classifier against the linear first-match scan, on every header of the
//! ClassBench traces (acl1, fw1, ipc1 at 1k and 10k rules, from `shared/data/classbench`)
//! and on random rule sets with negations (proptest).
//!
//! acl1_10k has no trace: its keys are generated from the rules, deterministically (the
//! low and high corner and a middle point of every rule), plus seeded random keys.
//! Missing data is a failure, never a skip.

use policy_engine::{
    classbench::{self, TraceEntry},
    classifier::{ClassRule, Classifier, Key, linear_first_match, linear_first_match_with},
};
use proptest::prelude::*;

fn read_gz(name: &str) -> String {
    policy_engine::dataset::read(&format!("classbench/{name}.gz"))
        .unwrap_or_else(|e| panic!("ClassBench data missing: {e} (see shared/data/README.md)"))
}

fn rules(set: &str) -> Vec<ClassRule> {
    classbench::parse_rules(&read_gz(set)).unwrap_or_else(|e| panic!("{set}: {e}"))
}

fn trace(set: &str) -> Vec<TraceEntry> {
    let name = format!("{set}_trace");
    classbench::parse_trace(&read_gz(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks the classifier against the linear scan on every key; returns the scan's answers.
fn agree(set: &str, rules: &[ClassRule], keys: &[Key]) -> Vec<Option<u32>> {
    let cls = Classifier::build(rules).unwrap_or_else(|e| panic!("{set}: {e}"));
    let mut out = vec![None; keys.len()];
    cls.classify_batch(keys, &mut out);
    let mut matched = 0;
    let mut wants = Vec::with_capacity(keys.len());
    for (i, (k, got)) in keys.iter().zip(&out).enumerate() {
        let want = linear_first_match(rules, k);
        wants.push(want);
        assert_eq!(*got, want, "{set}: key #{i} {k:?}");
        assert_eq!(cls.classify(k), want, "{set}: key #{i} {k:?} (single)");
        matched += usize::from(want.is_some());
    }
    assert!(
        matched > 0,
        "{set}: no key matched any rule; the data or the parser is wrong"
    );
    wants
}

fn trace_set(set: &str) {
    let rules = rules(set);
    let trace = trace(set);
    assert!(!trace.is_empty(), "{set}: empty trace");
    let keys: Vec<Key> = trace.iter().map(|e| e.key).collect();
    let wants = agree(set, &rules, &keys);
    // Each header was generated from its rule, so that rule or an earlier one matches.
    for (i, (e, &first)) in trace.iter().zip(&wants).enumerate() {
        assert!(
            first.is_some_and(|f| f <= e.rule),
            "{set}_trace line {}: generated from rule {} but first match is {first:?}",
            i + 1,
            e.rule
        );
    }
}

/// xorshift64, so generated keys are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Keys from the rules (low corner, high corner, a middle point of each) and random keys.
fn generated_keys(rules: &[ClassRule], random: usize) -> Vec<Key> {
    fn addr(p: &[(u32, u8)], pick: u8) -> u32 {
        let Some(&(a, len)) = p.first() else {
            return [0, u32::MAX, 0x8000_0000][usize::from(pick)];
        };
        let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        [a & !host, a | host, (a & !host) | (host >> 1)][usize::from(pick)]
    }
    fn port(p: &[(u16, u16)], pick: u8) -> u16 {
        let (a, b) = p.first().copied().unwrap_or((0, u16::MAX));
        [a, b, a + (b - a) / 2][usize::from(pick)]
    }
    let mut keys = Vec::new();
    for r in rules {
        for pick in 0..3 {
            keys.push(Key {
                src: addr(&r.src, pick),
                dst: addr(&r.dst, pick),
                src_port: port(&r.src_ports, pick),
                dst_port: port(&r.dst_ports, pick),
                proto: r
                    .protocols
                    .first()
                    .copied()
                    .unwrap_or([0, 255, 6][usize::from(pick)]),
            });
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..random {
        let (a, b) = (rng.next(), rng.next());
        keys.push(Key {
            src: a as u32,
            dst: (a >> 32) as u32,
            src_port: b as u16,
            dst_port: (b >> 16) as u16,
            proto: [6, 17, 1, (b >> 32) as u8][(b >> 40) as usize % 4],
        });
    }
    keys
}

#[test]
fn acl1_1k_trace() {
    trace_set("acl1_1k");
}

#[test]
fn fw1_1k_trace() {
    trace_set("fw1_1k");
}

#[test]
fn ipc1_1k_trace() {
    trace_set("ipc1_1k");
}

#[test]
fn fw1_10k_trace() {
    trace_set("fw1_10k");
}

#[test]
fn ipc1_10k_trace() {
    trace_set("ipc1_10k");
}

#[test]
fn acl1_10k_generated() {
    let rules = rules("acl1_10k");
    assert!(
        !policy_engine::dataset::data_dir().expect("data directory").join("classbench/acl1_10k_trace.gz").exists(),
        "acl1_10k now has a trace: test it with trace_set"
    );
    agree("acl1_10k", &rules, &generated_keys(&rules, 20_000));
}

#[test]
fn generated_keys_on_traced_sets() {
    for set in ["acl1_1k", "fw1_1k", "ipc1_1k"] {
        let rules = rules(set);
        agree(set, &rules, &generated_keys(&rules, 5_000));
    }
}

// Random rule sets: values drawn from a small universe so rules overlap and negations bite.

fn prefix() -> impl Strategy<Value = (u32, u8)> {
    (
        prop::sample::select(vec![
            0x0a00_0000u32,
            0x0a01_0000,
            0x0a01_0100,
            0xc0a8_0000,
            0,
        ]),
        0u8..=32,
    )
        .prop_map(|(a, len)| (a.wrapping_add(u32::from(len) * 0x11), len))
}

fn ports() -> impl Strategy<Value = (u16, u16)> {
    (0u16..120, 0u16..60).prop_map(|(a, w)| (a * 500, (a * 500).saturating_add(w * 300)))
}

fn rule() -> impl Strategy<Value = ClassRule> {
    fn v<S: Strategy>(s: S) -> impl Strategy<Value = Vec<S::Value>> {
        prop::collection::vec(s, 0..3)
    }
    fn neg<S: Strategy>(s: S) -> impl Strategy<Value = Vec<S::Value>> {
        prop::collection::vec(s, 0..2)
    }
    let protos = || prop::sample::select(vec![1u8, 6, 17, 58, 132]);
    (
        (v(prefix()), neg(prefix()), v(prefix()), neg(prefix())),
        (v(ports()), neg(ports()), v(ports()), neg(ports())),
        (v(protos()), neg(protos())),
        prop::option::weighted(0.3, 0u32..8),
    )
        .prop_map(
            |((src, not_src, dst, not_dst), (sp, nsp, dp, ndp), (protocols, not_protocols), guard)| {
                ClassRule {
                    src,
                    not_src,
                    dst,
                    not_dst,
                    src_ports: sp,
                    not_src_ports: nsp,
                    dst_ports: dp,
                    not_dst_ports: ndp,
                    protocols,
                    not_protocols,
                    guard,
                }
            },
        )
}

fn key() -> impl Strategy<Value = Key> {
    let addr = prop_oneof![
        prefix()
            .prop_flat_map(|(a, _)| (Just(a), 0u32..0x300))
            .prop_map(|(a, o)| a ^ o),
        any::<u32>(),
    ];
    let port = prop_oneof![
        (0u16..120, 0u16..600).prop_map(|(a, o)| a * 500 + o),
        any::<u16>()
    ];
    let proto = prop_oneof![prop::sample::select(vec![1u8, 6, 17, 58, 132]), any::<u8>()];
    (addr.clone(), addr, port.clone(), port, proto).prop_map(
        |(src, dst, src_port, dst_port, proto)| Key {
            src,
            dst,
            proto,
            src_port,
            dst_port,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_rules_agree_with_linear_scan(
        rules in prop::collection::vec(rule(), 0..150),
        keys in prop::collection::vec(key(), 1..200),
    ) {
        let cls = Classifier::build(&rules).unwrap();
        for k in &keys {
            prop_assert_eq!(cls.classify(k), linear_first_match(&rules, k), "key {:?}", k);
        }
    }

    /// Guards are checked after the fields, in rule order: a failing guard lets a later
    /// rule match, in the tree as in the scan, one key at a time and in batches.
    #[test]
    fn guarded_rules_agree_with_linear_scan(
        rules in prop::collection::vec(rule(), 0..150),
        keys in prop::collection::vec(key(), 1..200),
        pass_mask in any::<u8>(),
    ) {
        // A guard passes by its number and one bit of the key, so both matter.
        let guard = |g: u32, k: &Key| (pass_mask >> g) & 1 == 1 || (k.src_port ^ k.dst_port) & (1 << g) != 0;
        let cls = Classifier::build(&rules).unwrap();
        let mut batch = vec![None; keys.len()];
        cls.classify_batch_with(&keys, &mut batch, guard);
        for (k, b) in keys.iter().zip(&batch) {
            let want = linear_first_match_with(&rules, k, guard);
            prop_assert_eq!(cls.classify_with(k, guard), want, "key {:?}", k);
            prop_assert_eq!(*b, want, "batch, key {:?}", k);
        }
    }
}
