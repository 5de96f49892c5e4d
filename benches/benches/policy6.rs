//! The per-connection policy decision over IPv6 beside the same decision over IPv4: a
//! ClassBench rule set (fw1 and acl1, 1k and 10k rules) as one GlobalNetworkPolicy's egress,
//! written once with its IPv4 destination prefixes and once with each moved into
//! `fd00::/96` (`a.b.c.d/len` → `fd00::a.b.c.d/(96 + len)`), judged by the compiled
//! policy for the same trace connections from the pod (`PolicyTables` → `Peer::judge` /
//! `Peer::judge6`: what a worker pays on a connection's first packet). IPv6 prefixes are
//! compressed per rule set to 32-bit points (docs/design.md), so the two should cost about
//! the same; the IPv6 key's hash lookup of the address's point is the difference.
//!
//! Cases (`Throughput::Elements` = connections judged): `policy-judge/ipv4/<set>`,
//! `policy-judge/ipv6/<set>`, and the peer `policy-judge/reference-ipv6/<set>`: the
//! reference evaluator (`reference::evaluate6`, the model read rule by rule) on the first
//! 64 connections. Before measuring, every connection's IPv6 judgement (verdict and deciding
//! rule) is checked equal to its IPv4 one, and the reference's verdict on the peer's.

use std::{hint::black_box, sync::Arc, time::Duration};

use benches::{
    classbench_policy::{self, to_v6},
    fixture::{self, POD},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::{
    classbench,
    classifier::{ClassRule, Key},
    compiler::{Decided, Judgement, Key6, PolicyCompiler, PolicyTables},
    dataset,
    model::{Direction, Policy},
    reference::{self, Packet6},
    world::{Endpoint, World},
};

const SETS: [&str; 4] = ["fw1_1k", "acl1_1k", "fw1_10k", "acl1_10k"];
/// Connections judged per iteration.
const BATCH: usize = 4096;
/// Connections the reference evaluator judges per iteration.
const REFERENCE_BATCH: usize = 64;

fn pod() -> Endpoint {
    Endpoint::new("default", "pod", &[], POD).with_ip6(to_v6(u32::from(POD)))
}

fn tables(policy: Policy) -> Arc<PolicyTables> {
    let mut c = PolicyCompiler::new();
    c.upsert_policy(policy).expect("policy compiles");
    c.upsert_endpoint(pod()).expect("pod");
    c.tables().expect("tables")
}

/// The set's connections from the pod: its trace's (acl1_10k has none: the 1k set's), every
/// fourth to a random destination instead, which most rule sets leave to the default deny.
fn keys(set: &str) -> Vec<Key> {
    let trace = dataset::read(&format!("classbench/{set}_trace.gz"))
        .or_else(|_| dataset::read(&format!("classbench/{}_trace.gz", set.replace("_10k", "_1k"))))
        .unwrap_or_else(|e| panic!("a ClassBench trace for {set}: {e}"));
    let trace = classbench::parse_trace(&trace).expect("trace parses");
    let mut next = fixture::rng(0x5eed);
    trace
        .iter()
        .take(BATCH)
        .enumerate()
        .map(|(i, e)| Key { src: u32::from(POD), dst: if i % 4 == 3 { next() as u32 } else { e.key.dst }, ..e.key })
        .collect()
}

fn key6(k: &Key) -> Key6 {
    Key6 { src: to_v6(k.src), dst: to_v6(k.dst), proto: k.proto, src_port: k.src_port, dst_port: k.dst_port }
}

fn packet6(k: &Key) -> Packet6 {
    let icmp = k.proto == 58;
    Packet6 {
        src_ip: to_v6(k.src),
        dst_ip: to_v6(k.dst),
        protocol: k.proto,
        src_port: if icmp { 0 } else { k.src_port },
        dst_port: if icmp { 0 } else { k.dst_port },
        icmp_type: icmp.then_some(k.src_port as u8),
        icmp_code: icmp.then_some(k.dst_port as u8),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy-judge");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for set in SETS {
        let rules: Vec<ClassRule> = classbench::parse_rules(&dataset::read(&format!("classbench/{set}.gz")).unwrap_or_else(|e| panic!("ClassBench {set}: {e}"))).expect("rule set parses");
        let p4 = classbench_policy::policy(set, &rules, classbench_policy::ipv4);
        let p6 = classbench_policy::policy(set, &rules, classbench_policy::ipv6);
        let (t4, t6) = (tables(p4), tables(p6.clone()));
        let pod4 = t4.peer(POD).expect("the pod's IPv4 record");
        let pod6 = t6.peer6(to_v6(u32::from(POD))).expect("the pod's IPv6 record");
        let keys = keys(set);
        let keys6: Vec<Key6> = keys.iter().map(key6).collect();
        let judge4 = |k: &Key| pod4.judge(&t4, Direction::Egress, k);
        let judge6 = |k: &Key6| pod6.judge6(&t6, Direction::Egress, k);
        // The same verdict, decided by the same rule of the policy.
        let (rs4, rs6) = (pod4.rules(Direction::Egress).expect("egress rules"), pod6.rules(Direction::Egress).expect("egress rules"));
        let rule = |rs: &policy_engine::compiler::RuleSet, j: Option<Judgement>| {
            j.map(|j| (j.verdict, match j.decided {
                Decided::Rule(e) | Decided::Pass(e) => Some(rs.rule_ref(e).rule_index),
                Decided::EndOfTier => None,
            }))
        };
        let differ = keys.iter().zip(&keys6).filter(|(k, k6)| rule(rs4, judge4(k)) != rule(rs6, judge6(k6))).count();
        assert_eq!(differ, 0, "{set}: IPv6 judgements that differ from the IPv4 ones, the first: {:?} {:?}", rule(rs4, judge4(&keys[0])), rule(rs6, judge6(&keys6[0])));
        let mut world = World::new();
        world.add_namespace("default", &[]);
        world.add_endpoint(pod());
        let policies = [p6];
        let packets: Vec<Packet6> = keys[..REFERENCE_BATCH].iter().map(packet6).collect();
        for (k6, p) in keys6.iter().zip(&packets) {
            assert_eq!(Some(reference::evaluate6(&policies, &world, p).verdict), judge6(k6).map(|j| j.verdict), "{set}: the reference disagrees on {p:?}");
        }
        let allowed = keys.iter().filter(|k| judge4(k).is_some_and(|j| j.verdict == reference::Verdict::Allow)).count();
        eprintln!("{set}: {} rules, {} connections, {allowed} allowed", rules.len(), keys.len());

        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(format!("ipv4/{set}"), |b| b.iter(|| black_box(&keys).iter().filter_map(judge4).count()));
        g.bench_function(format!("ipv6/{set}"), |b| b.iter(|| black_box(&keys6).iter().filter_map(judge6).count()));
        g.throughput(Throughput::Elements(packets.len() as u64));
        g.bench_function(format!("reference-ipv6/{set}"), |b| {
            b.iter(|| black_box(&packets).iter().filter(|p| reference::evaluate6(&policies, &world, p).verdict == reference::Verdict::Allow).count())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
