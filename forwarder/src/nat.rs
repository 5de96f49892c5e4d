//! Source NAT for pod traffic that leaves the cluster (Calico's `natOutgoing`).
//!
//! A connection from a pod of a NAT pool to an address outside every pool leaves with the
//! node's address and a port (an ICMP echo identifier for ping) from [`PORTS`]; the reply,
//! addressed to the node at that port, is turned back to the pod.
//!
//! The table is one array per protocol (TCP, UDP, ICMP echo) **indexed by the node-side
//! port**: slot `p - PORTS.start()` holds the connection that owns port `p` — the pod's
//! address and port, the remote address and port, a deadline. So:
//!
//! - **A reply** (any worker may receive it) is one slot read, checked against its remote
//!   end (endpoint-dependent filtering: only the peer the pod talked to gets in).
//! - **An outbound packet** finds its slot by hashing its 5-tuple to a starting port and
//!   probing up to [`PROBES`] slots: the first holding this connection is its port; failing
//!   that, the first free or expired one is claimed (compare-and-swap). A pod's packets are
//!   handled by the worker that owns its port, so one connection is never claimed twice.
//! - **Bounded**: when every probed slot is live, the connection is refused and counted
//!   (`nat_ports_exhausted`); nothing allocates after creation.
//! - **Expiry without pauses**: a slot's deadline moves with the traffic (written at most
//!   once a second); an expired slot is free to the next claim. Timeouts: TCP 2 h 4 min
//!   (RFC 5382's minimum for established connections) until a FIN or RST is seen, then
//!   [`CLOSING_S`] from the last packet (a closed connection's port comes back soon, as
//!   Linux's conntrack lets it); UDP 5 min (RFC 4787 allows 2); ICMP 1 min.
//! - **Seqlock slots** as in the connection tracker: the second word is [`BUSY`] while a
//!   writer fills the slot; readers retry if it changed under them.
//!
//! The node's kernel keeps its own ephemeral ports below [`PORTS`] (Linux's default
//! `ip_local_port_range` is 32768–60999), so the two never hand out the same port.

use std::{
    net::Ipv4Addr,
    ops::RangeInclusive,
    sync::atomic::{AtomicU64, Ordering},
};

use encap::IpProtocol;

use crate::conntrack::{DEADLINE_MASK, before_deadline};

/// The node-side ports (and echo identifiers) NAT hands out.
pub const PORTS: RangeInclusive<u16> = 61000..=65535;
/// Slots an outbound connection probes for its port.
const PROBES: usize = 64;
/// Seconds a TCP connection's port is held after its last packet once FIN or RST was seen.
pub const CLOSING_S: u64 = 30;

const SLOTS: usize = (*PORTS.end() - *PORTS.start()) as usize + 1;

// Second word: pod port (0..15) | remote port (16..31) | deadline in seconds mod 2^20
// (32..51) | valid (52) | closing (53). 0 = empty, BUSY = being written.
const VALID: u64 = 1 << 52;
const CLOSING: u64 = 1 << 53;
const BUSY: u64 = 1 << 63;
const DEADLINE_SHIFT: u32 = 32;

/// The pod's end of a translated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodEnd {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// Why an outbound connection got no port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// One protocol's port slots.
#[derive(Debug)]
struct Ports {
    slots: Box<[[AtomicU64; 2]]>,
    timeout_s: u64,
}

/// The NAT table of a node.
#[derive(Debug)]
pub struct Nat {
    tcp: Ports,
    udp: Ports,
    icmp: Ports,
}

impl Default for Nat {
    fn default() -> Self {
        Nat::new()
    }
}

fn live(meta: u64, now_s: u64) -> bool {
    // BUSY has no VALID bit: a slot being written is not live.
    meta & VALID != 0 && before_deadline(meta >> DEADLINE_SHIFT, now_s)
}

fn pack(pod_port: u16, remote_port: u16, deadline_s: u64) -> u64 {
    u64::from(pod_port) | (u64::from(remote_port) << 16) | ((deadline_s & DEADLINE_MASK) << DEADLINE_SHIFT) | VALID
}

fn addrs(pod: Ipv4Addr, remote: Ipv4Addr) -> u64 {
    (u64::from(u32::from(pod)) << 32) | u64::from(u32::from(remote))
}

impl Ports {
    fn new(timeout_s: u64) -> Ports {
        Ports { slots: (0..SLOTS).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(), timeout_s }
    }

    /// Slot `i`'s (addresses, meta) if it is live, read under its seqlock.
    fn read(&self, i: usize, now_s: u64) -> Option<(u64, u64)> {
        let slot = &self.slots[i];
        loop {
            let m = slot[1].load(Ordering::Acquire);
            if !live(m, now_s) {
                return None;
            }
            let a = slot[0].load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if slot[1].load(Ordering::Relaxed) == m {
                return Some((a, m));
            }
        }
    }

    /// Moves slot `i`'s deadline (meta `m` as read) to `now_s` + its timeout, if it moved;
    /// `closes` (a TCP FIN or RST) makes the slot closing for good.
    fn refresh(&self, i: usize, m: u64, now_s: u64, closes: bool) {
        let closing = m & CLOSING != 0 || closes;
        let deadline = (now_s + if closing { CLOSING_S } else { self.timeout_s }) & DEADLINE_MASK;
        let next = (m & !(DEADLINE_MASK << DEADLINE_SHIFT)) | (deadline << DEADLINE_SHIFT) | if closing { CLOSING } else { 0 };
        if next != m {
            let _ = self.slots[i][1].compare_exchange(m, next, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn outbound(&self, pod: PodEnd, remote: Ipv4Addr, remote_port: u16, now_s: u64, closes: bool) -> Result<u16, Exhausted> {
        let a = addrs(pod.addr, remote);
        let h = (a ^ (u64::from(pod.port) << 16 | u64::from(remote_port)).rotate_left(40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = ((h >> 32) as usize) % SLOTS;
        let mut free = None;
        for k in 0..PROBES {
            let i = (start + k) % SLOTS;
            match self.read(i, now_s) {
                Some((sa, m)) if sa == a && m as u16 == pod.port && (m >> 16) as u16 == remote_port => {
                    self.refresh(i, m, now_s, closes);
                    return Ok(port_at(i));
                }
                Some(_) => {}
                None if free.is_none() => free = Some(i),
                None => {}
            }
        }
        // Claim the first free slot seen, or a later one if another worker took it.
        for k in free.into_iter().flat_map(|f| (f..f + PROBES).map(|i| i % SLOTS)) {
            let slot = &self.slots[k];
            let m = slot[1].load(Ordering::Acquire);
            if live(m, now_s) || m == BUSY {
                continue;
            }
            if slot[1].compare_exchange(m, BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                slot[0].store(a, Ordering::Relaxed);
                slot[1].store(pack(pod.port, remote_port, now_s + self.timeout_s), Ordering::Release);
                return Ok(port_at(k));
            }
        }
        Err(Exhausted)
    }

    fn inbound(&self, port: u16, remote: Ipv4Addr, remote_port: u16, now_s: u64, closes: bool) -> Option<PodEnd> {
        let i = usize::from(port.checked_sub(*PORTS.start())?);
        let (a, m) = self.read(i, now_s)?;
        if a as u32 != u32::from(remote) || (m >> 16) as u16 != remote_port {
            return None;
        }
        self.refresh(i, m, now_s, closes);
        Some(PodEnd { addr: Ipv4Addr::from((a >> 32) as u32), port: m as u16 })
    }

    fn live_count(&self, now_s: u64) -> usize {
        (0..SLOTS).filter(|&i| self.read(i, now_s).is_some()).count()
    }
}

fn port_at(i: usize) -> u16 {
    *PORTS.start() + i as u16
}

impl Nat {
    pub fn new() -> Nat {
        Nat { tcp: Ports::new(7440), udp: Ports::new(300), icmp: Ports::new(60) }
    }

    fn ports(&self, proto: IpProtocol) -> Option<&Ports> {
        match proto {
            IpProtocol::Tcp => Some(&self.tcp),
            IpProtocol::Udp => Some(&self.udp),
            IpProtocol::Icmp => Some(&self.icmp),
            _ => None,
        }
    }

    /// The node-side port of the connection `pod` → `remote`:`remote_port` (`proto`), at
    /// `now_ms` — the one it has, or a new one. For ICMP echo, ports are identifiers and
    /// `remote_port` is 0. `closes`: the packet is a TCP FIN or RST.
    pub fn outbound(&self, proto: IpProtocol, pod: PodEnd, remote: Ipv4Addr, remote_port: u16, now_ms: u64, closes: bool) -> Result<u16, Exhausted> {
        self.ports(proto).ok_or(Exhausted)?.outbound(pod, remote, remote_port, now_ms / 1000, closes)
    }

    /// The pod a reply from `remote`:`remote_port` to the node's `port` belongs to.
    pub fn inbound(&self, proto: IpProtocol, port: u16, remote: Ipv4Addr, remote_port: u16, now_ms: u64, closes: bool) -> Option<PodEnd> {
        self.ports(proto)?.inbound(port, remote, remote_port, now_ms / 1000, closes)
    }

    /// Live translations of `proto` (for `twill stats` and tests).
    pub fn live(&self, proto: IpProtocol, now_ms: u64) -> usize {
        self.ports(proto).map_or(0, |p| p.live_count(now_ms / 1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    #[test]
    fn a_connection_keeps_its_port_and_its_reply_finds_the_pod() {
        let nat = Nat::new();
        let pod = PodEnd { addr: POD, port: 40000 };
        let p = nat.outbound(IpProtocol::Udp, pod, WORLD, 53, 1000, false).unwrap();
        assert!(PORTS.contains(&p));
        assert_eq!(nat.outbound(IpProtocol::Udp, pod, WORLD, 53, 2000, false), Ok(p));
        assert_eq!(nat.inbound(IpProtocol::Udp, p, WORLD, 53, 2000, false), Some(pod));
        assert_eq!(nat.inbound(IpProtocol::Udp, p, WORLD, 54, 2000, false), None, "another remote port");
        assert_eq!(nat.inbound(IpProtocol::Udp, p, Ipv4Addr::new(198, 51, 100, 2), 53, 2000, false), None);
        assert_eq!(nat.inbound(IpProtocol::Tcp, p, WORLD, 53, 2000, false), None, "protocols apart");
        assert_eq!(nat.inbound(IpProtocol::Udp, p, WORLD, 53, 2000 + 301_000, false), None, "expired");
    }

    #[test]
    fn concurrent_connections_get_distinct_ports_until_the_range_is_used_up() {
        let nat = Nat::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..SLOTS as u32 {
            let pod = PodEnd { addr: Ipv4Addr::from(u32::from(POD) + i / 1000), port: 1024 + (i % 1000) as u16 };
            if let Ok(p) = nat.outbound(IpProtocol::Tcp, pod, WORLD, 443, 1000, false) {
                assert!(seen.insert(p), "port {p} handed out twice");
            }
        }
        // Probing a bounded window leaves a few slots unclaimed before the table is full.
        assert!(seen.len() > SLOTS * 9 / 10, "{} of {SLOTS}", seen.len());
        assert_eq!(nat.live(IpProtocol::Tcp, 1000), seen.len());
        // An expired connection's port is free again.
        let late = PodEnd { addr: POD, port: 7 };
        assert!(nat.outbound(IpProtocol::Tcp, late, WORLD, 443, 1000 + 7_441_000, false).is_ok());
    }

    #[test]
    fn a_closed_tcp_connection_gives_its_port_back_soon() {
        let nat = Nat::new();
        let pod = PodEnd { addr: POD, port: 40000 };
        let p = nat.outbound(IpProtocol::Tcp, pod, WORLD, 443, 1000, false).unwrap();
        assert_eq!(nat.inbound(IpProtocol::Tcp, p, WORLD, 443, 2000, true), Some(pod), "the FIN passes");
        // The last ACK does not make it long-lived again.
        assert_eq!(nat.outbound(IpProtocol::Tcp, pod, WORLD, 443, 3000, false), Ok(p));
        assert_eq!(nat.inbound(IpProtocol::Tcp, p, WORLD, 443, 3000 + (CLOSING_S - 1) * 1000, false), Some(pod));
        assert_eq!(nat.inbound(IpProtocol::Tcp, p, WORLD, 443, 3000 + (2 * CLOSING_S) * 1000, false), None, "expired");
    }

    #[test]
    fn two_workers_claiming_at_once_never_share_a_port() {
        let nat = Nat::new();
        let ports: Vec<Vec<u16>> = std::thread::scope(|s| {
            let h: Vec<_> = (0..2u32)
                .map(|w| {
                    let nat = &nat;
                    s.spawn(move || {
                        (0..2000u16)
                            .filter_map(|i| nat.outbound(IpProtocol::Udp, PodEnd { addr: Ipv4Addr::from(u32::from(POD) + w), port: 1024 + i }, WORLD, 53, 1000, false).ok())
                            .collect()
                    })
                })
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: std::collections::HashSet<u16> = ports.iter().flatten().copied().collect();
        assert_eq!(all.len(), ports[0].len() + ports[1].len());
        assert_eq!(all.len(), 4000);
    }
}
