//! Property test: the compiled policy (the incremental compiler's tables, judged by the
//! classifier exactly as the data plane judges) and the reference evaluator give the same
//! whole decision — verdict, deciding policy and rule, Log rules passed, policies applied —
//! on random worlds (namespaces, labelled pods with named ports), random policies of both
//! dialects (order ties, Allow / Deny / Log / Pass, nets and notNets, selectors and
//! notSelectors, namespace selectors, numeric, ranged and named ports and notPorts, ICMP and
//! notICMP, protocol and notProtocol, IPv4 and IPv6 nets and ipVersion) and random packets
//! of both families.
//!
//! The worlds are dual-stack: a pod has an IPv4 address, an IPv6 one or both, and the same
//! policies judge both families. IPv6 nets nest (`::/0` ⊃ `fd00::/8` ⊃ `fd00:10::/64` ⊃
//! `fd00:10::/120` ⊃ a pod's `/128`) and are disjoint (`2001:db8::/32`, `fd00:20::/64`);
//! IPv6 packets come from and go to pods, addresses in no prefix, addresses inside a
//! prefix but of no pod, and the IPv4-mapped address of a pod's IPv4 address (which no
//! IPv4 net matches). The compiled tables must find the same record for a pod's two
//! addresses.
//!
//! After the first check of a world, the world changes one step at a time — pods added,
//! removed, relabelled; namespaces relabelled; policies added, replaced, removed — and the
//! compiler applies each change incrementally; every step is checked again against a
//! reference evaluation from scratch.
//!
//! At least 10^6 (world, packet) cases of each family per run. The seed is random unless
//! `TWILL_POLICY_SEED` is set; a failure prints the seed and the world number, and
//! `TWILL_POLICY_SEED=<seed> TWILL_POLICY_WORLD=<n> cargo test -p policy-engine --test
//! compiled_vs_reference` replays exactly that world.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_engine::compiler::{PolicyCompiler, key_of, key6_of};
use policy_engine::model::{
    Action, Cidr, Direction, EntityMatch, IcmpMatch, Policy, PolicyKind, PortSpec, Rule, proto,
};
use policy_engine::reference::{DecidedBy, Packet, Packet6, Verdict, evaluate, evaluate6};
use policy_engine::selector::{Labels, Selector};
use policy_engine::world::{Endpoint, World};

/// splitmix64: small, fast and good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const KEYS: [&str; 4] = ["app", "tier", "env", "role"];
const VALUES: [&str; 4] = ["web", "db", "prod", "x"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const PROTOCOLS: [u8; 9] = [proto::TCP, proto::UDP, proto::ICMP, proto::SCTP, 47, proto::TCP, proto::TCP, proto::UDP, proto::ICMPV6];
const PORTS: [u16; 7] = [53, 80, 443, 8080, 9090, 1024, 30000];
/// Addresses that are no pod's.
const OUTSIDE: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 168, 1, 1),
    Ipv4Addr::new(10, 0, 0, 250),
    Ipv4Addr::new(8, 8, 8, 8),
];

/// Pod `i`'s IPv6 address (when it has one): in `fd00:10::/64`, and for the first 200 in
/// `fd00:10::/120`.
fn ip6_of(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, (i / 200) as u16, 1 + (i % 200) as u16)
}

/// IPv6 addresses that are no pod's: inside the pods' prefixes, inside only `fd00::/8`,
/// in the disjoint `2001:db8::/32`, and in no prefix of any rule but `::/0`.
const OUTSIDE6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0xfa),
    Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111),
];

fn labels(rng: &mut Rng) -> Labels {
    let mut l = Labels::new();
    for _ in 0..rng.below(3) {
        l.insert(rng.pick(&KEYS).to_string(), rng.pick(&VALUES).to_string());
    }
    l
}

fn selector(rng: &mut Rng, depth: u32) -> Selector {
    let k = rng.pick(&KEYS).to_string();
    let v = rng.pick(&VALUES).to_string();
    let set = |rng: &mut Rng| (0..1 + rng.below(2)).map(|_| rng.pick(&VALUES).to_string()).collect();
    match rng.below(if depth > 0 { 13 } else { 10 }) {
        0 => Selector::All,
        1 => Selector::Has(k),
        2 | 3 => Selector::Eq(k, v),
        4 => Selector::NotEq(k, v),
        5 => Selector::In(k, set(rng)),
        6 => Selector::NotIn(k, set(rng)),
        7 => Selector::Contains(k, v[..1].to_string()),
        8 => Selector::StartsWith(k, v[..v.len().min(2)].to_string()),
        9 => Selector::EndsWith(k, v[v.len() - 1..].to_string()),
        10 => Selector::Not(Box::new(selector(rng, depth - 1))),
        11 => Selector::And(vec![selector(rng, depth - 1), selector(rng, depth - 1)]),
        _ => Selector::Or(vec![selector(rng, depth - 1), selector(rng, depth - 1)]),
    }
}

fn endpoint(rng: &mut Rng, i: usize) -> Endpoint {
    let ns = *rng.pick(&NAMESPACES);
    // IPv4 only, dual-stack or IPv6 only.
    let (v4, v6) = match rng.below(20) {
        0..6 => (true, false),
        6..17 => (true, true),
        _ => (false, true),
    };
    let mut ep = Endpoint {
        namespace: ns.to_string(),
        name: format!("pod{i}"),
        labels: labels(rng),
        ips: if v4 { vec![Ipv4Addr::new(10, 0, (i / 200) as u8, 1 + (i % 200) as u8)] } else { Vec::new() },
        ips6: if v6 { vec![ip6_of(i)] } else { Vec::new() },
        ports: Vec::new(),
    };
    for name in PORT_NAMES {
        if rng.chance(40) {
            let p = if name == "dns" { proto::UDP } else { proto::TCP };
            ep = ep.with_port(name, p, *rng.pick(&PORTS));
        }
    }
    ep
}

fn cidr(rng: &mut Rng) -> Cidr {
    let (addr, prefix): (IpAddr, u8) = match rng.below(13) {
        0 => (Ipv4Addr::new(10, 0, 0, 0).into(), 24),
        1 => (Ipv4Addr::new(10, 0, 0, 0).into(), 29),
        2 => (Ipv4Addr::new(10, 0, 0, 1 + rng.below(12) as u8).into(), 32),
        3 => (Ipv4Addr::new(10, 0, 0, 0).into(), 8),
        4 => (Ipv4Addr::new(192, 168, 0, 0).into(), 16),
        5 => (Ipv4Addr::new(0, 0, 0, 0).into(), 0),
        6 => (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0).into(), 8),
        7 => (Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0).into(), 64),
        8 => (Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0).into(), 120),
        9 => (ip6_of(rng.below(12)).into(), 128),
        10 => (Ipv6Addr::UNSPECIFIED.into(), 0),
        11 => (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).into(), 32),
        _ => (Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 8).into(), 125),
    };
    Cidr::parse(&format!("{addr}/{prefix}"), false).expect("generated CIDR parses")
}

fn ports(rng: &mut Rng) -> Vec<PortSpec> {
    (0..1 + rng.below(2))
        .map(|_| match rng.below(4) {
            0 => PortSpec::Named(rng.pick(&PORT_NAMES).to_string()),
            1 => {
                let lo = *rng.pick(&PORTS);
                PortSpec::Range { lo, hi: lo.saturating_add(rng.below(9000) as u16) }
            }
            _ => {
                let p = *rng.pick(&PORTS);
                PortSpec::Range { lo: p, hi: p }
            }
        })
        .collect()
}

fn entity(rng: &mut Rng, with_ports: bool) -> EntityMatch {
    let mut m = EntityMatch::default();
    if rng.chance(25) {
        m.nets = (0..1 + rng.below(2)).map(|_| cidr(rng)).collect();
    }
    if rng.chance(15) {
        m.not_nets = vec![cidr(rng)];
    }
    if rng.chance(40) {
        m.selector = Some(selector(rng, 1));
    }
    if rng.chance(15) {
        m.not_selector = Some(selector(rng, 1));
    }
    if rng.chance(20) {
        m.namespace_selector = Some(selector(rng, 0));
    }
    if with_ports && rng.chance(45) {
        m.ports = ports(rng);
    }
    if with_ports && rng.chance(15) {
        m.not_ports = ports(rng);
    }
    m
}

fn icmp(rng: &mut Rng) -> IcmpMatch {
    let icmp_type = Some(*rng.pick(&[0u8, 3, 8]));
    IcmpMatch { icmp_type, code: rng.chance(40).then(|| rng.below(2) as u8) }
}

fn rule(rng: &mut Rng, action: Action, source_rule: usize) -> Rule {
    let protocol = if rng.chance(30) { None } else { Some(*rng.pick(&PROTOCOLS)) };
    let with_ports = protocol.is_some_and(proto::has_ports);
    let is_icmp = matches!(protocol, Some(proto::ICMP | proto::ICMPV6));
    Rule {
        action,
        protocol,
        not_protocol: (protocol.is_none() && rng.chance(20)).then(|| *rng.pick(&PROTOCOLS)),
        icmp: (is_icmp && rng.chance(50)).then(|| icmp(rng)),
        not_icmp: (is_icmp && rng.chance(40)).then(|| icmp(rng)),
        ip_version: match rng.below(10) {
            0 => Some(6),
            1 => Some(4),
            _ => None,
        },
        source: entity(rng, with_ports),
        destination: entity(rng, with_ports),
        source_rule,
    }
}

fn policy(rng: &mut Rng, i: usize) -> Policy {
    let kind = *rng.pick(&[
        PolicyKind::KubernetesNetworkPolicy,
        PolicyKind::CalicoNetworkPolicy,
        PolicyKind::CalicoGlobalNetworkPolicy,
    ]);
    let k8s = kind == PolicyKind::KubernetesNetworkPolicy;
    let types = match rng.below(3) {
        0 => vec![Direction::Ingress],
        1 => vec![Direction::Egress],
        _ => vec![Direction::Ingress, Direction::Egress],
    };
    let rules = |rng: &mut Rng| -> Vec<Rule> {
        (0..rng.below(5))
            .map(|j| {
                let action = if k8s {
                    Action::Allow
                } else {
                    *rng.pick(&[Action::Allow, Action::Deny, Action::Log, Action::Pass, Action::Allow, Action::Deny])
                };
                rule(rng, action, j)
            })
            .collect()
    };
    Policy {
        kind,
        name: format!("pol{}", i % 5),
        namespace: (kind != PolicyKind::CalicoGlobalNetworkPolicy).then(|| rng.pick(&NAMESPACES).to_string()),
        order: if k8s {
            Some(1000.0)
        } else if rng.chance(25) {
            None
        } else {
            Some(rng.below(4) as f64 * 500.0)
        },
        selector: selector(rng, 1),
        namespace_selector: (kind == PolicyKind::CalicoGlobalNetworkPolicy && rng.chance(30)).then(|| selector(rng, 0)),
        types,
        ingress: rules(rng),
        egress: rules(rng),
    }
}

/// An IPv4 or an IPv6 packet (half each).
#[derive(Debug)]
enum AnyPacket {
    V4(Packet),
    V6(Packet6),
}

fn packet(rng: &mut Rng, world: &World) -> AnyPacket {
    let port = |rng: &mut Rng| if rng.chance(80) { *rng.pick(&PORTS) } else { rng.next() as u16 };
    let protocol = *rng.pick(&PROTOCOLS);
    let icmp_type = *rng.pick(&[0u8, 3, 8, 11, 128, 129, 135]);
    let icmp_code = rng.below(3) as u8;
    if rng.chance(50) {
        let pods: Vec<Ipv4Addr> = world.endpoints.iter().flat_map(|e| e.ips.iter().copied()).collect();
        let addr = |rng: &mut Rng| if rng.chance(85) && !pods.is_empty() { *rng.pick(&pods) } else { *rng.pick(&OUTSIDE) };
        let (src, dst) = (addr(rng), addr(rng));
        return AnyPacket::V4(match protocol {
            proto::ICMP => Packet::icmp(src, dst, icmp_type, icmp_code),
            proto::ICMPV6 => Packet { protocol, ..Packet::icmp(src, dst, icmp_type, icmp_code) },
            p if proto::has_ports(p) => Packet { protocol: p, ..Packet::tcp(src, port(rng), dst, port(rng)) },
            p => Packet { protocol: p, ..Packet::tcp(src, 0, dst, 0) },
        });
    }
    let pods: Vec<Ipv6Addr> = world.endpoints.iter().flat_map(|e| e.ips6.iter().copied()).collect();
    let mapped: Vec<Ipv6Addr> = world.endpoints.iter().flat_map(|e| e.ips.iter().map(Ipv4Addr::to_ipv6_mapped)).collect();
    let addr = |rng: &mut Rng| match rng.below(100) {
        0..85 if !pods.is_empty() => *rng.pick(&pods),
        85..88 if !mapped.is_empty() => *rng.pick(&mapped),
        _ => *rng.pick(&OUTSIDE6),
    };
    let (src, dst) = (addr(rng), addr(rng));
    AnyPacket::V6(match protocol {
        // The ICMP of IPv6 is ICMPv6; protocol 1 in an IPv6 packet is only a number (but
        // the packet has an ICMP header, as the data plane's key would).
        proto::ICMPV6 => Packet6::icmp(src, dst, icmp_type, icmp_code),
        proto::ICMP if rng.chance(90) => Packet6::icmp(src, dst, icmp_type, icmp_code),
        proto::ICMP => Packet6 { protocol: proto::ICMP, ..Packet6::icmp(src, dst, icmp_type, icmp_code) },
        p if proto::has_ports(p) => Packet6 { protocol: p, ..Packet6::tcp(src, port(rng), dst, port(rng)) },
        p => Packet6 { protocol: p, ..Packet6::tcp(src, 0, dst, 0) },
    })
}

/// A world and its policies, kept as the reference evaluator wants them.
struct Case {
    world: World,
    policies: Vec<Policy>,
    next_pod: usize,
    next_policy: usize,
}

impl Case {
    fn new(rng: &mut Rng) -> Case {
        let mut world = World::new();
        for ns in NAMESPACES {
            let l = labels(rng);
            let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            world.add_namespace(ns, &pairs);
        }
        let pods = 4 + rng.below(9);
        for i in 0..pods {
            world.add_endpoint(endpoint(rng, i));
        }
        let mut case = Case { world, policies: Vec::new(), next_pod: pods, next_policy: 0 };
        for _ in 0..1 + rng.below(7) {
            let p = policy(rng, case.next_policy);
            case.next_policy += 1;
            case.put_policy(p);
        }
        case
    }

    fn put_policy(&mut self, p: Policy) {
        self.policies.retain(|q| q.id_key() != p.id_key());
        self.policies.push(p);
    }

    /// One random change, applied to both the case and the compiler.
    fn mutate(&mut self, rng: &mut Rng, c: &mut PolicyCompiler) -> &'static str {
        match rng.below(8) {
            0 => {
                let ep = endpoint(rng, self.next_pod);
                self.next_pod += 1;
                self.world.add_endpoint(ep.clone());
                c.upsert_endpoint(ep).expect("endpoint compiles");
                "pod added"
            }
            1 if !self.world.endpoints.is_empty() => {
                let i = rng.below(self.world.endpoints.len());
                let ep = self.world.endpoints.remove(i);
                c.remove_endpoint(&ep.namespace, &ep.name);
                "pod removed"
            }
            2 if !self.world.endpoints.is_empty() => {
                let i = rng.below(self.world.endpoints.len());
                let mut ep = self.world.endpoints[i].clone();
                ep.labels = labels(rng);
                ep = ep.with_implicit_labels();
                self.world.endpoints[i] = ep.clone();
                c.upsert_endpoint(ep).expect("endpoint compiles");
                "pod relabelled"
            }
            7 if !self.world.endpoints.is_empty() => {
                // A pod gains or loses its IPv6 address (keeping at least one address).
                let i = rng.below(self.world.endpoints.len());
                let mut ep = self.world.endpoints[i].clone();
                if ep.ips6.is_empty() {
                    ep.ips6.push(ip6_of(self.next_pod));
                    self.next_pod += 1;
                } else if !ep.ips.is_empty() {
                    ep.ips6.clear();
                } else {
                    ep.ips6 = vec![ip6_of(self.next_pod)];
                    self.next_pod += 1;
                }
                self.world.endpoints[i] = ep.clone();
                c.upsert_endpoint(ep).expect("endpoint compiles");
                "pod readdressed"
            }
            3 => {
                let ns = *rng.pick(&NAMESPACES);
                let l = labels(rng);
                let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                self.world.add_namespace(ns, &pairs);
                c.upsert_namespace(ns, l);
                "namespace relabelled"
            }
            4 if !self.policies.is_empty() => {
                let i = rng.below(self.policies.len());
                let id = self.policies.remove(i).id_key();
                c.remove_policy(&id);
                "policy removed"
            }
            _ => {
                let p = policy(rng, self.next_policy);
                self.next_policy += 1;
                self.put_policy(p.clone());
                c.upsert_policy(p).expect("policy compiles");
                "policy added or replaced"
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    cases: u64,
    cases6: u64,
    by_outcome: BTreeMap<&'static str, u64>,
    by_outcome6: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn count(&mut self, d: &policy_engine::reference::Decision, v6: bool) {
        let (cases, by_outcome) = if v6 { (&mut self.cases6, &mut self.by_outcome6) } else { (&mut self.cases, &mut self.by_outcome) };
        *cases += 1;
        for dir in [&d.egress, &d.ingress].into_iter().flatten() {
            let k = match (&dir.decided_by, dir.verdict) {
                (DecidedBy::Rule(_), Verdict::Allow) => "rule allows",
                (DecidedBy::Rule(_), Verdict::Deny) => "rule denies",
                (DecidedBy::PassToProfile(_), _) => "pass",
                (DecidedBy::EndOfTier, _) => "end of tier",
                (DecidedBy::NoPolicyApplies, _) => "no policy",
            };
            *by_outcome.entry(k).or_default() += 1;
            if !dir.logged.is_empty() {
                *by_outcome.entry("logged").or_default() += 1;
            }
        }
    }
}

fn check_packets(case: &Case, c: &mut PolicyCompiler, rng: &mut Rng, n: usize, tally: &mut Tally, at: &str) {
    let tables = c.tables().expect("tables compile");
    // A pod's addresses of both families find one record.
    for ep in &case.world.endpoints {
        let records: Vec<*const policy_engine::compiler::Peer> = ep
            .ips
            .iter()
            .map(|ip| tables.peer(*ip))
            .chain(ep.ips6.iter().map(|ip| tables.peer6(*ip)))
            .map(|p| p.map_or(std::ptr::null(), |p| p as *const _))
            .collect();
        assert!(records.iter().all(|r| !r.is_null() && *r == records[0]), "{at}: the records of {}/{}", ep.namespace, ep.name);
    }
    for _ in 0..n {
        let pkt = packet(rng, &case.world);
        let (want, got) = match &pkt {
            AnyPacket::V4(p) => (evaluate(&case.policies, &case.world, p), tables.explain(&key_of(p))),
            AnyPacket::V6(p) => (evaluate6(&case.policies, &case.world, p), tables.explain6(&key6_of(p))),
        };
        assert_eq!(got, want, "{at}: packet {pkt:?}\npolicies: {:#?}\nworld: {:#?}", case.policies, case.world);
        tally.count(&want, matches!(pkt, AnyPacket::V6(_)));
    }
}

fn seed() -> u64 {
    match std::env::var("TWILL_POLICY_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("TWILL_POLICY_SEED={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

const WORLDS: u64 = 2000;
const STEPS: usize = 8;
const PACKETS_FIRST: usize = 600;
const PACKETS_PER_STEP: usize = 60;

#[test]
fn compiled_policy_agrees_with_reference() {
    let seed = seed();
    let only: Option<u64> = std::env::var("TWILL_POLICY_WORLD").ok().map(|w| w.parse().expect("TWILL_POLICY_WORLD is a number"));
    eprintln!("compiled_vs_reference: seed {seed} (TWILL_POLICY_SEED={seed} replays this run)");
    let mut tally = Tally::default();
    for w in 0..WORLDS {
        if only.is_some_and(|o| o != w) {
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut rng = Rng(seed ^ w.wrapping_mul(0xa076_1d64_78bd_642f));
            let mut case = Case::new(&mut rng);
            let mut c = PolicyCompiler::from_world(&case.world, &case.policies).expect("world compiles");
            let mut t = Tally::default();
            check_packets(&case, &mut c, &mut rng, PACKETS_FIRST, &mut t, "fresh");
            for step in 0..STEPS {
                let what = case.mutate(&mut rng, &mut c);
                check_packets(&case, &mut c, &mut rng, PACKETS_PER_STEP, &mut t, &format!("step {step} ({what})"));
            }
            t
        }));
        match result {
            Ok(t) => {
                tally.cases += t.cases;
                tally.cases6 += t.cases6;
                for (k, v) in t.by_outcome {
                    *tally.by_outcome.entry(k).or_default() += v;
                }
                for (k, v) in t.by_outcome6 {
                    *tally.by_outcome6.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                eprintln!("FAILED: seed {seed}, world {w}; replay with TWILL_POLICY_SEED={seed} TWILL_POLICY_WORLD={w}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("compiled_vs_reference: IPv4: {} cases, outcomes per direction {:?}", tally.cases, tally.by_outcome);
    eprintln!("compiled_vs_reference: IPv6: {} cases, outcomes per direction {:?}", tally.cases6, tally.by_outcome6);
    if only.is_none() {
        let all = tally.cases + tally.cases6;
        assert!(all >= 2_000_000, "only {all} cases");
        // The generator must reach every kind of outcome often in both families, or the
        // agreement says little.
        for (family, cases, by_outcome) in [("IPv4", tally.cases, &tally.by_outcome), ("IPv6", tally.cases6, &tally.by_outcome6)] {
            assert!(cases >= 1_000_000, "only {cases} {family} cases of {all}");
            for k in ["rule allows", "rule denies", "pass", "end of tier", "no policy", "logged"] {
                let n = by_outcome.get(k).copied().unwrap_or(0);
                assert!(n >= cases / 100, "{family} outcome {k:?} only {n} times in {cases} cases");
            }
        }
    }
}
