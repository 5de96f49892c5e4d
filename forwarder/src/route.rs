//! Longest-prefix-match route tables for IPv4 and IPv6: [`RouteTable`] (IPv4, the default)
//! and [`Route6Table`], one persistent multibit trie behind both.
//!
//! # What it owns, reads and hands on
//! The control thread (control's `calc`) inserts prefixes with a value; the pipeline looks a
//! destination address up and gets the value of the longest prefix containing it (RFC 1812
//! §5.2.4.3, "longest match"). The table sits inside the immutable [`crate::Snapshot`]; an
//! update is made on a clone of the current table and published with the new snapshot, so a
//! packet always sees exactly one version and readers never lock.
//!
//! # The structure, and why this one
//! A fixed-stride multibit trie in the DIR-24-8 family (Gupta, Lin & McKeown, "Routing
//! lookups in hardware at memory access speeds", INFOCOM 1998), cut at bits 16, 24, 32, …
//! as SAIL_L does (Yang et al., "Guarantee IP lookup performance with FIB explosion",
//! SIGCOMM 2014): a 2^16-slot direct-indexed top level, then 256-slot chunks of 8 bits each
//! (IPv4: at most two chunk levels; IPv6: down to bit 128). Slots hold leaf-pushed
//! next-hop indices (the best prefix covering the slot, computed when a route changes) or
//! a reference to the chunk below. An IPv4 lookup is one top-level entry (slot and chunk
//! reference read side by side) and one chunk entry, selected branch-free; the
//! 0.003 % of addresses under a prefix longer than /24 take one more step.
//!
//! Why this and not the alternatives: measured on this project's 2-vCPU VM with the real
//! BGP table (901,899 IPv4 prefixes, uniform random addresses), prototypes of the same
//! lookup in one process, best of several runs (`cargo bench -p benches --bench lpm` and
//! docs/perf.md have the figures of the finished table):
//! - plain DIR-24-8 (2^24 entries, one access) needs a 32–64 MB first level: random
//!   reads of an array that size run at 100–150 M/s here (TLB and DRAM bound), no faster
//!   than two reads into a 0.7 MB top level and 13 MB of 16-bit chunks (~200 M/s);
//! - 32-bit chunk entries (26 MB): about 0.6× the 16-bit ones;
//! - Poptrie (Asai & Ohara, SIGCOMM 2015) and Tree Bitmap (Eatherton, Varghese & Dittia,
//!   CCR 2004) compress nodes with bitmaps and population counts: 5 MB instead of 13, but
//!   the workspace builds for baseline x86-64, which has no POPCNT instruction, and with a
//!   software popcount and one more dependent load per level the prototype ran at 0.3–0.5×;
//! - DXR (Zec, Rizzo & Mikuc, CCR 2012) replaces the lower levels by a binary search over
//!   address ranges: compact, but a data-dependent branch per search step.
//!
//! What keeps the hot part small and the lookup branch-free: 16-bit entries (a value index
//! up to 32,767 or a chunk index; a table given more distinct values moves to 32-bit
//! entries, once, by itself); values interned (a FIB has few next hops, and a slot holds an
//! index into the table's value vector); the control-plane rules kept apart from the lookup
//! arrays ([`RouteTable::compacted`] re-lays a bulk-loaded table so the arrays are
//! contiguous); and a top-level slot read together with its chunk's entry and combined by
//! bit operations (a branch there is mispredicted four times in ten).
//!
//! # Persistence (structural sharing)
//! Every top-level block of 256 slots (a `Top`, one per /8) and every chunk is its own
//! `Arc`. `clone()` copies a pointer per part (the array of 256 `Top`s, the interner, the
//! root rules) and the value vector (one entry per distinct value); a change copies, with
//! `Arc::make_mut`, only the `Top` and the chunks on the path of the prefix it changes
//! (and, for a short prefix, the chunks whose leaf-pushed default it changes). On a table
//! nobody else holds, updates work in place. So the control thread clones the published
//! table, applies a batch of changes and publishes the clone; a worker keeps reading the
//! version it loaded.
//!
//! # Updates
//! Each node keeps the prefixes it owns (a chunk at depth d owns lengths d+1 ..= d+8) as
//! sorted rules. An insert or delete repaints only the slots of that prefix's range: the
//! node's default, then the node's rules of that range from the shortest up, then, in the
//! slots that have a chunk below, the chunk's default — which repaints that chunk when it
//! changed. No full rebuild, no global state.
//!
//! # Safety of lookups
//! No `unsafe` here; prefetches go through [`crate::huge::prefetch`]. Lookups index
//! fixed-size arrays with masked 8-bit slots, reach chunks below depth 24 with checked
//! `get`, and read the value vector at an index clamped into it (slot 0, "no route",
//! always exists), so they never panic and never allocate, whatever the address.
//!
//! # Batches
//! [`RouteTable::lookup_batch`] asks for the chunk line of the address 16 places ahead of
//! the one it resolves, so the cache misses of a batch overlap (software prefetching as in
//! DPDK's `rte_lpm_lookup_bulk` and VPP's dual/quad loops).

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    marker::PhantomData,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use policy_engine::fxhash::FxBuildHasher;

use crate::huge::prefetch;

// -----------------------------------------------------------------------------------------
// Prefixes

/// An IPv4 prefix; the address is kept masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: u32,
    len: u8,
}

impl Ipv4Prefix {
    /// A prefix of `len` bits (at most 32) of `addr`; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Ipv4Prefix { addr: u32::from(addr) & mask4(len), len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The prefix length in bits.
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a container size")]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask4(self.len) == self.addr
    }

    /// The netmask: the prefix length's leading one bits.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask4(self.len))
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl std::str::FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR (expected a.b.c.d/len with len 0..=32)");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        Ipv4Prefix::new(addr, len).ok_or_else(bad)
    }
}


/// The stages of a two-stage prefetch (VPP's): the first asks for lines whose addresses
/// need no memory read; the second, a few packets later, reads those (now cached) lines
/// to find and ask for the next ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    First,
    Second,
}

const fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

/// An IPv6 prefix; the address is kept masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Prefix {
    addr: u128,
    len: u8,
}

impl Ipv6Prefix {
    /// A prefix of `len` bits (at most 128) of `addr`; host bits are cleared.
    pub fn new(addr: Ipv6Addr, len: u8) -> Option<Self> {
        (len <= 128).then(|| Ipv6Prefix { addr: u128::from(addr) & mask6(len), len })
    }

    pub fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr)
    }

    /// The prefix length in bits.
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a container size")]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.len) == self.addr
    }

    /// The netmask: the prefix length's leading one bits.
    pub fn mask(&self) -> Ipv6Addr {
        Ipv6Addr::from(mask6(self.len))
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl std::str::FromStr for Ipv6Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv6 CIDR (expected an IPv6 address/len with len 0..=128, e.g. 2001:db8::/32)");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        Ipv6Prefix::new(addr, len).ok_or_else(bad)
    }
}

const fn mask6(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len as u32) }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Ipv4Prefix {}
    impl Sealed for super::Ipv6Prefix {}
    impl Sealed for u32 {}
    impl Sealed for u128 {}
}

/// An address family's prefix, as a [`RouteTable`] keys it: [`Ipv4Prefix`] or [`Ipv6Prefix`].
pub trait Prefix: Copy + Eq + Hash + fmt::Debug + fmt::Display + sealed::Sealed {
    /// The address type looked up.
    type Addr: Copy;
    /// The address as the lookup walks it.
    type Key: LookupKey;
    /// Address bits: 32 or 128.
    const BITS: u8;
    /// The masked address, left-aligned in 128 bits.
    fn key(&self) -> u128;
    /// The prefix length.
    fn prefix_len(&self) -> u8;
    /// The prefix of `len` bits of the left-aligned `key` (already masked).
    fn from_key(key: u128, len: u8) -> Self;
    /// `addr` as the lookup walks it.
    fn lookup_key(addr: Self::Addr) -> Self::Key;
}

impl Prefix for Ipv4Prefix {
    type Addr = Ipv4Addr;
    type Key = u32;
    const BITS: u8 = 32;
    fn key(&self) -> u128 {
        u128::from(self.addr) << 96
    }
    fn prefix_len(&self) -> u8 {
        self.len
    }
    fn from_key(key: u128, len: u8) -> Self {
        Ipv4Prefix { addr: (key >> 96) as u32, len }
    }
    #[inline(always)]
    fn lookup_key(addr: Ipv4Addr) -> u32 {
        u32::from(addr)
    }
}

impl Prefix for Ipv6Prefix {
    type Addr = Ipv6Addr;
    type Key = u128;
    const BITS: u8 = 128;
    fn key(&self) -> u128 {
        self.addr
    }
    fn prefix_len(&self) -> u8 {
        self.len
    }
    fn from_key(key: u128, len: u8) -> Self {
        Ipv6Prefix { addr: key, len }
    }
    #[inline(always)]
    fn lookup_key(addr: Ipv6Addr) -> u128 {
        u128::from(addr)
    }
}

/// An address as a lookup walks it, 8 bits at a time.
pub trait LookupKey: Copy + sealed::Sealed {
    /// Address bits: 32 or 128.
    const BITS: u32;
    /// The 8 bits starting at bit `depth` (from the most significant); `depth + 8 <= BITS`.
    fn slot(self, depth: u32) -> usize;
}

impl LookupKey for u32 {
    const BITS: u32 = 32;
    #[inline(always)]
    fn slot(self, depth: u32) -> usize {
        ((self >> (24 - depth)) & 0xff) as usize
    }
}

impl LookupKey for u128 {
    const BITS: u32 = 128;
    #[inline(always)]
    fn slot(self, depth: u32) -> usize {
        ((self >> (120 - depth)) & 0xff) as usize
    }
}

/// The 8 bits of the left-aligned control-plane key at `depth` (at most 120).
#[inline]
fn slot(key: u128, depth: u8) -> usize {
    ((key >> (120 - u32::from(depth))) & 0xff) as usize
}

// -----------------------------------------------------------------------------------------
// Slot entries

/// A slot: a leaf (an interned value index, 0 = no route) or, with the top bit set, a chunk
/// below (its index among the chunk's kids; in a `Top` the flag alone).
trait Entry: Copy + Eq + Default + fmt::Debug + Send + Sync + 'static {
    const CHILD: Self;
    /// The largest value index a leaf holds.
    const MAX_VALUE: u32;
    fn leaf(value: u32) -> Self;
    fn child(kid: usize) -> Self;
    fn is_child(self) -> bool;
    fn kid(self) -> usize;
    fn value(self) -> u32;
    /// `self | other` without `other`'s child flag.
    fn or_leaf(self, other: Self) -> Self;
}

macro_rules! entry {
    ($t:ty) => {
        impl Entry for $t {
            const CHILD: $t = 1 << (<$t>::BITS - 1);
            const MAX_VALUE: u32 = (Self::CHILD - 1) as u32;
            #[inline(always)]
            fn leaf(value: u32) -> $t {
                debug_assert!(value <= Self::MAX_VALUE);
                value as $t
            }
            #[inline(always)]
            fn child(kid: usize) -> $t {
                Self::CHILD | kid as $t
            }
            #[inline(always)]
            fn is_child(self) -> bool {
                self & Self::CHILD != 0
            }
            #[inline(always)]
            fn kid(self) -> usize {
                (self & !Self::CHILD) as usize
            }
            #[inline(always)]
            fn value(self) -> u32 {
                self as u32
            }
            #[inline(always)]
            fn or_leaf(self, other: $t) -> $t {
                self | (other & !Self::CHILD)
            }
        }
    };
}
entry!(u16);
entry!(u32);

const SLOTS: usize = 256;

/// A prefix owned by a node: its 8 bits at the node's depth (host bits zero) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    bits: u8,
    len: u8,
    value: u32,
}

impl Rule {
    /// The slots of a node at `depth` this rule covers.
    fn range(&self, depth: u8) -> (usize, usize) {
        let start = usize::from(self.bits);
        (start, start + (1usize << (depth + 8 - self.len)))
    }
}

/// Inserts or replaces `rule` (rules sorted by length, then bits); the replaced value.
fn upsert_rule(rules: &mut Vec<Rule>, rule: Rule) -> Option<u32> {
    match rules.binary_search_by_key(&(rule.len, rule.bits), |r| (r.len, r.bits)) {
        Ok(i) => Some(std::mem::replace(&mut rules[i].value, rule.value)),
        Err(i) => {
            rules.insert(i, rule);
            None
        }
    }
}

fn find_rule(rules: &[Rule], bits: u8, len: u8) -> Option<usize> {
    rules.binary_search_by_key(&(len, bits), |r| (r.len, r.bits)).ok()
}

/// The leaf-pushed values of slots `lo..hi` of a node at `depth` into `out`: `default`,
/// then every rule over it, shortest first, so the longest wins.
fn paint<E: Entry>(default: E, rules: &[Rule], depth: u8, lo: usize, hi: usize, out: &mut [E; SLOTS]) {
    out[lo..hi].fill(default);
    for r in rules {
        let (a, b) = r.range(depth);
        let (a, b) = (a.max(lo), b.min(hi));
        if a < b {
            out[a..b].fill(E::leaf(r.value));
        }
    }
}

// -----------------------------------------------------------------------------------------
// Nodes

/// 8 bits of address below depth 16: 256 slots, the chunks below, and the rules it owns.
#[derive(Clone)]
struct Chunk<E> {
    e: [E; SLOTS],
    kids: Vec<Arc<Chunk<E>>>,
    /// Prefixes of lengths depth+1 ..= depth+8, sorted by (len, bits).
    rules: Vec<Rule>,
    /// The value the parent pushes down into this chunk's range.
    default: E,
}

impl<E: Entry> Chunk<E> {
    fn new(default: E) -> Self {
        Chunk { e: [default; SLOTS], kids: Vec::new(), rules: Vec::new(), default }
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.kids.is_empty()
    }

    /// Recomputes slots `lo..hi`; chunks below get their new defaults.
    fn repaint(&mut self, depth: u8, lo: usize, hi: usize) {
        let mut vals = [E::default(); SLOTS];
        paint(self.default, &self.rules, depth, lo, hi, &mut vals);
        for (s, &v) in vals.iter().enumerate().take(hi).skip(lo) {
            let cur = self.e[s];
            if cur.is_child() {
                if let Some(k) = self.kids.get_mut(cur.kid()) {
                    Chunk::set_default(k, v, depth + 8);
                }
            } else {
                self.e[s] = v;
            }
        }
    }

    fn set_default(this: &mut Arc<Self>, v: E, depth: u8) {
        if this.default != v {
            let c = Arc::make_mut(this);
            c.default = v;
            c.repaint(depth, 0, SLOTS);
        }
    }

    fn insert(&mut self, key: u128, len: u8, depth: u8, value: u32) -> Option<u32> {
        if len <= depth + 8 {
            let rule = Rule { bits: slot(key, depth) as u8, len, value };
            let old = upsert_rule(&mut self.rules, rule);
            let (lo, hi) = rule.range(depth);
            self.repaint(depth, lo, hi);
            return old;
        }
        let s = slot(key, depth);
        let k = if self.e[s].is_child() {
            self.e[s].kid()
        } else {
            self.kids.push(Arc::new(Chunk::new(self.e[s])));
            self.e[s] = E::child(self.kids.len() - 1);
            self.kids.len() - 1
        };
        Arc::make_mut(&mut self.kids[k]).insert(key, len, depth + 8, value)
    }

    fn remove(&mut self, key: u128, len: u8, depth: u8) -> Option<u32> {
        if len <= depth + 8 {
            let i = find_rule(&self.rules, slot(key, depth) as u8, len)?;
            let rule = self.rules.remove(i);
            let (lo, hi) = rule.range(depth);
            self.repaint(depth, lo, hi);
            return Some(rule.value);
        }
        let s = slot(key, depth);
        if !self.e[s].is_child() {
            return None;
        }
        let k = self.e[s].kid();
        let kid = self.kids.get_mut(k)?;
        let old = Arc::make_mut(kid).remove(key, len, depth + 8)?;
        if kid.is_empty() {
            let default = kid.default;
            self.kids.swap_remove(k);
            if k < self.kids.len() {
                // The last kid moved to index k: point its slot there.
                let moved = E::child(self.kids.len());
                if let Some(t) = self.e.iter().position(|&e| e == moved) {
                    self.e[t] = E::child(k);
                }
            }
            self.e[s] = default;
        }
        Some(old)
    }

    fn get(&self, key: u128, len: u8, depth: u8) -> Option<u32> {
        let mut c = self;
        let mut d = depth;
        loop {
            if len <= d + 8 {
                return find_rule(&c.rules, slot(key, d) as u8, len).map(|i| c.rules[i].value);
            }
            let e = c.e[slot(key, d)];
            if !e.is_child() {
                return None;
            }
            c = c.kids.get(e.kid())?;
            d += 8;
        }
    }

    /// A deep copy of the lookup arrays, without rules (see [`Trie::compacted`]).
    fn copy_shape(&self) -> Arc<Self> {
        let kids = self.kids.iter().map(|k| k.copy_shape()).collect();
        Arc::new(Chunk { e: self.e, kids, rules: Vec::new(), default: self.default })
    }

    /// Gives a fresh copy from [`Chunk::copy_shape`] the rules of `from`.
    fn copy_rules(this: &mut Arc<Self>, from: &Self) {
        let c = Arc::make_mut(this);
        c.rules = from.rules.clone();
        for (k, f) in c.kids.iter_mut().zip(&from.kids) {
            Chunk::copy_rules(k, f);
        }
    }

    fn memory(&self) -> usize {
        ARC_HEADER
            + std::mem::size_of::<Self>()
            + self.kids.capacity() * std::mem::size_of::<Arc<Self>>()
            + self.rules.capacity() * std::mem::size_of::<Rule>()
            + self.kids.iter().map(|k| k.memory()).sum::<usize>()
    }
}

/// Bits 8..16 of the top level under one /8: slot entries and, beside them, the chunk of
/// every slot (the table's shared empty chunk where the slot is a leaf), so a lookup reads
/// both at once and combines them without a branch. (An `Option` per slot, with a static
/// empty chunk for `None`, would spare a copied `Top` the reference counts of its leaf
/// slots, but the compiler turned the `None` test into a branch: 0.5× on random addresses.)
#[derive(Clone)]
struct Top<E> {
    e: [E; SLOTS],
    kids: [Arc<Chunk<E>>; SLOTS],
    /// Prefixes of lengths 9 ..= 16 under this /8, sorted by (len, bits).
    rules: Vec<Rule>,
    default: E,
}

const TOP_DEPTH: u8 = 8;
const CHUNK_DEPTH: u8 = 16;

impl<E: Entry> Top<E> {
    fn new(empty: &Arc<Chunk<E>>) -> Self {
        Top { e: [E::default(); SLOTS], kids: std::array::from_fn(|_| empty.clone()), rules: Vec::new(), default: E::default() }
    }

    fn repaint(&mut self, lo: usize, hi: usize) {
        let mut vals = [E::default(); SLOTS];
        paint(self.default, &self.rules, TOP_DEPTH, lo, hi, &mut vals);
        for (s, &v) in vals.iter().enumerate().take(hi).skip(lo) {
            if self.e[s].is_child() {
                Chunk::set_default(&mut self.kids[s], v, CHUNK_DEPTH);
            } else {
                self.e[s] = v;
            }
        }
    }

    fn set_default(this: &mut Arc<Self>, v: E) {
        if this.default != v {
            let t = Arc::make_mut(this);
            t.default = v;
            t.repaint(0, SLOTS);
        }
    }

    fn insert(&mut self, key: u128, len: u8, value: u32) -> Option<u32> {
        if len <= CHUNK_DEPTH {
            let rule = Rule { bits: slot(key, TOP_DEPTH) as u8, len, value };
            let old = upsert_rule(&mut self.rules, rule);
            let (lo, hi) = rule.range(TOP_DEPTH);
            self.repaint(lo, hi);
            return old;
        }
        let s = slot(key, TOP_DEPTH);
        if !self.e[s].is_child() {
            self.kids[s] = Arc::new(Chunk::new(self.e[s]));
            self.e[s] = E::CHILD;
        }
        Arc::make_mut(&mut self.kids[s]).insert(key, len, CHUNK_DEPTH, value)
    }

    fn remove(&mut self, key: u128, len: u8, empty: &Arc<Chunk<E>>) -> Option<u32> {
        if len <= CHUNK_DEPTH {
            let i = find_rule(&self.rules, slot(key, TOP_DEPTH) as u8, len)?;
            let rule = self.rules.remove(i);
            let (lo, hi) = rule.range(TOP_DEPTH);
            self.repaint(lo, hi);
            return Some(rule.value);
        }
        let s = slot(key, TOP_DEPTH);
        if !self.e[s].is_child() {
            return None;
        }
        let kid = &mut self.kids[s];
        let old = Arc::make_mut(kid).remove(key, len, CHUNK_DEPTH)?;
        if kid.is_empty() {
            self.e[s] = kid.default;
            *kid = empty.clone();
        }
        Some(old)
    }

    fn get(&self, key: u128, len: u8) -> Option<u32> {
        if len <= CHUNK_DEPTH {
            return find_rule(&self.rules, slot(key, TOP_DEPTH) as u8, len).map(|i| self.rules[i].value);
        }
        let s = slot(key, TOP_DEPTH);
        if !self.e[s].is_child() {
            return None;
        }
        self.kids[s].get(key, len, CHUNK_DEPTH)
    }

    fn memory(&self) -> usize {
        ARC_HEADER
            + std::mem::size_of::<Self>()
            + self.rules.capacity() * std::mem::size_of::<Rule>()
            + (0..SLOTS).filter(|&s| self.e[s].is_child()).map(|s| self.kids[s].memory()).sum::<usize>()
    }
}

/// Bytes an `Arc` allocation adds to its contents (the two counters).
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// The trie of one entry width.
#[derive(Clone)]
struct Trie<E> {
    /// Bits 0..8: one `Top` per /8 (all one shared empty `Top` at first).
    tops: Arc<[Arc<Top<E>>; SLOTS]>,
    /// Prefixes of lengths 0 ..= 8, sorted by (len, bits).
    rules: Vec<Rule>,
    /// The chunk of every leaf slot of a `Top`: all entries "no route".
    empty: Arc<Chunk<E>>,
}

impl<E: Entry> Default for Trie<E> {
    fn default() -> Self {
        let empty = Arc::new(Chunk::new(E::default()));
        let top = Arc::new(Top::new(&empty));
        Trie { tops: Arc::new(std::array::from_fn(|_| top.clone())), rules: Vec::new(), empty }
    }
}

impl<E: Entry> Trie<E> {
    fn insert(&mut self, key: u128, len: u8, value: u32) -> Option<u32> {
        if len <= TOP_DEPTH {
            let rule = Rule { bits: slot(key, 0) as u8, len, value };
            let old = upsert_rule(&mut self.rules, rule);
            let (lo, hi) = rule.range(0);
            self.repaint(lo, hi);
            return old;
        }
        let tops = Arc::make_mut(&mut self.tops);
        Arc::make_mut(&mut tops[slot(key, 0)]).insert(key, len, value)
    }

    fn remove(&mut self, key: u128, len: u8) -> Option<u32> {
        if len <= TOP_DEPTH {
            let i = find_rule(&self.rules, slot(key, 0) as u8, len)?;
            let rule = self.rules.remove(i);
            let (lo, hi) = rule.range(0);
            self.repaint(lo, hi);
            return Some(rule.value);
        }
        let tops = Arc::make_mut(&mut self.tops);
        Arc::make_mut(&mut tops[slot(key, 0)]).remove(key, len, &self.empty)
    }

    /// New defaults for the `Top`s `lo..hi` from the root rules.
    fn repaint(&mut self, lo: usize, hi: usize) {
        let mut vals = [E::default(); SLOTS];
        paint(E::default(), &self.rules, 0, lo, hi, &mut vals);
        for (s, &v) in vals.iter().enumerate().take(hi).skip(lo) {
            if self.tops[s].default != v {
                Top::set_default(&mut Arc::make_mut(&mut self.tops)[s], v);
            }
        }
    }

    fn get(&self, key: u128, len: u8) -> Option<u32> {
        if len <= TOP_DEPTH {
            return find_rule(&self.rules, slot(key, 0) as u8, len).map(|i| self.rules[i].value);
        }
        self.tops[slot(key, 0)].get(key, len)
    }

    /// The leaf of the longest prefix containing `k` (0: none).
    #[inline(always)]
    fn find<K: LookupKey>(&self, k: K) -> E {
        let (c, e) = self.top(k);
        Self::finish(c, e, k)
    }

    /// The top-level slot of `k` and the chunk below it (the empty chunk when the slot is
    /// a leaf: its entries are 0).
    #[inline(always)]
    fn top<K: LookupKey>(&self, k: K) -> (&Chunk<E>, E) {
        let t = &self.tops[k.slot(0)];
        let m = k.slot(8);
        (&t.kids[m], t.e[m])
    }

    /// The chunk entry and the top-level entry combined without a branch (which random
    /// addresses would mispredict four times in ten): a child slot's top entry is the bare
    /// flag, cleared here, and a leaf slot's chunk entry is 0.
    #[inline(always)]
    fn finish<K: LookupKey>(c: &Chunk<E>, e: E, k: K) -> E {
        let r = c.e[k.slot(16)].or_leaf(e);
        if r.is_child() { Self::descend(c, r, k) } else { r }
    }

    /// Below depth 24 (IPv4: under a prefix longer than /24; IPv6: most lookups).
    #[inline(never)]
    fn descend<K: LookupKey>(mut c: &Chunk<E>, mut r: E, k: K) -> E {
        let mut depth = 24;
        while r.is_child() {
            if depth + 8 > K::BITS {
                return E::default();
            }
            let Some(next) = c.kids.get(r.kid()) else { return E::default() };
            c = next;
            r = c.e[k.slot(depth)];
            depth += 8;
        }
        r
    }

    /// Asks for the top-level lines `k` will read (its slot's entry and child pointer):
    /// the first stage of a two-stage prefetch, which loads nothing itself.
    #[inline(always)]
    fn prefetch_top<K: LookupKey>(&self, k: K) {
        let t = &self.tops[k.slot(0)];
        let m = k.slot(8);
        prefetch(&t.kids[m]);
        prefetch(&t.e[m]);
    }

    /// Asks for the chunk line `k` will read (the empty chunk's, always cached, for a leaf
    /// slot); reading the top-level slot on the way is an L2 hit, usually.
    #[inline(always)]
    fn prefetch_chunk<K: LookupKey>(&self, k: K) {
        prefetch(&self.top(k).0.e[k.slot(16)]);
    }

    /// Every rule as (left-aligned key, length, value index).
    fn rules(&self) -> RuleIter<'_, E> {
        let mut stack = Vec::with_capacity(64);
        for (t, top) in self.tops.iter().enumerate().rev() {
            stack.push((Node::Top(top), (t as u128) << 120, TOP_DEPTH));
        }
        RuleIter { stack, cur: self.rules.iter(), key: 0, depth: 0 }
    }

    fn memory(&self) -> usize {
        // Count a `Top` shared by several /8s (the empty one) once.
        let mut seen: Vec<*const Top<E>> = Vec::with_capacity(SLOTS);
        let mut tops = 0;
        for t in self.tops.iter() {
            if !seen.contains(&Arc::as_ptr(t)) {
                seen.push(Arc::as_ptr(t));
                tops += t.memory();
            }
        }
        std::mem::size_of::<Self>()
            + ARC_HEADER
            + std::mem::size_of::<[Arc<Top<E>>; SLOTS]>()
            + self.rules.capacity() * std::mem::size_of::<Rule>()
            + tops
            + self.empty.memory()
    }

    /// The same trie, laid out afresh: every chunk's lookup array allocated in address
    /// order before any rule list, so the arrays lookups read sit close together.
    fn compacted(&self) -> Self {
        let empty = Arc::new(Chunk::new(E::default()));
        let mut tops: Vec<Arc<Top<E>>> = self
            .tops
            .iter()
            .map(|t| {
                let kids = std::array::from_fn(|s| if t.e[s].is_child() { t.kids[s].copy_shape() } else { empty.clone() });
                Arc::new(Top { e: t.e, kids, rules: Vec::new(), default: t.default })
            })
            .collect();
        for (t, from) in tops.iter_mut().zip(self.tops.iter()) {
            let t = Arc::make_mut(t);
            t.rules = from.rules.clone();
            for s in (0..SLOTS).filter(|&s| from.e[s].is_child()) {
                Chunk::copy_rules(&mut t.kids[s], &from.kids[s]);
            }
        }
        let tops: [Arc<Top<E>>; SLOTS] = std::array::from_fn(|s| tops[s].clone());
        Trie { tops: Arc::new(tops), rules: self.rules.clone(), empty }
    }

    /// The same routes in 32-bit entries.
    fn widen(&self) -> Trie<u32> {
        let mut wide = Trie::<u32>::default();
        for (key, len, value) in self.rules() {
            wide.insert(key, len, value);
        }
        wide
    }
}

enum Node<'a, E> {
    Top(&'a Top<E>),
    Chunk(&'a Chunk<E>),
}

/// Depth-first walk over the nodes, yielding each node's rules.
struct RuleIter<'a, E> {
    stack: Vec<(Node<'a, E>, u128, u8)>,
    cur: std::slice::Iter<'a, Rule>,
    key: u128,
    depth: u8,
}

impl<E: Entry> Iterator for RuleIter<'_, E> {
    type Item = (u128, u8, u32);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.cur.next() {
                return Some((self.key | (u128::from(r.bits) << (120 - u32::from(self.depth))), r.len, r.value));
            }
            let (node, key, depth) = self.stack.pop()?;
            let child_key = |s: usize| key | ((s as u128) << (120 - u32::from(depth)));
            match node {
                Node::Top(t) => {
                    for s in (0..SLOTS).rev().filter(|&s| t.e[s].is_child()) {
                        self.stack.push((Node::Chunk(&t.kids[s]), child_key(s), depth + 8));
                    }
                    self.cur = t.rules.iter();
                }
                Node::Chunk(c) => {
                    for s in (0..SLOTS).rev().filter(|&s| c.e[s].is_child()) {
                        if let Some(k) = c.kids.get(c.e[s].kid()) {
                            self.stack.push((Node::Chunk(k), child_key(s), depth + 8));
                        }
                    }
                    self.cur = c.rules.iter();
                }
            }
            self.key = key;
            self.depth = depth;
        }
    }
}

#[derive(Clone)]
enum Tries {
    /// 16-bit entries: up to 32,767 distinct values.
    Narrow(Trie<u16>),
    /// 32-bit entries, once a table holds more distinct values.
    Wide(Trie<u32>),
}

// -----------------------------------------------------------------------------------------
// Interned values

/// The distinct values of a table by index; slot 0 is "no route". Kept in the table itself
/// (a clone copies one entry per distinct value, a FIB's next hops), so a lookup reaches
/// its value one pointer sooner than through the shared [`Interner`].
#[derive(Clone)]
struct Values<V> {
    slots: Vec<Option<V>>,
}

impl<V> Default for Values<V> {
    fn default() -> Self {
        Values { slots: vec![None] }
    }
}

impl<V> Values<V> {
    #[inline(always)]
    fn get(&self, i: u32) -> Option<&V> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    /// `get(i).copied()` for the lookup path, shaped so the caller's test of the result is
    /// not merged with a bounds check into a branch on the result (random addresses miss a
    /// BGP table three times in ten): the index is clamped with a select, and slot 0 (no
    /// route) always exists, so the read never fails.
    #[inline(always)]
    fn copied(&self, i: u32) -> Option<V>
    where
        V: Copy,
    {
        let i = i as usize;
        let i = if i < self.slots.len() { i } else { 0 };
        self.slots[i]
    }

    fn memory(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<V>>()
    }
}

/// Which index each distinct value has and how many rules refer to it.
#[derive(Clone)]
struct Interner<V> {
    refs: Vec<u32>,
    index: HashMap<V, u32, FxBuildHasher>,
    free: Vec<u32>,
}

impl<V> Default for Interner<V> {
    fn default() -> Self {
        Interner { refs: vec![0], index: HashMap::default(), free: Vec::new() }
    }
}

impl<V> Interner<V> {
    fn memory(&self) -> usize {
        ARC_HEADER
            + std::mem::size_of::<Self>()
            + (self.refs.capacity() + self.free.capacity()) * 4
            + self.index.capacity() * (std::mem::size_of::<V>() + 5)
    }
}

impl<V: Clone + Eq + Hash> Interner<V> {
    /// The index of `v`, one more reference to it.
    fn intern(&mut self, values: &mut Values<V>, v: V) -> u32 {
        if let Some(&i) = self.index.get(&v) {
            self.refs[i as usize] += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                values.slots.push(None);
                self.refs.push(0);
                (values.slots.len() - 1) as u32
            }
        };
        values.slots[i as usize] = Some(v.clone());
        self.refs[i as usize] = 1;
        self.index.insert(v, i);
        i
    }

    /// Drops one reference to `i`; its value.
    fn release(&mut self, values: &mut Values<V>, i: u32) -> V {
        let n = &mut self.refs[i as usize];
        *n -= 1;
        if *n == 0 {
            let v = values.slots[i as usize].take().expect("a referenced value is present");
            self.index.remove(&v);
            self.free.push(i);
            v
        } else {
            values.slots[i as usize].clone().expect("a referenced value is present")
        }
    }
}

// -----------------------------------------------------------------------------------------
// The table

/// Longest-prefix-match table from prefixes of one family (`P`: [`Ipv4Prefix`] by default,
/// [`Ipv6Prefix`] for [`Route6Table`]) to `V`. Cheap to clone: versions share every part
/// neither has changed since.
pub struct RouteTable<V, P: Prefix = Ipv4Prefix> {
    trie: Tries,
    values: Values<V>,
    interner: Arc<Interner<V>>,
    len: usize,
    _family: PhantomData<P>,
}

/// Longest-prefix-match table from IPv6 prefixes to `V`.
pub type Route6Table<V> = RouteTable<V, Ipv6Prefix>;

impl<V, P: Prefix> Default for RouteTable<V, P> {
    fn default() -> Self {
        RouteTable { trie: Tries::Narrow(Trie::default()), values: Values::default(), interner: Arc::default(), len: 0, _family: PhantomData }
    }
}

impl<V: Clone, P: Prefix> Clone for RouteTable<V, P> {
    fn clone(&self) -> Self {
        RouteTable {
            trie: self.trie.clone(),
            values: self.values.clone(),
            interner: self.interner.clone(),
            len: self.len,
            _family: PhantomData,
        }
    }
}

impl<V: fmt::Debug, P: Prefix> fmt::Debug for RouteTable<V, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V, P: Prefix> RouteTable<V, P> {
    /// The value of the longest prefix that contains `addr`, by reference (any `V`; see
    /// [`RouteTable::lookup`]).
    #[inline]
    pub fn lookup_ref(&self, addr: P::Addr) -> Option<&V> {
        self.values.get(self.find(addr))
    }

    /// The value index of the longest prefix containing `addr`.
    #[inline(always)]
    fn find(&self, addr: P::Addr) -> u32 {
        let k = P::lookup_key(addr);
        match &self.trie {
            Tries::Narrow(t) => t.find(k).value(),
            Tries::Wide(t) => t.find(k).value(),
        }
    }

    /// The value of the longest prefix that contains `addr`. By value, so a caller that
    /// only combines the result (`unwrap_or`) compiles to no branch at all.
    #[inline]
    pub fn lookup(&self, addr: P::Addr) -> Option<V>
    where
        V: Copy,
    {
        self.values.copied(self.find(addr))
    }

    /// Asks the CPU for the lines a lookup of `addr` will read, so that a lookup a few
    /// packets later finds them in the cache (the pipeline's prefetch stages):
    /// [`Stage::First`] the top-level slot (no load of its own), [`Stage::Second`], a few
    /// packets later, the chunk line that slot points to (read from the cached slot).
    #[inline]
    pub fn prefetch(&self, addr: P::Addr, stage: Stage) {
        let k = P::lookup_key(addr);
        match (&self.trie, stage) {
            (Tries::Narrow(t), Stage::First) => t.prefetch_top(k),
            (Tries::Narrow(t), Stage::Second) => t.prefetch_chunk(k),
            (Tries::Wide(t), Stage::First) => t.prefetch_top(k),
            (Tries::Wide(t), Stage::Second) => t.prefetch_chunk(k),
        }
    }

    /// [`RouteTable::lookup`] of every address of a batch (an RX batch of destinations),
    /// into `out[i]` for `i < min(addrs.len(), out.len())`. While it looks address `i` up it
    /// asks the CPU for the chunk line address `i + 16` will read, so the cache misses of
    /// different addresses overlap instead of queueing behind each other.
    pub fn lookup_batch(&self, addrs: &[P::Addr], out: &mut [Option<V>])
    where
        V: Copy,
    {
        match &self.trie {
            Tries::Narrow(t) => self.batch_in(t, addrs, out),
            Tries::Wide(t) => self.batch_in(t, addrs, out),
        }
    }

    #[inline(always)]
    fn batch_in<E: Entry>(&self, t: &Trie<E>, addrs: &[P::Addr], out: &mut [Option<V>])
    where
        V: Copy,
    {
        // How far ahead the chunk line is asked for. 16 beat 8, 24 and 32; it also beat
        // prefetching in groups (all top lines, then all chunk lines, then the reads) and a
        // pipeline that kept the top-level reads for the second stage in a ring, whose
        // extra work cost more than it hid (`cargo bench --bench lpm`; docs/perf.md).
        const AHEAD: usize = 16;
        for &x in addrs.iter().take(AHEAD) {
            t.prefetch_chunk(P::lookup_key(x));
        }
        for (i, (&x, o)) in addrs.iter().zip(out.iter_mut()).enumerate() {
            if let Some(&next) = addrs.get(i + AHEAD) {
                t.prefetch_chunk(P::lookup_key(next));
            }
            *o = self.values.copied(t.find(P::lookup_key(x)).value());
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get(&self, prefix: P) -> Option<&V> {
        let (key, len) = (prefix.key(), prefix.prefix_len());
        let i = match &self.trie {
            Tries::Narrow(t) => t.get(key, len),
            Tries::Wide(t) => t.get(key, len),
        }?;
        self.values.get(i)
    }

    /// Routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route, a shorter prefix before the longer ones inside it.
    pub fn iter(&self) -> Iter<'_, V, P> {
        let rules = match &self.trie {
            Tries::Narrow(t) => IterRules::Narrow(t.rules()),
            Tries::Wide(t) => IterRules::Wide(t.rules()),
        };
        Iter { rules, values: &self.values, _family: PhantomData }
    }

    /// Bytes held by this table (lookup arrays, rules, values), counting shared parts
    /// as if they were its own.
    pub fn memory_bytes(&self) -> usize {
        let trie = match &self.trie {
            Tries::Narrow(t) => t.memory(),
            Tries::Wide(t) => t.memory(),
        };
        std::mem::size_of::<Self>() + trie + self.values.memory() + self.interner.memory()
    }

    /// The same table laid out afresh for locality: lookup arrays in address order, apart
    /// from the rule lists. Worth it after a bulk load (the control thread's first full
    /// table); the result shares nothing with `self`.
    pub fn compacted(&self) -> Self
    where
        V: Clone,
    {
        let trie = match &self.trie {
            Tries::Narrow(t) => Tries::Narrow(t.compacted()),
            Tries::Wide(t) => Tries::Wide(t.compacted()),
        };
        RouteTable { trie, values: self.values.clone(), interner: self.interner.clone(), len: self.len, _family: PhantomData }
    }

    /// Whether slots are 32 bits wide (more than 32,767 distinct values were stored).
    pub fn is_wide(&self) -> bool {
        matches!(self.trie, Tries::Wide(_))
    }
}

impl<V: Clone + Eq + Hash, P: Prefix> RouteTable<V, P> {
    /// Adds or replaces the route of `prefix`; the value it replaced.
    pub fn insert(&mut self, prefix: P, value: V) -> Option<V> {
        let vi = Arc::make_mut(&mut self.interner).intern(&mut self.values, value);
        let wide = match &self.trie {
            Tries::Narrow(t) if vi > <u16 as Entry>::MAX_VALUE => Some(t.widen()),
            _ => None,
        };
        if let Some(w) = wide {
            self.trie = Tries::Wide(w);
        }
        let (key, len) = (prefix.key(), prefix.prefix_len());
        let old = match &mut self.trie {
            Tries::Narrow(t) => t.insert(key, len, vi),
            Tries::Wide(t) => t.insert(key, len, vi),
        };
        match old {
            Some(o) => Some(Arc::make_mut(&mut self.interner).release(&mut self.values, o)),
            None => {
                self.len += 1;
                None
            }
        }
    }

    /// Removes the route of exactly `prefix`; its value.
    pub fn remove(&mut self, prefix: P) -> Option<V> {
        // A miss copies nothing.
        self.get(prefix)?;
        let (key, len) = (prefix.key(), prefix.prefix_len());
        let old = match &mut self.trie {
            Tries::Narrow(t) => t.remove(key, len),
            Tries::Wide(t) => t.remove(key, len),
        }?;
        self.len -= 1;
        Some(Arc::make_mut(&mut self.interner).release(&mut self.values, old))
    }
}

enum IterRules<'a> {
    Narrow(RuleIter<'a, u16>),
    Wide(RuleIter<'a, u32>),
}

/// The routes of a [`RouteTable`], from [`RouteTable::iter`].
pub struct Iter<'a, V, P> {
    rules: IterRules<'a>,
    values: &'a Values<V>,
    _family: PhantomData<P>,
}

impl<V, P> fmt::Debug for Iter<'_, V, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<'a, V, P: Prefix> Iterator for Iter<'a, V, P> {
    type Item = (P, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        let (key, len, vi) = match &mut self.rules {
            IterRules::Narrow(r) => r.next(),
            IterRules::Wide(r) => r.next(),
        }?;
        let v = self.values.get(vi).expect("every rule's value is interned");
        Some((P::from_key(key, len), v))
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }

    fn p6(s: &str) -> Ipv6Prefix {
        s.parse().unwrap()
    }

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Tests build addresses from left-aligned keys.
    trait Family: Prefix {
        fn addr_of(key: u128) -> Self::Addr;
    }
    impl Family for Ipv4Prefix {
        fn addr_of(key: u128) -> Ipv4Addr {
            Ipv4Addr::from((key >> 96) as u32)
        }
    }
    impl Family for Ipv6Prefix {
        fn addr_of(key: u128) -> Ipv6Addr {
            Ipv6Addr::from(key)
        }
    }

    fn covers<P: Prefix>(q: &P, key: u128) -> bool {
        let len = u32::from(q.prefix_len());
        len == 0 || (key ^ q.key()) >> (128 - len) == 0
    }

    /// The reference: a linear scan, the longest match wins.
    fn naive<P: Prefix, V>(routes: &[(P, V)], key: u128) -> Option<&V> {
        routes.iter().filter(|(q, _)| covers(q, key)).max_by_key(|(q, _)| q.prefix_len()).map(|(_, v)| v)
    }

    /// Addresses that probe the edges of every route, plus random ones.
    fn probes<P: Prefix>(routes: &[(P, u32)], next: &mut impl FnMut() -> u64) -> Vec<u128> {
        let shift = 128 - u32::from(P::BITS);
        let mut keys = Vec::new();
        for (q, _) in routes {
            let host = u128::MAX.checked_shr(u32::from(q.prefix_len())).unwrap_or(0);
            let host = host >> shift << shift;
            keys.extend([q.key(), q.key() | host, q.key().wrapping_sub(1 << shift), (q.key() | host).wrapping_add(1 << shift)]);
        }
        for _ in 0..200 {
            let r = (u128::from(next()) << 64 | u128::from(next())) >> shift << shift;
            keys.push(r);
        }
        keys.into_iter().map(|k| k >> shift << shift).collect()
    }

    /// Table and reference agree on every probe, on exact gets, on iteration and length,
    /// and batched lookups agree with single ones.
    fn check<P: Family>(t: &RouteTable<u32, P>, routes: &[(P, u32)], next: &mut impl FnMut() -> u64) -> Result<(), TestCaseError> {
        prop_assert_eq!(t.len(), routes.len());
        for (q, v) in routes {
            prop_assert_eq!(t.get(*q), Some(v), "get {}", q);
        }
        let mut listed: Vec<(P, u32)> = t.iter().map(|(q, v)| (q, *v)).collect();
        let mut want = routes.to_vec();
        listed.sort_by_key(|(q, _)| (q.key(), q.prefix_len()));
        want.sort_by_key(|(q, _)| (q.key(), q.prefix_len()));
        prop_assert_eq!(listed, want);
        let keys = probes(routes, next);
        let addrs: Vec<P::Addr> = keys.iter().map(|&k| P::addr_of(k)).collect();
        let mut batch = vec![None; addrs.len()];
        t.lookup_batch(&addrs, &mut batch);
        for (i, &k) in keys.iter().enumerate() {
            let want = naive(routes, k);
            prop_assert_eq!(t.lookup(addrs[i]), want.copied(), "lookup of {:#x}", k);
            prop_assert_eq!(t.lookup_ref(addrs[i]), want, "lookup_ref of {:#x}", k);
            prop_assert_eq!(batch[i], want.copied(), "batched lookup of {:#x}", k);
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u8, u32),
        Remove(u128, u8),
    }

    /// Prefixes built from a few base addresses (so they nest and overlap) or at random,
    /// lengths including 0 and the full width; few distinct values.
    fn ops(bits: u8) -> impl Strategy<Value = Vec<Op>> {
        let key = prop_oneof![
            3 => (0usize..4, any::<u128>()).prop_map(|(b, noise)| {
                const BASES: [u128; 4] = [0x0af4_0102 << 96, 0xc0a8_0000 << 96, 0x2001_0db8_0000_0000 << 64, 0];
                BASES[b] ^ (noise >> 100)
            }),
            1 => any::<u128>(),
        ];
        let len = prop_oneof![1 => Just(0u8), 1 => Just(bits), 1 => Just(bits - 1), 6 => 0..=bits, 2 => 16..=bits.min(40)];
        let op = (any::<bool>(), key, len, 0u32..6).prop_map(|(ins, k, l, v)| if ins { Op::Insert(k, l, v) } else { Op::Remove(k, l) });
        proptest::collection::vec(op, 1..120)
    }

    /// A table and the routes it held when it was cloned.
    type Frozen<P> = (RouteTable<u32, P>, Vec<(P, u32)>);

    fn run_ops<P: Family>(ops: &[Op]) -> Result<(), TestCaseError> {
        let mut next = rng(0x1234_5678_9abc_def1);
        let mut t: RouteTable<u32, P> = RouteTable::default();
        let mut routes: Vec<(P, u32)> = Vec::new();
        let mut frozen: Option<Frozen<P>> = None;
        let shift = 128 - u32::from(P::BITS);
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Insert(k, l, v) => {
                    let l = l.min(P::BITS);
                    let q = P::from_key(if l == 0 { 0 } else { (k >> shift << shift) & (u128::MAX << (128 - u32::from(l))) }, l);
                    let old = routes.iter().position(|(r, _)| *r == q).map(|j| routes.remove(j).1);
                    routes.push((q, v));
                    prop_assert_eq!(t.insert(q, v), old);
                }
                Op::Remove(k, l) => {
                    // Usually an existing route (a random one rarely exists).
                    let q = match routes.get(k as usize % (routes.len() + 1)) {
                        Some((q, _)) => *q,
                        None => {
                            let l = l.min(P::BITS);
                            P::from_key(if l == 0 { 0 } else { (k >> shift << shift) & (u128::MAX << (128 - u32::from(l))) }, l)
                        }
                    };
                    let old = routes.iter().position(|(r, _)| *r == q).map(|j| routes.remove(j).1);
                    prop_assert_eq!(t.remove(q), old);
                }
            }
            if i == ops.len() / 2 {
                check(&t, &routes, &mut next)?;
                frozen = Some((t.clone(), routes.clone()));
            }
        }
        check(&t, &routes, &mut next)?;
        // The clone taken halfway saw none of the later changes.
        if let Some((f, froutes)) = frozen {
            check(&f, &froutes, &mut next)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn ipv4_matches_a_linear_scan(ops in ops(32)) {
            run_ops::<Ipv4Prefix>(&ops)?;
        }

        #[test]
        fn ipv6_matches_a_linear_scan(ops in ops(128)) {
            run_ops::<Ipv6Prefix>(&ops)?;
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::default();
        t.insert(p("0.0.0.0/0"), "default");
        t.insert(p("10.244.0.0/16"), "cluster");
        t.insert(p("10.244.2.0/24"), "node2");
        t.insert(p("10.244.2.7/32"), "pod");
        assert_eq!(t.lookup("10.244.2.7".parse().unwrap()), Some("pod"));
        assert_eq!(t.lookup("10.244.2.8".parse().unwrap()), Some("node2"));
        assert_eq!(t.lookup("10.244.3.1".parse().unwrap()), Some("cluster"));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some("default"));
        t.remove(p("0.0.0.0/0"));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), None);
        t.remove(p("10.244.2.0/24"));
        assert_eq!(t.lookup("10.244.2.8".parse().unwrap()), Some("cluster"));
        assert_eq!(t.lookup("10.244.2.7".parse().unwrap()), Some("pod"));
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(p("10.244.2.0/24")), None);
        assert_eq!(t.insert(p("10.244.0.0/16"), "cluster2"), Some("cluster"));
        assert_eq!(t.lookup("10.244.9.9".parse().unwrap()), Some("cluster2"));
    }

    #[test]
    fn ipv6_longest_prefix_wins() {
        let mut t = Route6Table::default();
        t.insert(p6("::/0"), 0);
        t.insert(p6("2001:db8::/32"), 1);
        t.insert(p6("2001:db8:1::/48"), 2);
        t.insert(p6("2001:db8:1::7/128"), 3);
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(t.lookup(a("2001:db8:1::7")), Some(3));
        assert_eq!(t.lookup(a("2001:db8:1::8")), Some(2));
        assert_eq!(t.lookup(a("2001:db8:2::1")), Some(1));
        assert_eq!(t.lookup(a("fe80::1")), Some(0));
        assert_eq!(t.remove(p6("2001:db8:1::/48")), Some(2));
        assert_eq!(t.lookup(a("2001:db8:1::8")), Some(1));
        assert_eq!(t.lookup(a("2001:db8:1::7")), Some(3));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn prefixes_are_masked_and_validated() {
        assert_eq!(p("10.244.1.77/24").to_string(), "10.244.1.0/24");
        assert!("10.0.0.0/33".parse::<Ipv4Prefix>().unwrap_err().contains("len 0..=32"));
        assert!("10.0.0/8".parse::<Ipv4Prefix>().is_err());
        assert!(p("10.244.1.0/24").contains("10.244.1.255".parse().unwrap()));
        assert!(!p("10.244.1.0/24").contains("10.244.2.0".parse().unwrap()));
        assert_eq!(p6("2001:db8:ffff::1/40").to_string(), "2001:db8:ff00::/40");
        assert!("2001:db8::/129".parse::<Ipv6Prefix>().unwrap_err().contains("len 0..=128"));
        assert!("2001:db8::".parse::<Ipv6Prefix>().is_err());
        assert!(p6("2001:db8::/32").contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!p6("2001:db8::/32").contains("2001:db9::".parse().unwrap()));
        assert!(p6("::/0").contains("ffff::".parse().unwrap()));
    }

    #[test]
    fn clone_then_modify_leaves_the_original_unchanged() {
        let mut t = RouteTable::default();
        for i in 0..64u32 {
            t.insert(Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 16), 16).unwrap(), i);
            t.insert(Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 16 | 0x0100), 24).unwrap(), 100 + i);
            t.insert(Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 16 | 0x0101), 32).unwrap(), 200 + i);
        }
        let before: Vec<(Ipv4Addr, Option<u32>)> = (0..200_000u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffff)))
            .map(|a| (a, t.lookup(a)))
            .collect();
        let mut c = t.clone();
        c.insert(p("0.0.0.0/0"), 999);
        c.insert(p("10.0.0.0/8"), 998);
        for i in 0..64u32 {
            c.remove(Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 16 | 0x0100), 24).unwrap());
            c.insert(Ipv4Prefix::new(Ipv4Addr::from(0x0a00_0000 | i << 16 | 0x0101), 32).unwrap(), 7);
        }
        assert_eq!(c.lookup("10.1.1.0".parse().unwrap()), Some(1));
        for (a, v) in &before {
            assert_eq!(t.lookup(*a), *v, "{a}");
        }
        assert_eq!(t.len(), 192);
        assert_eq!(c.len(), 130);
    }

    #[test]
    fn many_distinct_values_widen_the_slots() {
        let mut t = RouteTable::default();
        let n = 40_000u32;
        for i in 0..n {
            t.insert(Ipv4Prefix::new(Ipv4Addr::from(i << 8), 24).unwrap(), i);
        }
        assert!(t.is_wide());
        for i in (0..n).step_by(7) {
            assert_eq!(t.lookup(Ipv4Addr::from(i << 8 | 5)), Some(i));
        }
        assert_eq!(t.lookup(Ipv4Addr::from(n << 8)), None);
        for i in (0..n).step_by(2) {
            assert_eq!(t.remove(Ipv4Prefix::new(Ipv4Addr::from(i << 8), 24).unwrap()), Some(i));
        }
        assert_eq!(t.lookup(Ipv4Addr::from(2 << 8)), None);
        assert_eq!(t.lookup(Ipv4Addr::from(3 << 8)), Some(3));
        assert_eq!(t.len(), n as usize / 2);
    }

    #[test]
    fn lookups_never_panic_on_any_address() {
        let mut t = RouteTable::default();
        t.insert(p("255.255.255.255/32"), 1);
        t.insert(p("0.0.0.0/32"), 2);
        t.insert(p("128.0.0.0/1"), 3);
        assert_eq!(t.lookup(Ipv4Addr::BROADCAST), Some(1));
        assert_eq!(t.lookup(Ipv4Addr::UNSPECIFIED), Some(2));
        assert_eq!(t.lookup("200.1.2.3".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("1.2.3.4".parse().unwrap()), None);
        let mut t6 = Route6Table::default();
        t6.insert(p6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 1);
        assert_eq!(t6.lookup(Ipv6Addr::from(u128::MAX)), Some(1));
        assert_eq!(t6.lookup(Ipv6Addr::from(u128::MAX - 1)), None);
        // A batch longer than its output fills what fits.
        let mut out = [None; 1];
        t.lookup_batch(&[Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED], &mut out);
        assert_eq!(out, [Some(1)]);
    }

    /// A reference of the BGP test: one hash map per prefix length, probed from the longest.
    struct PerLength {
        maps: Vec<HashMap<u128, u32>>,
    }

    impl PerLength {
        fn new(bits: u8) -> Self {
            PerLength { maps: (0..=bits).map(|_| HashMap::new()).collect() }
        }
        fn insert(&mut self, key: u128, len: u8, v: u32) {
            self.maps[usize::from(len)].insert(key, v);
        }
        fn remove(&mut self, key: u128, len: u8) {
            self.maps[usize::from(len)].remove(&key);
        }
        fn lookup(&self, key: u128) -> Option<u32> {
            (0..self.maps.len()).rev().find_map(|len| {
                let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                self.maps[len].get(&(key & m)).copied()
            })
        }
    }

    fn bgp_table() -> (Vec<Ipv4Prefix>, Vec<Ipv6Prefix>) {
        let text = policy_engine::dataset::read("bgp/prefixes.txt.gz")
            .unwrap_or_else(|e| panic!("the BGP table this test needs is missing: {e}"));
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.contains(':') {
                v6.push(line.parse::<Ipv6Prefix>().unwrap_or_else(|e| panic!("{e}")));
            } else {
                v4.push(line.parse::<Ipv4Prefix>().unwrap_or_else(|e| panic!("{e}")));
            }
        }
        assert_eq!((v4.len(), v6.len()), (901_899, 160_147), "bgp/prefixes.txt.gz is not the table data/README.md describes");
        (v4, v6)
    }

    /// Checks `n` addresses: uniformly random ones and ones inside random table prefixes.
    fn check_bgp<P: Family>(t: &RouteTable<u32, P>, reference: &PerLength, prefixes: &[P], n: usize, next: &mut impl FnMut() -> u64) {
        let shift = 128 - u32::from(P::BITS);
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let r = u128::from(next()) << 64 | u128::from(next());
            let k = if i % 2 == 0 {
                r
            } else {
                let q = prefixes[next() as usize % prefixes.len()];
                q.key() | (r & u128::MAX.checked_shr(u32::from(q.prefix_len())).unwrap_or(0))
            };
            keys.push(k >> shift << shift);
        }
        let addrs: Vec<P::Addr> = keys.iter().map(|&k| P::addr_of(k)).collect();
        let mut batch = vec![None; n];
        t.lookup_batch(&addrs, &mut batch);
        for (i, &k) in keys.iter().enumerate() {
            let want = reference.lookup(k);
            assert_eq!(t.lookup(addrs[i]), want, "lookup of {:?}", Ipv6Addr::from(k));
            assert_eq!(batch[i], want, "batched lookup of {:?}", Ipv6Addr::from(k));
        }
    }

    fn bgp_family<P: Family>(prefixes: &[P], value: impl Fn(usize) -> u32, seed: u64) -> RouteTable<u32, P> {
        let mut next = rng(seed);
        let mut t = RouteTable::default();
        let mut reference = PerLength::new(P::BITS);
        for (i, q) in prefixes.iter().enumerate() {
            t.insert(*q, value(i));
            reference.insert(q.key(), q.prefix_len(), value(i));
        }
        assert_eq!(t.len(), prefixes.len());
        check_bgp(&t, &reference, prefixes, 100_000, &mut next);
        // Laid out afresh, it answers the same (and takes the changes below).
        let mut t = t.compacted();
        check_bgp(&t, &reference, prefixes, 300_000, &mut next);
        // Remove a random quarter, on a clone: the full table must not change.
        let full = t.clone();
        for (i, q) in prefixes.iter().enumerate() {
            if next() & 3 == 0 {
                assert_eq!(t.remove(*q), Some(value(i)));
                reference.remove(q.key(), q.prefix_len());
            }
        }
        check_bgp(&t, &reference, prefixes, 100_000, &mut next);
        let mut whole = PerLength::new(P::BITS);
        for (i, q) in prefixes.iter().enumerate() {
            whole.insert(q.key(), q.prefix_len(), value(i));
        }
        check_bgp(&full, &whole, prefixes, 100_000, &mut next);
        full
    }

    /// The real BGP table (both families) against a per-length hash-map reference.
    #[test]
    fn bgp_table_matches_a_per_length_reference() {
        let (v4, v6) = bgp_table();
        // IPv4 with 1,000 next hops (16-bit slots), IPv6 with a value per prefix (32-bit).
        let t4 = bgp_family(&v4, |i| (i % 1000) as u32, 1);
        assert!(!t4.is_wide());
        let t6 = bgp_family(&v6, |i| i as u32, 2);
        assert!(t6.is_wide());
        assert_eq!(t4.iter().count(), v4.len());
        assert_eq!(t6.iter().count(), v6.len());
    }
}
