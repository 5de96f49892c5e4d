//! The policy compiler: policies, namespaces and endpoints in; per-endpoint rule sets on the
//! [`Classifier`] out, kept up to date one change at a time, and published as immutable
//! [`PolicyTables`] that the data plane and `twill policy explain` judge connections with.
//!
//! # How a policy becomes a classifier
//!
//! Selectors are not compiled into rules. As Calico does with ipsets, every distinct
//! "endpoints this selector picks in this namespace scope" of a rule side becomes an
//! *address set* ([`SetId`]), and a rule refers to the set by number. Each endpoint's
//! [`Peer`] record lists the sets it belongs to (and its named ports). So:
//!
//! - a rule lowers to [`ClassRule`]s once, when its policy is added: nets, ports,
//!   protocols and ICMP type/code become numeric fields the cutting tree cuts on; set
//!   membership and named ports become a *guard* the classifier checks at the leaf against
//!   the peers' records. A rule the fields cannot express as one box (`notICMP`, ports
//!   mixing numbers and names) lowers to several consecutive `ClassRule`s that share its
//!   index, so first match still finds the right rule;
//! - the rule set of an endpoint in a direction is the lowered rules of the policies that
//!   apply to it, in evaluation order; endpoints with the same policies share one
//!   [`RuleSet`] (built once, cached);
//! - a pod or namespace added, removed or relabelled changes set memberships and which
//!   policies apply to the pods it touches; no rule set is rebuilt unless a pod's list of
//!   applicable policies becomes one never built before. A policy change rebuilds only the
//!   rule sets that contain it.
//!
//! `Log` rules are kept out of the tree (they never decide); a judgement scans them only up
//! to the deciding rule, and only when the rule set has any.
//!
//! # Invariants the model keeps (checked by [`Rule::check_lowerable`])
//!
//! Ports are only given with a protocol that has them (TCP, UDP, SCTP, UDP-Lite) and ICMP
//! matches only with ICMP or ICMPv6, as Calico's validation demands; so a [`Key`] can carry
//! the ICMP type and code in its port fields without the two meanings meeting.
//!
//! Only IPv4 is judged here: IPv6 nets never match an IPv4 key and `ipVersion: 6` rules are
//! dropped at lowering.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::classifier::{BuildError, ClassRule, Classifier, Key};
use crate::fxhash::FxBuildHasher;
use crate::model::{Action, Cidr, Direction, EntityMatch, IcmpMatch, Policy, PolicyId, PortSpec, Rule, proto};
use crate::reference::{self, DecidedBy, Decision, DirectionDecision, RuleRef, Verdict};
use crate::selector::{Labels, Selector};
use crate::world::{self, Endpoint, World};

/// Number of an address set.
pub type SetId = u32;

/// Why a policy cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A rule breaks an invariant the lowering relies on (see the module doc).
    #[error("{policy}: {direction:?} rule {rule}: {reason}")]
    Rule {
        /// The policy.
        policy: String,
        /// The direction of the rule.
        direction: Direction,
        /// Index of the rule in the manifest.
        rule: usize,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A policy asked for is not held.
    #[error("no policy {0}")]
    UnknownPolicy(String),
    /// The classifier refused the lowered rules.
    #[error("compiling the rules of {endpoint}: {source}")]
    Build {
        /// The endpoint (or rule list) being compiled.
        endpoint: String,
        /// The classifier's reason.
        source: BuildError,
    },
}

impl Rule {
    /// Checks the invariants the lowering relies on: ports only with TCP, UDP, SCTP or
    /// UDP-Lite; ICMP matches only with ICMP or ICMPv6. Calico's validation demands the
    /// same, and the Kubernetes conversion always gives ports a protocol.
    pub fn check_lowerable(&self) -> Result<(), String> {
        let sides = [&self.source, &self.destination];
        let has_ports = sides
            .iter()
            .any(|m| !m.ports.is_empty() || !m.not_ports.is_empty());
        if has_ports && !self.protocol.is_some_and(proto::has_ports) {
            return Err("ports need the rule's protocol to be TCP, UDP, SCTP or UDPLite".into());
        }
        let icmp = self.icmp.is_some() || self.not_icmp.is_some();
        if icmp && !matches!(self.protocol, Some(proto::ICMP | proto::ICMPV6)) {
            return Err("icmp / notICMP need the rule's protocol to be ICMP or ICMPv6".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Address sets

/// The namespaces a set's endpoints may be in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    /// One namespace (a namespaced policy's own).
    Namespace(String),
    /// Namespaces whose labels match.
    Namespaces(Selector),
    /// Every namespace.
    All,
}

/// An address set's definition: the endpoints `selector` picks in `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetDef {
    selector: Selector,
    scope: Scope,
}

impl SetDef {
    fn contains(&self, ep: &Endpoint, ns_labels: &Labels) -> bool {
        let in_scope = match &self.scope {
            Scope::Namespace(n) => ep.namespace == *n,
            Scope::Namespaces(s) => s.matches(ns_labels),
            Scope::All => true,
        };
        in_scope && self.selector.matches(&ep.labels)
    }

    /// The set of a rule side's positive endpoint match, as [`World::peer_selected`]
    /// defines it; `None` when the side does not constrain endpoints.
    fn positive(m: &EntityMatch, policy_ns: Option<&str>) -> Option<SetDef> {
        World::peer_must_be_endpoint(m, policy_ns).then(|| SetDef {
            selector: m.selector.clone().unwrap_or(Selector::All),
            scope: match (&m.namespace_selector, policy_ns) {
                (Some(s), _) => Scope::Namespaces(s.clone()),
                (None, Some(ns)) => Scope::Namespace(ns.to_string()),
                (None, None) => Scope::All,
            },
        })
    }

    /// The set of a rule side's `notSelector` (every namespace, see [`crate::world`]).
    fn negative(m: &EntityMatch) -> Option<SetDef> {
        m.not_selector.clone().map(|selector| SetDef {
            selector,
            scope: Scope::All,
        })
    }
}

#[derive(Debug)]
struct SetSlot {
    def: SetDef,
    /// Rule sides (over all policies) that refer to the set.
    refs: usize,
    members: BTreeSet<EndpointKey>,
}

// ---------------------------------------------------------------------------------------
// Guards

/// What a guard asks of one side's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct SideGuard {
    /// The address is an endpoint in this set.
    in_set: Option<SetId>,
    /// The address is not an endpoint in this set.
    not_in_set: Option<SetId>,
    /// The port is one of these named ports of the address's endpoint (empty: no demand).
    named: Vec<u32>,
    /// The port is none of these named ports of the address's endpoint.
    not_named: Vec<u32>,
}

impl SideGuard {
    fn is_empty(&self) -> bool {
        *self == SideGuard::default()
    }

    fn and(mut self, other: SideGuard) -> SideGuard {
        self.in_set = self.in_set.or(other.in_set);
        self.not_in_set = self.not_in_set.or(other.not_in_set);
        self.named.extend(other.named);
        self.not_named.extend(other.not_named);
        self
    }

    fn passes(&self, peer: Option<&Peer>, port: u16, protocol: u8) -> bool {
        let member = |s: SetId| peer.is_some_and(|p| p.in_set(s));
        let named = |n: &u32| peer.and_then(|p| p.named_port(*n, protocol)) == Some(port);
        self.in_set.is_none_or(member)
            && !self.not_in_set.is_some_and(member)
            && (self.named.is_empty() || self.named.iter().any(named))
            && !self.not_named.iter().any(named)
    }
}

/// The part of a rule the numeric fields cannot say, checked at the classifier's leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Guard {
    src: SideGuard,
    dst: SideGuard,
}

impl Guard {
    fn is_empty(&self) -> bool {
        self.src.is_empty() && self.dst.is_empty()
    }

    fn and(self, other: Guard) -> Guard {
        Guard {
            src: self.src.and(other.src),
            dst: self.dst.and(other.dst),
        }
    }

    fn passes(&self, tables: &PolicyTables, key: &Key) -> bool {
        let peer = |side: &SideGuard, ip: u32| {
            if side.is_empty() {
                None
            } else {
                tables.peers.get(&ip).map(Arc::as_ref)
            }
        };
        self.src.passes(peer(&self.src, key.src), key.src_port, key.proto)
            && self.dst.passes(peer(&self.dst, key.dst), key.dst_port, key.proto)
    }
}

// ---------------------------------------------------------------------------------------
// Lowering one rule

/// A lowered alternative: the numeric fields and the guard.
type Alt = (ClassRule, Guard);

/// The address sets of a rule's sides.
#[derive(Debug, Clone, Copy, Default)]
struct RuleSets {
    src_in: Option<SetId>,
    src_not_in: Option<SetId>,
    dst_in: Option<SetId>,
    dst_not_in: Option<SetId>,
}

fn v4_prefixes(nets: &[Cidr]) -> Vec<(u32, u8)> {
    nets.iter()
        .filter_map(|c| match c.addr {
            IpAddr::V4(a) => Some((u32::from(a), c.prefix)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Intersection of two positive value lists where empty means "any"; `None` when the
/// intersection is empty.
fn and_list<T: Clone>(a: &[T], b: &[T], meet: impl Fn(&T, &T) -> Option<T>) -> Option<Vec<T>> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => Some(b.to_vec()),
        (_, true) => Some(a.to_vec()),
        _ => {
            let out: Vec<T> = a
                .iter()
                .flat_map(|x| b.iter().filter_map(|y| meet(x, y)))
                .collect();
            (!out.is_empty()).then_some(out)
        }
    }
}

fn meet_prefix(&(a, la): &(u32, u8), &(b, lb): &(u32, u8)) -> Option<(u32, u8)> {
    let mask = |l: u8| u32::MAX.checked_shl(32 - u32::from(l.min(32))).unwrap_or(0);
    let l = la.min(lb);
    ((a ^ b) & mask(l) == 0).then_some(if la >= lb { (a, la) } else { (b, lb) })
}

fn meet_range(&(a, b): &(u16, u16), &(c, d): &(u16, u16)) -> Option<(u16, u16)> {
    let (lo, hi) = (a.max(c), b.min(d));
    (lo <= hi).then_some((lo, hi))
}

/// Both alternatives at once; `None` when nothing can match both.
fn and_alt((a, ga): &Alt, (b, gb): &Alt) -> Option<Alt> {
    let cat = |x: &[u8], y: &[u8]| [x, y].concat();
    let rule = ClassRule {
        src: and_list(&a.src, &b.src, meet_prefix)?,
        not_src: [&a.not_src[..], &b.not_src[..]].concat(),
        dst: and_list(&a.dst, &b.dst, meet_prefix)?,
        not_dst: [&a.not_dst[..], &b.not_dst[..]].concat(),
        src_ports: and_list(&a.src_ports, &b.src_ports, meet_range)?,
        not_src_ports: [&a.not_src_ports[..], &b.not_src_ports[..]].concat(),
        dst_ports: and_list(&a.dst_ports, &b.dst_ports, meet_range)?,
        not_dst_ports: [&a.not_dst_ports[..], &b.not_dst_ports[..]].concat(),
        protocols: and_list(&a.protocols, &b.protocols, |x, y| (x == y).then_some(*x))?,
        not_protocols: cat(&a.not_protocols, &b.not_protocols),
        guard: None,
    };
    if !rule.protocols.is_empty() && rule.protocols.iter().all(|p| rule.not_protocols.contains(p)) {
        return None;
    }
    Some((rule, ga.clone().and(gb.clone())))
}

/// Every combination of one alternative from each list, ANDed.
fn product(lists: Vec<Vec<Alt>>) -> Vec<Alt> {
    let mut acc: Vec<Alt> = vec![(ClassRule::default(), Guard::default())];
    for list in lists {
        acc = acc
            .iter()
            .flat_map(|a| list.iter().filter_map(move |b| and_alt(a, b)))
            .collect();
    }
    acc
}

fn one(rule: ClassRule) -> Vec<Alt> {
    vec![(rule, Guard::default())]
}

/// The alternatives of a side's positive ports: numbers in the fields, names in the guard.
fn port_alts(ports: &[PortSpec], names: &mut PortNames, src: bool) -> Vec<Alt> {
    if ports.is_empty() {
        return one(ClassRule::default());
    }
    let mut ranges = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            PortSpec::Range { lo, hi } => ranges.push((*lo, *hi)),
            PortSpec::Named(n) => named.push(names.intern(n)),
        }
    }
    let mut alts = Vec::new();
    if !ranges.is_empty() {
        let rule = if src {
            ClassRule { src_ports: ranges, ..ClassRule::default() }
        } else {
            ClassRule { dst_ports: ranges, ..ClassRule::default() }
        };
        alts.push((rule, Guard::default()));
    }
    if !named.is_empty() {
        let side = SideGuard { named, ..SideGuard::default() };
        let guard = if src {
            Guard { src: side, ..Guard::default() }
        } else {
            Guard { dst: side, ..Guard::default() }
        };
        alts.push((ClassRule::default(), guard));
    }
    alts
}

/// One side's addresses, negated ports and sets; `None` when no IPv4 address can match.
fn side_alt(m: &EntityMatch, sets: (Option<SetId>, Option<SetId>), names: &mut PortNames, src: bool) -> Option<Alt> {
    let nets = v4_prefixes(&m.nets);
    if !m.nets.is_empty() && nets.is_empty() {
        return None;
    }
    let not_nets = v4_prefixes(&m.not_nets);
    let mut not_ports = Vec::new();
    let mut not_named = Vec::new();
    for p in &m.not_ports {
        match p {
            PortSpec::Range { lo, hi } => not_ports.push((*lo, *hi)),
            PortSpec::Named(n) => not_named.push(names.intern(n)),
        }
    }
    let side = SideGuard {
        in_set: sets.0,
        not_in_set: sets.1,
        named: Vec::new(),
        not_named,
    };
    Some(if src {
        (
            ClassRule { src: nets, not_src: not_nets, not_src_ports: not_ports, ..ClassRule::default() },
            Guard { src: side, ..Guard::default() },
        )
    } else {
        (
            ClassRule { dst: nets, not_dst: not_nets, not_dst_ports: not_ports, ..ClassRule::default() },
            Guard { dst: side, ..Guard::default() },
        )
    })
}

const ICMP_PROTOS: [u8; 2] = [proto::ICMP, proto::ICMPV6];

/// `icmp`: the packet is ICMP(v6) with the type (key source port) and code (destination).
fn icmp_alts(m: &IcmpMatch) -> Vec<Alt> {
    one(ClassRule {
        protocols: ICMP_PROTOS.to_vec(),
        src_ports: m.icmp_type.map(|t| vec![(u16::from(t), u16::from(t))]).unwrap_or_default(),
        dst_ports: m.code.map(|c| vec![(u16::from(c), u16::from(c))]).unwrap_or_default(),
        ..ClassRule::default()
    })
}

/// `notICMP`: not ICMP at all, or ICMP with another type, or the type with another code.
fn not_icmp_alts(m: &IcmpMatch) -> Vec<Alt> {
    let mut alts = one(ClassRule { not_protocols: ICMP_PROTOS.to_vec(), ..ClassRule::default() });
    let single = |v: u8| vec![(u16::from(v), u16::from(v))];
    if let Some(t) = m.icmp_type {
        alts.extend(one(ClassRule {
            protocols: ICMP_PROTOS.to_vec(),
            not_src_ports: single(t),
            ..ClassRule::default()
        }));
    }
    if let Some(c) = m.code {
        alts.extend(one(ClassRule {
            protocols: ICMP_PROTOS.to_vec(),
            src_ports: m.icmp_type.map(single).unwrap_or_default(),
            not_dst_ports: single(c),
            ..ClassRule::default()
        }));
    }
    alts
}

/// A rule as [`ClassRule`] alternatives (empty when it can never match an IPv4 packet).
fn lower(rule: &Rule, sets: RuleSets, names: &mut PortNames) -> Vec<Alt> {
    if rule.ip_version == Some(6) {
        return Vec::new();
    }
    let (Some(src), Some(dst)) = (
        side_alt(&rule.source, (sets.src_in, sets.src_not_in), names, true),
        side_alt(&rule.destination, (sets.dst_in, sets.dst_not_in), names, false),
    ) else {
        return Vec::new();
    };
    let base = ClassRule {
        protocols: rule.protocol.into_iter().collect(),
        not_protocols: rule.not_protocol.into_iter().collect(),
        ..ClassRule::default()
    };
    let mut lists = vec![one(base), vec![src], vec![dst]];
    lists.push(port_alts(&rule.source.ports, names, true));
    lists.push(port_alts(&rule.destination.ports, names, false));
    if let Some(m) = &rule.icmp {
        lists.push(icmp_alts(m));
    }
    if let Some(m) = &rule.not_icmp {
        lists.push(not_icmp_alts(m));
    }
    product(lists)
}

/// Named-port names, interned to numbers the guards and peer records share.
#[derive(Debug, Default)]
struct PortNames(HashMap<String, u32>);

impl PortNames {
    fn intern(&mut self, name: &str) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(name.to_string()).or_insert(next)
    }
}

// ---------------------------------------------------------------------------------------
// Rule sets

/// One lowered rule in a rule set.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index into [`RuleSet::policies`].
    policy: u32,
    /// Index into the policy's rules of the direction.
    rule: u32,
    action: Action,
}

/// The compiled rules of one ordered list of policies, for one direction: what an endpoint
/// these policies apply to is judged by.
#[derive(Debug)]
pub struct RuleSet {
    direction: Direction,
    policies: Vec<Arc<Policy>>,
    entries: Vec<Entry>,
    /// Over the entries that decide (Allow, Deny, Pass).
    classifier: Classifier,
    /// Classifier rule → entry.
    decisive: Vec<u32>,
    /// Log entries, with their fields, in order.
    logs: Vec<(u32, ClassRule)>,
    guards: Vec<Guard>,
}

/// What decided a judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// An Allow or Deny rule: the entry.
    Rule(u32),
    /// A Pass rule (the endpoint's profile allows): the entry.
    Pass(u32),
    /// Policies applied, no rule matched.
    EndOfTier,
}

/// The verdict of one rule set on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub decided: Decided,
    /// The first Log rule that matched before the decision (an entry), if any.
    pub logged: Option<u32>,
}

impl RuleSet {
    fn build(direction: Direction, policies: Vec<Arc<Policy>>, lowered: &[&[Vec<Alt>]]) -> Result<RuleSet, BuildError> {
        let mut entries = Vec::new();
        let mut class_rules = Vec::new();
        let mut decisive = Vec::new();
        let mut logs = Vec::new();
        let mut guards: Vec<Guard> = Vec::new();
        let mut guard_ids: HashMap<Guard, u32> = HashMap::new();
        for (pi, (policy, rules)) in policies.iter().zip(lowered).enumerate() {
            for (ri, (rule, alts)) in policy.rules(direction).iter().zip(rules.iter()).enumerate() {
                for (fields, guard) in alts {
                    let e = entries.len() as u32;
                    entries.push(Entry { policy: pi as u32, rule: ri as u32, action: rule.action });
                    let mut fields = fields.clone();
                    if !guard.is_empty() {
                        let next = guards.len() as u32;
                        let id = *guard_ids.entry(guard.clone()).or_insert_with(|| {
                            guards.push(guard.clone());
                            next
                        });
                        fields.guard = Some(id);
                    }
                    if rule.action == Action::Log {
                        logs.push((e, fields));
                    } else {
                        decisive.push(e);
                        class_rules.push(fields);
                    }
                }
            }
        }
        Ok(RuleSet {
            direction,
            policies,
            entries,
            classifier: Classifier::build(&class_rules)?,
            decisive,
            logs,
            guards,
        })
    }

    /// The direction the rule set judges.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The policies that apply, in evaluation order.
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// Lowered rules (classifier entries, Log rules included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the rule set has no rules (then everything ends at the end of the tier).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The classifier the decisive rules are compiled into (for reports).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// The policy and rule behind an entry of [`Decided`] or [`Judgement::logged`].
    pub fn rule_ref(&self, entry: u32) -> RuleRef {
        let e = self.entries[entry as usize];
        let p = &self.policies[e.policy as usize];
        RuleRef {
            policy: p.name.clone(),
            namespace: p.namespace.clone(),
            rule_index: e.rule as usize,
            source_rule: p.rules(self.direction)[e.rule as usize].source_rule,
        }
    }

    /// The action of an entry.
    pub fn action(&self, entry: u32) -> Action {
        self.entries[entry as usize].action
    }

    /// The first decisive entry matching `key`; `tables` answers the guards.
    #[inline]
    fn decide(&self, tables: &PolicyTables, key: &Key) -> Option<u32> {
        self.classifier
            .classify_with(key, |g, k| self.guards[g as usize].passes(tables, k))
            .map(|i| self.decisive[i as usize])
    }

    fn log_matches(&self, tables: &PolicyTables, key: &Key, before: u32) -> impl Iterator<Item = u32> {
        self.logs
            .iter()
            .take_while(move |(e, _)| *e < before)
            .filter(move |(_, r)| r.fields_match(key) && r.guard.is_none_or(|g| self.guards[g as usize].passes(tables, key)))
            .map(|(e, _)| *e)
    }

    /// Judges the first packet of a connection (`key`), with `tables` for the peers.
    #[inline]
    pub fn judge(&self, tables: &PolicyTables, key: &Key) -> Judgement {
        let hit = self.decide(tables, key);
        let (verdict, decided) = match hit {
            Some(e) => match self.entries[e as usize].action {
                Action::Allow => (Verdict::Allow, Decided::Rule(e)),
                Action::Pass => (Verdict::Allow, Decided::Pass(e)),
                _ => (Verdict::Deny, Decided::Rule(e)),
            },
            None => (Verdict::Deny, Decided::EndOfTier),
        };
        let logged = if self.logs.is_empty() {
            None
        } else {
            self.log_matches(tables, key, hit.unwrap_or(u32::MAX)).next()
        };
        Judgement { verdict, decided, logged }
    }

    /// Classifies a batch of keys against the decisive rules: `out[i]` is the entry that
    /// decides `keys[i]`, `None` at the end of the tier.
    pub fn classify_batch(&self, tables: &PolicyTables, keys: &[Key], out: &mut [Option<u32>]) {
        self.classifier
            .classify_batch_with(keys, out, |g, k| self.guards[g as usize].passes(tables, k));
        for o in out.iter_mut().take(keys.len()) {
            *o = o.map(|i| self.decisive[i as usize]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Published tables

/// An endpoint as the published tables know it: its sets and named ports (for the rules
/// of others) and the rule sets of its own policies.
#[derive(Debug)]
pub struct Peer {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Address sets it belongs to, sorted.
    sets: Box<[SetId]>,
    /// Named ports: (interned name, protocol, port).
    ports: Box<[(u32, u8, u16)]>,
    /// Its ingress rules; `None` when no policy applies (not isolated).
    pub ingress: Option<Arc<RuleSet>>,
    /// Its egress rules; `None` when no policy applies.
    pub egress: Option<Arc<RuleSet>>,
}

impl Peer {
    #[inline]
    fn in_set(&self, s: SetId) -> bool {
        self.sets.binary_search(&s).is_ok()
    }

    #[inline]
    fn named_port(&self, name: u32, protocol: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.0 == name && p.1 == protocol)
            .map(|p| p.2)
    }

    /// The rule set of a direction.
    pub fn rules(&self, dir: Direction) -> Option<&Arc<RuleSet>> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    /// Judges a new connection `key` in direction `dir` of this endpoint: allowed when no
    /// policy applies, else as its rule set decides.
    #[inline]
    pub fn judge(&self, tables: &PolicyTables, dir: Direction, key: &Key) -> Option<Judgement> {
        self.rules(dir).map(|rs| rs.judge(tables, key))
    }
}

/// One published version of the compiled policy: every endpoint address of the cluster
/// with its record. Immutable; cheap to clone (records are shared).
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    peers: HashMap<u32, Arc<Peer>, FxBuildHasher>,
}

impl PolicyTables {
    /// The endpoint with address `ip`.
    #[inline]
    pub fn peer(&self, ip: Ipv4Addr) -> Option<&Peer> {
        self.peers.get(&u32::from(ip)).map(Arc::as_ref)
    }

    /// Endpoint addresses known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Judges a new connection `key` (source and destination addresses in it) the way the
    /// data plane does, for both ends: egress of the source endpoint, ingress of the
    /// destination endpoint. The same classifier answers as in the data plane; the result
    /// has the shape of [`reference::evaluate`]'s, so the two can be compared whole.
    pub fn explain(&self, key: &Key) -> Decision {
        let direction = |ip: u32, dir: Direction| {
            let peer = self.peers.get(&ip)?;
            Some(self.explain_direction(peer, dir, key))
        };
        let egress = direction(key.src, Direction::Egress);
        let ingress = direction(key.dst, Direction::Ingress);
        let allowed = [&egress, &ingress]
            .iter()
            .all(|d| d.as_ref().is_none_or(|d| d.verdict == Verdict::Allow));
        Decision {
            verdict: if allowed { Verdict::Allow } else { Verdict::Deny },
            egress,
            ingress,
        }
    }

    fn explain_direction(&self, peer: &Peer, dir: Direction, key: &Key) -> DirectionDecision {
        let endpoint = (peer.namespace.clone(), peer.name.clone());
        let Some(rs) = peer.rules(dir) else {
            return DirectionDecision {
                direction: dir,
                endpoint,
                verdict: Verdict::Allow,
                decided_by: DecidedBy::NoPolicyApplies,
                logged: Vec::new(),
                applied: Vec::new(),
            };
        };
        let j = rs.judge(self, key);
        let (decided_by, before) = match j.decided {
            Decided::Rule(e) => (DecidedBy::Rule(rs.rule_ref(e)), e),
            Decided::Pass(e) => (DecidedBy::PassToProfile(rs.rule_ref(e)), e),
            Decided::EndOfTier => (DecidedBy::EndOfTier, u32::MAX),
        };
        let mut logged: Vec<RuleRef> = Vec::new();
        for e in rs.log_matches(self, key, before) {
            let r = rs.rule_ref(e);
            // Alternatives of one model rule are consecutive: report the rule once.
            if logged.last() != Some(&r) {
                logged.push(r);
            }
        }
        DirectionDecision {
            direction: dir,
            endpoint,
            verdict: j.verdict,
            decided_by,
            logged,
            applied: rs.policies.iter().map(|p| p.id()).collect(),
        }
    }
}

/// The classifier key of a reference [`reference::Packet`]: ports for protocols that have
/// them, ICMP type and code in the port fields for ICMP(v6), zero otherwise.
pub fn key_of(pkt: &reference::Packet) -> Key {
    let (src_port, dst_port) = if proto::has_ports(pkt.protocol) {
        (pkt.src_port, pkt.dst_port)
    } else if ICMP_PROTOS.contains(&pkt.protocol) {
        (u16::from(pkt.icmp_type.unwrap_or(0)), u16::from(pkt.icmp_code.unwrap_or(0)))
    } else {
        (0, 0)
    };
    Key {
        src: u32::from(pkt.src_ip),
        dst: u32::from(pkt.dst_ip),
        proto: pkt.protocol,
        src_port,
        dst_port,
    }
}

// ---------------------------------------------------------------------------------------
// The incremental compiler

/// `(namespace, name)` of an endpoint.
pub type EndpointKey = (String, String);

/// A namespace's labels; an unknown namespace has only its name label, as the API server
/// and [`World::add_endpoint`] give it.
fn ns_labels<'a>(namespaces: &'a BTreeMap<String, Labels>, ns: &str) -> Cow<'a, Labels> {
    match namespaces.get(ns) {
        Some(l) => Cow::Borrowed(l),
        None => Cow::Owned(world::namespace_labels(ns, Labels::new())),
    }
}

/// A policy with its rules lowered once.
#[derive(Debug)]
struct CompiledPolicy {
    policy: Arc<Policy>,
    /// Per direction (ingress, egress), per rule: its alternatives.
    lowered: [Vec<Vec<Alt>>; 2],
    /// The set definitions its rule sides refer to (each counted once per reference).
    set_refs: Vec<SetId>,
}

#[derive(Debug)]
struct EndpointState {
    ep: Endpoint,
    sets: BTreeSet<SetId>,
    /// Applicable policies per direction (ingress, egress), in evaluation order.
    lists: [Vec<PolicyId>; 2],
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// A rule-set cache key: direction and the applicable policies in order.
type ListKey = (usize, Vec<PolicyId>);

/// Counts of what an update touched, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Rule sets compiled.
    pub rule_sets_built: usize,
    /// Endpoint records republished.
    pub peers_updated: usize,
}

impl fmt::Display for UpdateStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule sets built, {} endpoints updated", self.rule_sets_built, self.peers_updated)
    }
}

/// A rule set an endpoint direction holds, with the key of the policy list it came from.
type Held = (ListKey, Arc<RuleSet>);

/// The compiler's state: policies, namespaces, endpoints, address sets, the rule-set cache
/// and the current tables. Every change is applied incrementally; [`PolicyCompiler::tables`]
/// hands out the current version.
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    policies: BTreeMap<PolicyId, CompiledPolicy>,
    namespaces: BTreeMap<String, Labels>,
    endpoints: BTreeMap<EndpointKey, EndpointState>,
    sets: Vec<Option<SetSlot>>,
    set_ids: HashMap<SetDef, SetId>,
    free_sets: Vec<SetId>,
    names: PortNames,
    /// Rule sets in use, with the number of endpoint directions using each.
    cache: HashMap<ListKey, (Arc<RuleSet>, usize)>,
    peers: HashMap<u32, Arc<Peer>, FxBuildHasher>,
    /// The rule sets each endpoint's current record holds (ingress, egress).
    held: HashMap<EndpointKey, [Option<Held>; 2]>,
    /// Endpoints whose records must be rebuilt before the next publication.
    dirty: BTreeSet<EndpointKey>,
    published: Option<Arc<PolicyTables>>,
    stats: UpdateStats,
}

impl PolicyCompiler {
    /// An empty compiler (no policies: every endpoint is open).
    pub fn new() -> PolicyCompiler {
        PolicyCompiler::default()
    }

    /// A compiler holding `world` and `policies` (what `twill policy explain` and the tests
    /// start from).
    pub fn from_world(world: &World, policies: &[Policy]) -> Result<PolicyCompiler, CompileError> {
        let mut c = PolicyCompiler::new();
        for (name, labels) in &world.namespaces {
            c.upsert_namespace(name, labels.clone());
        }
        for p in policies {
            c.upsert_policy(p.clone())?;
        }
        for ep in &world.endpoints {
            c.upsert_endpoint(ep.clone())?;
        }
        Ok(c)
    }

    fn ns_labels(&self, ns: &str) -> Cow<'_, Labels> {
        ns_labels(&self.namespaces, ns)
    }

    /// What updates did since the last call (and resets the counts).
    pub fn take_stats(&mut self) -> UpdateStats {
        std::mem::take(&mut self.stats)
    }

    /// Policies held.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Endpoints held.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Address sets in use.
    pub fn set_count(&self) -> usize {
        self.set_ids.len()
    }

    /// Distinct rule sets in use.
    pub fn rule_set_count(&self) -> usize {
        self.cache.len()
    }

    // --- address sets ---

    fn intern_set(&mut self, def: SetDef) -> SetId {
        if let Some(&id) = self.set_ids.get(&def) {
            if let Some(slot) = self.sets[id as usize].as_mut() {
                slot.refs += 1;
            }
            return id;
        }
        let id = self.free_sets.pop().unwrap_or(self.sets.len() as SetId);
        let mut members = BTreeSet::new();
        for (k, st) in &mut self.endpoints {
            if def.contains(&st.ep, &ns_labels(&self.namespaces, &st.ep.namespace)) {
                st.sets.insert(id);
                members.insert(k.clone());
                self.dirty.insert(k.clone());
            }
        }
        let slot = SetSlot { def: def.clone(), refs: 1, members };
        if id as usize == self.sets.len() {
            self.sets.push(Some(slot));
        } else {
            self.sets[id as usize] = Some(slot);
        }
        self.set_ids.insert(def, id);
        id
    }

    fn release_set(&mut self, id: SetId) {
        let Some(slot) = self.sets[id as usize].as_mut() else { return };
        slot.refs -= 1;
        if slot.refs > 0 {
            return;
        }
        let slot = self.sets[id as usize].take().expect("slot checked above");
        for k in &slot.members {
            if let Some(st) = self.endpoints.get_mut(k) {
                st.sets.remove(&id);
                self.dirty.insert(k.clone());
            }
        }
        self.set_ids.remove(&slot.def);
        self.free_sets.push(id);
    }

    /// Recomputes an endpoint's set memberships.
    fn refresh_sets(&mut self, key: &EndpointKey) {
        let Some(st) = self.endpoints.get(key) else { return };
        let ns = self.ns_labels(&st.ep.namespace);
        let mut now = BTreeSet::new();
        for (id, slot) in self.sets.iter().enumerate() {
            if let Some(slot) = slot
                && slot.def.contains(&st.ep, &ns)
            {
                now.insert(id as SetId);
            }
        }
        let st = self.endpoints.get_mut(key).expect("looked up above");
        if now == st.sets {
            return;
        }
        for id in st.sets.difference(&now) {
            if let Some(slot) = self.sets[*id as usize].as_mut() {
                slot.members.remove(key);
            }
        }
        for id in now.difference(&st.sets) {
            if let Some(slot) = self.sets[*id as usize].as_mut() {
                slot.members.insert(key.clone());
            }
        }
        st.sets = now;
        self.dirty.insert(key.clone());
    }

    // --- applicable policies and rule sets ---

    fn applicable(&self, ep: &Endpoint, dir: Direction) -> Vec<PolicyId> {
        let ns = self.ns_labels(&ep.namespace);
        let mut list: Vec<&Policy> = self
            .policies
            .values()
            .map(|c| c.policy.as_ref())
            .filter(|p| p.applies(ep, &ns, dir))
            .collect();
        list.sort_by(|a, b| a.cmp_order(b));
        list.into_iter().map(Policy::id_key).collect()
    }

    /// Compiles the rules of the policies `ids`, in this order, for `dir`: what an endpoint
    /// they all apply to is judged by (for `twill policy classify` and benches; not cached).
    pub fn rule_set(&self, dir: Direction, ids: &[PolicyId]) -> Result<RuleSet, CompileError> {
        if let Some(missing) = ids.iter().find(|id| !self.policies.contains_key(*id)) {
            return Err(CompileError::UnknownPolicy(missing.to_string()));
        }
        self.build_rule_set(&(dir_index(dir), ids.to_vec()))
    }

    /// The rule set for a list, from the cache or built; counts one more user.
    fn acquire(&mut self, key: &ListKey) -> Result<Arc<RuleSet>, CompileError> {
        if let Some((rs, users)) = self.cache.get_mut(key) {
            *users += 1;
            return Ok(Arc::clone(rs));
        }
        let rs = Arc::new(self.build_rule_set(key)?);
        self.stats.rule_sets_built += 1;
        self.cache.insert(key.clone(), (Arc::clone(&rs), 1));
        Ok(rs)
    }

    fn build_rule_set(&self, (d, ids): &ListKey) -> Result<RuleSet, CompileError> {
        let dir = DIRECTIONS[*d];
        let compiled: Vec<&CompiledPolicy> = ids.iter().map(|id| &self.policies[id]).collect();
        let policies = compiled.iter().map(|c| Arc::clone(&c.policy)).collect();
        let lowered: Vec<&[Vec<Alt>]> = compiled.iter().map(|c| c.lowered[*d].as_slice()).collect();
        RuleSet::build(dir, policies, &lowered).map_err(|source| CompileError::Build {
            endpoint: format!("{dir:?} policies [{}]", ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
            source,
        })
    }

    /// One user less of `rs`; a rule set that a policy change already dropped from the
    /// cache is not the cached one, and is simply let go.
    fn release(&mut self, key: &ListKey, rs: &Arc<RuleSet>) {
        if let Some((cached, users)) = self.cache.get_mut(key)
            && Arc::ptr_eq(cached, rs)
        {
            *users -= 1;
            if *users == 0 {
                self.cache.remove(key);
            }
        }
    }

    /// Recomputes which policies apply to an endpoint; marks it dirty if that changed.
    fn refresh_lists(&mut self, key: &EndpointKey) {
        let Some(st) = self.endpoints.get(key) else { return };
        let lists = DIRECTIONS.map(|d| self.applicable(&st.ep, d));
        let st = self.endpoints.get_mut(key).expect("looked up above");
        if st.lists != lists {
            st.lists = lists;
            self.dirty.insert(key.clone());
        }
    }

    // --- changes ---

    /// Adds or replaces a namespace (its labels get `kubernetes.io/metadata.name`).
    pub fn upsert_namespace(&mut self, name: &str, labels: Labels) {
        let labels = world::namespace_labels(name, labels);
        if self.namespaces.get(name) == Some(&labels) {
            return;
        }
        self.namespaces.insert(name.to_string(), labels);
        self.refresh_namespace(name);
    }

    /// Removes a namespace's labels (its endpoints stay; their namespace has only its name
    /// label until it returns).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.refresh_namespace(name);
        }
    }

    fn refresh_namespace(&mut self, name: &str) {
        let keys: Vec<EndpointKey> = self
            .endpoints
            .range((name.to_string(), String::new())..)
            .take_while(|(k, _)| k.0 == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.refresh_sets(k);
            self.refresh_lists(k);
        }
    }

    /// Adds or replaces an endpoint (labels get `projectcalico.org/namespace`).
    pub fn upsert_endpoint(&mut self, ep: Endpoint) -> Result<(), CompileError> {
        let ep = ep.with_implicit_labels();
        let key = (ep.namespace.clone(), ep.name.clone());
        for p in &ep.ports {
            self.names.intern(&p.name);
        }
        match self.endpoints.get_mut(&key) {
            Some(st) if st.ep == ep => return Ok(()),
            Some(st) => {
                for ip in &st.ep.ips {
                    self.peers.remove(&u32::from(*ip));
                }
                st.ep = ep;
            }
            None => {
                self.endpoints.insert(
                    key.clone(),
                    EndpointState { ep, sets: BTreeSet::new(), lists: Default::default() },
                );
            }
        }
        self.dirty.insert(key.clone());
        self.refresh_sets(&key);
        self.refresh_lists(&key);
        Ok(())
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let Some(st) = self.endpoints.remove(&key) else { return };
        for id in &st.sets {
            if let Some(slot) = self.sets[*id as usize].as_mut() {
                slot.members.remove(&key);
            }
        }
        for ip in &st.ep.ips {
            self.peers.remove(&u32::from(*ip));
        }
        self.dirty.insert(key);
    }

    /// Adds or replaces a policy (by [`Policy::id_key`]).
    pub fn upsert_policy(&mut self, policy: Policy) -> Result<(), CompileError> {
        let id = policy.id_key();
        for dir in DIRECTIONS {
            for r in policy.rules(dir) {
                r.check_lowerable().map_err(|reason| CompileError::Rule {
                    policy: id.to_string(),
                    direction: dir,
                    rule: r.source_rule,
                    reason,
                })?;
            }
        }
        if self.policies.get(&id).is_some_and(|c| *c.policy == policy) {
            return Ok(());
        }
        // Sets first (the new policy's before the old one's are released, so shared sets
        // keep their members), then the lowering.
        let ns = policy.namespace.clone();
        let mut set_refs = Vec::new();
        let mut lowered: [Vec<Vec<Alt>>; 2] = Default::default();
        for dir in DIRECTIONS {
            for r in policy.rules(dir) {
                let mut side = |m: &EntityMatch| {
                    let pos = SetDef::positive(m, ns.as_deref()).map(|d| self.intern_set(d));
                    let neg = SetDef::negative(m).map(|d| self.intern_set(d));
                    set_refs.extend(pos.into_iter().chain(neg));
                    (pos, neg)
                };
                let (src_in, src_not_in) = side(&r.source);
                let (dst_in, dst_not_in) = side(&r.destination);
                let sets = RuleSets { src_in, src_not_in, dst_in, dst_not_in };
                lowered[dir_index(dir)].push(lower(r, sets, &mut self.names));
            }
        }
        let compiled = CompiledPolicy { policy: Arc::new(policy), lowered, set_refs };
        if let Some(old) = self.policies.insert(id.clone(), compiled) {
            for s in old.set_refs {
                self.release_set(s);
            }
        }
        self.policy_changed(&id);
        Ok(())
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, id: &PolicyId) {
        if let Some(old) = self.policies.remove(id) {
            for s in old.set_refs {
                self.release_set(s);
            }
            self.policy_changed(id);
        }
    }

    /// A policy was added, changed or removed: cached rule sets with it are stale, and the
    /// endpoints it selects (or selected) get new lists.
    fn policy_changed(&mut self, id: &PolicyId) {
        let stale: Vec<ListKey> = self.cache.keys().filter(|(_, ids)| ids.contains(id)).cloned().collect();
        for k in &stale {
            self.cache.remove(k);
        }
        let keys: Vec<EndpointKey> = self.endpoints.keys().cloned().collect();
        for k in &keys {
            let st = &self.endpoints[k];
            let had = st.lists.iter().any(|l| l.contains(id));
            // Only the changed policy can have moved in or out of a list.
            let ns = self.ns_labels(&st.ep.namespace);
            let selects = self
                .policies
                .get(id)
                .is_some_and(|c| DIRECTIONS.iter().any(|d| c.policy.applies(&st.ep, &ns, *d)));
            if had || selects {
                self.refresh_lists(k);
                self.dirty.insert(k.clone());
            }
        }
    }

    /// Rebuilds the records of dirty endpoints.
    fn flush(&mut self) -> Result<(), CompileError> {
        let dirty: Vec<EndpointKey> = std::mem::take(&mut self.dirty).into_iter().collect();
        for (i, key) in dirty.iter().enumerate() {
            if let Err(e) = self.flush_one(key) {
                self.dirty.extend(dirty[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    fn flush_one(&mut self, key: &EndpointKey) -> Result<(), CompileError> {
        let held = self.held.remove(key);
        let Some(st) = self.endpoints.get(key) else {
            for (lk, rs) in held.into_iter().flatten().flatten() {
                self.release(&lk, &rs);
            }
            return Ok(());
        };
        let lists = [(0, st.lists[0].clone()), (1, st.lists[1].clone())];
        // New rule sets before the old ones go back, so an unchanged list keeps its entry.
        let mut rules: [Option<(ListKey, Arc<RuleSet>)>; 2] = [None, None];
        for (slot, lk) in rules.iter_mut().zip(lists) {
            if !lk.1.is_empty() {
                let rs = match self.acquire(&lk) {
                    Ok(rs) => rs,
                    Err(e) => {
                        if let Some(h) = held {
                            self.held.insert(key.clone(), h);
                        }
                        return Err(e);
                    }
                };
                *slot = Some((lk, rs));
            }
        }
        for (lk, rs) in held.into_iter().flatten().flatten() {
            self.release(&lk, &rs);
        }
        let st = &self.endpoints[key];
        let mut ports: Vec<(u32, u8, u16)> = st
            .ep
            .ports
            .iter()
            .map(|p| (self.names.0[&p.name], p.protocol, p.port))
            .collect();
        ports.sort_unstable();
        let peer = Arc::new(Peer {
            namespace: st.ep.namespace.clone(),
            name: st.ep.name.clone(),
            sets: st.sets.iter().copied().collect(),
            ports: ports.into(),
            ingress: rules[0].as_ref().map(|(_, rs)| Arc::clone(rs)),
            egress: rules[1].as_ref().map(|(_, rs)| Arc::clone(rs)),
        });
        for ip in &st.ep.ips {
            self.peers.insert(u32::from(*ip), Arc::clone(&peer));
        }
        self.held.insert(key.clone(), rules);
        self.stats.peers_updated += 1;
        Ok(())
    }

    /// The current tables, with every change applied so far.
    pub fn tables(&mut self) -> Result<Arc<PolicyTables>, CompileError> {
        if !self.dirty.is_empty() {
            self.flush()?;
            self.published = None;
        }
        let peers = &self.peers;
        Ok(Arc::clone(
            self.published
                .get_or_insert_with(|| Arc::new(PolicyTables { peers: peers.clone() })),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Packet;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn pod(name: &str, app: &str, last: u8) -> Endpoint {
        Endpoint::new("shop", name, &[("app", app)], ip(last)).with_port("http", proto::TCP, 8080)
    }

    /// Ingress to `app == web` from `app == fe` on the named port `http`.
    fn web_policy() -> Policy {
        let text = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: app == 'web'\n  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {selector: app == 'fe'}\n    destination: {ports: [http]}\n";
        crate::model::parse_manifests(text, "web.yaml").unwrap().remove(0)
    }

    fn verdict(c: &mut PolicyCompiler, from: u8, to: u8, port: u16) -> Verdict {
        c.tables().unwrap().explain(&key_of(&Packet::tcp(ip(from), 40000, ip(to), port))).verdict
    }

    #[test]
    fn pods_with_the_same_policies_share_one_rule_set() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(web_policy()).unwrap();
        c.upsert_endpoint(pod("w1", "web", 1)).unwrap();
        c.tables().unwrap();
        assert_eq!(c.take_stats().rule_sets_built, 1);
        c.upsert_endpoint(pod("w2", "web", 2)).unwrap();
        c.upsert_endpoint(pod("f1", "fe", 3)).unwrap();
        c.tables().unwrap();
        let s = c.take_stats();
        assert_eq!((s.rule_sets_built, s.peers_updated), (0, 2), "{s}");
        assert_eq!(c.rule_set_count(), 1);
        assert_eq!(verdict(&mut c, 3, 1, 8080), Verdict::Allow);
        assert_eq!(verdict(&mut c, 3, 1, 80), Verdict::Deny, "not the named port");
        assert_eq!(verdict(&mut c, 2, 1, 8080), Verdict::Deny, "w2 is not a frontend");
    }

    #[test]
    fn relabelling_a_peer_changes_membership_without_recompiling() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(web_policy()).unwrap();
        c.upsert_endpoint(pod("w1", "web", 1)).unwrap();
        c.upsert_endpoint(pod("x", "other", 3)).unwrap();
        assert_eq!(verdict(&mut c, 3, 1, 8080), Verdict::Deny);
        c.take_stats();
        c.upsert_endpoint(pod("x", "fe", 3)).unwrap();
        assert_eq!(verdict(&mut c, 3, 1, 8080), Verdict::Allow);
        let s = c.take_stats();
        assert_eq!((s.rule_sets_built, s.peers_updated), (0, 1), "{s}");
        c.remove_endpoint("shop", "x");
        assert_eq!(verdict(&mut c, 3, 1, 8080), Verdict::Deny, "a removed pod is no frontend");
        assert_eq!(c.tables().unwrap().len(), 1);
    }

    #[test]
    fn a_policy_change_rebuilds_only_the_rule_sets_with_it() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(web_policy()).unwrap();
        let mut other = web_policy();
        other.name = "db".into();
        other.selector = Selector::Eq("app".into(), "db".into());
        c.upsert_policy(other.clone()).unwrap();
        c.upsert_endpoint(pod("w1", "web", 1)).unwrap();
        c.upsert_endpoint(pod("d1", "db", 2)).unwrap();
        c.tables().unwrap();
        assert_eq!(c.take_stats().rule_sets_built, 2);
        other.ingress[0].action = Action::Deny;
        c.upsert_policy(other).unwrap();
        c.tables().unwrap();
        let s = c.take_stats();
        assert_eq!((s.rule_sets_built, s.peers_updated), (1, 1), "{s}");
        c.remove_policy(&web_policy().id_key());
        c.tables().unwrap();
        assert_eq!(c.rule_set_count(), 1, "w1 is open again: no rule set");
        assert_eq!(c.set_count(), 1, "the web policy's set went with it");
    }

    #[test]
    fn rules_the_fields_cannot_hold_split_into_alternatives() {
        let mut names = PortNames::default();
        let mut r = Rule::any(Action::Allow, 0);
        r.protocol = Some(proto::TCP);
        r.destination.ports = vec![PortSpec::Range { lo: 80, hi: 80 }, PortSpec::Named("http".into())];
        let alts = lower(&r, RuleSets::default(), &mut names);
        assert_eq!(alts.len(), 2, "numbers in the fields, the name in a guard");
        assert_eq!(alts[0].0.dst_ports, vec![(80, 80)]);
        assert!(alts[1].0.dst_ports.is_empty() && alts[1].1.dst.named == vec![0]);
        let mut icmp = Rule::any(Action::Deny, 1);
        icmp.protocol = Some(proto::ICMP);
        icmp.not_icmp = Some(IcmpMatch { icmp_type: Some(8), code: Some(0) });
        let alts = lower(&icmp, RuleSets::default(), &mut names);
        assert_eq!(alts.len(), 2, "another type, or type 8 with another code (not ICMP contradicts the protocol)");
        let mut v6 = Rule::any(Action::Allow, 2);
        v6.source.nets = vec![Cidr::parse("fd00::/8", true).unwrap()];
        assert!(lower(&v6, RuleSets::default(), &mut names).is_empty(), "IPv6 nets never match IPv4");
        r.protocol = None;
        assert!(r.check_lowerable().is_err(), "ports without a protocol are refused");
    }
}
