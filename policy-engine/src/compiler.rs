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
//! # Both families
//!
//! IPv4 connections are judged on a [`Key`], IPv6 ones on a [`Key6`], by the same rule sets
//! and the same [`Peer`] records: a pod's IPv4 and IPv6 addresses all find its one record
//! ([`PolicyTables::peer`], [`PolicyTables::peer6`]), so its set memberships and named ports
//! hold for both families. A rule lowers once per family: `ipVersion` rules only for theirs;
//! nets and notNets of the other family are left out, and a side whose nets are all of the
//! other family drops the rule from that family's classifier (see
//! [`reference`](crate::reference) for the semantics).
//!
//! The classifier's address fields are 32 bits wide, so IPv6 addresses enter compressed.
//! Each rule set collects the IPv6 prefixes of its rules (the universe U) and numbers them
//! depth-first, so that a prefix and the prefixes inside it own a contiguous run of points
//! (see `Compression6`); an address maps to the point of the longest prefix of U holding
//! it (0 for none), found by bisection over the elementary intervals U cuts the space into.
//! "address in prefix p" is then "point in p's run", which lowers to 32-bit prefixes the
//! classifier merges back into one exact range. Nothing else changes: ports, protocols,
//! ICMPv6 type and code, and the guards (which look peers up by their IPv6 addresses).
//!
//! U belongs to the rule set, not to the cluster: a policy with a new IPv6 prefix changes
//! the U of the rule sets that contain it, which a policy change rebuilds anyway; no other
//! rule set is touched. The IPv6 half is built at rule-set build time from the policies'
//! rules (it needs U), the IPv4 half from the lowering done when the policy was added. A
//! rule set whose rules have no nets and no `ipVersion` (most Kubernetes policies without
//! `ipBlock`) lowers the same for both families; it builds no second classifier and judges
//! IPv6 keys with the IPv4 one, addresses left at 0 (no rule cuts on them). The IPv4 path
//! (`judge`, `classify_batch`) is unchanged.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

    /// [`Guard::passes`] for an IPv6 key: the peers are those owning its IPv6 addresses.
    fn passes6(&self, tables: &PolicyTables, key: &Key6) -> bool {
        let peer = |side: &SideGuard, ip: Ipv6Addr| {
            if side.is_empty() {
                None
            } else {
                tables.peers6.get(&u128::from(ip)).map(Arc::as_ref)
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

/// The address family a rule is lowered for, and how its nets become classifier prefixes.
#[derive(Debug, Clone, Copy)]
enum Family<'a> {
    /// IPv4: the address itself; IPv6 nets are left out.
    V4,
    /// IPv6: the point ranges of the rule set's [`Compression6`]; IPv4 nets are left out.
    V6(&'a Compression6),
}

impl Family<'_> {
    fn version(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6(_) => 6,
        }
    }

    fn prefixes(self, nets: &[Cidr]) -> Vec<(u32, u8)> {
        match self {
            Family::V4 => v4_prefixes(nets),
            Family::V6(c) => nets.iter().flat_map(|n| c.prefixes(n)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// IPv6 address compression

/// The IPv6 prefixes of one rule set's rules (`nets`, `notNets`, ipBlock `cidr` and
/// `except`), mapped into the classifier's 32-bit address fields.
///
/// The prefixes form a forest by containment (two prefixes are nested or disjoint). Each
/// prefix gets one point, numbered 1, 2, … in depth-first order (by address, shorter
/// first), so the points of a prefix and of all prefixes inside it form the contiguous run
/// `first..=last`. An address maps to the point of the longest prefix containing it, 0 when
/// none does. Then an address is in prefix `p` exactly when its point is in `p`'s run: the
/// longest prefix holding the address is `p` or lies inside `p`. A run lowers to the
/// aligned 32-bit prefixes covering it, which the classifier merges back into one range
/// per field, so the rule stays one exact box.
///
/// The address → point map is the list of elementary intervals the prefixes cut the
/// address space into (at most `2 |U| + 1`), searched by bisection: a dozen compares for a
/// few thousand prefixes, none for a rule set without IPv6 nets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Compression6 {
    /// Prefix (network address, length) → its run of points.
    runs: HashMap<(u128, u8), (u32, u32)>,
    /// `(first address, point)` of each elementary interval, by address; the first starts
    /// at `::`.
    bounds: Vec<(u128, u32)>,
}

/// The last address of an IPv6 prefix.
fn last6(addr: u128, len: u8) -> u128 {
    addr | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

impl Compression6 {
    /// The compression of `prefixes` (network address, length 0..=128; repeats allowed).
    fn new(prefixes: impl IntoIterator<Item = (u128, u8)>) -> Compression6 {
        let mut sorted: Vec<(u128, u8)> = prefixes.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut c = Compression6 { runs: HashMap::with_capacity(sorted.len()), bounds: vec![(0, 0)] };
        // Open prefixes, outermost first: (prefix, last address, first point).
        let mut open: Vec<((u128, u8), u128, u32)> = Vec::new();
        let mut next: u32 = 1;
        for (addr, len) in sorted {
            while open.last().is_some_and(|o| o.1 < addr) {
                c.close(&mut open, next);
            }
            c.bound(addr, next);
            open.push(((addr, len), last6(addr, len), next));
            next = next.checked_add(1).expect("fewer than 2^32 IPv6 prefixes in one rule set");
        }
        while !open.is_empty() {
            c.close(&mut open, next);
        }
        c
    }

    /// Closes the innermost open prefix: its run ends before `next`, and the addresses
    /// after it are its parent's again.
    fn close(&mut self, open: &mut Vec<((u128, u8), u128, u32)>, next: u32) {
        let Some((p, last, first)) = open.pop() else { return };
        self.runs.insert(p, (first, next - 1));
        if let Some(after) = last.checked_add(1) {
            self.bound(after, open.last().map_or(0, |o| o.2));
        }
    }

    /// From `addr` on, addresses map to `point` (a later bound at the same address wins).
    fn bound(&mut self, addr: u128, point: u32) {
        match self.bounds.last_mut() {
            Some(b) if b.0 == addr => b.1 = point,
            _ => self.bounds.push((addr, point)),
        }
    }

    /// The point of an address: that of the longest prefix containing it, 0 for none.
    #[inline]
    fn point(&self, ip: Ipv6Addr) -> u32 {
        let a = u128::from(ip);
        let b = &self.bounds;
        // Bisection by a fixed number of halvings, each a select the compiler can make a
        // conditional move: the last interval starting at or before `a` (`b[0]` starts at
        // `::`, so there is one). Measured no slower than `partition_point`, within noise.
        let (mut base, mut n) = (0, b.len());
        while n > 1 {
            let half = n / 2;
            let mid = base + half;
            base = if b.get(mid).is_some_and(|m| m.0 <= a) { mid } else { base };
            n -= half;
        }
        b.get(base).map_or(0, |m| m.1)
    }

    /// The classifier key of an IPv6 key: addresses as points, the rest as is.
    #[inline]
    fn key(&self, k: &Key6) -> Key {
        Key { src: self.point(k.src), dst: self.point(k.dst), proto: k.proto, src_port: k.src_port, dst_port: k.dst_port }
    }

    /// The 32-bit prefixes covering the run of an IPv6 net (none for an IPv4 net or one
    /// the compression was not built with).
    fn prefixes(&self, net: &Cidr) -> Vec<(u32, u8)> {
        let IpAddr::V6(a) = net.addr else { return Vec::new() };
        let Some(&(first, last)) = self.runs.get(&(u128::from(a), net.prefix)) else { return Vec::new() };
        run_prefixes(first, last)
    }
}

/// The aligned prefixes whose union is `first..=last` (at most 62).
fn run_prefixes(first: u32, last: u32) -> Vec<(u32, u8)> {
    let (mut lo, hi) = (u64::from(first), u64::from(last));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest aligned block starting at `lo` that ends by `hi`.
        let mut bits = if lo == 0 { 32 } else { lo.trailing_zeros().min(32) };
        while lo + (1u64 << bits) - 1 > hi {
            bits -= 1;
        }
        out.push((lo as u32, (32 - bits) as u8));
        lo += 1u64 << bits;
    }
    out
}

/// The IPv6 prefixes of a rule's nets and notNets, both sides.
fn v6_prefixes(rule: &Rule) -> impl Iterator<Item = (u128, u8)> + '_ {
    [&rule.source, &rule.destination]
        .into_iter()
        .flat_map(|m| m.nets.iter().chain(&m.not_nets))
        .filter_map(|c| match c.addr {
            IpAddr::V6(a) => Some((u128::from(a), c.prefix)),
            IpAddr::V4(_) => None,
        })
}

/// Whether a rule lowers the same for both families: no `ipVersion` and no nets or
/// notNets of either family. A rule set of such rules judges IPv6 with its IPv4
/// classifier (no address field is cut on).
fn family_blind(rule: &Rule) -> bool {
    rule.ip_version.is_none()
        && [&rule.source, &rule.destination]
            .iter()
            .all(|m| m.nets.is_empty() && m.not_nets.is_empty())
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
fn port_alts(ports: &[PortSpec], names: &mut impl PortIds, src: bool) -> Vec<Alt> {
    if ports.is_empty() {
        return one(ClassRule::default());
    }
    let mut ranges = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            PortSpec::Range { lo, hi } => ranges.push((*lo, *hi)),
            PortSpec::Named(n) => named.push(names.port_id(n)),
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

/// One side's addresses, negated ports and sets; `None` when no address of the family can
/// match.
fn side_alt(m: &EntityMatch, sets: (Option<SetId>, Option<SetId>), names: &mut impl PortIds, src: bool, family: Family) -> Option<Alt> {
    let nets = family.prefixes(&m.nets);
    if !m.nets.is_empty() && nets.is_empty() {
        return None;
    }
    let not_nets = family.prefixes(&m.not_nets);
    let mut not_ports = Vec::new();
    let mut not_named = Vec::new();
    for p in &m.not_ports {
        match p {
            PortSpec::Range { lo, hi } => not_ports.push((*lo, *hi)),
            PortSpec::Named(n) => not_named.push(names.port_id(n)),
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
    lower_family(rule, sets, names, Family::V4)
}

/// A rule as [`ClassRule`] alternatives for one family's packets (empty when it can never
/// match one: its `ipVersion` is the other family's, or a side has only the other
/// family's nets).
fn lower_family(rule: &Rule, sets: RuleSets, names: &mut impl PortIds, family: Family) -> Vec<Alt> {
    if rule.ip_version.is_some_and(|v| v != family.version()) {
        return Vec::new();
    }
    let (Some(src), Some(dst)) = (
        side_alt(&rule.source, (sets.src_in, sets.src_not_in), names, true, family),
        side_alt(&rule.destination, (sets.dst_in, sets.dst_not_in), names, false, family),
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

    /// Interns every named port of a rule (so a later lowering can only look them up).
    fn intern_rule(&mut self, rule: &Rule) {
        for m in [&rule.source, &rule.destination] {
            for p in m.ports.iter().chain(&m.not_ports) {
                if let PortSpec::Named(n) = p {
                    self.intern(n);
                }
            }
        }
    }
}

/// Where the lowering gets the number of a port name.
trait PortIds {
    fn port_id(&mut self, name: &str) -> u32;
}

impl PortIds for PortNames {
    fn port_id(&mut self, name: &str) -> u32 {
        self.intern(name)
    }
}

/// Port names already interned (a rule set's IPv6 lowering, which reads the compiler
/// through `&self`): every rule's names were interned when its policy was added.
struct KnownPortNames<'a>(&'a PortNames);

impl PortIds for KnownPortNames<'_> {
    fn port_id(&mut self, name: &str) -> u32 {
        // Never missing (see `PortNames::intern_rule`); a number no peer's port has would
        // match no named port.
        self.0.0.get(name).copied().unwrap_or(u32::MAX)
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
/// these policies apply to is judged by, in both families.
#[derive(Debug)]
pub struct RuleSet {
    direction: Direction,
    policies: Vec<Arc<Policy>>,
    /// The IPv4 entries, then the IPv6 ones (when [`RuleSet::v6`] has its own).
    entries: Vec<Entry>,
    /// Number of IPv4 entries.
    entries4: usize,
    /// Over the IPv4 entries that decide (Allow, Deny, Pass).
    classifier: Classifier,
    /// Classifier rule → entry.
    decisive: Vec<u32>,
    /// Log entries, with their fields, in order.
    logs: Vec<(u32, ClassRule)>,
    /// For both families.
    guards: Vec<Guard>,
    /// The IPv6 rules; `None` when every rule lowers the same for both families (see
    /// [`family_blind`]): then IPv6 keys are judged by the IPv4 classifier, addresses 0.
    v6: Option<Box<RuleSet6>>,
}

/// The IPv6 part of a [`RuleSet`]: the rules lowered with the rule set's own address
/// compression.
#[derive(Debug)]
struct RuleSet6 {
    compression: Compression6,
    /// Over the IPv6 entries that decide.
    classifier: Classifier,
    /// Classifier rule → entry.
    decisive: Vec<u32>,
    /// Log entries, with their fields, in order.
    logs: Vec<(u32, ClassRule)>,
}

/// Lowered rules on their way into a [`RuleSet`].
#[derive(Debug, Default)]
struct RuleSetParts {
    entries: Vec<Entry>,
    class_rules: Vec<ClassRule>,
    decisive: Vec<u32>,
    logs: Vec<(u32, ClassRule)>,
    guards: Vec<Guard>,
    guard_ids: HashMap<Guard, u32>,
}

impl RuleSetParts {
    /// Appends the lowered rules of `policies` (`lowered[policy][rule]`): entries in order,
    /// Log rules apart, guards numbered once.
    fn add<L: AsRef<[Vec<Alt>]>>(&mut self, direction: Direction, policies: &[Arc<Policy>], lowered: &[L]) -> (Vec<ClassRule>, Vec<u32>, Vec<(u32, ClassRule)>) {
        for (pi, (policy, rules)) in policies.iter().zip(lowered).enumerate() {
            for (ri, (rule, alts)) in policy.rules(direction).iter().zip(rules.as_ref().iter()).enumerate() {
                for (fields, guard) in alts {
                    let e = self.entries.len() as u32;
                    self.entries.push(Entry { policy: pi as u32, rule: ri as u32, action: rule.action });
                    let mut fields = fields.clone();
                    if !guard.is_empty() {
                        let next = self.guards.len() as u32;
                        let guards = &mut self.guards;
                        let id = *self.guard_ids.entry(guard.clone()).or_insert_with(|| {
                            guards.push(guard.clone());
                            next
                        });
                        fields.guard = Some(id);
                    }
                    if rule.action == Action::Log {
                        self.logs.push((e, fields));
                    } else {
                        self.decisive.push(e);
                        self.class_rules.push(fields);
                    }
                }
            }
        }
        (std::mem::take(&mut self.class_rules), std::mem::take(&mut self.decisive), std::mem::take(&mut self.logs))
    }
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
    /// The rule set of `policies` from their IPv4 lowering and, unless every rule is
    /// [`family_blind`], their IPv6 lowering with its compression.
    fn build(
        direction: Direction,
        policies: Vec<Arc<Policy>>,
        lowered: &[&[Vec<Alt>]],
        lowered6: Option<(Compression6, Vec<Vec<Vec<Alt>>>)>,
    ) -> Result<RuleSet, BuildError> {
        let mut parts = RuleSetParts::default();
        let (class_rules, decisive, logs) = parts.add(direction, &policies, lowered);
        let entries4 = parts.entries.len();
        let classifier = Classifier::build(&class_rules)?;
        let v6 = match lowered6 {
            None => None,
            Some((compression, lowered6)) => {
                let (class_rules, decisive, logs) = parts.add(direction, &policies, &lowered6);
                Some(Box::new(RuleSet6 { compression, classifier: Classifier::build(&class_rules)?, decisive, logs }))
            }
        };
        Ok(RuleSet {
            direction,
            policies,
            entries: parts.entries,
            entries4,
            classifier,
            decisive,
            logs,
            guards: parts.guards,
            v6,
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

    /// Lowered IPv4 rules (classifier entries, Log rules included).
    pub fn len(&self) -> usize {
        self.entries4
    }

    /// Whether the rule set has no IPv4 rules (then every IPv4 connection ends at the end
    /// of the tier).
    pub fn is_empty(&self) -> bool {
        self.entries4 == 0
    }

    /// Lowered IPv6 rules (Log rules included); the IPv4 count when the IPv4 rules serve
    /// both families.
    pub fn len6(&self) -> usize {
        match &self.v6 {
            Some(_) => self.entries.len() - self.entries4,
            None => self.entries4,
        }
    }

    /// The classifier the decisive IPv4 rules are compiled into (for reports).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Whether IPv6 keys have a classifier of their own (some rule has nets or an
    /// `ipVersion`), for tests and reports.
    pub fn has_own_v6_rules(&self) -> bool {
        self.v6.is_some()
    }

    /// The IPv6 parts judged by: classifier, decisive entries, Log entries, and the key
    /// in the classifier's terms.
    #[inline]
    fn parts6(&self, key: &Key6) -> (&Classifier, &[u32], &[(u32, ClassRule)], Key) {
        match &self.v6 {
            Some(v6) => (&v6.classifier, &v6.decisive, &v6.logs, v6.compression.key(key)),
            None => {
                let k = Key { src: 0, dst: 0, proto: key.proto, src_port: key.src_port, dst_port: key.dst_port };
                (&self.classifier, &self.decisive, &self.logs, k)
            }
        }
    }

    fn log_matches6<'a>(&'a self, tables: &'a PolicyTables, key: &'a Key6, before: u32) -> impl Iterator<Item = u32> + 'a {
        let (_, _, logs, k) = self.parts6(key);
        self.logs_matching6(tables, key, logs, k, before)
    }

    /// [`RuleSet::log_matches6`] with the key's parts already found.
    fn logs_matching6<'a>(&'a self, tables: &'a PolicyTables, key: &'a Key6, logs: &'a [(u32, ClassRule)], k: Key, before: u32) -> impl Iterator<Item = u32> + 'a {
        logs.iter()
            .take_while(move |(e, _)| *e < before)
            .filter(move |(_, r)| r.fields_match(&k) && r.guard.is_none_or(|g| self.guards[g as usize].passes6(tables, key)))
            .map(|(e, _)| *e)
    }

    /// Judges the first packet of an IPv6 connection (`key`), with `tables` for the peers
    /// (found by their IPv6 addresses); the judgement means what [`RuleSet::judge`]'s does.
    #[inline]
    pub fn judge6(&self, tables: &PolicyTables, key: &Key6) -> Judgement {
        let (classifier, decisive, logs, k) = self.parts6(key);
        let hit = classifier
            .classify_with(&k, |g, _| self.guards[g as usize].passes6(tables, key))
            .map(|i| decisive[i as usize]);
        let (verdict, decided) = match hit {
            Some(e) => match self.entries[e as usize].action {
                Action::Allow => (Verdict::Allow, Decided::Rule(e)),
                Action::Pass => (Verdict::Allow, Decided::Pass(e)),
                _ => (Verdict::Deny, Decided::Rule(e)),
            },
            None => (Verdict::Deny, Decided::EndOfTier),
        };
        let logged = if logs.is_empty() {
            None
        } else {
            self.logs_matching6(tables, key, logs, k, hit.unwrap_or(u32::MAX)).next()
        };
        Judgement { verdict, decided, logged }
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

    /// [`Peer::judge`] for an IPv6 connection.
    #[inline]
    pub fn judge6(&self, tables: &PolicyTables, dir: Direction, key: &Key6) -> Option<Judgement> {
        self.rules(dir).map(|rs| rs.judge6(tables, key))
    }
}

/// The fields an IPv6 connection is judged on, as [`Key`] is for IPv4: for ICMPv6 the
/// type in `src_port` and the code in `dst_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// IP protocol number (the upper-layer next header).
    pub proto: u8,
    /// Source port (ICMPv6: type).
    pub src_port: u16,
    /// Destination port (ICMPv6: code).
    pub dst_port: u16,
}

/// One published version of the compiled policy: every endpoint address of the cluster
/// (IPv4 and IPv6) with its record. Immutable; cheap to clone (records are shared).
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    peers: HashMap<u32, Arc<Peer>, FxBuildHasher>,
    /// IPv6 address → the same record its pod's IPv4 addresses find.
    peers6: HashMap<u128, Arc<Peer>, FxBuildHasher>,
}

impl PolicyTables {
    /// The endpoint with address `ip`.
    #[inline]
    pub fn peer(&self, ip: Ipv4Addr) -> Option<&Peer> {
        self.peers.get(&u32::from(ip)).map(Arc::as_ref)
    }

    /// The endpoint with IPv6 address `ip`: the record its IPv4 addresses find too.
    #[inline]
    pub fn peer6(&self, ip: Ipv6Addr) -> Option<&Peer> {
        self.peers6.get(&u128::from(ip)).map(Arc::as_ref)
    }

    /// Endpoint IPv4 addresses known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Endpoint IPv6 addresses known.
    pub fn len6(&self) -> usize {
        self.peers6.len()
    }

    /// Whether no endpoint address (of either family) is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.peers6.is_empty()
    }

    /// [`PolicyTables::explain`] for an IPv6 connection; the result has the shape of
    /// [`reference::evaluate6`]'s.
    pub fn explain6(&self, key: &Key6) -> Decision {
        let direction = |ip: Ipv6Addr, dir: Direction| {
            let peer = self.peers6.get(&u128::from(ip))?;
            let endpoint = (peer.namespace.clone(), peer.name.clone());
            let Some(rs) = peer.rules(dir) else {
                return Some(not_isolated(dir, endpoint));
            };
            let j = rs.judge6(self, key);
            let (decided_by, before) = decided_by(rs, &j);
            Some(direction_decision(rs, dir, endpoint, j.verdict, decided_by, rs.log_matches6(self, key, before)))
        };
        decision(direction(key.src, Direction::Egress), direction(key.dst, Direction::Ingress))
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
        decision(direction(key.src, Direction::Egress), direction(key.dst, Direction::Ingress))
    }

    fn explain_direction(&self, peer: &Peer, dir: Direction, key: &Key) -> DirectionDecision {
        let endpoint = (peer.namespace.clone(), peer.name.clone());
        let Some(rs) = peer.rules(dir) else {
            return not_isolated(dir, endpoint);
        };
        let j = rs.judge(self, key);
        let (decided_by, before) = decided_by(rs, &j);
        direction_decision(rs, dir, endpoint, j.verdict, decided_by, rs.log_matches(self, key, before))
    }
}

/// A direction no policy applies to.
fn not_isolated(direction: Direction, endpoint: (String, String)) -> DirectionDecision {
    DirectionDecision {
        direction,
        endpoint,
        verdict: Verdict::Allow,
        decided_by: DecidedBy::NoPolicyApplies,
        logged: Vec::new(),
        applied: Vec::new(),
    }
}

/// What decided a judgement, and the entry Log rules must come before.
fn decided_by(rs: &RuleSet, j: &Judgement) -> (DecidedBy, u32) {
    match j.decided {
        Decided::Rule(e) => (DecidedBy::Rule(rs.rule_ref(e)), e),
        Decided::Pass(e) => (DecidedBy::PassToProfile(rs.rule_ref(e)), e),
        Decided::EndOfTier => (DecidedBy::EndOfTier, u32::MAX),
    }
}

fn direction_decision(
    rs: &RuleSet,
    direction: Direction,
    endpoint: (String, String),
    verdict: Verdict,
    decided_by: DecidedBy,
    logs: impl Iterator<Item = u32>,
) -> DirectionDecision {
    let mut logged: Vec<RuleRef> = Vec::new();
    for e in logs {
        let r = rs.rule_ref(e);
        // Alternatives of one model rule are consecutive: report the rule once.
        if logged.last() != Some(&r) {
            logged.push(r);
        }
    }
    DirectionDecision {
        direction,
        endpoint,
        verdict,
        decided_by,
        logged,
        applied: rs.policies.iter().map(|p| p.id()).collect(),
    }
}

/// Both directions' outcomes: allowed when every evaluated one allows.
fn decision(egress: Option<DirectionDecision>, ingress: Option<DirectionDecision>) -> Decision {
    let allowed = [&egress, &ingress]
        .iter()
        .all(|d| d.as_ref().is_none_or(|d| d.verdict == Verdict::Allow));
    Decision {
        verdict: if allowed { Verdict::Allow } else { Verdict::Deny },
        egress,
        ingress,
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

/// The key of a reference [`reference::Packet6`], laid out as [`key_of`] lays out IPv4.
pub fn key6_of(pkt: &reference::Packet6) -> Key6 {
    let (src_port, dst_port) = if proto::has_ports(pkt.protocol) {
        (pkt.src_port, pkt.dst_port)
    } else if ICMP_PROTOS.contains(&pkt.protocol) {
        (u16::from(pkt.icmp_type.unwrap_or(0)), u16::from(pkt.icmp_code.unwrap_or(0)))
    } else {
        (0, 0)
    };
    Key6 { src: pkt.src_ip, dst: pkt.dst_ip, proto: pkt.protocol, src_port, dst_port }
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
    /// Per direction (ingress, egress), per rule: its IPv4 alternatives.
    lowered: [Vec<Vec<Alt>>; 2],
    /// Per direction, per rule: its address sets (for the IPv6 lowering, done per rule
    /// set with the rule set's compression).
    rule_sets: [Vec<RuleSets>; 2],
    /// Per direction: whether every rule is [`family_blind`].
    family_blind: [bool; 2],
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
    peers6: HashMap<u128, Arc<Peer>, FxBuildHasher>,
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
        let lowered6 = if compiled.iter().all(|c| c.family_blind[*d]) {
            None
        } else {
            let rules = compiled.iter().flat_map(|c| c.policy.rules(dir)).filter(|r| r.ip_version != Some(4));
            let compression = Compression6::new(rules.flat_map(v6_prefixes));
            let mut names = KnownPortNames(&self.names);
            let lowered6 = compiled
                .iter()
                .map(|c| {
                    c.policy
                        .rules(dir)
                        .iter()
                        .zip(&c.rule_sets[*d])
                        .map(|(r, sets)| lower_family(r, *sets, &mut names, Family::V6(&compression)))
                        .collect()
                })
                .collect();
            Some((compression, lowered6))
        };
        RuleSet::build(dir, policies, &lowered, lowered6).map_err(|source| CompileError::Build {
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
                for ip in &st.ep.ips6 {
                    self.peers6.remove(&u128::from(*ip));
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
        for ip in &st.ep.ips6 {
            self.peers6.remove(&u128::from(*ip));
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
        let mut rule_sets: [Vec<RuleSets>; 2] = Default::default();
        for dir in DIRECTIONS {
            for r in policy.rules(dir) {
                self.names.intern_rule(r);
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
                rule_sets[dir_index(dir)].push(sets);
            }
        }
        let family_blind = DIRECTIONS.map(|d| policy.rules(d).iter().all(family_blind));
        let compiled = CompiledPolicy { policy: Arc::new(policy), lowered, rule_sets, family_blind, set_refs };
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
        for ip in &st.ep.ips6 {
            self.peers6.insert(u128::from(*ip), Arc::clone(&peer));
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
        let (peers, peers6) = (&self.peers, &self.peers6);
        Ok(Arc::clone(
            self.published
                .get_or_insert_with(|| Arc::new(PolicyTables { peers: peers.clone(), peers6: peers6.clone() })),
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

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Cidr {
        Cidr::parse(s, true).unwrap()
    }

    fn raw(c: &Cidr) -> (u128, u8) {
        let IpAddr::V6(a) = c.addr else { panic!("{c} is not IPv6") };
        (u128::from(a), c.prefix)
    }

    /// Whether the point of `ip` is inside the 32-bit prefixes `net` lowers to.
    fn in_compressed(c: &Compression6, n: &Cidr, ip: Ipv6Addr) -> bool {
        let p = c.point(ip);
        c.prefixes(n).iter().any(|&(a, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (p ^ a) & mask == 0
        })
    }

    #[test]
    fn compression_keeps_prefix_membership() {
        // Nested (::/0 ⊃ fd00::/8 ⊃ fd00:10::/64 ⊃ fd00:10::/120 ⊃ a /128), two starting at
        // one address, disjoint siblings, a repeat, and a /128 alone.
        let nets: Vec<Cidr> = [
            "::/0", "fd00::/8", "fd00:10::/64", "fd00:10::/120", "fd00:10::5/128", "fd00:10::/125",
            "fd00:20::/64", "2001:db8::/32", "fd00:10::/64", "2001:db8:ffff::1/128", "ff02::1/128",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        let c = Compression6::new(nets.iter().map(raw));
        assert_eq!(c.runs.len(), 10, "the repeat is one prefix");
        let addrs = [
            "::", "::1", "fd00::", "fd00:10::", "fd00:10::5", "fd00:10::4", "fd00:10::7", "fd00:10::8",
            "fd00:10::ff", "fd00:10::100", "fd00:10:0:1::", "fd00:20::1", "fd00:21::", "fdff:ffff::",
            "fe00::", "2001:db8::", "2001:db8:ffff::1", "2001:db8:ffff::2", "2001:db9::",
            "ff02::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:10.0.0.1",
        ];
        for a in addrs.map(v6) {
            for n in &nets {
                assert_eq!(in_compressed(&c, n, a), n.contains(a.into()), "{a} in {n}");
            }
        }
        // A prefix's run holds its own point and those of the prefixes inside it.
        let run = |s: &str| c.runs[&raw(&net(s))];
        assert_eq!(run("::/0"), (1, 10));
        assert!(run("fd00:10::/64").0 < run("fd00:10::5/128").0 && run("fd00:10::5/128").1 <= run("fd00:10::/64").1);
        let (a, b) = (run("fd00:20::/64"), run("2001:db8::/32"));
        assert!(a.1 < b.0 || b.1 < a.0, "disjoint prefixes, disjoint runs");
    }

    #[test]
    fn compression_edges() {
        // No prefix: every address is point 0, and no net lowers to anything.
        let none = Compression6::new([]);
        assert_eq!(none.point(v6("fd00::1")), 0);
        assert!(none.prefixes(&net("fd00::/8")).is_empty());
        assert!(none.prefixes(&net("10.0.0.0/8")).is_empty(), "IPv4 nets have no run");
        // ::/0 alone holds every address, the last one included.
        let all = Compression6::new([raw(&net("::/0"))]);
        for a in ["::", "8000::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
            assert_eq!(all.point(v6(a)), 1, "{a}");
        }
        // A /128 holds its one address; the neighbours are in no prefix.
        let host = Compression6::new([raw(&net("fd00::5/128"))]);
        assert_eq!(host.point(v6("fd00::5")), 1);
        assert_eq!(host.point(v6("fd00::4")), 0);
        assert_eq!(host.point(v6("fd00::6")), 0);
        // The last /128 of the space closes without a bound after it.
        let top = Compression6::new([raw(&net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"))]);
        assert_eq!(top.bounds, vec![(0, 0), (u128::MAX, 1)]);
    }

    #[test]
    fn compression_agrees_with_contains_on_random_prefixes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            // Prefixes around a few bases so that they nest, share starts and repeat.
            let bases = [0xfd00u128 << 112, 0x2001_0db8u128 << 96, 0];
            let mut nets = Vec::new();
            for _ in 0..1 + next() % 24 {
                let base = bases[(next() % 3) as usize] | u128::from(next() % 64) << (next() % 120);
                let len = [0u8, 8, 16, 32, 48, 64, 96, 112, 120, 124, 127, 128][(next() % 12) as usize];
                nets.push(Cidr::parse(&format!("{}/{len}", Ipv6Addr::from(base)), false).unwrap());
            }
            let c = Compression6::new(nets.iter().map(raw));
            for _ in 0..50 {
                let n = &nets[(next() % nets.len() as u64) as usize];
                let IpAddr::V6(a) = n.addr else { unreachable!() };
                // Near a prefix's edges, inside and out.
                let delta = u128::from(next() % 5);
                for a in [u128::from(a).wrapping_sub(delta), u128::from(a) + delta, last6(u128::from(a), n.prefix).wrapping_add(delta)] {
                    let a = Ipv6Addr::from(a);
                    for m in &nets {
                        assert_eq!(in_compressed(&c, m, a), m.contains(a.into()), "{a} in {m} of {nets:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn runs_lower_to_exact_prefix_covers() {
        for (first, last) in [(1, 1), (1, 10), (0, u32::MAX), (5, 12), (8, 15), (u32::MAX, u32::MAX), (3, 1 << 20)] {
            let ps = run_prefixes(first, last);
            let mut covered: Vec<(u64, u64)> = ps
                .iter()
                .map(|&(a, len)| (u64::from(a), u64::from(a) + (1u64 << (32 - u32::from(len))) - 1))
                .collect();
            covered.sort_unstable();
            assert_eq!(covered.first().map(|c| c.0), Some(u64::from(first)));
            assert_eq!(covered.last().map(|c| c.1), Some(u64::from(last)));
            assert!(covered.windows(2).all(|w| w[0].1 + 1 == w[1].0), "contiguous: {ps:?}");
            assert!(ps.len() <= 62);
        }
    }

    fn ip6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, last)
    }

    fn verdict6(c: &mut PolicyCompiler, pkt: &reference::Packet6) -> Verdict {
        c.tables().unwrap().explain6(&key6_of(pkt)).verdict
    }

    fn calico(text: &str) -> Policy {
        crate::model::parse_manifests(text, "p.yaml").unwrap().remove(0)
    }

    #[test]
    fn dual_stack_pods_share_one_record_and_sets() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(web_policy()).unwrap();
        c.upsert_endpoint(pod("w1", "web", 1).with_ip6(ip6(1))).unwrap();
        c.upsert_endpoint(pod("f1", "fe", 3).with_ip6(ip6(3))).unwrap();
        let mut v6_only = pod("f2", "fe", 0);
        v6_only.ips.clear();
        v6_only.ips6.push(ip6(4));
        c.upsert_endpoint(v6_only).unwrap();
        let t = c.tables().unwrap();
        assert!(std::ptr::eq(t.peer(ip(1)).unwrap(), t.peer6(ip6(1)).unwrap()), "one record for both families");
        assert_eq!((t.len(), t.len6()), (2, 3));
        let rs = t.peer6(ip6(1)).unwrap().rules(Direction::Ingress).unwrap();
        assert!(!rs.has_own_v6_rules(), "no nets, no ipVersion: the IPv4 classifier serves IPv6");
        assert_eq!(rs.len6(), rs.len());
        let from = |src: u16, port: u16| reference::Packet6::tcp(ip6(src), 40000, ip6(1), port);
        assert_eq!(verdict6(&mut c, &from(3, 8080)), Verdict::Allow, "a frontend, by its IPv6 address");
        assert_eq!(verdict6(&mut c, &from(4, 8080)), Verdict::Allow, "an IPv6-only frontend");
        assert_eq!(verdict6(&mut c, &from(3, 80)), Verdict::Deny, "not the named port");
        assert_eq!(verdict6(&mut c, &from(9, 8080)), Verdict::Deny, "no pod's address");
        let mapped = reference::Packet6::tcp(ip(3).to_ipv6_mapped(), 40000, ip6(1), 8080);
        assert_eq!(verdict6(&mut c, &mapped), Verdict::Deny, "the IPv4-mapped address is no pod's");
        // Losing the IPv6 address removes it from the tables.
        c.upsert_endpoint(pod("f1", "fe", 3)).unwrap();
        assert!(c.tables().unwrap().peer6(ip6(3)).is_none());
        assert_eq!(verdict6(&mut c, &from(3, 8080)), Verdict::Deny);
        c.remove_endpoint("shop", "f2");
        assert!(c.tables().unwrap().peer6(ip6(4)).is_none());
    }

    #[test]
    fn ip_version_and_families_of_nets() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(calico(concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n",
            "  selector: app == 'web'\n  ingress:\n",
            "  - {action: Allow, protocol: TCP, ipVersion: 4, destination: {ports: [4]}}\n",
            "  - {action: Allow, protocol: TCP, ipVersion: 6, destination: {ports: [6]}}\n",
            "  - {action: Allow, protocol: TCP, source: {nets: [10.0.0.0/8]}, destination: {ports: [44]}}\n",
            "  - {action: Allow, protocol: TCP, source: {nets: ['fd00::/8']}, destination: {ports: [66]}}\n",
            "  - {action: Allow, protocol: TCP, source: {notNets: [10.0.0.0/8]}, destination: {ports: [7]}}\n",
            "  - {action: Allow, protocol: TCP, destination: {ports: [46]}}\n",
        )))
        .unwrap();
        c.upsert_endpoint(pod("w1", "web", 1).with_ip6(ip6(1))).unwrap();
        let t = c.tables().unwrap();
        assert!(t.peer(ip(1)).unwrap().ingress.as_ref().unwrap().has_own_v6_rules());
        let v4 = |port: u16| t.explain(&key_of(&Packet::tcp(ip(9), 1, ip(1), port))).verdict;
        let v6 = |port: u16| t.explain6(&key6_of(&reference::Packet6::tcp(ip6(9), 1, ip6(1), port))).verdict;
        let allow = Verdict::Allow;
        let deny = Verdict::Deny;
        for (port, want4, want6) in [(4, allow, deny), (6, deny, allow), (44, allow, deny), (66, deny, allow), (7, deny, allow), (46, allow, allow)] {
            assert_eq!((v4(port), v6(port)), (want4, want6), "port {port}");
        }
    }

    #[test]
    fn ipv6_ip_block_except_and_icmpv6() {
        let mut c = PolicyCompiler::new();
        c.upsert_policy(calico(concat!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n",
            "  selector: app == 'web'\n  ingress:\n",
            "  - {action: Deny, protocol: ICMPv6, icmp: {type: 128, code: 0}, source: {nets: ['fd00:10::66/128']}}\n",
            "  - {action: Allow, protocol: ICMPv6, icmp: {type: 128}}\n",
            "  - {action: Allow, protocol: ICMPv6, notICMP: {type: 135}, source: {nets: ['2001:db8::/32']}}\n",
            "  - {action: Allow, protocol: TCP, source: {nets: ['fd00::/8'], notNets: ['fd00:10::/64', 'fd00:20::/120']}}\n",
        )))
        .unwrap();
        c.upsert_endpoint(pod("w1", "web", 1).with_ip6(ip6(1))).unwrap();
        let from = |src: &str| v6(src);
        let cases = [
            (reference::Packet6::icmp(from("fd00:10::5"), ip6(1), 128, 0), Verdict::Allow, "echo request"),
            (reference::Packet6::icmp(from("fd00:10::66"), ip6(1), 128, 0), Verdict::Deny, "echo request from the denied host"),
            (reference::Packet6::icmp(from("fd00:10::66"), ip6(1), 128, 1), Verdict::Allow, "another code"),
            (reference::Packet6::icmp(from("fd00:10::5"), ip6(1), 129, 0), Verdict::Deny, "echo reply: no rule"),
            (reference::Packet6::icmp(from("2001:db8::1"), ip6(1), 129, 0), Verdict::Allow, "notICMP 135"),
            (reference::Packet6::icmp(from("2001:db8::1"), ip6(1), 135, 0), Verdict::Deny, "neighbour solicitation"),
            (reference::Packet6::tcp(from("fd99::1"), 1, ip6(1), 80), Verdict::Allow, "in fd00::/8"),
            (reference::Packet6::tcp(from("fd00:10::5"), 1, ip6(1), 80), Verdict::Deny, "in the first except"),
            (reference::Packet6::tcp(from("fd00:20::ff"), 1, ip6(1), 80), Verdict::Deny, "in the second except"),
            (reference::Packet6::tcp(from("fd00:20::100"), 1, ip6(1), 80), Verdict::Allow, "just after it"),
            (reference::Packet6::tcp(from("fe00::1"), 1, ip6(1), 80), Verdict::Deny, "outside fd00::/8"),
        ];
        for (pkt, want, what) in cases {
            assert_eq!(verdict6(&mut c, &pkt), want, "{what}: {pkt:?}");
        }
        assert_eq!(
            c.tables().unwrap().explain(&key_of(&Packet::icmp(ip(2), ip(1), 128, 0))).verdict,
            Verdict::Deny,
            "ICMPv6 rules never match IPv4 ICMP"
        );
    }
}
