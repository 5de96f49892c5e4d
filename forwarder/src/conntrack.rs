//! Connection tracking: the one table the workers write.
//!
//! A fixed-size, open-addressed table shared by every worker of a node, with no locks:
//!
//! - **Symmetric keys.** A flow's key orders its two (address, port) ends, so both
//!   directions find the same entry whichever worker handles them; the entry remembers
//!   which end opened the flow, so a lookup also says whether a packet is a reply.
//! - **A bucket is one cache line**: four 16-byte slots, each the whole entry — both
//!   addresses in one word; both ports, the protocol, state, opener and deadline in the
//!   other. A flow lives in one of two buckets chosen by independent hashes, the emptier
//!   one (two-choice hashing). A small side array holds an 8-bit tag per slot (4 bytes a
//!   bucket, so it mostly stays in cache): a lookup reads the two tag words and then only
//!   the line whose tag matches — one random memory access per packet, as a SwissTable's
//!   control bytes allow. Entries are never moved, so a few flows are refused before the
//!   table is full (the tests measure it): size the table for twice the flows expected.
//!   The table sits on transparent huge pages (`huge.rs`).
//! - **Bounded**: when both buckets are full of live flows, a new flow is refused
//!   ([`Insert::Full`]) and the caller counts and drops it, as Linux does ("table full,
//!   dropping packet"). Nothing grows, nothing allocates after creation.
//! - **Expiry without pauses.** Each entry carries its deadline (seconds, 20 bits, compared
//!   modulo 2^20); an expired entry is a free slot to the next insert and invisible to
//!   lookups. The control thread calls [`Conntrack::sweep`] on a slice of the table now and
//!   then (a full pass in well under the 6 days the timestamp range spans) so no expired
//!   entry lives long enough for its timestamp to wrap: it never stops the workers.
//! - **Seqlock slots.** A slot's meta word is 0 when empty and [`BUSY`] while a writer
//!   fills it; writers claim slots with a compare-and-swap, readers read the address word
//!   between two loads of the meta word and retry if it changed.
//! - **One table, two families.** [`Table`] is generic over the [`Tuple`] it is keyed by:
//!   [`Conntrack`] is the IPv4 table described here, [`Conntrack6`](crate::conntrack6::Conntrack6)
//!   the IPv6 one (`conntrack6.rs`: a 64-byte slot per flow, one line per lookup all the
//!   same). Only the slot layout and hashing of the key differ (`slot::Layout`); the code
//!   is monomorphised per family: the IPv4 table's hot path compiles to the instructions
//!   it had before the split, bar register allocation (compared by disassembly).
//!
//! Timeouts follow the kernel's conntrack defaults in spirit: unreplied flows expire fast
//! (TCP SYN 60 s, UDP 30 s, ICMP 30 s), replied ones slowly (TCP established 1 h, UDP 180 s),
//! closing TCP (FIN or RST seen) after 30 s. Time is given in milliseconds and kept in
//! seconds.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{huge::HugeTable, route::Stage};

/// Slots per bucket: four 16-byte IPv4 slots fill one cache line.
pub(crate) const WAYS: usize = 4;

/// The IPv4 connection table of a node.
pub type Conntrack = Table<Flow>;

/// The 5-tuple of a packet, as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Flow {
    /// The flow as its other end sends it.
    pub fn reversed(self) -> Flow {
        Flow { src: self.dst, dst: self.src, proto: self.proto, src_port: self.dst_port, dst_port: self.src_port }
    }
}

/// A 5-tuple a [`Table`] is keyed by: [`Flow`] (IPv4) or
/// [`Flow6`](crate::conntrack6::Flow6) (IPv6). Sealed: how a tuple is laid out in a slot
/// is this module's business.
pub trait Tuple: slot::Layout {}

impl Tuple for Flow {}

/// How a [`Tuple`] is stored: the parts of a table that differ between address families.
/// The rest of the table — state machine, deadlines, tags, two-choice placement, the
/// seqlock protocol, sweeping — is written once, generic over this trait, and
/// monomorphised per family, so the IPv4 table pays nothing for sharing it.
pub(crate) mod slot {
    use std::sync::atomic::AtomicU64;

    use super::WAYS;
    use crate::huge::{HugeTable, Zeroable};

    /// A flow as a slot stores it: both addresses, low end's first, in `addrs`; both ports
    /// and the protocol in the low 40 bits of `rest` (see [`rest`]).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Key<A> {
        pub addrs: A,
        pub rest: u64,
    }

    /// The `rest` of a key: the low end's port, the high end's port, the protocol.
    #[inline(always)]
    pub fn rest(lo_port: u16, hi_port: u16, proto: u8) -> u64 {
        u64::from(lo_port) | (u64::from(hi_port) << 16) | (u64::from(proto) << 32)
    }

    /// The (low end's port, high end's port, protocol) of a key's `rest`.
    #[inline(always)]
    pub fn ports_proto(rest: u64) -> (u16, u16, u8) {
        (rest as u16, (rest >> 16) as u16, (rest >> 32) as u8)
    }

    /// One address family's tuple and slot.
    pub trait Layout: Copy {
        /// A key's address words.
        type Addrs: Copy + Eq + Default;
        /// A slot: the address words, the meta word (see `pack`) and whatever the family
        /// needs to read its address words consistently. All zero = empty.
        type Slot: Zeroable + Sync + Send;
        /// What [`Layout::read`] saw besides the addresses, for [`Layout::unchanged`].
        type Version: Copy;

        fn proto(&self) -> u8;
        /// The symmetric key, and whether this packet is sent by the "low" end.
        fn key(&self) -> (Key<Self::Addrs>, bool);
        /// The flow of `key` as its opener sent it.
        fn from_key(key: &Key<Self::Addrs>, opener_lo: bool) -> Self;
        /// The key folded to 64 bits, before the table's multiply.
        fn mix(key: &Key<Self::Addrs>) -> u64;
        fn meta(slot: &Self::Slot) -> &AtomicU64;
        /// The address words, read between two loads of the meta word (seqlock reader).
        fn read(slot: &Self::Slot) -> (Self::Addrs, Self::Version);
        /// After an acquire fence: whether the words [`Layout::read`] returned are one
        /// writer's (the caller also checks the meta word is unchanged).
        fn unchanged(slot: &Self::Slot, seen: Self::Version) -> bool;
        /// Writes the address words of a slot whose meta word the caller holds BUSY.
        fn write(slot: &Self::Slot, addrs: &Self::Addrs);
        /// Prefetches the line a lookup of bucket `b` reads when `ways` match its tag.
        fn prefetch(buckets: &HugeTable<[Self::Slot; WAYS]>, b: usize, ways: u32);
    }
}

use slot::{Key, Layout};

impl Layout for Flow {
    type Addrs = u64;
    /// Both addresses in one word, the meta word: 16 bytes.
    type Slot = [AtomicU64; 2];
    /// One word is read atomically: nothing to check.
    type Version = ();

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn key(&self) -> (Key<u64>, bool) {
        let a = (u64::from(self.src) << 16) | u64::from(self.src_port);
        let b = (u64::from(self.dst) << 16) | u64::from(self.dst_port);
        let (lo, hi, from_lo) = if a <= b { (a, b, true) } else { (b, a, false) };
        let addrs = ((lo >> 16) << 32) | (hi >> 16);
        (Key { addrs, rest: slot::rest(lo as u16, hi as u16, self.proto) }, from_lo)
    }

    fn from_key(key: &Key<u64>, opener_lo: bool) -> Flow {
        let (lo_addr, hi_addr) = ((key.addrs >> 32) as u32, key.addrs as u32);
        let (lo_port, hi_port, proto) = slot::ports_proto(key.rest);
        if opener_lo {
            Flow { src: lo_addr, dst: hi_addr, proto, src_port: lo_port, dst_port: hi_port }
        } else {
            Flow { src: hi_addr, dst: lo_addr, proto, src_port: hi_port, dst_port: lo_port }
        }
    }

    #[inline(always)]
    fn mix(k: &Key<u64>) -> u64 {
        k.addrs ^ k.rest.rotate_left(29)
    }

    #[inline(always)]
    fn meta(slot: &[AtomicU64; 2]) -> &AtomicU64 {
        &slot[1]
    }

    #[inline(always)]
    fn read(slot: &[AtomicU64; 2]) -> (u64, ()) {
        (slot[0].load(Ordering::Relaxed), ())
    }

    #[inline(always)]
    fn unchanged(_: &[AtomicU64; 2], (): ()) -> bool {
        true
    }

    #[inline(always)]
    fn write(slot: &[AtomicU64; 2], addrs: &u64) {
        slot[0].store(*addrs, Ordering::Relaxed);
    }

    /// A bucket is one line.
    #[inline(always)]
    fn prefetch(buckets: &HugeTable<[[AtomicU64; 2]; WAYS]>, b: usize, _: u32) {
        buckets.prefetch(b);
    }
}

/// What the tracker knows of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Seen in the opening direction only.
    New,
    /// The other end has answered.
    Established,
    /// TCP FIN or RST seen.
    Closing,
}

/// A lookup's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub state: State,
    /// The packet travels in the direction opposite to the one that opened the flow.
    pub reply: bool,
}

/// The result of [`Conntrack::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Inserted,
    /// Another packet (another worker) inserted it first.
    Exists,
    /// Both candidate buckets are full of live flows.
    Full,
}

/// Deadlines per protocol and state, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_new: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp_new: u64,
    pub udp_established: u64,
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_new: 60_000,
            tcp_established: 3_600_000,
            tcp_closing: 30_000,
            udp_new: 30_000,
            udp_established: 180_000,
            other: 30_000,
        }
    }
}

impl Timeouts {
    /// The same timeout for every protocol and state.
    pub const fn uniform(ms: u64) -> Timeouts {
        Timeouts { tcp_new: ms, tcp_established: ms, tcp_closing: ms, udp_new: ms, udp_established: ms, other: ms }
    }

    /// The timeout of a protocol in a state, in whole seconds (at least one).
    fn secs(&self, proto: u8, state: State) -> u64 {
        self.of(proto, state).div_ceil(1000).max(1)
    }

    fn of(&self, proto: u8, state: State) -> u64 {
        match (proto, state) {
            (6, State::New) => self.tcp_new,
            (6, State::Established) => self.tcp_established,
            (6, State::Closing) => self.tcp_closing,
            (17, State::New) => self.udp_new,
            (17, _) => self.udp_established,
            _ => self.other,
        }
    }
}

// The meta word of a slot: key bits 0..39 | valid (40) | state (41..42) | opener is the
// low end (43) | deadline in seconds modulo 2^20 (44..63). 0 = empty, BUSY = being written.
const KEY_BITS: u64 = (1 << 40) - 1;
const VALID: u64 = 1 << 40;
const DEADLINE_SHIFT: u32 = 44;
/// Deadlines are kept in seconds modulo 2^20 (about 12 days), here and in the NAT table.
pub(crate) const DEADLINE_MASK: u64 = (1 << 20) - 1;
/// A deadline further ahead than this is in the past (modulo 2^20 s).
const HORIZON: u64 = 1 << 19;
/// Meta word of a slot a writer is filling (not valid, not empty).
pub(crate) const BUSY: u64 = 1 << 63;

fn pack(rest: u64, deadline_s: u64, state: State, opener_lo: bool) -> u64 {
    let s = match state {
        State::New => 1,
        State::Established => 2,
        State::Closing => 3,
    };
    (rest & KEY_BITS)
        | VALID
        | (s << 41)
        | (u64::from(opener_lo) << 43)
        | ((deadline_s & DEADLINE_MASK) << DEADLINE_SHIFT)
}

fn unpack(meta: u64) -> (State, bool) {
    let state = match (meta >> 41) & 3 {
        2 => State::Established,
        3 => State::Closing,
        _ => State::New,
    };
    (state, (meta >> 43) & 1 == 1)
}

/// Whether the slot word `meta` is a valid entry whose deadline is after `now_s`.
#[inline]
fn live(meta: u64, now_s: u64) -> bool {
    meta & VALID != 0 && before_deadline(meta >> DEADLINE_SHIFT, now_s)
}

/// Whether `now_s` is before `deadline` (both seconds; compared modulo 2^20, so a deadline
/// more than half the range ahead counts as past).
#[inline]
pub(crate) fn before_deadline(deadline: u64, now_s: u64) -> bool {
    let ahead = deadline.wrapping_sub(now_s) & DEADLINE_MASK;
    ahead != 0 && ahead < HORIZON
}

/// Seconds of a millisecond clock.
#[inline]
fn secs(now_ms: u64) -> u64 {
    now_ms / 1000
}

/// Where a key may live: its two candidate buckets, and its tag (8 hash bits, never 0).
#[derive(Debug, Clone, Copy)]
struct Place {
    buckets: [usize; 2],
    tag: u8,
}

/// The ways of a bucket whose tag byte in `tags` may be `tag` (a superset: SWAR zero-byte
/// test, whose rare false positives only cost a look at the slot).
#[inline]
fn tag_ways(tags: u32, tag: u8) -> u32 {
    let x = tags ^ (u32::from(tag) * 0x0101_0101);
    let zero = x.wrapping_sub(0x0101_0101) & !x & 0x8080_8080;
    // Byte i's high bit → bit i.
    ((zero >> 7) & 1) | ((zero >> 14) & 2) | ((zero >> 21) & 4) | ((zero >> 28) & 8)
}

/// Reads a slot under its seqlock: its meta word and address words, if `wanted(meta)`.
/// Retries while a writer changes the slot under it; the words returned are one writer's.
#[inline(always)]
pub(crate) fn read_slot<F: Layout>(slot: &F::Slot, wanted: impl Fn(u64) -> bool) -> Option<(u64, F::Addrs)> {
    loop {
        let m = F::meta(slot).load(Ordering::Acquire);
        if !wanted(m) {
            return None;
        }
        let (addrs, seen) = F::read(slot);
        std::sync::atomic::fence(Ordering::Acquire);
        if F::meta(slot).load(Ordering::Relaxed) != m || !F::unchanged(slot, seen) {
            continue; // rewritten while we read: look again
        }
        return Some((m, addrs));
    }
}

/// Fills a slot whose meta word the caller has set to [`BUSY`]: the address words, then
/// `meta`, which makes the entry visible.
#[inline(always)]
pub(crate) fn fill_slot<F: Layout>(slot: &F::Slot, addrs: &F::Addrs, meta: u64) {
    // BUSY before the address words, to a reader that sees any of them (for weakly ordered
    // CPUs; on x86 the compare-and-swap that set BUSY is a barrier already).
    std::sync::atomic::fence(Ordering::Release);
    F::write(slot, addrs);
    F::meta(slot).store(meta, Ordering::Release);
}

/// A connection table of a node, for the flows of one address family: [`Conntrack`] (IPv4)
/// or [`Conntrack6`](crate::conntrack6::Conntrack6) (IPv6).
#[derive(Debug)]
pub struct Table<F: Tuple> {
    /// `WAYS` slots per bucket (one cache line for IPv4, one line per slot for IPv6).
    buckets: HugeTable<[F::Slot; WAYS]>,
    /// Per bucket, one tag byte per way: a lookup reads this small array (4 bytes a
    /// bucket, mostly in cache) to know which of its two lines to read. A superset: set
    /// before a slot is filled, left behind when it empties.
    tags: HugeTable<AtomicU32>,
    mask: usize,
    timeouts: Timeouts,
}

impl<F: Tuple> Table<F> {
    /// A table for at least `flows` flows (rounded up to a power of two of buckets).
    pub fn new(flows: usize, timeouts: Timeouts) -> Table<F> {
        let buckets = flows.div_ceil(WAYS).next_power_of_two().max(2);
        Table { buckets: HugeTable::zeroed(buckets), tags: HugeTable::zeroed(buckets), mask: buckets - 1, timeouts }
    }

    /// Flows the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes of memory the table uses.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.bytes() + self.tags.bytes()
    }

    /// Two buckets from independent hash bits (two-choice hashing), and the tag.
    #[inline]
    fn place(&self, k: &Key<F::Addrs>) -> Place {
        // One multiply (Fibonacci hashing) and a fold: the key's bits reach the high half,
        // the fold brings them down to the bucket index.
        let h = F::mix(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = h ^ (h >> 32);
        let tag = ((h >> 24) as u8) | 1;
        Place { buckets: [h as usize & self.mask, (h >> 32) as usize & self.mask], tag }
    }

    /// The ways of both buckets whose tags match.
    #[inline]
    fn candidates(&self, place: &Place) -> [u32; 2] {
        place.buckets.map(|b| tag_ways(self.tags[b].load(Ordering::Acquire), place.tag))
    }

    /// Finds the live entry of `k`: (bucket, way, meta word). Only slots whose tag
    /// matches are read: usually one line.
    #[inline(always)]
    fn find(&self, k: &Key<F::Addrs>, place: &Place, now_s: u64) -> Option<(usize, usize, u64)> {
        let masks = self.candidates(place);
        // The common case first, chosen without a branch: the first tag match of the first
        // bucket that has one (which bucket holds a key is a coin toss to a predictor).
        let (b, m) = if masks[0] != 0 { (place.buckets[0], masks[0]) } else { (place.buckets[1], masks[1]) };
        if m != 0 {
            let w = m.trailing_zeros() as usize;
            if let Some(hit) = self.check_slot(k, b, w, now_s) {
                return Some(hit);
            }
        }
        // Then every candidate (a tag shared by another key, or the key in the second bucket).
        for (b, mut ways) in place.buckets.into_iter().zip(masks) {
            while ways != 0 {
                let w = ways.trailing_zeros() as usize;
                ways &= ways - 1;
                if let Some(hit) = self.check_slot(k, b, w, now_s) {
                    return Some(hit);
                }
            }
        }
        None
    }

    /// Whether slot `w` of bucket `b` holds the live entry of `k` (read under its seqlock).
    #[inline(always)]
    fn check_slot(&self, k: &Key<F::Addrs>, b: usize, w: usize, now_s: u64) -> Option<(usize, usize, u64)> {
        let (m, addrs) = read_slot::<F>(&self.buckets[b][w], |m| m & KEY_BITS == k.rest && live(m, now_s))?;
        (addrs == k.addrs).then_some((b, w, m))
    }

    /// Looks up the packet `flow` at time `now` (ms) and refreshes the entry: a reply moves
    /// a new flow to established, TCP FIN/RST (`tcp_fin_rst`) to closing.
    #[inline]
    pub fn track(&self, flow: &F, now: u64, tcp_fin_rst: bool) -> Option<Tracked> {
        let (k, from_lo) = flow.key();
        let place = self.place(&k);
        self.track_key(&k, &place, from_lo, flow.proto(), secs(now), tcp_fin_rst)
    }

    /// Prefetches what a lookup of `flow` will read, so that a lookup soon after finds it in
    /// the cache (the pipeline's prefetch stages): [`Stage::First`] the tag words of both
    /// buckets (no load of its own), [`Stage::Second`] the line the tags point at.
    #[inline]
    pub fn prefetch(&self, flow: &F, stage: Stage) {
        let place = self.place(&flow.key().0);
        match stage {
            Stage::First => {
                for b in place.buckets {
                    self.tags.prefetch(b);
                }
            }
            Stage::Second => self.prefetch_place(&place),
        }
    }

    /// Prefetches the line a lookup of `place` will read: the first slot whose tag matches.
    #[inline]
    fn prefetch_place(&self, place: &Place) {
        // Without a branch (where the key sits is a coin toss a branch would mispredict):
        // the first bucket if its tags match, else the second.
        let [first, second] = self.candidates(place);
        let (b, ways) = if first != 0 { (place.buckets[0], first) } else { (place.buckets[1], second) };
        F::prefetch(&self.buckets, b, ways);
    }

    /// [`Table::track`] for a vector of packets (no FIN/RST among them): `out[i]` for
    /// `flows[i]`, for as many as both hold. A software pipeline over the vector (VPP's
    /// prefetch stages): packet `i` has its tag words prefetched while packet `i - D` has
    /// the line its tag points at prefetched and packet `i - 2D` is tracked, so the cache
    /// misses of different packets overlap instead of queueing.
    pub fn track_batch(&self, flows: &[F], now: u64, out: &mut [Option<Tracked>]) {
        /// Prefetch distance, in packets, between the stages.
        const D: usize = 12;
        /// Ring of the packets in flight (a power of two above 2 D).
        const RING: usize = 64;
        let n = flows.len().min(out.len());
        let now_s = secs(now);
        let mut keys = [(Key::<F::Addrs>::default(), false); RING];
        let mut places = [Place { buckets: [0; 2], tag: 0 }; RING];
        for i in 0..n + 2 * D {
            if i < n {
                let r = i % RING;
                keys[r] = flows[i].key();
                places[r] = self.place(&keys[r].0);
                self.tags.prefetch(places[r].buckets[0]);
                self.tags.prefetch(places[r].buckets[1]);
            }
            if let Some(j) = i.checked_sub(D).filter(|j| *j < n) {
                self.prefetch_place(&places[j % RING]);
            }
            if let Some(j) = i.checked_sub(2 * D).filter(|j| *j < n) {
                let (k, from_lo) = &keys[j % RING];
                out[j] = self.track_key(k, &places[j % RING], *from_lo, flows[j].proto(), now_s, false);
            }
        }
    }

    /// Inlined into `track` and `track_batch` always: as a generic function it is weighed
    /// differently by LLVM's inliner, which left it a call (checked on the IPv4 code).
    #[inline(always)]
    fn track_key(&self, k: &Key<F::Addrs>, place: &Place, from_lo: bool, proto: u8, now_s: u64, tcp_fin_rst: bool) -> Option<Tracked> {
        let (b, w, m) = self.find(k, place, now_s)?;
        let (state, opener_lo) = unpack(m);
        let reply = from_lo != opener_lo;
        let next = match state {
            _ if tcp_fin_rst && proto == 6 => State::Closing,
            State::New if reply => State::Established,
            s => s,
        };
        let deadline = now_s + self.timeouts.secs(proto, next);
        // Write only when something changed or the deadline moved: established flows do
        // not write a shared cache line more than once a second.
        if next != state || (m >> DEADLINE_SHIFT) != deadline & DEADLINE_MASK {
            let _ = F::meta(&self.buckets[b][w]).compare_exchange(m, pack(k.rest, deadline, next, opener_lo), Ordering::AcqRel, Ordering::Relaxed);
        }
        Some(Tracked { state: next, reply })
    }

    /// Whether `flow` (either direction) is tracked, without refreshing it.
    #[inline]
    pub fn is_tracked(&self, flow: &F, now: u64) -> bool {
        let k = flow.key().0;
        self.find(&k, &self.place(&k), secs(now)).is_some()
    }

    /// Records a new flow opened by `flow`'s sender (after policy allowed it).
    pub fn insert(&self, flow: &F, now: u64) -> Insert {
        let now_s = secs(now);
        let (k, from_lo) = flow.key();
        let place = self.place(&k);
        if self.find(&k, &place, now_s).is_some() {
            return Insert::Exists;
        }
        let meta = pack(k.rest, now_s + self.timeouts.secs(flow.proto(), State::New), State::New, from_lo);
        // The emptier of the two buckets first (two-choice hashing keeps buckets even).
        let [b1, b2] = place.buckets;
        let order = if self.free_slots(b2, now_s) > self.free_slots(b1, now_s) { [b2, b1] } else { [b1, b2] };
        for b in order {
            for (w, slot) in self.buckets[b].iter().enumerate() {
                let m = F::meta(slot).load(Ordering::Acquire);
                if m == BUSY || live(m, now_s) {
                    continue;
                }
                if F::meta(slot).compare_exchange(m, BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                // The tag first: a reader that sees the entry has seen its tag.
                let shift = 8 * w as u32;
                let _ = self.tags[b].fetch_update(Ordering::Release, Ordering::Relaxed, |t| {
                    Some((t & !(0xff << shift)) | (u32::from(place.tag) << shift))
                });
                fill_slot::<F>(slot, &k.addrs, meta);
                return Insert::Inserted;
            }
        }
        Insert::Full
    }

    fn free_slots(&self, b: usize, now_s: u64) -> usize {
        self.buckets[b]
            .iter()
            .filter(|slot| {
                let m = F::meta(slot).load(Ordering::Relaxed);
                m != BUSY && !live(m, now_s)
            })
            .count()
    }

    /// Forgets `flow` (a policy change now denies it).
    pub fn remove(&self, flow: &F, now: u64) -> bool {
        let (k, _) = flow.key();
        match self.find(&k, &self.place(&k), secs(now)) {
            Some((b, w, m)) => F::meta(&self.buckets[b][w]).compare_exchange(m, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok(),
            None => false,
        }
    }

    /// Visits every live flow (opener's view) — for re-judging flows after a policy change.
    /// Runs beside the workers; it sees each flow that stays live during the walk once.
    pub fn for_each_live(&self, now: u64, mut f: impl FnMut(F, State)) {
        let now_s = secs(now);
        for bucket in self.buckets.iter() {
            for slot in bucket {
                let Some((m, addrs)) = read_slot::<F>(slot, |m| live(m, now_s)) else { continue };
                let (state, opener_lo) = unpack(m);
                f(F::from_key(&Key { addrs, rest: m & KEY_BITS }, opener_lo), state);
            }
        }
    }

    /// Empties the expired slots of `count` buckets starting at bucket `start` (modulo the
    /// table); returns the bucket to start from next time. Beside the workers, without
    /// stopping them: an expired slot is free to them already, this only keeps its
    /// timestamp from ever wrapping into the future.
    pub fn sweep(&self, now: u64, start: usize, count: usize) -> usize {
        let now_s = secs(now);
        for i in 0..count.min(self.buckets.len()) {
            for slot in &self.buckets[(start + i) & self.mask] {
                let m = F::meta(slot).load(Ordering::Relaxed);
                if m != 0 && m != BUSY && !live(m, now_s) {
                    let _ = F::meta(slot).compare_exchange(m, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
        }
        (start + count) & self.mask
    }

    /// Buckets in the table (for sweeping in slices).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::{collections::HashSet, sync::Arc};

    fn flow(i: u32, proto: u8) -> Flow {
        Flow { src: 0x0af4_0100 + i, dst: 0x0af4_0200 + (i >> 3), proto, src_port: 30000 + (i as u16), dst_port: 80 }
    }

    #[test]
    fn replies_find_the_flow_and_establish_it() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let f = flow(1, 6);
        assert_eq!(ct.track(&f, 0, false), None);
        assert_eq!(ct.insert(&f, 0), Insert::Inserted);
        assert_eq!(ct.insert(&f, 0), Insert::Exists);
        assert_eq!(ct.track(&f, 1, false), Some(Tracked { state: State::New, reply: false }));
        assert_eq!(ct.track(&f.reversed(), 2, false), Some(Tracked { state: State::Established, reply: true }));
        assert_eq!(ct.track(&f, 3, false), Some(Tracked { state: State::Established, reply: false }));
        assert_eq!(ct.track(&f, 4, true).map(|t| t.state), Some(State::Closing));
        let other = Flow { dst_port: 81, ..f };
        assert_eq!(ct.track(&other, 5, false), None, "another port is another flow");
    }

    /// The flow's other direction, for any family (its key with the opener flipped).
    pub(crate) fn reversed<F: Tuple>(f: &F) -> F {
        let (key, lo) = f.key();
        F::from_key(&key, !lo)
    }

    #[test]
    fn entries_expire_per_protocol_and_state() {
        expire_per_protocol_and_state(flow);
    }

    /// Unreplied UDP, established TCP and closing TCP each live as long as their timeout.
    pub(crate) fn expire_per_protocol_and_state<F: Tuple>(flow: impl Fn(u32, u8) -> F) {
        let t = Timeouts::default();
        let ct = Table::<F>::new(1024, t);
        let (tcp, udp) = (flow(1, 6), flow(2, 17));
        ct.insert(&tcp, 0);
        ct.insert(&udp, 0);
        assert!(ct.track(&udp, t.udp_new - 1, false).is_some());
        assert!(ct.track(&udp, 2 * t.udp_new, false).is_none(), "unreplied UDP expired");
        ct.track(&reversed(&tcp), 10, false);
        assert!(ct.track(&tcp, t.tcp_new * 10, false).is_some(), "established TCP outlives the SYN timeout");
        ct.track(&tcp, t.tcp_new * 10, true);
        assert!(ct.track(&tcp, t.tcp_new * 10 + t.tcp_closing + 2000, false).is_none(), "closing TCP expired");
    }

    /// What every table must do when full: refuse, then take new flows into expired slots.
    pub(crate) fn full_table_refuses_and_reuses<F: Tuple>(ct: &Table<F>, flow: impl Fn(u32, u8) -> F) {
        let mut inserted = 0;
        let mut full = 0;
        for i in 0..1000 {
            match ct.insert(&flow(i, 17), 0) {
                Insert::Inserted => inserted += 1,
                Insert::Full => full += 1,
                Insert::Exists => panic!("distinct flows"),
            }
        }
        assert!(inserted <= ct.capacity() && inserted >= ct.capacity() / 2, "{inserted} of {}", ct.capacity());
        assert!(full > 0);
        let later = Timeouts::default().udp_new + 1;
        let again = (1000..2000).filter(|i| ct.insert(&flow(*i, 17), later) == Insert::Inserted).count();
        assert!(again >= ct.capacity() / 2, "expired slots are reused: {again}");
    }

    /// Without moving entries, two choices of 4-way buckets refuse almost nothing at half
    /// load and a little near 80 % (which also says the family's hash spreads flows).
    pub(crate) fn refuses_little_up_to_eighty_percent<F: Tuple>(ct: &Table<F>, flow: impl Fn(u32, u8) -> F) {
        let cap = ct.capacity() as u32;
        let refused = |range: std::ops::Range<u32>| range.filter(|i| ct.insert(&flow(*i, 17), 0) == Insert::Full).count();
        let half = refused(0..cap / 2);
        assert!(half * 1000 <= (cap / 2) as usize, "{half} refused at 50 % load");
        let more = refused(cap / 2..cap * 8 / 10);
        assert!((half + more) * 50 < cap as usize * 8 / 10, "{more} more refused on the way to 80 %");
        let found = (0..cap * 8 / 10).filter(|i| ct.track(&flow(*i, 17), 1, false).is_some()).count();
        assert_eq!(found, (cap * 8 / 10) as usize - half - more, "every accepted flow is found");
    }

    #[test]
    fn full_table_refuses_new_flows_and_reuses_expired_slots() {
        full_table_refuses_and_reuses(&Conntrack::new(64, Timeouts::default()), flow);
    }

    #[test]
    fn refuses_almost_nothing_at_half_load_and_little_at_eighty_percent() {
        refuses_little_up_to_eighty_percent(&Conntrack::new(1 << 15, Timeouts::default()), flow);
    }

    #[test]
    fn remove_and_walk() {
        let ct = Conntrack::new(1024, Timeouts::default());
        for i in 0..100 {
            ct.insert(&flow(i, 6), 0);
        }
        assert!(ct.remove(&flow(7, 6), 1));
        assert!(!ct.remove(&flow(7, 6), 1));
        let mut seen = HashSet::new();
        ct.for_each_live(1, |f, s| {
            assert_eq!(s, State::New);
            seen.insert(f);
        });
        let want: HashSet<Flow> = (0..100).filter(|i| *i != 7).map(|i| flow(i, 6)).collect();
        assert_eq!(seen, want, "the walk returns each flow as its opener sent it");
    }

    /// Expired entries are swept empty, so their 20-bit timestamps never wrap into the
    /// future: an entry left 2^20 s would otherwise come back to life.
    #[test]
    fn sweeping_empties_expired_entries_before_their_timestamp_wraps() {
        sweeps_before_wrapping_and_batches_agree(&Conntrack::new(64, Timeouts::default()), flow);
    }

    /// An expired entry swept away stays gone after its timestamp wraps (one slice per
    /// bucket comes round), and a batched lookup finds what single lookups find.
    pub(crate) fn sweeps_before_wrapping_and_batches_agree<F: Tuple>(ct: &Table<F>, flow: impl Fn(u32, u8) -> F) {
        let f = flow(3, 17);
        ct.insert(&f, 0);
        let wrapped = (DEADLINE_MASK + 1) * 1000;
        assert!(ct.track(&f, wrapped, false).is_some(), "unswept, the timestamp has wrapped");
        let mut at = 0;
        for _ in 0..ct.buckets() {
            at = ct.sweep(60_000, at, 1);
        }
        assert_eq!(at, 0, "one slice per bucket comes round");
        assert!(ct.track(&f, wrapped, false).is_none(), "swept when expired, it stays gone");
        let batch: Vec<F> = (0..40).map(|i| flow(i, 6)).collect();
        for f in &batch[..20] {
            ct.insert(f, 0);
        }
        let mut out = vec![None; batch.len()];
        ct.track_batch(&batch, 1, &mut out);
        assert_eq!(out.iter().filter(|o| o.is_some()).count(), 20, "the batch finds what single lookups find");
        for (f, o) in batch.iter().zip(&out) {
            assert_eq!(*o, ct.track(f, 1, false));
        }
    }

    /// Two threads, one per direction, as when a flow's directions land on different workers.
    #[test]
    fn both_directions_on_different_threads_agree() {
        directions_on_two_threads_agree(flow);
    }

    /// One thread opens 20,000 flows while another answers them: a reply is never taken
    /// for an opener, and afterwards every flow is established.
    pub(crate) fn directions_on_two_threads_agree<F: Tuple + Send + Sync + 'static>(flow: impl Fn(u32, u8) -> F) {
        let ct = Arc::new(Table::<F>::new(1 << 16, Timeouts::default()));
        let flows: Arc<Vec<F>> = Arc::new((0..20_000).map(|i| flow(i, 6)).collect());
        let opener = {
            let (ct, flows) = (Arc::clone(&ct), Arc::clone(&flows));
            std::thread::spawn(move || {
                for f in flows.iter() {
                    assert_ne!(ct.insert(f, 0), Insert::Full);
                }
            })
        };
        let replier = {
            let (ct, flows) = (Arc::clone(&ct), Arc::clone(&flows));
            std::thread::spawn(move || {
                for f in flows.iter() {
                    if let Some(t) = ct.track(&reversed(f), 1, false) {
                        assert!(t.reply, "a reply is never taken for an opener");
                    }
                }
            })
        };
        opener.join().unwrap();
        replier.join().unwrap();
        for f in flows.iter() {
            let t = ct.track(&reversed(f), 2, false).expect("every flow is tracked");
            assert!(t.reply);
            assert_eq!(t.state, State::Established);
        }
    }
}
