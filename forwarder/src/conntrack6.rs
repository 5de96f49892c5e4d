//! Connection tracking for IPv6 flows: the table of `conntrack.rs` — same semantics, same
//! code (its generic [`Table`]) — keyed by [`Flow6`].
//!
//! What differs is the slot. Two 128-bit addresses do not fit a 16-byte slot, and folding
//! them into fewer bits would let two flows share an entry (a reply admitted for a
//! connection never opened), so a slot holds both whole: one cache line of eight words —
//! the low end's address (high, low 64 bits), the high end's, the meta word of the IPv4
//! slot (ports, protocol, state, opener, deadline) and a sequence word. A bucket is four
//! such lines and the side array of 8-bit tags still picks the one a lookup reads: one
//! random line per packet, as for IPv4. 64 bytes and a tag byte a flow; sized for twice the
//! flows expected, as the IPv4 table advises, 130 bytes per expected flow.
//!
//! The sequence word makes the four address words one seqlocked value. The meta word alone
//! cannot: a slot emptied and refilled with a flow of the same ports, state and deadline
//! second has the same meta word, and a reader that read half of each entry's addresses
//! would see no change. The writer (holding the meta word `BUSY`) makes
//! the sequence odd, writes the addresses, makes it even; a reader keeps what it read only
//! if the sequence was even and unchanged around the reads (and the meta word too).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    conntrack::{
        Table, Tuple, WAYS,
        slot::{self, Key, Layout},
    },
    huge::{self, HugeTable},
};

/// The IPv6 connection table of a node.
pub type Conntrack6 = Table<Flow6>;

/// The 5-tuple of an IPv6 packet, as seen on the wire (addresses as `u128`, network order
/// read big-endian, as [`std::net::Ipv6Addr::to_bits`] gives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow6 {
    pub src: u128,
    pub dst: u128,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Flow6 {
    /// The flow as its other end sends it.
    pub fn reversed(self) -> Flow6 {
        Flow6 { src: self.dst, dst: self.src, proto: self.proto, src_port: self.dst_port, dst_port: self.src_port }
    }
}

impl Tuple for Flow6 {}

/// Words of a slot: 0..4 the addresses, then these.
const META: usize = 4;
const SEQ: usize = 5;

/// An address as its two words, high first.
fn words(a: u128) -> [u64; 2] {
    [(a >> 64) as u64, a as u64]
}

fn join(high: u64, low: u64) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

/// A 64 × 64 → 128-bit multiply by an odd constant, folded back to 64 bits: every input bit
/// reaches the output's middle bits.
#[inline(always)]
fn fold(x: u64) -> u64 {
    let p = u128::from(x) * 0xd6e8_feb8_6659_fd93;
    (p as u64) ^ ((p >> 64) as u64)
}

impl Layout for Flow6 {
    type Addrs = [u64; 4];
    /// One cache line: addresses, meta word, sequence word, two unused words.
    type Slot = [AtomicU64; 8];
    /// The sequence word before the addresses were read.
    type Version = u64;

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn key(&self) -> (Key<[u64; 4]>, bool) {
        let from_lo = (self.src, self.src_port) <= (self.dst, self.dst_port);
        let ((lo, lo_port), (hi, hi_port)) = if from_lo {
            ((self.src, self.src_port), (self.dst, self.dst_port))
        } else {
            ((self.dst, self.dst_port), (self.src, self.src_port))
        };
        let ([a, b], [c, d]) = (words(lo), words(hi));
        (Key { addrs: [a, b, c, d], rest: slot::rest(lo_port, hi_port, self.proto) }, from_lo)
    }

    fn from_key(key: &Key<[u64; 4]>, opener_lo: bool) -> Flow6 {
        let [a, b, c, d] = key.addrs;
        let (lo, hi) = (join(a, b), join(c, d));
        let (lo_port, hi_port, proto) = slot::ports_proto(key.rest);
        if opener_lo {
            Flow6 { src: lo, dst: hi, proto, src_port: lo_port, dst_port: hi_port }
        } else {
            Flow6 { src: hi, dst: lo, proto, src_port: hi_port, dst_port: lo_port }
        }
    }

    /// Each end's two words through two folded multiplies (the chains run side by side),
    /// so no bit of an address is lost to the hash; ports and protocol as for IPv4.
    #[inline(always)]
    fn mix(k: &Key<[u64; 4]>) -> u64 {
        let [a, b, c, d] = k.addrs;
        let lo = fold(fold(a ^ 0x2545_f491_4f6c_dd1d) ^ b);
        let hi = fold(fold(c ^ 0x9e37_79b9_7f4a_7c15) ^ d);
        lo ^ hi.rotate_left(32) ^ k.rest.rotate_left(29)
    }

    #[inline(always)]
    fn meta(slot: &[AtomicU64; 8]) -> &AtomicU64 {
        &slot[META]
    }

    #[inline(always)]
    fn read(slot: &[AtomicU64; 8]) -> ([u64; 4], u64) {
        let seq = slot[SEQ].load(Ordering::Acquire);
        (std::array::from_fn(|i| slot[i].load(Ordering::Relaxed)), seq)
    }

    #[inline(always)]
    fn unchanged(slot: &[AtomicU64; 8], seq: u64) -> bool {
        seq & 1 == 0 && slot[SEQ].load(Ordering::Relaxed) == seq
    }

    /// Only the holder of the BUSY meta word writes, so the sequence word has one writer.
    #[inline(always)]
    fn write(slot: &[AtomicU64; 8], addrs: &[u64; 4]) {
        let seq = slot[SEQ].load(Ordering::Relaxed);
        slot[SEQ].store(seq.wrapping_add(1), Ordering::Relaxed);
        // Odd before the addresses, to a reader that sees any of them.
        std::sync::atomic::fence(Ordering::Release);
        for (word, a) in slot.iter().zip(addrs) {
            word.store(*a, Ordering::Relaxed);
        }
        slot[SEQ].store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The first way whose tag matches (way 0 when none does: `trailing_zeros` of 0 is 32,
    /// a multiple of `WAYS`), without a branch.
    #[inline(always)]
    fn prefetch(buckets: &HugeTable<[[AtomicU64; 8]; WAYS]>, b: usize, ways: u32) {
        if let Some(bucket) = buckets.get(b) {
            huge::prefetch(&bucket[ways.trailing_zeros() as usize % WAYS]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conntrack::{BUSY, Insert, State, Timeouts, Tracked, fill_slot, read_slot},
        route::Stage,
    };
    use std::{collections::HashSet, sync::Arc};

    /// Pods of one /64 (so flows differ in the low words) talking to hosts of several
    /// prefixes (so they differ in the high words too).
    fn flow(i: u32, proto: u8) -> Flow6 {
        let pod = 0xfd00_0000_0000_0001_0000_0000_0000_0000 | u128::from(i) << 16 | 0x0a;
        let host = 0x2001_0db8_0000_0000_0000_0000_0000_0000 | u128::from(i >> 3) << 64 | 0x1;
        Flow6 { src: pod, dst: host, proto, src_port: 30000 + (i as u16), dst_port: 443 }
    }

    #[test]
    fn replies_find_the_flow_and_establish_it() {
        let ct = Conntrack6::new(1024, Timeouts::default());
        let f = flow(1, 6);
        assert_eq!(ct.track(&f, 0, false), None);
        assert_eq!(ct.insert(&f, 0), Insert::Inserted);
        assert_eq!(ct.insert(&f, 0), Insert::Exists);
        assert_eq!(ct.insert(&f.reversed(), 0), Insert::Exists, "one entry for both directions");
        assert!(ct.is_tracked(&f.reversed(), 0));
        assert_eq!(ct.track(&f, 1, false), Some(Tracked { state: State::New, reply: false }));
        assert_eq!(ct.track(&f.reversed(), 2, false), Some(Tracked { state: State::Established, reply: true }));
        assert_eq!(ct.track(&f, 3, false), Some(Tracked { state: State::Established, reply: false }));
        assert_eq!(ct.track(&f.reversed(), 4, true), Some(Tracked { state: State::Closing, reply: true }));
        assert_eq!(ct.track(&f, 5, false).map(|t| t.state), Some(State::Closing));
        let other = Flow6 { dst_port: 444, ..f };
        assert_eq!(ct.track(&other, 5, false), None, "another port is another flow");
        // Opened by the end that sorts high: `reply` follows the opener, not the order.
        let g = flow(2, 17).reversed();
        assert_eq!(ct.insert(&g, 0), Insert::Inserted);
        assert_eq!(ct.track(&g, 1, false), Some(Tracked { state: State::New, reply: false }));
        assert_eq!(ct.track(&g.reversed(), 1, false), Some(Tracked { state: State::Established, reply: true }));
    }

    /// Every 64-bit half of either address, and either port, is part of the key: flows that
    /// differ in any one of them are distinct, even in a table of two buckets where all
    /// share lines (and through the prefetch, which must not change an answer).
    #[test]
    fn flows_differing_in_one_half_of_an_address_are_distinct() {
        let ct = Conntrack6::new(8, Timeouts::default());
        assert_eq!(ct.buckets(), 2);
        let f = Flow6 { src: join(0xfd00, 7), dst: join(0x2001_0db8, 9), proto: 6, src_port: 40000, dst_port: 443 };
        assert_eq!(ct.insert(&f, 0), Insert::Inserted);
        let neighbours = [
            Flow6 { src: join(0xfd01, 7), ..f },
            Flow6 { src: join(0xfd00, 8), ..f },
            Flow6 { dst: join(0x2001_0db9, 9), ..f },
            Flow6 { dst: join(0x2001_0db8, 10), ..f },
            // The halves swapped between the ends, or within an address.
            Flow6 { src: join(0xfd00, 9), dst: join(0x2001_0db8, 7), ..f },
            Flow6 { src: join(7, 0xfd00), ..f },
            Flow6 { src_port: 40001, ..f },
            Flow6 { proto: 17, ..f },
        ];
        for n in neighbours {
            ct.prefetch(&n, Stage::First);
            ct.prefetch(&n, Stage::Second);
            assert_eq!(ct.track(&n, 1, false), None, "{n:x?} is not {f:x?}");
            assert_eq!(ct.track(&n.reversed(), 1, false), None, "{n:x?} reversed");
            assert!(!ct.remove(&n, 1));
        }
        assert_eq!(ct.track(&f.reversed(), 2, false), Some(Tracked { state: State::Established, reply: true }));
        for n in neighbours {
            assert_eq!(ct.insert(&n, 3), Insert::Inserted, "{n:x?} gets its own entry");
            assert_eq!(ct.track(&n, 3, false), Some(Tracked { state: State::New, reply: false }), "{n:x?} was not answered");
            assert!(ct.remove(&n.reversed(), 3));
            assert_eq!(ct.track(&f, 3, false), Some(Tracked { state: State::Established, reply: false }), "{f:x?} untouched");
        }
    }

    #[test]
    fn entries_expire_per_protocol_and_state() {
        crate::conntrack::tests::expire_per_protocol_and_state(flow);
    }

    /// Expired entries are swept empty, so their 20-bit timestamps never wrap into the future.
    #[test]
    fn sweeping_empties_expired_entries_before_their_timestamp_wraps() {
        crate::conntrack::tests::sweeps_before_wrapping_and_batches_agree(&Conntrack6::new(64, Timeouts::default()), flow);
    }

    #[test]
    fn full_table_refuses_new_flows_and_reuses_expired_slots() {
        let ct = Conntrack6::new(64, Timeouts::default());
        assert_eq!(ct.capacity(), 64);
        assert!(ct.memory_bytes() >= 64 * 64 + 16, "a line per slot, a tag word per bucket");
        crate::conntrack::tests::full_table_refuses_and_reuses(&ct, flow);
    }

    /// The IPv6 hash spreads flows as the IPv4 one does.
    #[test]
    fn refuses_almost_nothing_at_half_load_and_little_at_eighty_percent() {
        crate::conntrack::tests::refuses_little_up_to_eighty_percent(&Conntrack6::new(1 << 15, Timeouts::default()), flow);
    }

    #[test]
    fn remove_and_walk() {
        let ct = Conntrack6::new(1024, Timeouts::default());
        for i in 0..100 {
            // Every other flow opened by the end that sorts high.
            let f = flow(i, 6);
            ct.insert(&if i % 2 == 0 { f } else { f.reversed() }, 0);
        }
        assert!(ct.remove(&flow(7, 6), 1), "either direction removes");
        assert!(!ct.remove(&flow(7, 6).reversed(), 1));
        ct.track(&flow(8, 6).reversed(), 1, false);
        let mut seen = HashSet::new();
        ct.for_each_live(1, |f, s| {
            assert_eq!(s, if f == flow(8, 6) { State::Established } else { State::New }, "{f:x?}");
            seen.insert(f);
        });
        let want: HashSet<Flow6> = (0..100).filter(|i| *i != 7).map(|i| if i % 2 == 0 { flow(i, 6) } else { flow(i, 6).reversed() }).collect();
        assert_eq!(seen, want, "the walk returns each flow as its opener sent it");
        let mut later = 0;
        ct.for_each_live(Timeouts::default().tcp_new + 1000, |_, _| later += 1);
        assert_eq!(later, 1, "only the established flow outlives the SYN timeout");
    }

    /// Two threads, one per direction, as when a flow's directions land on different workers.
    #[test]
    fn both_directions_on_different_threads_agree() {
        crate::conntrack::tests::directions_on_two_threads_agree(flow);
    }

    /// Writers insert and remove, over and over, flows that share ports and every address
    /// half but one with flows that are never inserted, in a table of two buckets so the
    /// same slots are refilled all the time; readers look up both. An entry read half
    /// before and half after a refill would admit a never-inserted flow.
    #[test]
    fn concurrent_inserts_and_lookups_never_see_a_torn_entry() {
        const ROUNDS: usize = 20_000;
        let ct = Arc::new(Conntrack6::new(8, Timeouts::default()));
        // Opened: flows n whose three varying address words are all n; never opened: every
        // other mix of those words.
        let f = |a: u64, b: u64, c: u64| Flow6 { src: join(0xfd00 + a, 0x1000 + b), dst: join(0x2001_0db8, c), proto: 17, src_port: 5000, dst_port: 53 };
        let opened: Vec<Flow6> = (0..4).map(|n| f(n, n, n)).collect();
        let mut never = Vec::new();
        for (a, b, c) in (0..64).map(|i| (i & 3, (i >> 2) & 3, i >> 4)).filter(|(a, b, c)| !(a == b && b == c)) {
            never.push(f(a, b, c));
        }
        // One stays, so every reader round meets a live entry whatever the scheduling.
        assert_eq!(ct.insert(&opened[0], 0), Insert::Inserted);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (ct, opened, stop) = (Arc::clone(&ct), opened.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    // Until the readers are done (a remove may lose to a reader's refresh:
                    // the entry then stays until a later round removes it).
                    for r in (0..).take_while(|_| !stop.load(Ordering::Relaxed)) {
                        let f = opened[1 + (r + t) % (opened.len() - 1)];
                        let _ = ct.insert(&f, 0);
                        ct.remove(&f, 0);
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (ct, never, opened) = (Arc::clone(&ct), never.clone(), opened.clone());
                std::thread::spawn(move || {
                    let mut hits = 0;
                    for _ in 0..ROUNDS {
                        for n in &never {
                            assert!(!ct.is_tracked(n, 0), "{n:x?} was never opened");
                        }
                        for o in &opened {
                            if let Some(t) = ct.track(&o.reversed(), 0, false) {
                                assert!(t.reply);
                                hits += 1;
                            }
                        }
                        ct.for_each_live(0, |l, _| assert!(opened.contains(&l), "the walk made up {l:x?}"));
                    }
                    hits
                })
            })
            .collect();
        let hits: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(hits >= 2 * ROUNDS, "the readers met live entries: {hits}");
    }

    /// The case the meta word alone misses, step by step: a reader that has read the
    /// addresses of one entry, while the slot is emptied and refilled with another entry
    /// of the same meta word, must not keep what it read (it may be half of each); nor
    /// what it read while a writer was at work.
    #[test]
    fn a_refill_under_the_same_meta_word_is_seen_by_a_reader() {
        const META_WORD: u64 = 0x1234;
        let slot: [AtomicU64; 8] = Default::default();
        fill_slot::<Flow6>(&slot, &[1; 4], META_WORD);
        let (addrs, seen) = Flow6::read(&slot);
        assert_eq!(addrs, [1; 4]);
        assert!(Flow6::unchanged(&slot, seen), "nothing happened");
        slot[META].store(BUSY, Ordering::Relaxed);
        fill_slot::<Flow6>(&slot, &[2; 4], META_WORD);
        assert_eq!(slot[META].load(Ordering::Relaxed), META_WORD, "the meta word looks unchanged");
        assert!(!Flow6::unchanged(&slot, seen), "the refill is seen");
        let (_, seen) = Flow6::read(&slot);
        slot[SEQ].fetch_add(1, Ordering::Relaxed); // a writer starts
        assert!(!Flow6::unchanged(&slot, seen));
        let (_, seen) = Flow6::read(&slot);
        assert!(!Flow6::unchanged(&slot, seen), "read while a writer is at work");
    }

    /// The same under load, threaded (a stress test: on x86 a tear needs a whole refill
    /// between two loads of one line, so the case above is the one that pins it down).
    /// The seqlock of one slot where the meta word alone would be fooled: a writer refills
    /// the slot with two address sets under the same meta word; a reader must get one set
    /// or the other, never a mix.
    #[test]
    fn a_slot_refilled_under_the_same_meta_word_is_never_read_torn() {
        const META_WORD: u64 = 0x1234;
        let slot: Arc<[AtomicU64; 8]> = Arc::new(Default::default());
        let sets = [[1u64; 4], [2u64; 4]];
        fill_slot::<Flow6>(&slot, &sets[0], META_WORD);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start = Arc::new(std::sync::Barrier::new(2));
        let writer = {
            let (slot, done, start) = (Arc::clone(&slot), Arc::clone(&done), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for i in 0..1_000_000 {
                    slot[META].compare_exchange(META_WORD, BUSY, Ordering::Acquire, Ordering::Relaxed).expect("one writer");
                    fill_slot::<Flow6>(&slot, &sets[i % 2], META_WORD);
                }
                done.store(true, Ordering::Release);
            })
        };
        start.wait();
        loop {
            // One more read after the writer is done, which finds the slot filled.
            let last = done.load(Ordering::Acquire);
            if let Some((m, addrs)) = read_slot::<Flow6>(&slot, |m| m == META_WORD) {
                assert_eq!(m, META_WORD);
                assert!(sets.contains(&addrs), "torn read {addrs:?}");
            }
            if last {
                break;
            }
        }
        writer.join().unwrap();
    }
}
