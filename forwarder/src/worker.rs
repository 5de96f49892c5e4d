//! A worker: one thread pinned to one core, run to completion over its ports.
//!
//! Each turn: take the current snapshot → frames handed over by other workers go to their
//! TX queues → per port: completions back to the free list, fill ring topped up, a batch
//! of RX frames through [`pipeline::process`] (its prefetch stages running a few frames
//! ahead) → TX queues flushed, one wakeup per port.
//! A frame whose egress port belongs to another worker is handed over by descriptor (all
//! workers of a node share one UMEM). No locks, no allocation, no system calls on this path
//! except the TX wakeups copy-mode AF_XDP needs and, when idle, poll(2).
//!
//! A frame larger than a UMEM chunk (jumbo frames on multi-buffer sockets) arrives as a
//! chain of descriptors, XDP_PKT_CONTD on all but the last, possibly split across two RX
//! batches. The worker copies the chain into one buffer, runs the same pipeline on it and
//! copies the result out into as many chunks as it needs (the chain's own, one more from
//! the free list when encapsulation outgrows them), which go to a TX ring or a hand-off
//! together. Frames that fill their chunk take the same way, so encapsulation always has
//! room; the rest are processed in place.
//!
//! Frames are accounted for exactly: every UMEM frame is in the node's free pool, a
//! worker's free list, a port's fill/RX/TX/completion ring (recorded in `owner`), a port's
//! partly received chain, or in flight inside one turn. Removing a port returns all frames
//! its rings and its partial chain held.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering, fence},
    },
    time::{Duration, Instant},
};

use crossbeam::{channel::Receiver, queue::ArrayQueue, utils::CachePadded};
use xsk_rs::{FrameDesc, Umem};

use crate::{
    counters::{DropReason, WorkerCounters, bump},
    dataplane::{MAX_CHAIN, MAX_CHAIN_FRAME, MAX_FRAME},
    pipeline::{self, Kind, Verdict},
    policy::FlowTables,
    port::Port,
    route::Stage,
    snapshot::{MAX_PORTS, PortId, Tables, UPLINK, is_uplink},
};

/// No port holds the frame.
const NO_OWNER: PortId = PortId::MAX;

/// What a worker does when a turn found no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Busy-poll forever (DPDK style): lowest latency, one core at 100%.
    Spin,
    /// Busy-poll, but give the core away (sched_yield(2)) after every turn without work:
    /// the worker never sleeps, so no frame waits for its wake-up, and any other runnable
    /// thread on the core (a sender, a sink, the kernel's softirq thread) runs first.
    Yield,
    /// Spin for `spin` without work; then, while frames came within the last
    /// [`NAP_WINDOW`], sleep `nap` between turns (the frames of that time collect into one
    /// batch, as a NIC's interrupt coalescing collects them into one interrupt); then sleep
    /// in poll(2) on the ports for up to 1 ms. A machine with few cores so keeps CPU for
    /// the kernel's own packet work and for the threads a packet wakes on its way.
    Adaptive { spin: Duration, nap: Duration },
}

impl IdleStrategy {
    /// The adaptive strategy's default spin: long enough to catch the next frames of a
    /// burst, short enough that a worker under a light load does not hold a core that the
    /// kernel's softirqs, the other node's worker and the applications need. Measured
    /// against longer spins in docs/perf.md ("Idle").
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(5);
    /// The adaptive strategy's default nap: a wake-up per 50 µs of traffic rather than one
    /// per frame; measured against 0 to 200 µs in docs/perf.md ("Idle").
    pub const DEFAULT_NAP: Duration = Duration::from_micros(50);
    /// The default: [`IdleStrategy::Adaptive`] with the default spin and nap.
    pub const ADAPTIVE: IdleStrategy = IdleStrategy::Adaptive { spin: Self::DEFAULT_SPIN, nap: Self::DEFAULT_NAP };
}

/// How recently an adaptive worker must have found frames to nap rather than sleep in
/// poll(2): traffic that came this recently is likely to go on.
pub const NAP_WINDOW: Duration = Duration::from_millis(1);

/// The timer slack of a worker thread (prctl PR_SET_TIMERSLACK): a nap of 50 µs ends
/// within a microsecond of it rather than within the default 50 µs more.
const WORKER_TIMER_SLACK_NS: libc::c_ulong = 1000;

/// Frames the kernel sends per TX wakeup in copy mode.
const COPY_MODE_TX_BATCH: usize = 32;

/// Frames a pod port's fill ring starts with; it doubles (up to the configured target)
/// each time the port has used a full batch between two refills, while the worker's
/// budget allows.
const MIN_POD_FILL: usize = 64;

/// Descriptor option: more of this frame follows (if_xdp.h).
const XDP_PKT_CONTD: u32 = 1;

/// A frame shorter than this leaves its chunk room for tunnel headers and an ICMP error's
/// quote, and is processed in place; a longer one is copied out like a chain.
const IN_PLACE_MAX: usize = MAX_FRAME - 256;

/// The descriptors of one frame (one UMEM chunk, or a chain of them) with its egress port:
/// what a hand-off carries. Frames of every length share one ring per worker, so a flow's
/// short frame never overtakes its longer one on the way between workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chain {
    descs: [FrameDesc; MAX_CHAIN],
    n: u8,
    port: PortId,
}

impl Chain {
    fn new(port: PortId, descs: &[FrameDesc]) -> Chain {
        let mut chain = Chain { n: descs.len() as u8, port, ..Chain::default() };
        chain.descs[..descs.len()].copy_from_slice(descs);
        chain
    }

    fn descs(&self) -> &[FrameDesc] {
        &self.descs[..usize::from(self.n)]
    }
}

/// Whether `desc` is a frame's last (or only) descriptor.
fn ends_frame(desc: &FrameDesc) -> bool {
    desc.options() & XDP_PKT_CONTD == 0
}

/// The packets among `descs`: the descriptors that end a frame.
fn packets(descs: &[FrameDesc]) -> usize {
    descs.iter().filter(|d| ends_frame(d)).count()
}

/// A worker's shared state and counters, held once for the thread's life apart from the
/// worker, so that a batch's view of the flow tables can borrow them while the per-frame
/// steps take `&mut self` (no reference-count traffic on the node's shared block per batch).
struct Held {
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
}

/// How a worker asleep in poll(2) learns that another worker handed it a frame (its
/// hand-off ring is memory, which poll cannot watch): an eventfd in its poll set, written
/// only when it sleeps. The sleeper raises `asleep`, then takes a last look at its ring;
/// a worker that handed over during a turn pushes, then, once at the turn's end, clears
/// `asleep` and writes the eventfd if it was raised (both sides fence between the two
/// steps, so one of them sees the other's: no frame waits for the poll timeout, and busy
/// workers make no system call for it). Each worker's sits on its own cache line.
#[derive(Debug)]
pub struct Wakeup {
    asleep: AtomicBool,
    fd: OwnedFd,
}

impl Wakeup {
    pub fn new() -> std::io::Result<Wakeup> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(Wakeup { asleep: AtomicBool::new(false), fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// After pushes to the worker's rings: wakes it if it sleeps.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to a descriptor this struct owns. A
            // failure (the counter at its maximum) leaves the eventfd readable: still a wake.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Before a sleep; then the caller looks at its rings once more.
    fn raise(&self) {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// After a sleep (or instead of one).
    fn lower(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }

    /// Empties the eventfd, after a poll that found it readable.
    fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from a non-blocking descriptor
        // this struct owns; nothing to read (EAGAIN) is the common case and harmless.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// State shared by the workers of a node and the control thread.
#[derive(Debug)]
pub struct Shared {
    pub tables: Tables,
    pub umem: Umem,
    pub frame_size: usize,
    pub frame_count: usize,
    /// Frames no worker holds; workers take from it when empty and give back when full.
    pub pool: ArrayQueue<FrameDesc>,
    /// Inbound hand-off ring of each worker: frames other workers routed to its ports.
    pub handoff: Vec<ArrayQueue<Chain>>,
    /// Each worker's wake-up for its hand-off ring.
    pub wakeups: Vec<CachePadded<Wakeup>>,
    pub counters: Vec<Arc<WorkerCounters>>,
    pub stop: AtomicBool,
    /// The descriptor of every frame as the UMEM was created, by frame index.
    pub all_frames: Vec<FrameDesc>,
    /// Connections, fragments and Log rings of the node.
    pub flows: FlowTables,
}

/// Control → worker.
#[derive(Debug)]
pub enum Command {
    /// Serve this port from now on; answer when it is in.
    AddPort(Box<Port>, crossbeam::channel::Sender<()>),
    /// Stop serving the port and hand it back. Its frames stay set aside until
    /// [`Command::ReclaimFrames`]: the kernel may use them until the socket is closed, and
    /// closing it waits for an RCU grace period (milliseconds) that must not stall a worker.
    RemovePort(PortId, crossbeam::channel::Sender<Option<Box<Port>>>),
    /// The port's socket is closed: take its frames back; answer when done.
    ReclaimFrames(PortId, crossbeam::channel::Sender<()>),
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub batch: usize,
    pub idle: IdleStrategy,
    /// The full pipeline, or the I/O ceiling.
    pub mode: pipeline::Mode,
    /// Frames kept in each port's fill ring.
    pub fill_target: usize,
}

/// One worker's state.
#[derive(Debug)]
pub struct Worker {
    index: u16,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    commands: Receiver<Command>,
    cfg: WorkerConfig,
    ports: Vec<Option<Port>>,
    active: Vec<PortId>,
    /// Frames in each port's fill + RX rings.
    filled: Vec<usize>,
    tx_pending: Vec<Vec<FrameDesc>>,
    free: Vec<FrameDesc>,
    owner: Vec<PortId>,
    batch: Vec<FrameDesc>,
    /// Each port's chain received so far (its last descriptor not yet seen).
    rx_chain: Vec<Vec<FrameDesc>>,
    /// A chain's frame, copied into one piece for the pipeline.
    scratch: Box<[u8]>,
    pollfds: Vec<libc::pollfd>,
    /// Frames each port's fill ring is kept at (see [`Worker::initial_fill`]).
    fill_target: Vec<usize>,
    /// Their sum over the active ports.
    fill_targets_sum: usize,
    /// Whether a port's fill ring has been filled since it was added (only then does a low
    /// fill level mean the port used its frames).
    primed: Vec<bool>,
    /// Kernel-side socket statistics of ports already removed, so totals never go back.
    retired_xsk: [u64; 4],
    last_xsk_read: Instant,
    /// The uplink socket this worker transmits on (its first uplink queue).
    uplink_tx: Option<PortId>,
    /// Workers handed a frame this turn, one bit each (a worker per uplink queue, so at
    /// most [`crate::snapshot::MAX_UPLINK_QUEUES`] = 64): woken, if asleep, at the turn's end.
    to_wake: u64,
}

impl Worker {
    pub fn new(index: u16, shared: Arc<Shared>, commands: Receiver<Command>, cfg: WorkerConfig) -> Self {
        let counters = Arc::clone(&shared.counters[index as usize]);
        let frames = shared.frame_count;
        Worker {
            index,
            counters,
            commands,
            cfg,
            ports: (0..MAX_PORTS).map(|_| None).collect(),
            active: Vec::new(),
            filled: vec![0; MAX_PORTS],
            tx_pending: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            free: Vec::with_capacity(frames),
            owner: vec![NO_OWNER; frames],
            batch: vec![FrameDesc::default(); cfg.batch.max(1)],
            rx_chain: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            scratch: vec![0; MAX_CHAIN_FRAME].into_boxed_slice(),
            pollfds: Vec::new(),
            fill_target: vec![0; MAX_PORTS],
            fill_targets_sum: 0,
            primed: vec![false; MAX_PORTS],
            retired_xsk: [0; 4],
            last_xsk_read: Instant::now(),
            uplink_tx: None,
            to_wake: 0,
            shared,
        }
    }

    /// Runs until the dataplane stops.
    pub fn run(mut self) {
        let held = Held { shared: Arc::clone(&self.shared), counters: Arc::clone(&self.counters) };
        let mut turn: u64 = 0;
        // Since when the turns have found no work (the adaptive spin counts from it); read
        // from the clock on empty turns only, so busy turns pay nothing for it.
        let mut idle_since: Option<Instant> = None;
        // SAFETY: PR_SET_TIMERSLACK takes a value and touches no memory.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, WORKER_TIMER_SLACK_NS) };
        while !self.shared.stop.load(Ordering::Relaxed) {
            if turn.is_multiple_of(64) {
                self.handle_commands();
                if self.last_xsk_read.elapsed() >= Duration::from_secs(1) {
                    self.read_xsk_stats();
                }
            }
            turn += 1;
            let work = self.turn(&held);
            if work > 0 {
                idle_since = None;
                continue;
            }
            match self.cfg.idle {
                IdleStrategy::Adaptive { spin, nap } => {
                    let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
                    if idle < spin {
                        std::hint::spin_loop();
                    } else if idle < NAP_WINDOW && !nap.is_zero() {
                        bump(&self.counters.idle_naps, 1);
                        std::thread::sleep(nap);
                    } else {
                        // Woken by a frame, the next turn finds it and the spin starts
                        // afresh; woken by the timeout, the worker sleeps again at once.
                        self.sleep();
                    }
                }
                IdleStrategy::Yield => std::thread::yield_now(),
                _ => std::hint::spin_loop(),
            }
        }
        // Drain commands so nobody waits on an answer forever.
        self.handle_commands();
    }

    fn handle_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddPort(port, done) => {
                    let id = port.id;
                    if let Some(old) = self.retire_port(id) {
                        drop(old);
                        self.reclaim_frames(id);
                    }
                    self.ports[id as usize] = Some(*port);
                    self.tx_pending[id as usize].reserve(self.cfg.batch * 4);
                    // The kernel's limit of fragments per frame, so a chain never allocates.
                    self.rx_chain[id as usize].reserve(32);
                    self.active.push(id);
                    if is_uplink(id) && self.uplink_tx.is_none_or(|t| id < t) {
                        self.uplink_tx = Some(id);
                    }
                    self.refresh_pollfds();
                    self.fill_target[id as usize] = self.initial_fill(id);
                    self.primed[id as usize] = false;
                    self.fill_targets_sum += self.fill_target[id as usize];
                    let _ = done.send(());
                }
                Command::RemovePort(id, done) => {
                    let port = self.retire_port(id);
                    let _ = done.send(port.map(Box::new));
                }
                Command::ReclaimFrames(id, done) => {
                    self.reclaim_frames(id);
                    let _ = done.send(());
                }
            }
        }
    }

    /// Sums the kernel's drop statistics of our sockets into the counters (one getsockopt
    /// per port, about once a second: not on the per-packet path).
    fn read_xsk_stats(&mut self) {
        self.last_xsk_read = Instant::now();
        let mut sum = self.retired_xsk;
        for p in self.ports.iter().flatten() {
            let s = xsk_stats(p);
            for (acc, v) in sum.iter_mut().zip(s) {
                *acc += v;
            }
        }
        let c = &self.counters;
        for (counter, v) in [&c.xsk_rx_dropped, &c.xsk_rx_ring_full, &c.xsk_fill_ring_empty, &c.xsk_tx_invalid].into_iter().zip(sum) {
            counter.store(v, Ordering::Relaxed);
        }
    }

    /// Stops serving port `id` (its socket's drop counts kept) and returns it.
    fn retire_port(&mut self, id: PortId) -> Option<Port> {
        let port = self.ports[id as usize].take()?;
        self.active.retain(|p| *p != id);
        if self.uplink_tx == Some(id) {
            self.uplink_tx = self.active.iter().copied().filter(|p| is_uplink(*p)).min();
        }
        for (acc, v) in self.retired_xsk.iter_mut().zip(xsk_stats(&port)) {
            *acc += v;
        }
        self.refresh_pollfds();
        self.fill_targets_sum -= self.fill_target[id as usize];
        Some(port)
    }

    /// Takes back every frame a retired port's rings held (its socket is closed).
    fn reclaim_frames(&mut self, id: PortId) {
        for (idx, owner) in self.owner.iter_mut().enumerate() {
            if *owner == id {
                *owner = NO_OWNER;
                self.free.push(frame_desc(&self.shared, idx));
            }
        }
        self.filled[id as usize] = 0;
        for desc in self.tx_pending[id as usize].drain(..).chain(self.rx_chain[id as usize].drain(..)) {
            self.free.push(desc);
        }
    }

    /// The ports' sockets and, last, the worker's hand-off wake-up.
    fn refresh_pollfds(&mut self) {
        let wakeup = self.shared.wakeups[self.index as usize].fd.as_raw_fd();
        self.pollfds = self
            .active
            .iter()
            .filter_map(|id| self.ports[*id as usize].as_ref())
            .map(|p| p.fd())
            .chain([wakeup])
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
    }

    /// Sleeps until a port has a frame, another worker hands one over, or 1 ms passes.
    fn sleep(&mut self) {
        if self.pollfds.is_empty() {
            self.refresh_pollfds();
        }
        let i = self.index as usize;
        let wakeup = &self.shared.wakeups[i];
        wakeup.raise();
        if !self.shared.handoff[i].is_empty() {
            wakeup.lower();
            return;
        }
        bump(&self.counters.idle_sleeps, 1);
        // SAFETY: pollfds is a live, correctly sized array of pollfd for the call's duration;
        // the descriptors belong to sockets and an eventfd this worker's node owns.
        unsafe { libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, 1) };
        wakeup.lower();
        if self.pollfds.last().is_some_and(|p| p.revents & libc::POLLIN != 0) {
            wakeup.drain();
        }
    }

    /// One pass over everything; returns the number of frames moved.
    fn turn(&mut self, held: &Held) -> usize {
        let tables = &self.shared.tables;
        let snap = tables.load();
        if self.counters.snapshot_version.load(Ordering::Relaxed) != snap.version {
            self.counters.snapshot_version.store(snap.version, Ordering::Relaxed);
        }
        let now_ms = self.shared.flows.now_ms();
        let mut work = 0;

        // Frames other workers routed to our ports.
        for _ in 0..self.cfg.batch {
            let Some(chain) = self.shared.handoff[self.index as usize].pop() else { break };
            work += 1;
            self.queue_tx(chain.port, chain.descs());
        }

        for i in 0..self.active.len() {
            let id = self.active[i];
            self.reclaim_completions(id);
            self.refill(id);
            work += self.receive(id, &snap, held, now_ms);
        }
        self.flush_tx();
        self.balance_free_list();
        while self.to_wake != 0 {
            self.shared.wakeups[self.to_wake.trailing_zeros() as usize].notify();
            self.to_wake &= self.to_wake - 1;
        }
        work
    }

    fn reclaim_completions(&mut self, id: PortId) {
        let Some(port) = self.ports[id as usize].as_mut() else { return };
        loop {
            // SAFETY: the completion ring only returns frames of this UMEM that we submitted.
            let n = unsafe { port.comp.consume(&mut self.batch) };
            for desc in &self.batch[..n] {
                self.owner[frame_index(&self.shared, desc)] = NO_OWNER;
                self.free.push(*desc);
            }
            if n < self.batch.len() {
                break;
            }
        }
    }

    /// Frames a port's fill ring gets when it is added: the uplink the configured target, a
    /// pod [`MIN_POD_FILL`]. A frame in an idle port's fill ring stays there until a packet
    /// arrives, so fifty idle pods given the full target would hold every frame while the
    /// uplink starves; a pod port grows its target only by using it.
    fn initial_fill(&self, id: PortId) -> usize {
        if is_uplink(id) { self.cfg.fill_target } else { MIN_POD_FILL.min(self.cfg.fill_target) }
    }

    /// Three quarters of this worker's part of the UMEM: what its fill targets may add up
    /// to (the rest is in flight: RX and TX rings, hand-offs, batches).
    fn fill_budget(&self) -> usize {
        self.shared.frame_count / self.shared.counters.len().max(1) * 3 / 4
    }

    fn refill(&mut self, id: PortId) {
        let mut target = self.fill_target[id as usize];
        // A full batch (or half the ring) taken since the last refill: the port is busy.
        let used = target.saturating_sub(self.filled[id as usize]);
        if self.primed[id as usize] && used >= self.cfg.batch.min(target / 2) && target < self.cfg.fill_target && self.fill_targets_sum + target <= self.fill_budget() {
            self.fill_targets_sum += target;
            target *= 2;
            self.fill_target[id as usize] = target;
        }
        let want = target.saturating_sub(self.filled[id as usize]);
        if want < self.cfg.batch.min(target) {
            return;
        }
        if self.free.len() < want {
            self.take_from_pool(want);
        }
        let n = want.min(self.free.len());
        if n == 0 {
            return;
        }
        let Some(port) = self.ports[id as usize].as_mut() else { return };
        let start = self.free.len() - n;
        // SAFETY: the frames come from our free list: no ring and no other worker holds them.
        let produced = unsafe { port.fill.produce(&self.free[start..]) };
        for desc in self.free.drain(start..start + produced) {
            self.owner[frame_index(&self.shared, &desc)] = id;
        }
        self.filled[id as usize] += produced;
        self.primed[id as usize] = true;
        if produced > 0 && port.fill.needs_wakeup() {
            let _ = port.fill.wakeup(port.rx.fd_mut(), 0);
        }
    }

    fn receive(&mut self, id: PortId, snap: &crate::snapshot::Snapshot, held: &Held, now_ms: u64) -> usize {
        let Some(port) = self.ports[id as usize].as_mut() else { return 0 };
        // SAFETY: the RX ring returns frames of this UMEM that the kernel has filled.
        let n = unsafe { port.rx.consume(&mut self.batch) };
        if n == 0 {
            return 0;
        }
        let fs = held.shared.flows.state(self.index as usize, &held.counters, now_ms);
        self.filled[id as usize] = self.filled[id as usize].saturating_sub(n);
        bump(&self.counters.rx_batches, 1);
        bump(&self.counters.rx_packets, packets(&self.batch[..n]) as u64);
        let mut rx_bytes = 0u64;
        // The pipeline's two prefetch stages run ahead of it over the batch (the I/O
        // ceiling reads neither table).
        let full = self.cfg.mode == pipeline::Mode::Full;
        let (first, second) = (pipeline::PREFETCH_FIRST, pipeline::PREFETCH_SECOND);
        let prefetch = |w: &Self, j: usize, stage: Stage| {
            if !full || j >= n {
                return;
            }
            // SAFETY: the frame is on no ring (just consumed) and only read here.
            let data = unsafe { w.shared.umem.data(&w.batch[j]) };
            pipeline::prefetch(snap, &fs, data.contents(), stage);
        };
        for j in 0..first {
            prefetch(self, j, Stage::First);
        }
        for j in 0..second {
            prefetch(self, j, Stage::Second);
        }
        for i in 0..n {
            prefetch(self, i + first, Stage::First);
            prefetch(self, i + second, Stage::Second);
            let mut desc = self.batch[i];
            self.owner[frame_index(&self.shared, &desc)] = NO_OWNER;
            let len = desc.lengths().data();
            rx_bytes += len as u64;
            let chain = &mut self.rx_chain[id as usize];
            if !ends_frame(&desc) || !chain.is_empty() || len > IN_PLACE_MAX {
                chain.push(desc);
                if ends_frame(&desc) {
                    self.receive_chain(id, snap, &fs);
                }
                continue;
            }
            let verdict = {
                // SAFETY: the frame was just taken off the RX ring: nothing else reads or
                // writes it until we put it on a ring again.
                let mut data = unsafe { self.shared.umem.data_mut(&mut desc) };
                data.cursor().set_pos(usize::MAX); // the whole buffer, for encapsulation
                let v = self.cfg.mode.run(snap, &fs, self.index, id, data.contents_mut(), len);
                if let Verdict::Forward { len, .. } = v {
                    data.cursor().set_pos(len);
                }
                v
            };
            match verdict {
                Verdict::Drop(reason) => {
                    self.counters.count_drop(reason);
                    self.free.push(desc);
                }
                Verdict::Forward { port, worker, kind, .. } => {
                    self.count_kind(kind);
                    self.dispatch(port, worker, &[desc]);
                }
            }
        }
        bump(&self.counters.rx_bytes, rx_bytes);
        n
    }

    /// The frame in port `id`'s completed chain: copied into the scratch buffer, through the
    /// pipeline, and copied out into the chunks it needs.
    fn receive_chain(&mut self, id: PortId, snap: &crate::snapshot::Snapshot, fs: &crate::policy::FlowState) {
        let mut chain = std::mem::take(&mut self.rx_chain[id as usize]);
        let verdict = match self.gather(&chain) {
            Some(len) => self.cfg.mode.run(snap, fs, self.index, id, &mut self.scratch, len),
            None => Verdict::Drop(DropReason::TooLong),
        };
        match verdict {
            Verdict::Drop(reason) => self.counters.count_drop(reason),
            Verdict::Forward { port, worker, len, kind } => match self.scatter(&mut chain, len) {
                Some(out) => {
                    self.count_kind(kind);
                    self.dispatch(port, worker, out.descs());
                }
                None => self.counters.count_drop(DropReason::NoFreeFrame),
            },
        }
        // Whatever the frame no longer uses is free again.
        self.free.append(&mut chain);
        self.rx_chain[id as usize] = chain;
    }

    /// Copies the frames of `chain` one after the other into the scratch buffer; returns
    /// the frame's length, or `None` when it spans more than [`MAX_CHAIN`] chunks.
    fn gather(&mut self, chain: &[FrameDesc]) -> Option<usize> {
        if chain.len() > MAX_CHAIN {
            return None;
        }
        let mut at = 0;
        for desc in chain {
            // SAFETY: the chain's frames were taken off the RX ring and are on no ring.
            let data = unsafe { self.shared.umem.data(desc) };
            let part = data.contents();
            self.scratch.get_mut(at..at + part.len())?.copy_from_slice(part);
            at += part.len();
        }
        Some(at)
    }

    /// Copies `scratch[..len]` out into chunks: the chain's own first, then frames from the
    /// free list. Takes the chunks it used out of `chain` and returns them as a chain (all
    /// but the last marked to continue); `None` (every frame left in `chain`) when no free
    /// frame was left.
    fn scatter(&mut self, chain: &mut Vec<FrameDesc>, len: usize) -> Option<Chain> {
        let need = len.div_ceil(MAX_FRAME).max(1);
        if need > MAX_CHAIN {
            return None;
        }
        while chain.len() < need {
            if self.free.is_empty() {
                self.take_from_pool(self.cfg.batch);
            }
            chain.push(self.free.pop()?);
        }
        for (k, desc) in chain[..need].iter_mut().enumerate() {
            let part = &self.scratch[(k * MAX_FRAME).min(len)..((k + 1) * MAX_FRAME).min(len)];
            // SAFETY: the frame is this worker's alone (off the RX ring or the free list).
            let mut data = unsafe { self.shared.umem.data_mut(desc) };
            data.cursor().set_pos(usize::MAX);
            // Every chunk holds MAX_FRAME bytes; were one shorter, the chain stays whole and
            // is freed by the caller.
            data.contents_mut().get_mut(..part.len())?.copy_from_slice(part);
            data.cursor().set_pos(part.len());
            desc.set_options(if k + 1 < need { XDP_PKT_CONTD } else { 0 });
        }
        let out = Chain::new(NO_OWNER, &chain[..need]);
        chain.drain(..need);
        Some(out)
    }

    fn count_kind(&self, kind: Kind) {
        match kind {
            Kind::Encapsulated => bump(&self.counters.encapsulated, 1),
            Kind::Decapsulated => bump(&self.counters.decapsulated, 1),
            Kind::ArpReply => bump(&self.counters.arp_replies, 1),
            Kind::NdpReply => bump(&self.counters.ndp_replies, 1),
            Kind::IcmpError => bump(&self.counters.icmp_errors_sent, 1),
            Kind::Routed => {}
        }
    }

    /// Sends the frame `descs` (one chunk, or a chain) to `port` served by `worker`: onto
    /// this worker's TX queue for it, or handed over.
    fn dispatch(&mut self, port: PortId, worker: u16, descs: &[FrameDesc]) {
        // The uplink is reached through this worker's own uplink socket.
        let port = if port == UPLINK { self.uplink_tx.unwrap_or(NO_OWNER) } else { port };
        if is_uplink(port) || port == NO_OWNER || worker == self.index {
            return self.queue_tx(port, descs);
        }
        if self.shared.handoff.get(worker as usize).is_some_and(|q| q.push(Chain::new(port, descs)).is_ok()) {
            self.to_wake |= 1 << worker;
        } else {
            self.counters.count_drop(DropReason::HandoffFull);
            self.free.extend_from_slice(descs);
        }
    }

    /// Queues the frame `descs` for TX on one of this worker's ports.
    fn queue_tx(&mut self, port: PortId, descs: &[FrameDesc]) {
        if self.ports.get(port as usize).is_some_and(Option::is_some) {
            self.tx_pending[port as usize].extend_from_slice(descs);
        } else {
            self.counters.count_drop(DropReason::NoSuchPort);
            self.free.extend_from_slice(descs);
        }
    }

    fn flush_tx(&mut self) {
        for i in 0..self.active.len() {
            let id = self.active[i] as usize;
            if self.tx_pending[id].is_empty() {
                continue;
            }
            let Some(port) = self.ports[id].as_mut() else { continue };
            let pending = &mut self.tx_pending[id];
            // SAFETY: every pending frame is ours alone (taken off an RX ring or a hand-off
            // ring and not put anywhere else).
            // produce takes all of them or none, so a chain is never split.
            let sent = unsafe { port.tx.produce(pending) };
            let (mut bytes, mut frames) = (0u64, 0u64);
            for desc in &pending[..sent] {
                self.owner[frame_index(&self.shared, desc)] = id as PortId;
                bytes += desc.lengths().data() as u64;
                frames += u64::from(ends_frame(desc));
            }
            for _ in 0..packets(&pending[sent..]) {
                self.counters.count_drop(DropReason::TxRingFull);
            }
            self.free.extend(pending.drain(sent..));
            if sent > 0 {
                bump(&self.counters.tx_packets, frames);
                bump(&self.counters.tx_bytes, bytes);
                // In copy mode each wakeup transmits at most 32 frames (TX_BATCH_SIZE of the
                // kernel's xsk_generic_xmit): kick once per 32 so the ring drains.
                if port.tx.needs_wakeup() {
                    for _ in 0..sent.div_ceil(COPY_MODE_TX_BATCH) {
                        let _ = port.tx.wakeup();
                    }
                }
            }
            pending.clear();
        }
    }

    fn take_from_pool(&mut self, want: usize) {
        while self.free.len() < want {
            match self.shared.pool.pop() {
                Some(d) => self.free.push(d),
                None => break,
            }
        }
    }

    /// Gives frames beyond what this worker's ports can use back to the node's pool, so
    /// frames that drift here through hand-offs return to the workers that receive.
    fn balance_free_list(&mut self) {
        let keep = self.fill_targets_sum + self.cfg.fill_target + self.cfg.batch * 4;
        while self.free.len() > keep {
            let Some(d) = self.free.pop() else { break };
            if let Err(d) = self.shared.pool.push(d) {
                self.free.push(d);
                break;
            }
        }
    }
}

/// rx_dropped, rx_ring_full, fill_ring_empty, tx_invalid of one socket.
fn xsk_stats(port: &Port) -> [u64; 4] {
    match port.rx.fd().xdp_statistics() {
        Ok(s) => [s.rx_dropped(), s.rx_ring_full(), s.rx_fill_ring_empty_descs(), s.tx_invalid_descs()],
        Err(_) => [0; 4],
    }
}

fn frame_index(shared: &Shared, desc: &FrameDesc) -> usize {
    (desc.addr() / shared.frame_size).min(shared.frame_count - 1)
}

/// The descriptor of frame number `idx` (its data segment address as xsk-rs lays it out).
fn frame_desc(shared: &Shared, idx: usize) -> FrameDesc {
    shared.all_frames[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(w: &Wakeup) -> bool {
        let mut p = libc::pollfd { fd: w.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd for the call's duration.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_hand_over_wakes_a_sleeping_worker_once_and_an_awake_one_never() {
        let w = Wakeup::new().unwrap();
        w.notify();
        assert!(!readable(&w), "a worker that is awake gets no write");
        w.raise();
        w.notify();
        assert!(readable(&w), "a sleeping worker's poll set turns readable");
        w.notify();
        w.lower();
        w.drain();
        assert!(!readable(&w), "after the sleep the eventfd is empty again");
        w.notify();
        assert!(!readable(&w), "the first hand-over after a sleep cleared the flag");
    }

    #[test]
    fn a_worker_asleep_in_poll_wakes_at_a_hand_over_before_its_timeout() {
        let w = Arc::new(Wakeup::new().unwrap());
        let sleeper = Arc::clone(&w);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            sleeper.raise();
            tx.send(()).unwrap();
            let mut p = libc::pollfd { fd: sleeper.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd for the call's duration.
            let n = unsafe { libc::poll(&mut p, 1, 10_000) };
            sleeper.lower();
            n
        });
        rx.recv().unwrap();
        w.notify();
        assert_eq!(t.join().unwrap(), 1, "poll returned for the eventfd, not for its 10 s timeout");
    }
}
