//! The packet classifier that compiled policy runs on: a list of [`ClassRule`]s, first match
//! wins by index, compiled into a few multi-way cutting trees (HiCuts, Gupta & McKeown,
//! "Packet Classification using Hierarchical Intelligent Cuttings", Hot Interconnects 1999;
//! HyperCuts, Singh et al., SIGCOMM 2003; EffiCuts, Vamanan et al., SIGCOMM 2010).
//!
//! It reads rules that the policy compiler lowered to five fields and hands back the index
//! of the first matching rule; what that index means (allow, deny, next tier) is the
//! caller's business. The classifier is field-agnostic: it matches five unsigned numbers.
//! For ICMP the lowering puts the ICMP type in `src_port` and the code in `dst_port`, and
//! nothing here cares.
//!
//! # Why cutting trees
//!
//! Lookup cost must not grow with the rule count, the build must take well under 200 ms
//! for 10k rules, and a pod's rule set is rebuilt whenever its policy changes. The usual
//! candidates, and what they cost on ClassBench-sized sets:
//!
//! - **Decomposition with equivalence classes (RFC, Gupta & McKeown, SIGCOMM 1999)**: the
//!   fastest lookup (a fixed dozen table reads), but its cross-product tables grow with the
//!   product of per-field class counts; on wildcard-heavy 10k firewall sets that is known to
//!   reach hundreds of MB and far more than 200 ms of build: too much per pod.
//! - **Bit vectors (Lakshman & Stiliadis 1998; Baboescu & Varghese 2001)**: cheap to build,
//!   but a lookup ANDs `n / 64` words per field, linear in the rule count.
//! - **TupleMerge (Daly et al., 2019)**: the best for updates, but a lookup probes one hash
//!   table per tuple, tens on 10k ClassBench sets; a pod's rules are rebuilt, not updated.
//! - **Decision trees**: a lookup is a few indexed reads (one per level) and a scan of a
//!   leaf of a handful of rules. Memory grows with rule replication, bounded per node.
//!
//! # Structure, and what each part is for
//!
//! Measured with `cargo bench -p benches --bench policy` on the 2-core shared machine
//! (figures at the end). A lookup's cost is, in order: the levels it walks (each a
//! dependent read, mostly an L1 miss at 4,096 keys), mispredicted branches (the end of each
//! walk and of each leaf scan), and instructions. Each choice below cut one of these.
//!
//! - **Groups, one tree each** (EffiCuts §3.1): a rule spanning at least 2^20 addresses
//!   (a prefix shorter than /13) in an address field would be copied into every cut of that
//!   field, so rules are grouped by which address fields are wide: up to four trees. A
//!   group wide in one field holding under 5 % of the rules joins the group wide in both
//!   (EffiCuts' tree merging): on acl1_10k that saves two walks for the quarter of the
//!   keys that only wide rules match.
//! - **Trees by lowest rule, and a per-rule stop flag**: trees are walked in the order of
//!   their lowest rule index, and skipped once the best match so far is lower. Besides, a
//!   rule is marked *last* when no lower-index rule of a later tree overlaps its box:
//!   finding it ends the lookup. On ipc1_10k the later trees were walked for 51 %, 50 %
//!   and 37 % of the keys before; with the flag (and the /13 threshold), 28 %, 27 % and 4 %.
//! - **Region compaction** (HyperCuts): before cutting, a node's box shrinks to the
//!   smallest aligned box holding its rules' parts of it, so cut bits go where the rules
//!   differ. The single largest gain: the leaves acl1_10k's keys reach went from 16 to 2
//!   rules on average. Keys outside the compacted box reach some child, but they match
//!   none of the node's rules (pruned ones included), and leaves test full boxes, so they
//!   find nothing there, as they should.
//! - **Two-dimension cuts near the root** (HyperCuts' multi-field cuts): each node cuts
//!   `2^k` equal parts of one field, or, in the top three levels, `2^k0 × 2^k1` of two
//!   fields, chosen for the smallest largest child within the space limits (children ≤
//!   32·n, replicated entries ≤ 32·n, HiCuts' space factor). Two-dimension cuts took
//!   ipc1_10k's first tree from 4.7 to 3.6 levels per key; deeper down they did not pay
//!   for their costlier decode.
//! - **One word per node**: a child slot holds the child itself, a 64-bit word with the
//!   cut's field, shift, mask and first child (or a leaf's entries), so a level is one
//!   read and about a dozen instructions, not a node read after an index read.
//! - **Shared subtrees**: where every rule of a node covers its box in a field (a cluster
//!   of protocol-any rules under each protocol cut, say), the subtree does not depend on
//!   that field, so it is built once and reused by every node with the same rules and box
//!   in the other fields (within the depth bound). When introduced, on ipc1_10k, it took
//!   the words from 479k to 110k and halved the build.
//! - **Pruning**: rules after the first exact, unguarded rule covering a node's box are
//!   dropped, and in nodes of up to 64 rules so is every rule an earlier exact, unguarded
//!   rule covers within the box (without it acl1_1k's lookups take 60 % more
//!   instructions). A guarded rule never hides another.
//! - **Leaves**: at most 3 rules, unless no cut separates them; a leaf holds 32-byte
//!   copies of its rules' boxes (low end and width per field, two per cache line), tested
//!   without branches; the scan stops at the first entry whose index is not below the
//!   best match of the earlier trees. Identical leaves are stored once. Negated fields and
//!   rules with several prefixes or ranges per field are over-approximated by their box
//!   and confirmed on the rule, as are guards, which run only for rules whose fields
//!   matched.
//!
//! [`Classifier::classify_batch`] looks keys up one after the other: walking [`LANES`]
//! keys side by side (in lockstep, with branch-free steps, or tree by tree) measured
//! slower than letting the CPU overlap consecutive lookups on its own.
//!
//! Each tree also has a budget of child and leaf entries per rule; once spent, nodes
//! become leaves, which bounds memory and build time on any input at the price of longer
//! leaves. Fields are 32-bit dimensions; IPv6 addresses enter compressed to 32-bit points
//! by the policy compiler (one point per IPv6 prefix of the rule set, see
//! [`crate::compiler`]), so the same trees judge both families.
//!
//! No key can make a lookup panic or loop: every index is bounds-checked (`get`), a path
//! has at most [`MAX_DEPTH`] cuts (a shared subtree is not reused where it would exceed
//! it) and the walk is bounded by it. The ClassBench and property tests in
//! `tests/classbench.rs` and the tests below check the trees against
//! [`linear_first_match`].
//!
//! # Figures
//!
//! One run, 2026-12-01, `cargo bench -p benches --bench policy` (criterion medians; the
//! 2-core machine is shared, so take ±20 %): batches of 4,096 trace keys (acl1_10k has no
//! trace: keys made from its rules, a quarter random), `classify_batch` and one `classify`
//! call per key, beside the linear scan on the first 256 keys. "Before" is the previous
//! classifier (one-dimension cuts without compaction, two reads per level, 52-byte leaf
//! entries, up to four trees always walked in group order), measured the same day.
//!
//! | set | batch | single | linear | ratio | build | memory | trees | before: batch, ratio, build, memory |
//! |---|---|---|---|---|---|---|---|---|
//! | acl1_1k | 47.2 M/s | 44.5 M/s | 1.05 M/s | 45× | 11.9 ms | 1,147 KiB | 2 | 21.9 M/s, 30×, 10.8 ms, 773 KiB |
//! | fw1_1k | 42.1 M/s | 40.2 M/s | 820 K/s | 51× | 4.4 ms | 658 KiB | 4 | 15.5 M/s, 20×, 3.3 ms, 438 KiB |
//! | ipc1_1k | 41.7 M/s | 41.3 M/s | 1.07 M/s | 39× | 8.3 ms | 976 KiB | 4 | 11.6 M/s, 13×, 6.9 ms, 679 KiB |
//! | acl1_10k | 41.4 M/s | 29.3 M/s | 44.4 K/s | 932× | 88 ms | 7,591 KiB | 2 | 10.3 M/s, 255×, 43 ms, 10,075 KiB |
//! | fw1_10k | 64.1 M/s | 80.7 M/s | 71.4 K/s | 897× | 15 ms | 4,105 KiB | 4 | 36.8 M/s, 469×, 11 ms, 4,455 KiB |
//! | ipc1_10k | 31.5 M/s | 21.0 M/s | 75.4 K/s | 418× | 59 ms | 7,299 KiB | 4 | 5.8 M/s, 69×, 83 ms, 7,478 KiB |
//!
//! The targets (at least 20 M/s and 100× the scan per core on the 10k sets, builds under
//! 200 ms, memory in the tens of MB at most, 1k sets no slower) hold. The builds of the
//! 1k sets take a millisecond or so more than before (the two-dimension search). Single
//! `classify` calls inline into the caller's loop and vary with its code layout by ±30 %
//! from run to run (acl1_10k and ipc1_10k measured 30 and 29 M/s in a quieter run of the
//! same build); `classify_batch` is one out-of-line loop and steadier.

use std::collections::HashMap;

use crate::fxhash::FxBuildHasher;


/// One rule; a field matches when the key's value is in any of its values (empty = any)
/// and in none of its `not_` values. A rule with a `guard` matches only when, in addition,
/// the caller's guard function passes for it (see [`Classifier::classify_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassRule {
    /// Source prefixes (host-order IPv4 address or compressed IPv6 point, length 0..=32).
    pub src: Vec<(u32, u8)>,
    /// Source prefixes the key must not be in.
    pub not_src: Vec<(u32, u8)>,
    /// Destination prefixes (as `src`).
    pub dst: Vec<(u32, u8)>,
    /// Destination prefixes the key must not be in.
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

/// The five fields a packet is classified on (addresses in host order; for IPv6, the
/// compiler's compressed points).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source IPv4 address (or compressed IPv6 point).
    pub src: u32,
    /// Destination IPv4 address (or compressed IPv6 point).
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
const BINTH: usize = 3;
/// HiCuts space factor: a cut may replicate rules up to `SPFAC × n` child entries.
const SPFAC: usize = 32;
/// A node of `n` rules has at most `FANOUT × n` children (and at least [`MIN_FANOUT`] may).
const FANOUT: usize = 32;
/// See [`FANOUT`].
const MIN_FANOUT: usize = 16;
/// At most `2^MAX_CUT_BITS` children per node (the cut layouts hold 4-bit widths).
const MAX_CUT_BITS: u8 = 15;
/// Nodes this close to the root may cut two dimensions at once (HyperCuts); their words
/// use the two-dimension layout, all deeper ones the cheaper one-dimension layout.
const TWO_D_DEPTH: usize = 3;
/// A rule is wide in an address field when it spans at least `2^WIDE_BITS` addresses
/// (a prefix shorter than /13); see [`Classifier::build`].
const WIDE_BITS: u32 = 20;
/// A group of rules wide in one address field with fewer than this share (percent) of the
/// rules joins the group wide in both: walking one more tree costs more than they add.
const MERGE_PERCENT: usize = 5;
/// Child and leaf entries a tree may spend per rule before it stops cutting: bounds
/// memory and build time on sets that defeat the cuts, at the price of longer leaves.
const BUDGET_PER_RULE: usize = 256;
/// Nodes of at most this many rules drop the rules an earlier rule covers within the node.
const REDUNDANCY_N: usize = 64;
/// Keys a caller may hand [`Classifier::classify_batch`] at a time to keep its batches in
/// cache; the lookup itself takes one key after the other (see there why).
pub const LANES: usize = 8;
/// Maximum tree depth (inner nodes on any path).
pub const MAX_DEPTH: usize = 24;

/// "No rule": above any rule index (at most `u32::MAX` rules, so indices end at
/// `u32::MAX - 1`).
const NONE: u32 = u32::MAX;

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
    /// No rule of a later tree with a lower index overlaps this rule's box: once this rule
    /// is the best match, the lookup is over.
    last: bool,
}

impl Compiled {
    fn matches(&self, v: &[u32; 8]) -> bool {
        (0..DIMS).all(|d| {
            (self.pos[d].is_empty() || self.pos[d].iter().any(|&(a, b)| a <= v[d] && v[d] <= b))
                && !self.neg[d].iter().any(|&(a, b)| a <= v[d] && v[d] <= b)
        })
    }
}

/// A leaf's copy of one rule's bounding box, 32 bytes (two to a cache line): each field as
/// its low end and width, so a field test is a subtraction and a comparison.
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct Entry {
    addr_lo: [u32; 2],
    addr_w: [u32; 2],
    port_lo: [u16; 2],
    port_w: [u16; 2],
    proto_lo: u8,
    proto_w: u8,
    /// [`SLOW`] and [`LAST`].
    flags: u8,
    rule: u32,
}

/// Entry flag: the box is not the whole rule (negations, several ranges) or the rule has a
/// guard, so a box hit must be confirmed on the rule.
const SLOW: u8 = 1;
/// Entry flag: [`Compiled::last`].
const LAST: u8 = 2;

impl Entry {
    fn new(r: u32, c: &Compiled) -> Entry {
        Entry {
            addr_lo: [c.lo[0], c.lo[1]],
            addr_w: [c.hi[0] - c.lo[0], c.hi[1] - c.lo[1]],
            port_lo: [c.lo[2] as u16, c.lo[3] as u16],
            port_w: [(c.hi[2] - c.lo[2]) as u16, (c.hi[3] - c.lo[3]) as u16],
            proto_lo: c.lo[4] as u8,
            proto_w: (c.hi[4] - c.lo[4]) as u8,
            flags: if !c.exact || c.guard != NO_GUARD { SLOW } else { 0 } | if c.last { LAST } else { 0 },
            rule: r,
        }
    }

    /// Whether the key is in the box.
    #[inline(always)]
    fn hit(&self, k: &Key) -> bool {
        // `w - (x - lo)` borrows (bit 63 set) exactly when `x` is outside `lo..=lo + w`;
        // or-ing the five tests keeps the check free of branches.
        let out = |x: u32, lo: u32, w: u32| u64::from(w).wrapping_sub(u64::from(x.wrapping_sub(lo)));
        let miss = out(k.src, self.addr_lo[0], self.addr_w[0])
            | out(k.dst, self.addr_lo[1], self.addr_w[1])
            | out(u32::from(k.src_port.wrapping_sub(self.port_lo[0])), 0, u32::from(self.port_w[0]))
            | out(u32::from(k.dst_port.wrapping_sub(self.port_lo[1])), 0, u32::from(self.port_w[1]))
            | out(u32::from(k.proto.wrapping_sub(self.proto_lo)), 0, u32::from(self.proto_w));
        miss >> 63 == 0
    }
}

/// Tag bit of a leaf word; see [`Tree`].
const LEAF: u64 = 1 << 63;
/// A leaf with no rules.
const EMPTY_LEAF: u64 = LEAF;

/// Child of a cut word in the one-dimension layout: `base` in bits 0..32, shift in
/// 32..37, dimension in 37..40, mask in 40..56; the child is `base + (v[dim] >> shift &
/// mask)`.
#[inline(always)]
fn child_index1(w: u64, v: &[u32; 8]) -> usize {
    let base = w as u32;
    let shift = (w >> 32) as u32;
    let dim = (w >> 37) as usize & 7;
    let mask = (w >> 40) as u32 & 0xffff;
    (base + (v[dim].wrapping_shr(shift) & mask)) as usize
}

/// Child of a cut word in the two-dimension layout: `base` in bits 0..32, then `s0` (5
/// bits), `d0` (3), `k1` (4), `s1` (5), `d1` (3), `k0` (4); the child is `base + (k0 bits
/// of v[d0] >> s0, then k1 bits of v[d1] >> s1)`. `k1 = 0` is a one-dimension cut.
#[inline(always)]
fn child_index2(w: u64, v: &[u32; 8]) -> usize {
    let base = w as u32;
    let s0 = (w >> 32) as u32;
    let d0 = (w >> 37) as usize & 7;
    let k1 = (w >> 40) as u32 & 15;
    let s1 = (w >> 44) as u32;
    let d1 = (w >> 49) as usize & 7;
    let k0 = (w >> 52) as u32 & 15;
    let x0 = v[d0].wrapping_shr(s0) & !(u32::MAX << k0);
    let x1 = v[d1].wrapping_shr(s1) & !(u32::MAX << k1);
    (base + ((x0 << k1) | x1)) as usize
}

/// One cutting tree over a subset of the rules.
///
/// A node is one 64-bit word, so a level costs one read. A leaf word has bit 63 set, the
/// first entry in bits 0..32 and the entry count in bits 32..63. A cut word has bit 63
/// clear and is in the two-dimension layout ([`child_index2`]) in the top [`TWO_D_DEPTH`]
/// levels, in the one-dimension layout ([`child_index1`]) below.
#[derive(Debug, Clone)]
struct Tree {
    /// Lowest rule index in the tree: skip it when a better match is already known.
    first_rule: u32,
    root: u64,
    words: Vec<u64>,
    leaves: Vec<Entry>,
    /// Distinct nodes (cuts and leaves), for reports.
    nodes: usize,
}

impl Tree {
    /// The leaf word the key values `v` reach.
    #[inline(always)]
    fn walk(&self, v: &[u32; 8]) -> u64 {
        let mut w = self.root;
        for _ in 0..TWO_D_DEPTH {
            if w & LEAF != 0 {
                return w;
            }
            w = self.words.get(child_index2(w, v)).copied().unwrap_or(EMPTY_LEAF);
        }
        // A path has at most MAX_DEPTH cuts; the bound only makes termination evident.
        for _ in 0..MAX_DEPTH {
            if w & LEAF != 0 {
                break;
            }
            w = self.words.get(child_index1(w, v)).copied().unwrap_or(EMPTY_LEAF);
        }
        w
    }

    /// The entries of leaf word `w` (none for a cut word, which callers never pass).
    #[inline(always)]
    fn entries(&self, w: u64) -> &[Entry] {
        if w & LEAF == 0 {
            return &[];
        }
        let start = w as u32 as usize;
        let len = ((w >> 32) as u32 & 0x7fff_ffff) as usize;
        self.leaves.get(start..start + len).unwrap_or(&[])
    }
}

/// A compiled rule list; see the module doc.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Compiled>,
    /// By ascending `first_rule`.
    trees: Vec<Tree>,
}

fn key_values(key: &Key) -> [u32; 8] {
    [
        key.src,
        key.dst,
        u32::from(key.src_port),
        u32::from(key.dst_port),
        u32::from(key.proto),
        0,
        0,
        0,
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
        last: false,
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

/// A rule list as a hash key, hashed a word at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleList(Vec<u32>);

impl std::hash::Hash for RuleList {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_usize(self.0.len());
        for &r in &self.0 {
            h.write_u32(r);
        }
    }
}

/// What a subtree depends on besides its rules: the region in the dimensions that tell
/// the rules apart (`(0, 255)` where every rule covers the region), and the depth class
/// (exact below [`TWO_D_DEPTH`], which fixes the word layouts).
type Shape = ([(u32, u8); DIMS], usize);

struct Builder<'a> {
    rules: &'a [Compiled],
    words: Vec<u64>,
    leaves: Vec<Entry>,
    leaf_ids: HashMap<RuleList, u64, FxBuildHasher>,
    /// Subtrees built: root word and height (cuts on the longest path).
    subtrees: HashMap<(RuleList, Shape), (u64, usize), FxBuildHasher>,
    /// Child and leaf entries the tree may still spend; once spent, nodes become leaves.
    budget: usize,
    nodes: usize,
}

/// A cut: up to two (dimension, bits) pairs, largest child, total replication.
#[derive(Debug, Clone, Copy)]
struct Cut {
    dims: [(usize, u8); 2],
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

    /// Shrinks `reg` to the smallest aligned box holding every rule's part of it (HyperCuts'
    /// region compaction): keys outside it match none of the node's rules, so where the
    /// cut sends them does not matter, and the cut bits go where the rules differ.
    fn compact(&self, rules: &[u32], reg: &mut Region) {
        if rules.is_empty() {
            return;
        }
        for d in 0..DIMS {
            let (rlo, rhi) = (reg.lo[d], reg.hi(d));
            let mut lo = u32::MAX;
            let mut hi = 0;
            for &r in rules {
                let c = &self.rules[r as usize];
                lo = lo.min(c.lo[d].max(rlo));
                hi = hi.max(c.hi[d].min(rhi));
            }
            let bits = ((32 - (lo ^ hi).leading_zeros()) as u8).min(reg.bits[d]);
            reg.bits[d] = bits;
            reg.lo[d] = lo & u32::MAX.checked_shl(u32::from(bits)).unwrap_or(0);
        }
    }

    /// The cut for a node of `rules` over `reg`, or `None` to make it a leaf. For every
    /// dimension, the widest cut within the space limits (`SPFAC`, `FANOUT`); with `two`,
    /// also for every pair of dimensions the widest pair of cuts within them; of those, the
    /// one whose largest child holds the fewest rules (then the least replication).
    fn best_cut(&self, rules: &[u32], reg: &Region, two: bool) -> Option<Cut> {
        let n = rules.len();
        let fanout = (FANOUT * n).max(MIN_FANOUT);
        let room = SPFAC * n;
        // Each rule's part of the region, as offsets from the region's low corner.
        let mut off: [Vec<(u32, u32)>; DIMS] = Default::default();
        let mut kmax = [0u8; DIMS];
        for d in 0..DIMS {
            if reg.bits[d] == 0 {
                continue;
            }
            let (rlo, rhi) = (reg.lo[d], reg.hi(d));
            off[d] = rules
                .iter()
                .map(|&r| {
                    let c = &self.rules[r as usize];
                    (c.lo[d].max(rlo) - rlo, c.hi[d].min(rhi) - rlo)
                })
                .collect();
            let top = reg.bits[d].min(MAX_CUT_BITS);
            let mut k = 1;
            while k < top {
                let s = u32::from(reg.bits[d] - (k + 1));
                let sum: usize = off[d].iter().map(|&(a, b)| ((b >> s) - (a >> s)) as usize + 1).sum();
                if sum > room || (1usize << (k + 1)) > fanout {
                    break;
                }
                k += 1;
            }
            kmax[d] = k;
        }
        let shift = |d: usize, k: u8| u32::from(reg.bits[d] - k);
        let mut best: Option<Cut> = None;
        let mut offer = |cand: Cut| {
            if best.is_none_or(|b| (cand.max_child, cand.sum) < (b.max_child, b.sum)) {
                best = Some(cand);
            }
        };
        for d in 0..DIMS {
            if kmax[d] == 0 {
                continue;
            }
            let (k, s) = (kmax[d], shift(d, kmax[d]));
            let mut diff = vec![0i32; (1usize << k) + 1];
            let mut sum = 0;
            for &(a, b) in &off[d] {
                let (a, b) = ((a >> s) as usize, (b >> s) as usize);
                diff[a] += 1;
                diff[b + 1] -= 1;
                sum += b - a + 1;
            }
            let mut run = 0;
            let mut max_child = 0;
            for &x in &diff[..1 << k] {
                run += x;
                max_child = max_child.max(run);
            }
            offer(Cut {
                dims: [(d, k), (0, 0)],
                max_child: max_child as usize,
                sum,
            });
        }
        if two {
            for d0 in 0..DIMS {
                for d1 in d0 + 1..DIMS {
                    if kmax[d0] == 0 || kmax[d1] == 0 {
                        continue;
                    }
                    let pair_sum = |k0: u8, k1: u8| -> usize {
                        let (s0, s1) = (shift(d0, k0), shift(d1, k1));
                        off[d0]
                            .iter()
                            .zip(&off[d1])
                            .map(|(&(a0, b0), &(a1, b1))| {
                                (((b0 >> s0) - (a0 >> s0)) as usize + 1) * (((b1 >> s1) - (a1 >> s1)) as usize + 1)
                            })
                            .sum()
                    };
                    // The widest (k0, k1) within the limits: k0 from wide to narrow, k1 growing.
                    let mut found: Option<(u8, u8, usize)> = None;
                    let mut k1 = 0u8;
                    for k0 in (1..=kmax[d0]).rev() {
                        while k1 < kmax[d1] && k0 + k1 < MAX_CUT_BITS && (1usize << (k0 + k1 + 1)) <= fanout {
                            let sum = pair_sum(k0, k1 + 1);
                            if sum > room {
                                break;
                            }
                            k1 += 1;
                            if found.is_none_or(|(a, b, _)| k0 + k1 > a + b) {
                                found = Some((k0, k1, sum));
                            }
                        }
                    }
                    let Some((k0, k1, sum)) = found else {
                        continue;
                    };
                    // Largest child: rectangle counts through a 2-D prefix sum.
                    let (s0, s1) = (shift(d0, k0), shift(d1, k1));
                    let (w0, w1) = ((1usize << k0) + 1, (1usize << k1) + 1);
                    let mut grid = vec![0i32; w0 * w1];
                    for (&(a0, b0), &(a1, b1)) in off[d0].iter().zip(&off[d1]) {
                        let (a0, b0) = ((a0 >> s0) as usize, (b0 >> s0) as usize + 1);
                        let (a1, b1) = ((a1 >> s1) as usize, (b1 >> s1) as usize + 1);
                        grid[a0 * w1 + a1] += 1;
                        grid[a0 * w1 + b1] -= 1;
                        grid[b0 * w1 + a1] -= 1;
                        grid[b0 * w1 + b1] += 1;
                    }
                    for i in 0..w0 {
                        for j in 1..w1 {
                            grid[i * w1 + j] += grid[i * w1 + j - 1];
                        }
                    }
                    for i in 1..w0 {
                        for j in 0..w1 {
                            grid[i * w1 + j] += grid[(i - 1) * w1 + j];
                        }
                    }
                    let mut max_child = 0;
                    for i in 0..w0 - 1 {
                        for j in 0..w1 - 1 {
                            max_child = max_child.max(grid[i * w1 + j]);
                        }
                    }
                    offer(Cut {
                        dims: [(d0, k0), (d1, k1)],
                        max_child: max_child as usize,
                        sum,
                    });
                }
            }
        }
        best.filter(|c| c.max_child < n)
    }

    /// Whether rule `i` matches everywhere rule `j` does within `reg`.
    fn covers(&self, i: u32, j: u32, reg: &Region) -> bool {
        let (a, b) = (&self.rules[i as usize], &self.rules[j as usize]);
        (0..DIMS).all(|d| a.lo[d] <= b.lo[d].max(reg.lo[d]) && b.hi[d].min(reg.hi(d)) <= a.hi[d])
    }

    /// Drops rules that cannot be the first match anywhere in `reg`: those after the first
    /// exact, unguarded rule covering all of it, and (for small nodes) those an earlier
    /// exact, unguarded rule covers within `reg`. A guarded rule never hides another.
    fn prune(&self, rules: &mut Vec<u32>, reg: &Region) {
        let hides = |c: &Compiled| c.exact && c.guard == NO_GUARD;
        if let Some(p) = rules.iter().position(|&r| {
            let c = &self.rules[r as usize];
            hides(c) && (0..DIMS).all(|d| c.lo[d] <= reg.lo[d] && reg.hi(d) <= c.hi[d])
        }) {
            rules.truncate(p + 1);
        }
        if rules.len() <= REDUNDANCY_N && rules.len() > 1 {
            let mut kept: Vec<u32> = Vec::with_capacity(rules.len());
            for &j in rules.iter() {
                if !kept.iter().any(|&i| hides(&self.rules[i as usize]) && self.covers(i, j, reg)) {
                    kept.push(j);
                }
            }
            *rules = kept;
        }
    }

    fn leaf(&mut self, rules: Vec<u32>) -> u64 {
        if rules.is_empty() {
            return EMPTY_LEAF;
        }
        let rules = RuleList(rules);
        if let Some(&w) = self.leaf_ids.get(&rules) {
            return w;
        }
        let start = self.leaves.len() as u64;
        for &r in &rules.0 {
            self.leaves.push(Entry::new(r, &self.rules[r as usize]));
        }
        self.nodes += 1;
        let w = LEAF | (rules.0.len() as u64) << 32 | start;
        self.leaf_ids.insert(rules, w);
        w
    }

    /// The subtree of `rules` over `reg` at `depth`: its root word and its height.
    fn build(&mut self, mut rules: Vec<u32>, mut reg: Region, depth: usize) -> (u64, usize) {
        self.prune(&mut rules, &reg);
        if rules.len() <= BINTH || depth >= MAX_DEPTH || self.budget == 0 {
            return (self.leaf(rules), 0);
        }
        self.compact(&rules, &mut reg);
        // Where every rule covers the whole region in a dimension, the subtree never cuts
        // it and does not depend on it, so it serves any region that differs only there:
        // identical subtrees (a proto-any cluster under every protocol cut, say) are
        // built and stored once.
        let mut dims = [(0u32, 255u8); DIMS];
        for (d, x) in dims.iter_mut().enumerate() {
            let all = rules.iter().all(|&r| {
                let c = &self.rules[r as usize];
                c.lo[d] <= reg.lo[d] && reg.hi(d) <= c.hi[d]
            });
            if !all {
                *x = (reg.lo[d], reg.bits[d]);
            }
        }
        let memo = (RuleList(rules), (dims, depth.min(TWO_D_DEPTH)));
        if let Some(&(w, height)) = self.subtrees.get(&memo)
            && depth + height <= MAX_DEPTH
        {
            return (w, height);
        }
        let (RuleList(rules), shape) = memo;
        let Some(cut) = self.best_cut(&rules, &reg, depth < TWO_D_DEPTH) else {
            return (self.leaf(rules), 0);
        };
        let memo_rules = RuleList(rules.clone());
        let [(d0, k0), (d1, k1)] = cut.dims;
        let s0 = reg.bits[d0] - k0;
        let s1 = if k1 == 0 { 0 } else { reg.bits[d1] - k1 };
        let np = 1usize << (k0 + k1);
        self.budget = self.budget.saturating_sub(cut.sum + np);
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); np];
        for &r in &rules {
            let (a0, b0) = self.span(r, &reg, d0, s0);
            let (a1, b1) = if k1 == 0 { (0, 0) } else { self.span(r, &reg, d1, s1) };
            for i0 in a0..=b0 {
                for list in &mut lists[(i0 << k1) + a1..=(i0 << k1) + b1] {
                    list.push(r);
                }
            }
        }
        drop(rules);
        let base = self.words.len();
        self.words.resize(base + np, EMPTY_LEAF);
        self.nodes += 1;
        let mut height = 0;
        for (i, list) in lists.into_iter().enumerate() {
            let mut child = reg;
            let (i0, i1) = (i >> k1, i & ((1 << k1) - 1));
            child.lo[d0] = reg.lo[d0] + ((i0 as u32) << s0);
            child.bits[d0] = s0;
            if k1 > 0 {
                child.lo[d1] = reg.lo[d1] + ((i1 as u32) << s1);
                child.bits[d1] = s1;
            }
            let (w, h) = self.build(list, child, depth + 1);
            self.words[base + i] = w;
            height = height.max(h + 1);
        }
        debug_assert!(k0 <= 15 && k1 <= 15 && (k1 == 0 || depth < TWO_D_DEPTH));
        let w = if depth < TWO_D_DEPTH {
            base as u64
                | u64::from(s0) << 32
                | (d0 as u64) << 37
                | u64::from(k1) << 40
                | u64::from(s1) << 44
                | (d1 as u64) << 49
                | u64::from(k0) << 52
        } else {
            base as u64 | u64::from(s0) << 32 | (d0 as u64) << 37 | ((1u64 << k0) - 1) << 40
        };
        self.subtrees.insert((memo_rules, shape), (w, height));
        (w, height)
    }
}

/// Sets [`Compiled::last`]: whether no rule of a later group (in `groups` order) with a
/// lower index overlaps the rule's box.
fn mark_last(rules: &mut [Compiled], groups: &[Vec<u32>]) {
    let overlap = |a: &Compiled, b: &Compiled| (0..DIMS).all(|d| a.lo[d] <= b.hi[d] && b.lo[d] <= a.hi[d]);
    for (gi, g) in groups.iter().enumerate() {
        for &r in g {
            let c = &rules[r as usize];
            let beaten = groups[gi + 1..].iter().any(|later| {
                later
                    .iter()
                    .take_while(|&&s| s < r)
                    .any(|&s| overlap(c, &rules[s as usize]))
            });
            rules[r as usize].last = !beaten;
        }
    }
}

/// Builds the tree of the rules `group` (ascending indices, not empty).
fn build_tree(rules: &[Compiled], group: Vec<u32>) -> Tree {
    let first_rule = group[0];
    let mut b = Builder {
        rules,
        words: Vec::new(),
        leaves: Vec::new(),
        leaf_ids: HashMap::default(),
        subtrees: HashMap::default(),
        budget: BUDGET_PER_RULE * group.len() + 4096,
        nodes: 0,
    };
    let root = Region {
        lo: [0; DIMS],
        bits: DIM_BITS,
    };
    let (root, _) = b.build(group, root, 0);
    let (mut words, mut leaves) = (b.words, b.leaves);
    words.shrink_to_fit();
    leaves.shrink_to_fit();
    Tree {
        first_rule,
        root,
        words,
        leaves,
        nodes: b.nodes,
    }
}

impl Classifier {
    /// Compiles `rules`; the first matching rule wins, by index.
    pub fn build(rules: &[ClassRule]) -> Result<Classifier, BuildError> {
        if u32::try_from(rules.len()).is_err() {
            return Err(BuildError::TooManyRules { count: rules.len() });
        }
        let mut compiled: Vec<Compiled> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<_, _>>()?;
        // EffiCuts-style separation (Vamanan et al., SIGCOMM 2010, §3.1): rules wide in an
        // address field replicate across every cut of it, so rules are grouped by which
        // address fields are wide and each group gets its own tree; a small group of rules
        // wide in one field joins the group wide in both (EffiCuts' selective merging).
        let wide = |c: &Compiled, d: usize| u64::from(c.hi[d] - c.lo[d]) >= 1u64 << WIDE_BITS;
        let mut groups: [Vec<u32>; 4] = Default::default();
        for (i, c) in compiled.iter().enumerate() {
            groups[usize::from(wide(c, 0)) | usize::from(wide(c, 1)) << 1].push(i as u32);
        }
        for g in [1, 2] {
            if groups[g].len() * 100 < compiled.len() * MERGE_PERCENT {
                let moved = std::mem::take(&mut groups[g]);
                groups[3].extend(moved);
            }
        }
        groups[3].sort_unstable();
        let mut groups: Vec<Vec<u32>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        groups.sort_by_key(|g| g[0]);
        mark_last(&mut compiled, &groups);
        let trees = groups.into_iter().map(|g| build_tree(&compiled, g)).collect();
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
        let mut best = NONE;
        for t in &self.trees {
            if best < t.first_rule {
                break;
            }
            let (b, last) = self.scan(t.entries(t.walk(&v)), &v, key, best, &guard);
            best = b;
            if last {
                break;
            }
        }
        (best != NONE).then_some(best)
    }

    /// The first rule of `entries` before `bound` that matches, and whether it is
    /// [`LAST`]; else `bound` and `false`.
    #[inline(always)]
    fn scan(&self, entries: &[Entry], v: &[u32; 8], key: &Key, bound: u32, guard: &impl Fn(u32, &Key) -> bool) -> (u32, bool) {
        for e in entries {
            if e.rule >= bound {
                break;
            }
            if e.hit(key) && (e.flags & SLOW == 0 || self.confirm(e.rule, v, key, guard)) {
                return (e.rule, e.flags & LAST != 0);
            }
        }
        (bound, false)
    }

    /// Whether rule `r`, whose bounding box holds the key, matches it and its guard passes.
    #[inline(never)]
    fn confirm(&self, r: u32, v: &[u32; 8], key: &Key, guard: &impl Fn(u32, &Key) -> bool) -> bool {
        self.rules
            .get(r as usize)
            .is_some_and(|c| (c.exact || c.matches(v)) && (c.guard == NO_GUARD || guard(c.guard, key)))
    }

    /// Classifies `keys[i]` into `out[i]`, for as many as both slices hold (guards pass).
    pub fn classify_batch(&self, keys: &[Key], out: &mut [Option<u32>]) {
        self.classify_batch_with(keys, out, |_, _| true);
    }

    /// [`Classifier::classify_with`] for a batch: `keys[i]` into `out[i]`, for as many as
    /// both slices hold.
    ///
    /// One key after the other: the lookup has no data-dependent branch in its walk other
    /// than the end of each tree, so the CPU already runs the next key's reads under the
    /// current one's; walking [`LANES`] keys in lockstep, tree-major order or two keys per
    /// loop all measured slower (more instructions for no fewer stalls). The loop is kept
    /// out of line so its code does not depend on the caller's: inlined into the bench
    /// loop, the same code ran 8–45 % slower.
    #[inline(never)]
    pub fn classify_batch_with(&self, keys: &[Key], out: &mut [Option<u32>], guard: impl Fn(u32, &Key) -> bool) {
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = self.classify_with(k, &guard);
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
            .map(|t| size_of::<Tree>() + t.words.capacity() * size_of::<u64>() + t.leaves.capacity() * size_of::<Entry>())
            .sum();
        size_of::<Self>() + rules + trees
    }

    /// Number of tree nodes (inner and leaf) over all trees, for reports.
    pub fn node_count(&self) -> usize {
        self.trees.iter().map(|t| t.nodes).sum()
    }

    /// Number of trees (rule groups); a lookup walks at most this many.
    pub fn tree_count(&self) -> usize {
        self.trees.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: (u32, u8), dst: (u32, u8), dport: (u16, u16), guard: Option<u32>) -> ClassRule {
        ClassRule {
            src: vec![src],
            dst: vec![dst],
            dst_ports: vec![dport],
            protocols: vec![6],
            guard,
            ..ClassRule::default()
        }
    }

    /// Rules of one tree beaten by a lower-index rule of a later tree (so not `last`), a
    /// guard that fails on some keys, and keys around every rule's edges.
    #[test]
    fn later_trees_and_guards_agree_with_linear_scan() {
        let net = 0x0a00_0000;
        let rules = vec![
            // Wide source: one group.
            rule((0, 1), (net | 0x0100, 24), (80, 80), None),
            // Narrow in both: another group, first rule 1.
            rule((net | 0x0101, 32), (net | 0x0105, 32), (0, 1023), Some(1)),
            rule((net | 0x0100, 24), (net | 0x0100, 24), (0, 65535), None),
            // Wide source again, after rule 1: a key matching it may still get rule 1 or 2.
            rule((0, 0), (net | 0x0100, 24), (0, 65535), Some(0)),
            rule((0, 0), (0, 0), (443, 443), None),
        ];
        let cls = Classifier::build(&rules).unwrap();
        assert!(cls.tree_count() >= 2);
        let srcs = [0, net | 0x0101, net | 0x0102, net | 0x01ff, 0x8000_0000, u32::MAX];
        let dsts = [net | 0x0105, net | 0x0106, net | 0x0100, net | 0x0200, 0];
        let ports = [0, 79, 80, 81, 443, 1023, 1024, 65535];
        let mut keys = Vec::new();
        for &src in &srcs {
            for &dst in &dsts {
                for &dst_port in &ports {
                    for proto in [6, 17] {
                        keys.push(Key {
                            src,
                            dst,
                            proto,
                            src_port: dst_port ^ 1,
                            dst_port,
                        });
                    }
                }
            }
        }
        for pass in [0u32, 1, 2, 3] {
            let guard = |g: u32, k: &Key| (pass >> g) & 1 == 1 || k.src_port & 1 == 0;
            let mut batch = vec![None; keys.len()];
            cls.classify_batch_with(&keys, &mut batch, guard);
            for (k, b) in keys.iter().zip(&batch) {
                let want = linear_first_match_with(&rules, k, guard);
                assert_eq!(cls.classify_with(k, guard), want, "pass {pass} key {k:?}");
                assert_eq!(*b, want, "batch, pass {pass} key {k:?}");
            }
        }
    }

    /// Many rules sharing their address bits under every protocol and port cut: subtrees
    /// are shared, and a shared one is only reused where the depth bound still holds.
    #[test]
    fn shared_subtrees_agree_with_linear_scan() {
        let mut rules = Vec::new();
        for i in 0..400u32 {
            let a = 0xc0a8_0000 | (i % 40) << 4;
            let mut r = rule((a, 28 + (i % 5) as u8), (0x0a00_0000 | (i % 7) << 8, 24), (0, 65535), None);
            r.protocols = if i % 3 == 0 { vec![] } else { vec![[6, 17, 1][(i % 3) as usize]] };
            r.src_ports = vec![((i % 11) as u16 * 1000, (i % 11) as u16 * 1000 + 999)];
            rules.push(r);
        }
        let cls = Classifier::build(&rules).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = Key {
                src: 0xc0a8_0000 | (x as u32 & 0x3ff),
                dst: 0x0a00_0000 | ((x >> 16) as u32 & 0x7ff),
                proto: [6, 17, 1, 50][(x >> 40) as usize % 4],
                src_port: (x >> 44) as u16 % 12_000,
                dst_port: (x >> 20) as u16,
            };
            assert_eq!(cls.classify(&k), linear_first_match(&rules, &k), "key {k:?}");
        }
    }

    #[test]
    fn cut_layouts_address_children() {
        let v = [0xdead_beef, 0x0123_4567, 0x1234, 0xabcd, 0x11, 0, 0, 0];
        // One dimension: 6 bits of the destination above bit 10.
        let w1 = 100 | 10u64 << 32 | 1u64 << 37 | 0x3fu64 << 40;
        assert_eq!(child_index1(w1, &v), 100 + ((0x0123_4567 >> 10) & 0x3f));
        // Two: 3 bits of the source port above bit 4, then 5 bits of the source above 27.
        // (d1 = 0, the source, in bits 49..52.)
        let w2 = 7 | 4u64 << 32 | 2u64 << 37 | 5u64 << 40 | 27u64 << 44 | 3u64 << 52;
        let want = 7 + (((0x1234 >> 4) & 7) << 5 | (0xdead_beefu32 >> 27) as usize);
        assert_eq!(child_index2(w2, &v), want);
    }
}
