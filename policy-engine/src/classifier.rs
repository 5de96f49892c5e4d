//! The packet classifier that compiled policy runs on: a list of [`ClassRule`]s, first match
//! wins by index, compiled into a multi-way cutting tree (HiCuts, Gupta & McKeown, "Packet
//! Classification using Hierarchical Intelligent Cuttings", Hot Interconnects 1999, with
//! the rule-overlap pruning of HyperCuts, Singh et al., SIGCOMM 2003, §3.3).
//!
//! It reads rules that the policy compiler lowered to five fields and hands back the index
//! of the first matching rule; what that index means (allow, deny, next tier) is the
//! caller's business. The classifier is field-agnostic: it matches five unsigned numbers.
//! For ICMP the lowering puts the ICMP type in `src_port` and the code in `dst_port`, and
//! nothing here cares.
//!
//! # Why a cutting tree
//!
//! Lookup cost must not grow with the rule count, the build must take well under 200 ms
//! for 10k rules, and a pod's rule set is rebuilt whenever its policy changes. The usual
//! candidates, and what they cost on ClassBench-sized sets:
//!
//! - **Decomposition with equivalence classes (RFC, Gupta & McKeown, SIGCOMM 1999)**: the
//!   fastest lookup (a fixed dozen table reads), but its cross-product tables grow with the
//!   product of per-field class counts, and building them means intersecting rule sets for
//!   every pair of classes. On wildcard-heavy 10k firewall sets that is known to reach
//!   hundreds of MB and far more than 200 ms of build: too much per pod.
//! - **Bit vectors / aggregated bit vectors (Lakshman & Stiliadis 1998; Baboescu & Varghese
//!   2001)**: cheap to build, but a lookup ANDs `n / 64` words per field, so it grows
//!   linearly with the rule count (≈160 words × 5 fields at 10k rules).
//! - **TupleMerge (Daly et al., 2019)**: the best for updates, but a lookup probes one hash
//!   table per tuple, tens of probes on 10k ClassBench sets, and a pod's rules are rebuilt
//!   rather than updated in place.
//! - **Decision trees (HiCuts, HyperCuts)**: a lookup is a few indexed reads (one per tree
//!   level, here at most [`MAX_DEPTH`]) and then a scan of a leaf aimed at a handful of
//!   rules (`BINTH`), not of the whole set. Memory grows with rule replication,
//!   bounded by the space factor `SPFAC` at each node; build is `O(n log n)` per level.
//!
//! The tree wins for per-endpoint policy: sets are small to medium per endpoint (tens to a
//! few hundred rules build in microseconds into a tree of a few nodes) and reach 10k only
//! for the largest; lookup stays a handful of cache lines either way.
//!
//! # Structure
//!
//! Each node owns an aligned box (a power-of-two span in every field). An inner node cuts
//! one field into `2^k` equal parts, so the child is `children[base + (value >> shift) &
//! mask]`, with no subtraction and no search. The field and `k` are chosen per node: for
//! every field, the largest `k` whose total rule replication stays within `SPFAC × n`
//! (HiCuts' space measure), then the field whose largest child holds the fewest rules. A
//! node becomes a leaf at `BINTH` rules or fewer, or when no cut separates its rules. While
//! building, the rules of a box after the first rule that covers the whole box are dropped
//! (they can never be the first match there). Leaves hold copies of their rules' bounds so
//! a leaf scan reads consecutive memory; identical leaves are stored once.
//!
//! Rules wide in an address field (spanning more than 2^16 addresses) would be copied into
//! every cut of that field, which on firewall sets exhausts memory; as in EffiCuts (Vamanan
//! et al., SIGCOMM 2010, §3.1) rules are split into up to four groups by which address
//! fields are wide, one tree each. A lookup walks every tree whose lowest rule index can
//! still beat the best match found so far, so at most four. Each tree also has a budget of
//! `BUDGET_PER_RULE` child and leaf entries per rule; once spent, nodes become leaves, which
//! bounds memory and build time on any input at the price of longer leaf scans.
//!
//! [`Classifier::classify_batch`] walks [`LANES`] keys through a tree level by level so the
//! CPU overlaps their cache misses; it is the path the data plane should use.
//!
//! Measured on ClassBench (`cargo bench -p benches --bench policy`, 2-core shared machine):
//! builds of the 10k sets take 10–48 ms into 4.3–9.3 MiB; batch lookups run at 5–22 M/s
//! depending on the set, 95–490× the linear scan at 10k rules. The 20 M/s target holds
//! for fw1_10k and acl1_1k, not yet for acl1_10k (9 M/s) and ipc1_10k (5 M/s, and only
//! 95× the scan); HyperCuts' multi-field cuts and CutSplit's pre-partitioning are the next
//! steps.
//!
//! The tree cuts on each rule's bounding box; negated fields and rules with several
//! prefixes or ranges per field are over-approximated by it and checked exactly at the
//! leaf, so any rule the [`ClassRule`] type can express is classified exactly.
//!
//! Fields are 32-bit dimensions; an IPv6 address will enter as four of them (the cutting
//! code takes any number of dimensions of at most 32 bits).
//!
//! No key can make a lookup panic: every index stored in the tree was bounded when built.
//! The ClassBench and property tests in `tests/classbench.rs` check the tree against
//! [`linear_first_match`].

use std::collections::HashMap;

/// One rule; a field matches when the key's value is in any of its values (empty = any)
/// and in none of its `not_` values. A rule with a `guard` matches only when, in addition,
/// the caller's guard function passes for it (see [`Classifier::classify_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassRule {
    /// IPv4 source prefixes (host-order address, prefix length 0..=32).
    pub src: Vec<(u32, u8)>,
    /// IPv4 source prefixes the key must not be in.
    pub not_src: Vec<(u32, u8)>,
    /// IPv4 destination prefixes (host-order address, prefix length 0..=32).
    pub dst: Vec<(u32, u8)>,
    /// IPv4 destination prefixes the key must not be in.
    pub not_dst: Vec<(u32, u8)>,
    /// Inclusive source-port ranges (ICMP: type).
    pub src_ports: Vec<(u16, u16)>,
    /// Inclusive source-port ranges the key must not be in.
    pub not_src_ports: Vec<(u16, u16)>,
    /// Inclusive destination-port ranges (ICMP: code).
    pub dst_ports: Vec<(u16, u16)>,
    /// Inclusive destination-port ranges the key must not be in.
    pub not_dst_ports: Vec<(u16, u16)>,
    /// IP protocol numbers.
    pub protocols: Vec<u8>,
    /// IP protocol numbers the key must not have.
    pub not_protocols: Vec<u8>,
    /// A predicate the numeric fields cannot express (set membership of an address, a named
    /// port), checked by the caller after the fields matched; its number is the caller's.
    pub guard: Option<u32>,
}

impl ClassRule {
    /// Whether the numeric fields of the rule match `key` (the guard is not looked at).
    pub fn fields_match(&self, key: &Key) -> bool {
        fn prefix_hit(p: &[(u32, u8)], v: u32) -> bool {
            p.iter().any(|&(a, len)| {
                let len = u32::from(len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                (v ^ a) & mask == 0
            })
        }
        fn port_hit(p: &[(u16, u16)], v: u16) -> bool {
            p.iter().any(|&(a, b)| a <= v && v <= b)
        }
        let field = |pos_hit: bool, pos_empty: bool, neg_hit: bool| (pos_empty || pos_hit) && !neg_hit;
        field(prefix_hit(&self.src, key.src), self.src.is_empty(), prefix_hit(&self.not_src, key.src))
            && field(prefix_hit(&self.dst, key.dst), self.dst.is_empty(), prefix_hit(&self.not_dst, key.dst))
            && field(
                port_hit(&self.src_ports, key.src_port),
                self.src_ports.is_empty(),
                port_hit(&self.not_src_ports, key.src_port),
            )
            && field(
                port_hit(&self.dst_ports, key.dst_port),
                self.dst_ports.is_empty(),
                port_hit(&self.not_dst_ports, key.dst_port),
            )
            && field(
                self.protocols.contains(&key.proto),
                self.protocols.is_empty(),
                self.not_protocols.contains(&key.proto),
            )
    }
}

/// Guard number stored for a rule without a guard.
const NO_GUARD: u32 = u32::MAX;

/// The five fields a packet is classified on (addresses in host order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source IPv4 address.
    pub src: u32,
    /// Destination IPv4 address.
    pub dst: u32,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
}

/// Why a rule list cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A prefix length is over 32.
    #[error("rule {rule}: prefix {addr:#010x}/{len} has a length over 32 (accepted: 0..=32)")]
    PrefixLength {
        /// Index of the rule.
        rule: usize,
        /// The prefix address as given.
        addr: u32,
        /// The prefix length as given.
        len: u8,
    },
    /// A port range ends before it starts.
    #[error("rule {rule}: port range {lo}..={hi} ends before it starts (accepted: lo <= hi)")]
    PortRange {
        /// Index of the rule.
        rule: usize,
        /// Start of the range.
        lo: u16,
        /// End of the range.
        hi: u16,
    },
    /// The guard number reserved for "no guard".
    #[error("rule {rule}: guard number {} is reserved (accepted: 0..{})", u32::MAX, u32::MAX)]
    GuardNumber {
        /// Index of the rule.
        rule: usize,
    },
    /// More rules than a `u32` index can name.
    #[error("{count} rules: at most {} are accepted", u32::MAX)]
    TooManyRules {
        /// Number of rules given.
        count: usize,
    },
}

/// Number of dimensions: source, destination, source port, destination port, protocol.
const DIMS: usize = 5;
/// Width in bits of each dimension.
const DIM_BITS: [u8; DIMS] = [32, 32, 16, 16, 8];
/// A node with at most this many rules becomes a leaf.
const BINTH: usize = 4;
/// HiCuts space factor: a cut may replicate rules up to `SPFAC × n` child entries.
const SPFAC: usize = 8;
/// At most `2^MAX_CUT_BITS` children per node.
const MAX_CUT_BITS: u8 = 10;
/// Child and leaf entries a tree may spend per rule before it stops cutting: bounds
/// memory and build time on sets that defeat the cuts, at the price of longer leaves.
const BUDGET_PER_RULE: usize = 256;
/// Keys walked through a tree side by side in [`Classifier::classify_batch`].
pub const LANES: usize = 8;
/// Maximum tree depth (inner nodes on any path).
pub const MAX_DEPTH: usize = 24;

/// Inclusive range on one dimension.
type Range = (u32, u32);

/// One rule, lowered to per-dimension ranges.
#[derive(Debug, Clone)]
struct Compiled {
    /// Bounding range of the positive values per dimension.
    lo: [u32; DIMS],
    hi: [u32; DIMS],
    /// `true` when the bounding box is the rule (one range per field, no negation).
    exact: bool,
    /// Positive and negative ranges per dimension (empty positive = any); only read when
    /// `exact` is false.
    pos: [Vec<Range>; DIMS],
    neg: [Vec<Range>; DIMS],
    /// The rule's guard, or [`NO_GUARD`].
    guard: u32,
}

impl Compiled {
    fn matches(&self, v: &[u32; DIMS]) -> bool {
        (0..DIMS).all(|d| {
            (self.pos[d].is_empty() || self.pos[d].iter().any(|&(a, b)| a <= v[d] && v[d] <= b))
                && !self.neg[d].iter().any(|&(a, b)| a <= v[d] && v[d] <= b)
        })
    }
}

/// A leaf's copy of one rule: its bounds, and whether they are the whole rule.
#[derive(Debug, Clone, Copy)]
struct LeafEntry {
    lo: [u32; DIMS],
    hi: [u32; DIMS],
    rule: u32,
    exact: bool,
    guard: u32,
}

#[derive(Debug, Clone, Copy)]
enum Node {
    /// Child `children[base + ((v[dim] >> shift) & mask)]`.
    Cut {
        dim: u8,
        shift: u8,
        mask: u32,
        base: u32,
    },
    /// Scan `leaves[start..start + len]`.
    Leaf { start: u32, len: u32 },
}

/// One cutting tree over a subset of the rules.
#[derive(Debug, Clone)]
struct Tree {
    /// Lowest rule index in the tree: skip it when a better match is already known.
    first_rule: u32,
    nodes: Vec<Node>,
    children: Vec<u32>,
    leaves: Vec<LeafEntry>,
}

/// A compiled rule list; see the module doc.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Compiled>,
    trees: Vec<Tree>,
}

fn key_values(key: &Key) -> [u32; DIMS] {
    [
        key.src,
        key.dst,
        u32::from(key.src_port),
        u32::from(key.dst_port),
        u32::from(key.proto),
    ]
}

fn prefix_range(rule: usize, (addr, len): (u32, u8)) -> Result<Range, BuildError> {
    if len > 32 {
        return Err(BuildError::PrefixLength { rule, addr, len });
    }
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    Ok((addr & !host, addr | host))
}

fn port_range(rule: usize, (lo, hi): (u16, u16)) -> Result<Range, BuildError> {
    if lo > hi {
        return Err(BuildError::PortRange { rule, lo, hi });
    }
    Ok((u32::from(lo), u32::from(hi)))
}

/// Sorts and merges overlapping or adjacent ranges.
fn normalise(mut r: Vec<Range>) -> Vec<Range> {
    r.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn compile_rule(i: usize, r: &ClassRule) -> Result<Compiled, BuildError> {
    let prefixes = |p: &[(u32, u8)]| -> Result<Vec<Range>, BuildError> {
        p.iter().map(|&x| prefix_range(i, x)).collect()
    };
    let ports = |p: &[(u16, u16)]| -> Result<Vec<Range>, BuildError> {
        p.iter().map(|&x| port_range(i, x)).collect()
    };
    let protos = |p: &[u8]| {
        p.iter()
            .map(|&x| (u32::from(x), u32::from(x)))
            .collect::<Vec<_>>()
    };
    let pos = [
        prefixes(&r.src)?,
        prefixes(&r.dst)?,
        ports(&r.src_ports)?,
        ports(&r.dst_ports)?,
        protos(&r.protocols),
    ]
    .map(normalise);
    let neg = [
        prefixes(&r.not_src)?,
        prefixes(&r.not_dst)?,
        ports(&r.not_src_ports)?,
        ports(&r.not_dst_ports)?,
        protos(&r.not_protocols),
    ]
    .map(normalise);
    let mut lo = [0; DIMS];
    let mut hi = [0; DIMS];
    let mut exact = true;
    for d in 0..DIMS {
        let full = dim_max(d);
        match (pos[d].first(), pos[d].last()) {
            (Some(first), Some(last)) => (lo[d], hi[d]) = (first.0, last.1),
            _ => (lo[d], hi[d]) = (0, full),
        }
        exact &= pos[d].len() <= 1 && neg[d].is_empty();
    }
    if r.guard == Some(NO_GUARD) {
        return Err(BuildError::GuardNumber { rule: i });
    }
    Ok(Compiled {
        lo,
        hi,
        exact,
        pos,
        neg,
        guard: r.guard.unwrap_or(NO_GUARD),
    })
}

fn dim_max(d: usize) -> u32 {
    (((1u64) << DIM_BITS[d]) - 1) as u32
}

/// The obvious reference: the index of the first rule that matches `key` (guards pass).
pub fn linear_first_match(rules: &[ClassRule], key: &Key) -> Option<u32> {
    linear_first_match_with(rules, key, |_, _| true)
}

/// The obvious reference with guards: the first rule whose fields match `key` and whose
/// guard, if it has one, `guard(number, key)` passes.
pub fn linear_first_match_with(rules: &[ClassRule], key: &Key, guard: impl Fn(u32, &Key) -> bool) -> Option<u32> {
    rules
        .iter()
        .position(|r| r.fields_match(key) && r.guard.is_none_or(|g| guard(g, key)))
        .and_then(|i| u32::try_from(i).ok())
}

/// An aligned box: `lo[d]` with `bits[d]` free low bits in each dimension.
#[derive(Debug, Clone, Copy)]
struct Region {
    lo: [u32; DIMS],
    bits: [u8; DIMS],
}

impl Region {
    fn hi(&self, d: usize) -> u32 {
        (u64::from(self.lo[d]) + ((1u64 << self.bits[d]) - 1)) as u32
    }
}

struct Builder<'a> {
    rules: &'a [Compiled],
    nodes: Vec<Node>,
    children: Vec<u32>,
    leaves: Vec<LeafEntry>,
    leaf_ids: HashMap<Vec<u32>, u32>,
    /// Child and leaf entries the tree may still spend; once spent, nodes become leaves.
    budget: usize,
}

/// A candidate cut: dimension, number of cut bits, largest child, total replication.
#[derive(Debug, Clone, Copy)]
struct Cut {
    dim: usize,
    k: u8,
    max_child: usize,
    sum: usize,
}

impl Builder<'_> {
    /// Child index range `[first, last]` of rule `r` when dimension `d` of `reg` is cut
    /// `shift` bits from the bottom.
    fn span(&self, r: u32, reg: &Region, d: usize, shift: u8) -> (usize, usize) {
        let c = &self.rules[r as usize];
        let base = u64::from(reg.lo[d]);
        let a = u64::from(c.lo[d].max(reg.lo[d])) - base;
        let b = u64::from(c.hi[d].min(reg.hi(d))) - base;
        ((a >> shift) as usize, (b >> shift) as usize)
    }

    fn best_cut(&self, rules: &[u32], reg: &Region) -> Option<Cut> {
        let n = rules.len();
        let mut best: Option<Cut> = None;
        for d in 0..DIMS {
            if reg.bits[d] == 0 {
                continue;
            }
            let kmax = reg.bits[d].min(MAX_CUT_BITS);
            let mut k = 1u8;
            while k < kmax {
                let next = k + 1;
                let shift = reg.bits[d] - next;
                let sum: usize = rules
                    .iter()
                    .map(|&r| {
                        let (a, b) = self.span(r, reg, d, shift);
                        b - a + 1
                    })
                    .sum();
                if sum + (1usize << next) > SPFAC * n {
                    break;
                }
                k = next;
            }
            let shift = reg.bits[d] - k;
            let np = 1usize << k;
            let mut diff = vec![0isize; np + 1];
            let mut sum = 0;
            for &r in rules {
                let (a, b) = self.span(r, reg, d, shift);
                diff[a] += 1;
                diff[b + 1] -= 1;
                sum += b - a + 1;
            }
            let mut run = 0isize;
            let mut max_child = 0usize;
            for x in &diff[..np] {
                run += x;
                max_child = max_child.max(run as usize);
            }
            let cand = Cut {
                dim: d,
                k,
                max_child,
                sum,
            };
            if best.is_none_or(|b| (cand.max_child, cand.sum) < (b.max_child, b.sum)) {
                best = Some(cand);
            }
        }
        best.filter(|c| c.max_child < n)
    }

    /// Drops rules that cannot be the first match anywhere in `reg`: those after the first
    /// exact, unguarded rule covering all of it.
    fn prune(&self, rules: &mut Vec<u32>, reg: &Region) {
        if let Some(p) = rules.iter().position(|&r| {
            let c = &self.rules[r as usize];
            c.exact && c.guard == NO_GUARD && (0..DIMS).all(|d| c.lo[d] <= reg.lo[d] && reg.hi(d) <= c.hi[d])
        }) {
            rules.truncate(p + 1);
        }
    }

    fn leaf(&mut self, rules: Vec<u32>) -> u32 {
        if let Some(&id) = self.leaf_ids.get(&rules) {
            return id;
        }
        let start = self.leaves.len() as u32;
        for &r in &rules {
            let c = &self.rules[r as usize];
            self.leaves.push(LeafEntry {
                lo: c.lo,
                hi: c.hi,
                rule: r,
                exact: c.exact,
                guard: c.guard,
            });
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node::Leaf {
            start,
            len: rules.len() as u32,
        });
        self.leaf_ids.insert(rules, id);
        id
    }

    fn build(&mut self, mut rules: Vec<u32>, reg: Region, depth: usize) -> u32 {
        self.prune(&mut rules, &reg);
        if rules.len() <= BINTH || depth >= MAX_DEPTH || self.budget == 0 {
            return self.leaf(rules);
        }
        let Some(cut) = self.best_cut(&rules, &reg) else {
            return self.leaf(rules);
        };
        let d = cut.dim;
        let shift = reg.bits[d] - cut.k;
        let np = 1usize << cut.k;
        self.budget = self.budget.saturating_sub(cut.sum + np);
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); np];
        for &r in &rules {
            let (a, b) = self.span(r, &reg, d, shift);
            for list in &mut lists[a..=b] {
                list.push(r);
            }
        }
        drop(rules);
        let id = self.nodes.len() as u32;
        let base = self.children.len() as u32;
        self.nodes.push(Node::Cut {
            dim: d as u8,
            shift,
            mask: (np - 1) as u32,
            base,
        });
        self.children.resize(self.children.len() + np, 0);
        for (i, list) in lists.into_iter().enumerate() {
            let mut child = reg;
            child.lo[d] = reg.lo[d] + ((i as u32) << shift);
            child.bits[d] = shift;
            let cid = self.build(list, child, depth + 1);
            self.children[base as usize + i] = cid;
        }
        id
    }
}

/// Builds the tree of the rules `group` (ascending indices, not empty).
fn build_tree(rules: &[Compiled], group: Vec<u32>) -> Tree {
    let first_rule = group[0];
    let mut b = Builder {
        rules,
        nodes: Vec::new(),
        children: Vec::new(),
        leaves: Vec::new(),
        leaf_ids: HashMap::new(),
        budget: BUDGET_PER_RULE * group.len() + 4096,
    };
    let root = Region {
        lo: [0; DIMS],
        bits: DIM_BITS,
    };
    // Node 0 is the root, where lookups start.
    b.nodes.push(Node::Leaf { start: 0, len: 0 });
    let top = b.build(group, root, 0);
    b.nodes[0] = b.nodes[top as usize];
    Tree {
        first_rule,
        nodes: b.nodes,
        children: b.children,
        leaves: b.leaves,
    }
}

impl Classifier {
    /// Compiles `rules`; the first matching rule wins, by index.
    pub fn build(rules: &[ClassRule]) -> Result<Classifier, BuildError> {
        if u32::try_from(rules.len()).is_err() {
            return Err(BuildError::TooManyRules { count: rules.len() });
        }
        let compiled: Vec<Compiled> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<_, _>>()?;
        // EffiCuts-style separation (Vamanan et al., SIGCOMM 2010, §3.1): rules wide in an
        // address field replicate across every cut of it, so rules are grouped by which
        // address fields are wide and each group gets its own tree.
        let wide = |c: &Compiled, d: usize| u64::from(c.hi[d] - c.lo[d]) >= 1 << (DIM_BITS[d] / 2);
        let mut groups: [Vec<u32>; 4] = Default::default();
        for (i, c) in compiled.iter().enumerate() {
            groups[usize::from(wide(c, 0)) | usize::from(wide(c, 1)) << 1].push(i as u32);
        }
        let trees = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|g| build_tree(&compiled, g))
            .collect();
        Ok(Classifier {
            rules: compiled,
            trees,
        })
    }

    /// The index of the first rule that matches `key`, for rule lists without guards (a
    /// guard counts as passing).
    #[inline]
    pub fn classify(&self, key: &Key) -> Option<u32> {
        self.classify_with(key, |_, _| true)
    }

    /// The index of the first rule whose fields match `key` and whose guard, if it has one,
    /// `guard(number, key)` passes. Guards run only for rules whose fields matched, in rule
    /// order within a leaf, so a guard is called at most a leaf's length times per tree.
    #[inline]
    pub fn classify_with(&self, key: &Key, guard: impl Fn(u32, &Key) -> bool) -> Option<u32> {
        let v = key_values(key);
        let mut best: Option<u32> = None;
        for t in &self.trees {
            if best.is_some_and(|b| b < t.first_rule) {
                continue;
            }
            if let Some(r) = self.lookup(t, &v, key, &guard) {
                best = Some(best.map_or(r, |b| b.min(r)));
            }
        }
        best
    }

    #[inline]
    fn lookup(&self, t: &Tree, v: &[u32; DIMS], key: &Key, guard: &impl Fn(u32, &Key) -> bool) -> Option<u32> {
        let mut node = t.nodes[0];
        loop {
            match node {
                Node::Cut {
                    dim,
                    shift,
                    mask,
                    base,
                } => {
                    let i = base + ((v[usize::from(dim)] >> shift) & mask);
                    node = t.nodes[t.children[i as usize] as usize];
                }
                leaf @ Node::Leaf { .. } => return self.scan(t, leaf, v, key, guard),
            }
        }
    }

    /// First matching rule of a leaf (`None` for an inner node, which callers never pass).
    #[inline]
    fn scan(&self, t: &Tree, leaf: Node, v: &[u32; DIMS], key: &Key, guard: &impl Fn(u32, &Key) -> bool) -> Option<u32> {
        let Node::Leaf { start, len } = leaf else {
            return None;
        };
        t.leaves[start as usize..(start + len) as usize]
            .iter()
            .find(|e| {
                (0..DIMS).all(|d| e.lo[d] <= v[d] && v[d] <= e.hi[d])
                    && (e.exact || self.rules[e.rule as usize].matches(v))
                    && (e.guard == NO_GUARD || guard(e.guard, key))
            })
            .map(|e| e.rule)
    }

    /// Classifies `keys[i]` into `out[i]`, for as many as both slices hold (guards pass).
    pub fn classify_batch(&self, keys: &[Key], out: &mut [Option<u32>]) {
        self.classify_batch_with(keys, out, |_, _| true);
    }

    /// [`Classifier::classify_with`] for a batch: `keys[i]` into `out[i]`, for as many as
    /// both slices hold.
    ///
    /// Keys go through each tree [`LANES`] at a time, one level per step for all of them
    /// (VPP's vector of packets per stage): their node reads are independent, so the CPU
    /// overlaps the cache misses of a tree larger than the cache.
    pub fn classify_batch_with(&self, keys: &[Key], out: &mut [Option<u32>], guard: impl Fn(u32, &Key) -> bool) {
        let n = keys.len().min(out.len());
        for (keys, out) in keys[..n].chunks(LANES).zip(out[..n].chunks_mut(LANES)) {
            let mut v = [[0u32; DIMS]; LANES];
            for (v, k) in v.iter_mut().zip(keys) {
                *v = key_values(k);
            }
            let lanes = keys.len();
            let mut best = [None::<u32>; LANES];
            for t in &self.trees {
                let mut node = [t.nodes[0]; LANES];
                loop {
                    let mut inner = false;
                    for j in 0..lanes {
                        if let Node::Cut {
                            dim,
                            shift,
                            mask,
                            base,
                        } = node[j]
                        {
                            let i = base + ((v[j][usize::from(dim)] >> shift) & mask);
                            node[j] = t.nodes[t.children[i as usize] as usize];
                            inner = true;
                        }
                    }
                    if !inner {
                        break;
                    }
                }
                for j in 0..lanes {
                    if best[j].is_some_and(|b| b < t.first_rule) {
                        continue;
                    }
                    if let Some(r) = self.scan(t, node[j], &v[j], &keys[j], &guard) {
                        best[j] = Some(best[j].map_or(r, |b| b.min(r)));
                    }
                }
            }
            out.copy_from_slice(&best[..lanes]);
        }
    }

    /// Bytes held by the compiled structure (tree, leaves and rule copies).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let rules: usize = self
            .rules
            .iter()
            .map(|r| {
                size_of::<Compiled>()
                    + r.pos
                        .iter()
                        .chain(&r.neg)
                        .map(|v| v.capacity() * size_of::<Range>())
                        .sum::<usize>()
            })
            .sum();
        let trees: usize = self
            .trees
            .iter()
            .map(|t| {
                size_of::<Tree>()
                    + t.nodes.capacity() * size_of::<Node>()
                    + t.children.capacity() * size_of::<u32>()
                    + t.leaves.capacity() * size_of::<LeafEntry>()
            })
            .sum();
        size_of::<Self>() + rules + trees
    }

    /// Number of tree nodes (inner and leaf) over all trees, for reports.
    pub fn node_count(&self) -> usize {
        self.trees.iter().map(|t| t.nodes.len()).sum()
    }

    /// Number of trees (rule groups); a lookup walks at most this many.
    pub fn tree_count(&self) -> usize {
        self.trees.len()
    }
}
