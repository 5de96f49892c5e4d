//! The data plane as the control thread sees it: start the workers, attach and detach
//! pod ports, publish table versions, read counters.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use crossbeam::{
    channel::{Sender, bounded},
    queue::ArrayQueue,
    utils::CachePadded,
};
use xsk_rs::{
    Umem,
    config::{FrameSize, QueueSize, UmemConfig},
};

use crate::{
    Error,
    counters::WorkerCounters,
    policy::{self, FlowTables, PolicyLog},
    port::{CopyMode, Port, RING_SIZE},
    snapshot::{MAX_PORTS, MAX_UPLINK_QUEUES, PortId, Snapshot, Tables},
    worker::{Command, IdleStrategy, Shared, Wakeup, Worker, WorkerConfig},
    xdp_hook::{AttachMode, HookMode, XdpHook},
};

/// UMEM chunk size: room for a 1500-byte frame plus 50 bytes of VXLAN, and for the
/// 4 KB-MTU frames the large-frame work needs.
pub const FRAME_SIZE: u32 = 4096;

/// The longest frame a UMEM chunk holds: the chunk less the headroom the kernel keeps in
/// front of the data (XDP_PACKET_HEADROOM).
pub const MAX_FRAME: usize = FRAME_SIZE as usize - 256;

/// UMEM chunks one frame may span on multi-buffer sockets (a chain of descriptors with
/// XDP_PKT_CONTD on all but the last): room for a 9,216-byte jumbo frame and its tunnel
/// headers, and well inside the kernel's 17 fragments per frame.
pub const MAX_CHAIN: usize = 4;

/// The longest frame a multi-buffer socket carries: [`MAX_CHAIN`] chunks.
pub const MAX_CHAIN_FRAME: usize = MAX_CHAIN * MAX_FRAME;

/// How to run the data plane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub uplink: String,
    /// Cores to pin one worker each to.
    pub cores: Vec<usize>,
    pub batch: usize,
    pub idle: IdleStrategy,
    pub attach: AttachMode,
    pub copy_mode: CopyMode,
    /// What the uplink's XDP hook sends to the forwarder.
    pub uplink_hook: HookMode,
    /// UMEM frames for the whole node.
    pub frames: u32,
    /// Frames kept in each port's fill ring, at most: less when `frames` is too few for
    /// every uplink queue to get it ([`uplink_fill`]).
    pub fill_target: usize,
    /// Connections the node's tracker holds at most.
    pub conntrack_flows: usize,
    /// IPv6 connections the node's tracker holds at most.
    pub conntrack6_flows: usize,
    /// What the workers run on each frame.
    pub pipeline: crate::pipeline::Mode,
}

#[derive(Debug)]
struct WorkerHandle {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    ports: usize,
}

#[derive(Debug)]
struct PodPort {
    worker: u16,
    _hook: XdpHook,
}

/// A running data plane.
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    uplink_hook: Option<XdpHook>,
    pods: HashMap<PortId, PodPort>,
    free_ids: Vec<PortId>,
    copy_mode: CopyMode,
    attach: AttachMode,
    /// Whether the uplink's sockets bound with multi-buffer ([`Dataplane::max_frame`]).
    multi_buffer: bool,
    /// Where the next [`Dataplane::sweep_flows`] slice starts, per table.
    sweep_at: [usize; 4],
}

/// Number of RX queues of `ifname`.
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count())
        .unwrap_or(0)
}

/// The fewest frames an uplink queue's fill ring is given.
pub const MIN_UPLINK_FILL: usize = 512;

/// Frames each uplink socket's fill ring is kept at: `target`, or less when the UMEM of
/// `frames` is too small for it. A worker's fill rings may hold three quarters of its share
/// of the UMEM (the rest is in flight); its uplink queues (`queues` round-robin over
/// `workers`) get at most that over one more than their number, so its pods can grow fill
/// rings as large as one uplink queue's. Without the cap, a NIC with many queues took every
/// frame into the uplink fill rings and the pods received nothing.
pub fn uplink_fill(target: usize, frames: usize, queues: usize, workers: usize) -> Result<usize, Error> {
    let ports = queues.div_ceil(workers).max(1);
    let fill = target.min(frames / workers * 3 / 4 / (ports + 1));
    if fill < MIN_UPLINK_FILL.min(target) {
        let needed = (MIN_UPLINK_FILL * (ports + 1) * 4).div_ceil(3) * workers;
        return Err(Error::TooFewFrames { frames, queues, workers, min_fill: MIN_UPLINK_FILL, needed });
    }
    Ok(fill)
}

impl Dataplane {
    /// Creates the UMEM, attaches the uplink hook, binds one uplink socket per worker (on
    /// queue = worker index) and starts the workers on `first`.
    pub fn start(cfg: DataplaneConfig, first: Snapshot) -> Result<Self, Error> {
        let available = core_affinity::get_core_ids().unwrap_or_default();
        if cfg.cores.is_empty() || cfg.cores.len() > MAX_UPLINK_QUEUES {
            return Err(Error::Config(format!("--cores needs 1 to {MAX_UPLINK_QUEUES} cores (a worker per uplink queue), not {}", cfg.cores.len())));
        }
        for &c in &cfg.cores {
            if !available.iter().any(|id| id.id == c) {
                return Err(Error::NoSuchCore(c, available.len()));
            }
        }
        crate::xdp_hook::ifindex(&cfg.uplink)?;
        let queues = rx_queues(&cfg.uplink);
        if queues < cfg.cores.len() {
            return Err(Error::TooFewQueues { ifname: cfg.uplink.clone(), queues, workers: cfg.cores.len() });
        }
        let ring = QueueSize::new(RING_SIZE).expect("power of two");
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("valid frame size"))
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| Error::Umem(e.to_string()))?;
        let frames = NonZeroU32::new(cfg.frames.max(1024)).expect("non-zero");
        let fill_target = uplink_fill(cfg.fill_target, frames.get() as usize, queues.min(MAX_UPLINK_QUEUES), cfg.cores.len())?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| Error::Umem(e.to_string()))?;
        let pool = ArrayQueue::new(descs.len());
        for d in &descs {
            let _ = pool.push(*d);
        }
        let workers_n = cfg.cores.len();
        let shared = Arc::new(Shared {
            tables: Tables::new(first),
            frame_size: FRAME_SIZE as usize,
            frame_count: descs.len(),
            pool,
            handoff: (0..workers_n).map(|_| ArrayQueue::new(4096)).collect(),
            wakeups: (0..workers_n).map(|_| Wakeup::new().map(CachePadded::new)).collect::<std::io::Result<_>>().map_err(Error::Wakeup)?,
            counters: (0..workers_n).map(|_| Arc::new(WorkerCounters::default())).collect(),
            stop: Default::default(),
            all_frames: descs,
            umem,
            flows: FlowTables::new(cfg.conntrack_flows, cfg.conntrack6_flows, workers_n),
        });
        let uplink_hook = XdpHook::attach(&cfg.uplink, cfg.uplink_hook, cfg.attach)?;
        let wcfg = WorkerConfig { batch: cfg.batch.clamp(1, 256), idle: cfg.idle, mode: cfg.pipeline, fill_target };
        let mut dp = Dataplane {
            shared: Arc::clone(&shared),
            workers: Vec::new(),
            uplink_hook: Some(uplink_hook),
            pods: HashMap::new(),
            free_ids: (MAX_UPLINK_QUEUES as PortId..MAX_PORTS as PortId).rev().collect(),
            copy_mode: cfg.copy_mode,
            attach: cfg.attach,
            multi_buffer: true,
            sweep_at: [0; 4],
        };
        for (i, &core) in cfg.cores.iter().enumerate() {
            let (tx, rx) = bounded(64);
            let worker = Worker::new(i as u16, Arc::clone(&shared), rx, wcfg);
            let thread = std::thread::Builder::new()
                .name(format!("twill-worker-{i}"))
                .spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    worker.run();
                })
                .map_err(|e| Error::Config(format!("cannot start worker thread: {e}")))?;
            dp.workers.push(WorkerHandle { commands: tx, thread: Some(thread), ports: 0 });
        }
        // A socket on every uplink queue (frames the driver or veth puts on a queue can only
        // go to a socket bound to that queue), queue q served by worker q mod workers.
        for q in 0..queues.min(MAX_UPLINK_QUEUES) {
            let port = Port::bind(q as PortId, &shared.umem, &cfg.uplink, q as u32, cfg.copy_mode)?;
            dp.multi_buffer &= port.multi_buffer;
            if let Some(hook) = &dp.uplink_hook {
                hook.register_socket(q as u32, port.fd())?;
            }
            dp.send_port((q % workers_n) as u16, port)?;
        }
        Ok(dp)
    }

    fn send_port(&mut self, worker: u16, port: Port) -> Result<(), Error> {
        let (done_tx, done_rx) = bounded(1);
        let w = &mut self.workers[worker as usize];
        w.commands.send(Command::AddPort(Box::new(port), done_tx)).map_err(|_| Error::WorkerGone(worker))?;
        done_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| Error::WorkerGone(worker))?;
        w.ports += 1;
        Ok(())
    }

    /// The longest Ethernet frame the data plane carries: [`MAX_CHAIN_FRAME`] when the
    /// kernel took multi-buffer sockets, else what one UMEM chunk holds ([`MAX_FRAME`]).
    pub fn max_frame(&self) -> usize {
        if self.multi_buffer { MAX_CHAIN_FRAME } else { MAX_FRAME }
    }

    /// Attaches a pod's host-side veth: XDP hook, AF_XDP socket on the least loaded worker.
    /// Returns the port id and worker for the endpoint table. The port serves traffic once
    /// a snapshot names it.
    pub fn add_pod_port(&mut self, ifname: &str) -> Result<(PortId, u16), Error> {
        let id = self.free_ids.pop().ok_or(Error::PortsExhausted)?;
        let result = (|| {
            let hook = XdpHook::attach(ifname, HookMode::Pod, self.attach)?;
            let port = Port::bind(id, &self.shared.umem, ifname, 0, self.copy_mode)?;
            hook.register_socket(0, port.fd())?;
            let worker = (0..self.workers.len()).min_by_key(|w| self.workers[*w].ports).unwrap_or(0) as u16;
            self.send_port(worker, port)?;
            self.pods.insert(id, PodPort { worker, _hook: hook });
            Ok((id, worker))
        })();
        if result.is_err() {
            self.free_ids.push(id);
        }
        result
    }

    /// Detaches a pod port (hook first, so nothing new arrives), returning its frames.
    pub fn remove_pod_port(&mut self, id: PortId) -> Result<(), Error> {
        let Some(pod) = self.pods.remove(&id) else { return Ok(()) };
        let worker = pod.worker;
        drop(pod);
        let w = &mut self.workers[worker as usize];
        let (port_tx, port_rx) = bounded(1);
        w.commands.send(Command::RemovePort(id, port_tx)).map_err(|_| Error::WorkerGone(worker))?;
        let port = port_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| Error::WorkerGone(worker))?;
        // Closing the socket waits for the kernel to let go of it: here, not in the worker.
        drop(port);
        let (done_tx, done_rx) = bounded(1);
        w.commands.send(Command::ReclaimFrames(id, done_tx)).map_err(|_| Error::WorkerGone(worker))?;
        done_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| Error::WorkerGone(worker))?;
        w.ports = w.ports.saturating_sub(1);
        self.free_ids.push(id);
        Ok(())
    }

    /// Makes `snap` the table version every worker uses from its next batch.
    pub fn publish(&self, snap: Snapshot) {
        self.shared.tables.publish(snap);
    }

    /// The published tables.
    pub fn tables(&self) -> &Tables {
        &self.shared.tables
    }

    /// Every worker's counters.
    pub fn counters(&self) -> &[Arc<WorkerCounters>] {
        &self.shared.counters
    }

    /// Waits until every worker runs on table version `version` or later (a worker loads
    /// the current version at the start of each turn; an idle one within a millisecond).
    /// Returns false on timeout.
    pub fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.shared.counters.iter().all(|c| c.snapshot_version.load(Ordering::Relaxed) >= version) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Forgets the tracked connections the current tables' policy denies (call after
    /// [`Dataplane::wait_for_version`] for the version that changed policy). Returns how
    /// many were forgotten.
    pub fn rejudge(&self) -> usize {
        let snap = self.shared.tables.load_full();
        let flows = &self.shared.flows;
        let is_local = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => snap.endpoints.contains_key(&v4),
            std::net::IpAddr::V6(v6) => snap.endpoints6.contains_key(&v6),
        };
        policy::rejudge(flows, &snap.policy, is_local, flows.now_ms())
    }

    /// Hands every queued Log event to `f` (the control thread writes them out).
    pub fn drain_policy_logs(&self, mut f: impl FnMut(PolicyLog)) {
        for ring in &self.shared.flows.logs {
            while let Some(e) = ring.pop() {
                f(e);
            }
        }
    }

    /// Empties the expired slots of 1/1024 of the connection and fragment tables (the
    /// control loop calls it every turn, so a whole pass takes about 20 s).
    pub fn sweep_flows(&mut self) {
        let flows = &self.shared.flows;
        let now = flows.now_ms();
        fn slice<F: crate::conntrack::Tuple>(table: &crate::conntrack::Table<F>, now: u64, at: &mut usize) {
            *at = table.sweep(now, *at, table.buckets().div_ceil(1024));
        }
        let [at, frag_at, at6, frag6_at] = &mut self.sweep_at;
        slice(&flows.conntrack, now, at);
        slice(&flows.fragments, now, frag_at);
        slice(&flows.conntrack6, now, at6);
        slice(&flows.fragments6, now, frag6_at);
    }

    /// Connections the tracker can hold.
    pub fn conntrack_capacity(&self) -> usize {
        self.shared.flows.conntrack.capacity()
    }

    /// Frames in the node's free pool (for leak checks).
    pub fn pooled_frames(&self) -> usize {
        self.shared.pool.len()
    }
}

impl Dataplane {
    /// Stops the workers and detaches every XDP program (idempotent).
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        self.pods.clear();
        self.uplink_hook = None;
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Moves the calling thread — the agent's control thread, and the threads it starts later
/// — to the kernel's SCHED_IDLE class: on a core it shares with a worker it runs only on
/// time the worker leaves, and a worker that wakes preempts it at once. Without it, a policy
/// recompile or a manifest reload takes the worker's core for a scheduler slice or more, and
/// the worker's rings overflow (measured: gaps of up to 31 ms at half the no-drop rate).
/// The workers keep the class they were started with.
pub fn yield_to_workers() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` (a valid, initialized struct) for the calling
    // thread (pid 0) and writes nothing.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_fill_rings_leave_the_pods_as_much_again() {
        // The lab: one worker, two veth queues, the default UMEM: full rings.
        assert_eq!(uplink_fill(8192, 65536, 2, 1).unwrap(), 8192);
        // Two workers share the UMEM; each serves one queue.
        assert_eq!(uplink_fill(8192, 65536, 2, 2).unwrap(), 8192);
        // A NIC with 32 queues on 2 workers: 16 queues each, a ring of 24576 / 17.
        assert_eq!(uplink_fill(8192, 65536, 32, 2).unwrap(), 1445);
        // The old default UMEM on the lab's two queues fits 4096-frame rings, not 8192.
        assert_eq!(uplink_fill(8192, 16384, 2, 1).unwrap(), 4096);
    }

    #[test]
    fn too_few_frames_for_the_queues_is_an_error_naming_the_fix() {
        let e = uplink_fill(8192, 16384, 64, 1).unwrap_err();
        let needed = match e {
            Error::TooFewFrames { needed, .. } => needed,
            ref other => panic!("{other}"),
        };
        let msg = e.to_string();
        assert!(msg.contains("--frames 16384") && msg.contains("64 uplink RX queue(s)") && msg.contains(&format!("--frames {needed}")), "{msg}");
        // The frames it asks for are enough.
        assert!(uplink_fill(8192, needed, 64, 1).unwrap() >= MIN_UPLINK_FILL);
        assert!(uplink_fill(8192, needed - 1, 64, 1).is_err());
    }
}
