//! The stateful policy stage of the pipeline: connection tracking, then policy for new
//! connections (NetworkPolicy is stateful: replies to an allowed connection pass).
//!
//! For an IPv4 packet between a local pod and anything (the pipeline calls [`admit`] once
//! it knows where the packet goes, before rewriting it; for an IPv6 packet [`admit6`], the
//! same steps on the IPv6 tables — ICMPv6 echo in place of ICMP echo, the fragment header's
//! identification — and the IPv6 judgement of the same rule sets):
//!
//! 1. A later fragment (no L4 header) passes only if the first fragment of its datagram
//!    was admitted (the fragment table remembers (addresses, protocol, IP id) for a few
//!    seconds); otherwise it is dropped as `fragment_unmatched` — as when the kernel's
//!    reassembly never sees the first fragment.
//! 2. An ICMP error about a tracked connection passes (conntrack's RELATED).
//! 3. A packet of a tracked connection passes, either way; TCP FIN / RST move it to
//!    closing (`ct_established` counts them).
//! 4. Anything else opens a connection: egress of the source pod if it is local, then
//!    ingress of the destination pod if it is local, each judged by that pod's compiled
//!    [`RuleSet`] (a pod no policy selects in a direction is open in it). An allowed
//!    connection is inserted (`ct_new`); a full table refuses it (`conntrack_full`).
//!    ICMP errors and ICMP messages other than echo are judged alone and not tracked.
//!    A matched Log rule counts `policy_logged` and puts a [`PolicyLog`] on this worker's
//!    ring for the control thread to write (`policy_log_dropped` when the ring is full).
//!
//! Policy changes: [`rejudge`] walks the connection table with the new tables and forgets
//! connections they deny, so their next packet is judged again — and dropped.
//!
//! No allocation, locks or system calls; every refusal is a [`DropReason`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Instant,
};

use crossbeam::queue::ArrayQueue;
use encap::flow::{self, FiveTuple, FlowAddress, FlowInfo, Fragment};
use policy_engine::{
    classifier::Key,
    compiler::{Judgement, Key6, PolicyTables, RuleSet},
    model::{Direction, proto},
    reference::Verdict,
};

use crate::{
    conntrack::{Conntrack, Flow, Insert, Table, Timeouts, Tuple},
    conntrack6::{Conntrack6, Flow6},
    counters::{DropReason, WorkerCounters, bump},
    nat::Nat,
};

/// A Log rule matched a new connection.
#[derive(Debug, Clone)]
pub struct PolicyLog {
    pub tuple: FiveTuple<IpAddr>,
    /// Whose policy logged: egress = the source pod's, ingress = the destination pod's.
    pub direction: Direction,
    /// What the policy then decided.
    pub verdict: Verdict,
    pub rules: Arc<RuleSet>,
    /// The Log rule's entry in `rules`.
    pub entry: u32,
}

/// Events a worker's Log ring holds.
pub const LOG_RING: usize = 1024;
/// First fragments remembered at once (per family).
const FRAGMENTS: usize = 4096;
/// How long a first fragment's admission holds for the rest (Linux's `ipfrag_time`).
const FRAGMENT_TIMEOUT_MS: u64 = 30_000;

/// A node's flow tables: its connections and admitted first fragments (IPv4 and IPv6), one
/// Log ring per worker, and the clock they run on.
#[derive(Debug)]
pub struct FlowTables {
    pub conntrack: Conntrack,
    pub fragments: Conntrack,
    pub conntrack6: Conntrack6,
    pub fragments6: Conntrack6,
    /// Source NAT for connections leaving the cluster.
    pub nat: Nat,
    pub logs: Vec<ArrayQueue<PolicyLog>>,
    epoch: Instant,
}

impl FlowTables {
    /// Tables for at least `flows` IPv4 and `flows6` IPv6 connections and `workers` workers.
    pub fn new(flows: usize, flows6: usize, workers: usize) -> FlowTables {
        FlowTables {
            conntrack: Conntrack::new(flows, Timeouts::default()),
            fragments: Conntrack::new(FRAGMENTS, Timeouts::uniform(FRAGMENT_TIMEOUT_MS)),
            conntrack6: Conntrack6::new(flows6, Timeouts::default()),
            fragments6: Conntrack6::new(FRAGMENTS, Timeouts::uniform(FRAGMENT_TIMEOUT_MS)),
            nat: Nat::new(),
            logs: (0..workers.max(1)).map(|_| ArrayQueue::new(LOG_RING)).collect(),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the tables were made, plus one (0 means "empty" to the tracker).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// What worker `worker` hands the pipeline for one batch at time `now_ms`.
    pub fn state<'a>(&'a self, worker: usize, counters: &'a WorkerCounters, now_ms: u64) -> FlowState<'a> {
        FlowState {
            conntrack: &self.conntrack,
            fragments: &self.fragments,
            conntrack6: &self.conntrack6,
            fragments6: &self.fragments6,
            nat: &self.nat,
            now_ms,
            counters,
            log: &self.logs[worker.min(self.logs.len() - 1)],
        }
    }
}

/// The tables the stage reads and writes besides the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct FlowState<'a> {
    /// The node's connections (shared by its workers).
    pub conntrack: &'a Conntrack,
    /// First fragments admitted, by (addresses, protocol, IP id).
    pub fragments: &'a Conntrack,
    /// The same for IPv6.
    pub conntrack6: &'a Conntrack6,
    pub fragments6: &'a Conntrack6,
    /// The node's NAT table (shared by its workers).
    pub nat: &'a Nat,
    /// Milliseconds on the node's clock (never 0).
    pub now_ms: u64,
    /// This worker's counters.
    pub counters: &'a WorkerCounters,
    /// This worker's Log ring.
    pub log: &'a ArrayQueue<PolicyLog>,
}

impl From<FiveTuple> for Flow {
    fn from(t: FiveTuple) -> Flow {
        Flow { src: u32::from(t.src), dst: u32::from(t.dst), proto: t.proto, src_port: t.src_port, dst_port: t.dst_port }
    }
}

/// What the stage needs of an address family: its parser, its connection and fragment
/// tables, its classifier key and its echo request.
trait Family: FlowAddress + Into<IpAddr> {
    type Flow: Tuple;
    /// The ICMP (ICMPv6) protocol number.
    const ICMP: u8;
    /// The ICMP (ICMPv6) echo request and echo reply types.
    const ECHO: (u8, u8);
    fn parse(ip: &[u8]) -> Result<FlowInfo<Self>, encap::Error>;
    fn flow(t: &FiveTuple<Self>) -> Self::Flow;
    fn tuple(f: &Self::Flow) -> FiveTuple<Self>;
    fn fragment_key(info: &FlowInfo<Self>) -> Self::Flow;
    fn tables<'a>(fs: &FlowState<'a>) -> (&'a Table<Self::Flow>, &'a Table<Self::Flow>);
    fn flow_hash(info: &FlowInfo<Self>) -> u32;
    /// The pod's rule set judgement of a packet with classifier fields `t` (ICMP type and
    /// code already in the ports).
    fn judge(policy: &PolicyTables, rules: &RuleSet, t: &FiveTuple<Self>) -> Judgement;
    fn rules(policy: &PolicyTables, pod: Self, dir: Direction) -> Option<&Arc<RuleSet>>;
}

impl Family for Ipv4Addr {
    type Flow = Flow;
    const ICMP: u8 = proto::ICMP;
    const ECHO: (u8, u8) = (8, 0);
    fn parse(ip: &[u8]) -> Result<FlowInfo, encap::Error> {
        flow::parse_flow_info(ip)
    }
    fn flow(t: &FiveTuple) -> Flow {
        Flow::from(*t)
    }
    fn tuple(f: &Flow) -> FiveTuple {
        FiveTuple { src: Ipv4Addr::from(f.src), dst: Ipv4Addr::from(f.dst), proto: f.proto, src_port: f.src_port, dst_port: f.dst_port }
    }
    fn fragment_key(info: &FlowInfo) -> Flow {
        Flow { src: u32::from(info.tuple.src), dst: u32::from(info.tuple.dst), proto: info.tuple.proto, src_port: info.ident, dst_port: 0 }
    }
    fn tables<'a>(fs: &FlowState<'a>) -> (&'a Conntrack, &'a Conntrack) {
        (fs.conntrack, fs.fragments)
    }
    fn flow_hash(info: &FlowInfo) -> u32 {
        encap::vxlan::flow_hash_of(info)
    }
    fn judge(policy: &PolicyTables, rules: &RuleSet, t: &FiveTuple) -> Judgement {
        rules.judge(policy, &Key { src: u32::from(t.src), dst: u32::from(t.dst), proto: t.proto, src_port: t.src_port, dst_port: t.dst_port })
    }
    fn rules(policy: &PolicyTables, pod: Ipv4Addr, dir: Direction) -> Option<&Arc<RuleSet>> {
        policy.peer(pod).and_then(|p| p.rules(dir))
    }
}

impl Family for Ipv6Addr {
    type Flow = Flow6;
    const ICMP: u8 = encap::icmpv6::NEXT_HEADER;
    const ECHO: (u8, u8) = (128, 129);
    fn parse(ip: &[u8]) -> Result<FlowInfo<Ipv6Addr>, encap::Error> {
        flow::parse_flow_info6(ip)
    }
    fn flow(t: &FiveTuple<Ipv6Addr>) -> Flow6 {
        Flow6 { src: t.src.to_bits(), dst: t.dst.to_bits(), proto: t.proto, src_port: t.src_port, dst_port: t.dst_port }
    }
    fn tuple(f: &Flow6) -> FiveTuple<Ipv6Addr> {
        FiveTuple { src: Ipv6Addr::from_bits(f.src), dst: Ipv6Addr::from_bits(f.dst), proto: f.proto, src_port: f.src_port, dst_port: f.dst_port }
    }
    fn fragment_key(info: &FlowInfo<Ipv6Addr>) -> Flow6 {
        let t = &info.tuple;
        Flow6 { src: t.src.to_bits(), dst: t.dst.to_bits(), proto: t.proto, src_port: (info.ident >> 16) as u16, dst_port: info.ident as u16 }
    }
    fn tables<'a>(fs: &FlowState<'a>) -> (&'a Conntrack6, &'a Conntrack6) {
        (fs.conntrack6, fs.fragments6)
    }
    fn flow_hash(info: &FlowInfo<Ipv6Addr>) -> u32 {
        encap::vxlan::flow_hash_of6(info)
    }
    fn judge(policy: &PolicyTables, rules: &RuleSet, t: &FiveTuple<Ipv6Addr>) -> Judgement {
        rules.judge6(policy, &Key6 { src: t.src, dst: t.dst, proto: t.proto, src_port: t.src_port, dst_port: t.dst_port })
    }
    fn rules(policy: &PolicyTables, pod: Ipv6Addr, dir: Direction) -> Option<&Arc<RuleSet>> {
        policy.peer6(pod).and_then(|p| p.rules(dir))
    }
}

/// The classifier fields of a packet: ICMP type and code in the port fields for ICMP.
fn key_of<A: Copy>(tuple: &FiveTuple<A>, icmp: Option<(u8, u8)>) -> FiveTuple<A> {
    match icmp {
        Some((t, c)) => FiveTuple { src_port: u16::from(t), dst_port: u16::from(c), ..*tuple },
        None => *tuple,
    }
}

/// Judges a new connection for the local ends; `on_log` hears of matched Log rules.
fn judge<A: Family>(
    policy: &PolicyTables,
    key: &FiveTuple<A>,
    src_local: bool,
    dst_local: bool,
    mut on_log: impl FnMut(Direction, Verdict, &Arc<RuleSet>, u32),
) -> Result<(), DropReason> {
    let ends = [
        (src_local, key.src, Direction::Egress, DropReason::PolicyDeniedEgress),
        (dst_local, key.dst, Direction::Ingress, DropReason::PolicyDeniedIngress),
    ];
    for (local, ip, dir, denied) in ends {
        if !local {
            continue;
        }
        let Some(rules) = A::rules(policy, ip, dir) else { continue };
        let j = A::judge(policy, rules, key);
        if let Some(entry) = j.logged {
            on_log(dir, j.verdict, rules, entry);
        }
        if j.verdict == Verdict::Deny {
            return Err(denied);
        }
    }
    Ok(())
}

/// Admits or refuses the IPv4 packet `ip` (its header validated) between a local pod and
/// a peer; `src_local` / `dst_local` say which ends are pods of this node. An admitted
/// packet's flow hash ([`encap::vxlan::flow_hash_of`]) comes back for the stages after
/// (the VXLAN source port), so none parses the packet again.
#[inline]
pub fn admit(fs: &FlowState, policy: &PolicyTables, ip: &[u8], src_local: bool, dst_local: bool) -> Result<u32, DropReason> {
    admit_family::<Ipv4Addr>(fs, policy, ip, src_local, dst_local)
}

/// [`admit`] for the IPv6 packet `ip` (IPv6 connection and fragment tables, the IPv6
/// judgement of the same rule sets; ICMPv6 echo opens a connection).
#[inline]
pub fn admit6(fs: &FlowState, policy: &PolicyTables, ip: &[u8], src_local: bool, dst_local: bool) -> Result<u32, DropReason> {
    admit_family::<Ipv6Addr>(fs, policy, ip, src_local, dst_local)
}

#[inline]
fn admit_family<A: Family>(fs: &FlowState, policy: &PolicyTables, ip: &[u8], src_local: bool, dst_local: bool) -> Result<u32, DropReason> {
    let info = A::parse(ip).map_err(|e| match e {
        encap::Error::Truncated => DropReason::Truncated,
        _ => DropReason::BadIpHeader,
    })?;
    let (conntrack, fragments) = A::tables(fs);
    if info.fragment == Fragment::Later {
        return if fragments.is_tracked(&A::fragment_key(&info), fs.now_ms) {
            Ok(A::flow_hash(&info))
        } else {
            Err(DropReason::FragmentUnmatched)
        };
    }
    if let Some(quoted) = info.related
        && conntrack.is_tracked(&A::flow(&quoted), fs.now_ms)
    {
        bump(&fs.counters.ct_related, 1);
        return Ok(A::flow_hash(&info));
    }
    let flow = A::flow(&info.tuple);
    // Echo requests and replies are tracked; other ICMP (errors above all) is not.
    let echo = |icmp: (u8, u8)| icmp == (A::ECHO.0, 0) || icmp.0 == A::ECHO.1;
    let tracked = info.related.is_none()
        && info.icmp.is_none_or(echo)
        && conntrack.track(&flow, fs.now_ms, info.closes()).is_some();
    if tracked {
        bump(&fs.counters.ct_established, 1);
    } else {
        let key = key_of(&info.tuple, info.icmp);
        judge(policy, &key, src_local, dst_local, |direction, verdict, rules, entry| {
            bump(&fs.counters.policy_logged, 1);
            let t = info.tuple;
            let tuple = FiveTuple { src: t.src.into(), dst: t.dst.into(), proto: t.proto, src_port: t.src_port, dst_port: t.dst_port };
            let event = PolicyLog { tuple, direction, verdict, rules: Arc::clone(rules), entry };
            if fs.log.push(event).is_err() {
                bump(&fs.counters.policy_log_dropped, 1);
            }
        })?;
        // ICMP errors and ICMP other than echo are judged one by one, never tracked.
        let opens = match info.icmp {
            Some(icmp) => icmp == (A::ECHO.0, 0),
            None => true,
        };
        if opens {
            match conntrack.insert(&flow, fs.now_ms) {
                Insert::Inserted => bump(&fs.counters.ct_new, 1),
                Insert::Exists => {}
                Insert::Full => return Err(DropReason::ConntrackFull),
            }
        }
    }
    if info.fragment == Fragment::First {
        // A full fragment table only costs the later fragments, which count as unmatched.
        let _ = fragments.insert(&A::fragment_key(&info), fs.now_ms);
    }
    Ok(A::flow_hash(&info))
}

/// Forgets the tracked connections (IPv4 and IPv6) that `policy` denies now; `is_local`
/// says which addresses are pods of this node. Returns how many were forgotten. Runs on the
/// control thread beside the workers.
pub fn rejudge(flows: &FlowTables, policy: &PolicyTables, is_local: impl Fn(IpAddr) -> bool, now_ms: u64) -> usize {
    rejudge_family::<Ipv4Addr>(&flows.conntrack, policy, &is_local, now_ms) + rejudge_family::<Ipv6Addr>(&flows.conntrack6, policy, &is_local, now_ms)
}

fn rejudge_family<A: Family>(conntrack: &Table<A::Flow>, policy: &PolicyTables, is_local: &impl Fn(IpAddr) -> bool, now_ms: u64) -> usize {
    let mut denied = Vec::new();
    conntrack.for_each_live(now_ms, |flow, _| {
        let tuple = A::tuple(&flow);
        // A tracked ICMP connection was opened by an echo request.
        let icmp = (tuple.proto == A::ICMP).then_some((A::ECHO.0, 0));
        let key = key_of(&tuple, icmp);
        if judge(policy, &key, is_local(tuple.src.into()), is_local(tuple.dst.into()), |_, _, _, _| {}).is_err() {
            denied.push(flow);
        }
    });
    denied.iter().filter(|f| conntrack.remove(f, now_ms)).count()
}
