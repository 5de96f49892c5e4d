//! The stateful policy stage of the pipeline: connection tracking, then policy for new
//! connections (NetworkPolicy is stateful: replies to an allowed connection pass).
//!
//! For an IPv4 packet between a local pod and anything (the pipeline calls [`admit`] once
//! it knows where the packet goes, before rewriting it):
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

use std::{net::Ipv4Addr, sync::Arc, time::Instant};

use crossbeam::queue::ArrayQueue;
use encap::flow::{self, FiveTuple, FlowInfo, Fragment};
use policy_engine::{
    classifier::Key,
    compiler::{PolicyTables, RuleSet},
    model::{Direction, proto},
    reference::Verdict,
};

use crate::{
    conntrack::{Conntrack, Flow, Insert, Timeouts},
    counters::{DropReason, WorkerCounters, bump},
    nat::Nat,
};

/// ICMP echo request: the ICMP message that opens a tracked connection.
const ECHO_REQUEST: (u8, u8) = (8, 0);

/// A Log rule matched a new connection.
#[derive(Debug, Clone)]
pub struct PolicyLog {
    pub tuple: FiveTuple,
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
/// First fragments remembered at once.
const FRAGMENTS: usize = 4096;
/// How long a first fragment's admission holds for the rest (Linux's `ipfrag_time`).
const FRAGMENT_TIMEOUT_MS: u64 = 30_000;

/// A node's flow tables: its connections, its admitted first fragments, one Log ring per
/// worker, and the clock they run on.
#[derive(Debug)]
pub struct FlowTables {
    pub conntrack: Conntrack,
    pub fragments: Conntrack,
    /// Source NAT for connections leaving the cluster.
    pub nat: Nat,
    pub logs: Vec<ArrayQueue<PolicyLog>>,
    epoch: Instant,
}

impl FlowTables {
    /// Tables for at least `flows` connections and `workers` workers.
    pub fn new(flows: usize, workers: usize) -> FlowTables {
        FlowTables {
            conntrack: Conntrack::new(flows, Timeouts::default()),
            fragments: Conntrack::new(FRAGMENTS, Timeouts::uniform(FRAGMENT_TIMEOUT_MS)),
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

fn fragment_key(info: &FlowInfo) -> Flow {
    Flow {
        src: u32::from(info.tuple.src),
        dst: u32::from(info.tuple.dst),
        proto: info.tuple.proto,
        src_port: info.ident,
        dst_port: 0,
    }
}

/// The classifier key of a packet: ICMP type and code in the port fields for ICMP.
fn key_of(tuple: &FiveTuple, icmp: Option<(u8, u8)>) -> Key {
    let (src_port, dst_port) = match icmp {
        Some((t, c)) => (u16::from(t), u16::from(c)),
        None => (tuple.src_port, tuple.dst_port),
    };
    Key { src: u32::from(tuple.src), dst: u32::from(tuple.dst), proto: tuple.proto, src_port, dst_port }
}

/// Judges a new connection for the local ends; `on_log` hears of matched Log rules.
fn judge(
    policy: &PolicyTables,
    key: &Key,
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
        let Some(rules) = policy.peer(Ipv4Addr::from(ip)).and_then(|p| p.rules(dir)) else { continue };
        let j = rules.judge(policy, key);
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
    let info = flow::parse_flow_info(ip).map_err(|e| match e {
        encap::Error::Truncated => DropReason::Truncated,
        _ => DropReason::BadIpHeader,
    })?;
    if info.fragment == Fragment::Later {
        return if fs.fragments.is_tracked(&fragment_key(&info), fs.now_ms) {
            Ok(encap::vxlan::flow_hash_of(&info))
        } else {
            Err(DropReason::FragmentUnmatched)
        };
    }
    if let Some(quoted) = info.related
        && fs.conntrack.is_tracked(&Flow::from(quoted), fs.now_ms)
    {
        bump(&fs.counters.ct_related, 1);
        return Ok(encap::vxlan::flow_hash_of(&info));
    }
    let flow = Flow::from(info.tuple);
    let tracked = info.related.is_none()
        && !matches!(info.icmp, Some(icmp) if icmp != ECHO_REQUEST && icmp.0 != 0)
        && fs.conntrack.track(&flow, fs.now_ms, info.closes()).is_some();
    if tracked {
        bump(&fs.counters.ct_established, 1);
    } else {
        let key = key_of(&info.tuple, info.icmp);
        judge(policy, &key, src_local, dst_local, |direction, verdict, rules, entry| {
            bump(&fs.counters.policy_logged, 1);
            let event = PolicyLog { tuple: info.tuple, direction, verdict, rules: Arc::clone(rules), entry };
            if fs.log.push(event).is_err() {
                bump(&fs.counters.policy_log_dropped, 1);
            }
        })?;
        // ICMP errors and ICMP other than echo are judged one by one, never tracked.
        let opens = match info.icmp {
            Some(icmp) => icmp == ECHO_REQUEST,
            None => true,
        };
        if opens {
            match fs.conntrack.insert(&flow, fs.now_ms) {
                Insert::Inserted => bump(&fs.counters.ct_new, 1),
                Insert::Exists => {}
                Insert::Full => return Err(DropReason::ConntrackFull),
            }
        }
    }
    if info.fragment == Fragment::First {
        // A full fragment table only costs the later fragments, which count as unmatched.
        let _ = fs.fragments.insert(&fragment_key(&info), fs.now_ms);
    }
    Ok(encap::vxlan::flow_hash_of(&info))
}

/// Forgets the tracked connections that `policy` denies now; `is_local` says which
/// addresses are pods of this node. Returns how many were forgotten. Runs on the control
/// thread beside the workers.
pub fn rejudge(conntrack: &Conntrack, policy: &PolicyTables, is_local: impl Fn(Ipv4Addr) -> bool, now_ms: u64) -> usize {
    let mut denied = Vec::new();
    conntrack.for_each_live(now_ms, |flow, _| {
        let tuple = FiveTuple {
            src: Ipv4Addr::from(flow.src),
            dst: Ipv4Addr::from(flow.dst),
            proto: flow.proto,
            src_port: flow.src_port,
            dst_port: flow.dst_port,
        };
        // A tracked ICMP connection was opened by an echo request.
        let icmp = (flow.proto == proto::ICMP).then_some(ECHO_REQUEST);
        let key = key_of(&tuple, icmp);
        if judge(policy, &key, is_local(tuple.src), is_local(tuple.dst), |_, _, _, _| {}).is_err() {
            denied.push(flow);
        }
    });
    denied.iter().filter(|f| conntrack.remove(f, now_ms)).count()
}
