//! twill's data plane: AF_XDP ports, per-core pinned workers, the packet pipeline and the
//! tables it reads. It knows nothing of Kubernetes: the control plane hands it
//! [`Snapshot`]s and interface names.
//!
//! Where a packet goes, by file: `xdp_hook` (the XDP program that sends frames to the
//! sockets) → `port` (AF_XDP socket) → `worker` (the poll loop) → `pipeline` (per packet:
//! parse, anti-spoof, decap, route, encap) with `policy` (conntrack, then policy for new
//! connections) and `nat` (source NAT for traffic leaving the cluster) reading `snapshot` (`route` LPM, endpoints, nodes, compiled policy) → `port`
//! TX. `counters` has a reason for every drop; `dataplane` is the control thread's handle.

pub mod conntrack;
pub mod conntrack6;
pub mod counters;
pub mod dataplane;
pub mod huge;
pub mod nat;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod route;
pub mod snapshot;
pub mod worker;
pub mod xdp_hook;

pub use counters::{DropReason, WorkerCounters};
pub use dataplane::{Dataplane, DataplaneConfig};
pub use snapshot::{Endpoint, NodeConfig, Outside, PortId, RemoteNode, RouteTarget, Snapshot, Tables, Tunnel};

/// Errors of the data plane. Each names the interface, queue or setting it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such interface.
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    /// An XDP program or map operation failed.
    #[error("XDP on {ifname}: cannot {what}: {source}")]
    Xdp { what: &'static str, ifname: String, source: std::io::Error },
    /// An AF_XDP socket could not be bound.
    #[error("AF_XDP socket on {ifname} queue {queue}: {reason}")]
    Bind { ifname: String, queue: u32, reason: String },
    /// The UMEM could not be created.
    #[error("cannot create the UMEM: {0}")]
    Umem(String),
    /// A worker's hand-off wake-up (an eventfd) could not be created.
    #[error("cannot create a worker's wake-up eventfd: {0}")]
    Wakeup(std::io::Error),
    /// Fewer uplink queues than workers.
    #[error(
        "uplink {ifname} has {queues} RX queue(s) but {workers} workers were asked for; each worker binds its own uplink queue: give fewer --cores or more queues (ethtool -L, or numrxqueues/numtxqueues for veth)"
    )]
    TooFewQueues { ifname: String, queues: usize, workers: usize },
    /// Too few UMEM frames for every uplink queue's fill ring.
    #[error(
        "--frames {frames} is too few for {queues} uplink RX queue(s) on {workers} worker(s): each queue's fill ring needs at least {min_fill} frames and the pods as many again; give --frames {needed} or more, or fewer queues (ethtool -L)"
    )]
    TooFewFrames { frames: usize, queues: usize, workers: usize, min_fill: usize, needed: usize },
    /// A core that does not exist.
    #[error("core {0} is not available to this process (it may use cores 0..{1})")]
    NoSuchCore(usize, usize),
    /// All port ids are in use.
    #[error("no free port: a node serves at most {} pods", snapshot::MAX_PORTS - snapshot::MAX_UPLINK_QUEUES)]
    PortsExhausted,
    /// A worker thread did not answer.
    #[error("worker {0} did not answer (it stopped or is stuck)")]
    WorkerGone(u16),
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}
