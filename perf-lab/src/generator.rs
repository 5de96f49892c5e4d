//! The lab's own traffic generator and sink: one pod sends UDP in 1 to 20,000 flows, flat
//! out or paced to a rate, 64-byte or larger frames, every packet stamped with a sequence
//! number and its send time; the sink in the other pod counts what arrived and reports
//! packets per second, loss, reordering, duplicates and one-way latency percentiles.
//!
//! - The sender builds whole IPv4 + UDP packets and hands them to a raw IPv4 socket
//!   (IP_HDRINCL) with sendmmsg(2) batches: no UDP socket per flow and no UDP stack on the
//!   sending side, so the generator's own cost is small and the same for every data path.
//!   (By default not AF_PACKET: through the raw socket the pod's kernel resolves its
//!   gateway's MAC on every data path alike, and from the route lookup on the skb takes the
//!   same way.) Flows differ by UDP source port. UDP checksums are 0 (legal for IPv4): the
//!   payload changes per packet and summing it would be the sender's biggest cost.
//! - [`SenderKind::Link`] sends whole Ethernet frames through an AF_PACKET socket bound to
//!   the pod's interface instead, addressed to the MAC of the next hop the warm-up resolved:
//!   the sending pod's own stack (route lookup, netfilter, neighbour) is bypassed per packet,
//!   on every data path alike, so the sender can offer a data path more than the raw socket
//!   could — the overload probe. What lies behind the pod's veth (the host's forwarding in
//!   softirq, twill's XDP hook) runs as before. The bench uses it for its overload probe
//!   only; the NDR and every other probe come from the raw sender.
//! - The sink is one UDP socket (recvmmsg(2), SO_TIMESTAMPNS): latency is the kernel's
//!   receive stamp minus the sender's CLOCK_REALTIME stamp — both on this machine's clock.
//! - Before measuring, the sender trickles warm-up packets until the sink has seen one, so
//!   neighbour resolution and first-packet work on every hop are not counted as loss.
//! - [`Stream::senders`] sender threads share the stream: each sends its share of the
//!   rate on its own flows, with sequence numbers of its own residue (thread k of T sends
//!   k, k+T, k+2T, ...), so the sink's loss, duplicate and per-flow reorder accounting
//!   stays exact. One thread cannot offer every data path twice its no-drop rate.
//! - The threads are pinned when asked (`sender_core` for every sender, `sink_core`).
//! - The machine's busy CPU time over the run is read from /proc/stat: CPU per million
//!   delivered packets, the generator and sink included (they are the same for every path).

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, MultiHeaders, SockFlag, SockProtocol,
    SockType, SockaddrIn, recvmmsg, sendmmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use serde::Serialize;

use crate::netns;
use crate::topology::PodState;

/// The sink's UDP port.
pub const SINK_PORT: u16 = 9300;
/// Flow `i` is sent from UDP source port `FIRST_SRC_PORT + i`.
pub const FIRST_SRC_PORT: u16 = 20_000;
pub const MAX_FLOWS: u32 = 20_000;
/// Ethernet header and FCS around the IP packet.
const L2_BYTES: usize = ETH_HEADER + 4;
const ETH_HEADER: usize = 14;
const IP_UDP_BYTES: usize = 20 + 8;
/// seq (8) + send time (8) + kind (1) + one spare byte: 18 bytes, a 64-byte frame.
const STAMP_BYTES: usize = 18;
pub const MIN_FRAME: usize = L2_BYTES + IP_UDP_BYTES + STAMP_BYTES;
/// Largest frame for a 1,500-byte pod MTU.
pub const MAX_FRAME: usize = L2_BYTES + 1500;
const KIND_MEASURED: u8 = 1;
const KIND_WARMUP: u8 = 2;
const BATCH: usize = 32;
const SINK_QUIET: Duration = Duration::from_millis(300);
const WARMUP_LIMIT: Duration = Duration::from_secs(3);
/// Most sender threads a stream may have.
pub const MAX_SENDERS: u32 = 4;

/// What to send.
#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    /// Ethernet frame size with FCS, [`MIN_FRAME`] (64) to [`MAX_FRAME`] (1518).
    pub frame_bytes: usize,
    /// 1 to [`MAX_FLOWS`] flows, sent round robin.
    pub flows: u32,
    /// Packets per second; `None` sends flat out.
    pub rate_pps: Option<f64>,
    pub duration_s: f64,
    pub sender_core: Option<usize>,
    pub sink_core: Option<usize>,
    /// How packets leave the sending pod.
    pub sender: SenderKind,
    /// Sender threads, 1 to [`MAX_SENDERS`], each with `flows / senders` of the flows.
    pub senders: u32,
}

/// How the sender hands its packets to the sending pod's kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum SenderKind {
    /// IPv4 packets through a raw socket: the pod's kernel routes each and adds the link
    /// header, as for an application's packets.
    #[default]
    Raw,
    /// Ethernet frames through an AF_PACKET socket on the pod's interface, to the next hop's
    /// MAC: the faster sender, to overrun a data path (see the module doc).
    Link,
}

impl Stream {
    /// 64-byte frames in one flow for `duration_s`, flat out unless [`Stream::paced`].
    pub fn new(duration_s: f64) -> Stream {
        Stream { frame_bytes: 64, flows: 1, rate_pps: None, duration_s, sender_core: None, sink_core: None, sender: SenderKind::Raw, senders: 1 }
    }

    /// Sends from `n` threads (the flows must be a multiple of `n`).
    pub fn senders(mut self, n: u32) -> Stream {
        self.senders = n;
        self
    }

    pub fn sender(mut self, kind: SenderKind) -> Stream {
        self.sender = kind;
        self
    }

    pub fn paced(mut self, pps: f64) -> Stream {
        self.rate_pps = Some(pps);
        self
    }

    pub fn flows(mut self, flows: u32) -> Stream {
        self.flows = flows;
        self
    }

    pub fn frame(mut self, bytes: usize) -> Stream {
        self.frame_bytes = bytes;
        self
    }

    pub fn pinned(mut self, sender: usize, sink: usize) -> Stream {
        self.sender_core = Some(sender);
        self.sink_core = Some(sink);
        self
    }

    fn check(&self) -> Result<()> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&self.frame_bytes) {
            bail!("frame size {} bytes: accepted are {MIN_FRAME} to {MAX_FRAME}", self.frame_bytes);
        }
        if !(1..=MAX_FLOWS).contains(&self.flows) {
            bail!("{} flows: accepted are 1 to {MAX_FLOWS}", self.flows);
        }
        if !(1..=MAX_SENDERS).contains(&self.senders) {
            bail!("{} senders: accepted are 1 to {MAX_SENDERS}", self.senders);
        }
        if !self.flows.is_multiple_of(self.senders) {
            bail!("{} flows from {} senders: the flows must be a multiple of the senders, so that each flow has one sender", self.flows, self.senders);
        }
        if let Some(r) = self.rate_pps
            && !(r.is_finite() && r > 0.0)
        {
            bail!("rate {r} pps: a positive number is needed (or none for flat out)");
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            bail!("duration {} s: a positive number is needed", self.duration_s);
        }
        Ok(())
    }
}

/// One-way latency, microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (quantile, µs) points for a CDF plot.
    pub cdf: Vec<(f64, f64)>,
}

/// What one [`run`] saw.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStats {
    pub src: String,
    pub dst: String,
    pub stream: Stream,
    /// Seconds the sender sent for.
    pub duration_s: f64,
    pub sent: u64,
    /// Distinct measured packets that arrived.
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    /// Packets that arrived after a later packet of the same flow.
    pub reordered: u64,
    pub duplicates: u64,
    pub sent_pps: f64,
    pub received_pps: f64,
    pub received_gbit_per_s: f64,
    pub latency: Latency,
    /// Busy CPU time of the whole machine over the run per million received packets, ms.
    pub cpu_ms_per_mpkt: f64,
    /// When the last measured packet arrived (this process's clock), for tests that time
    /// when a change stopped a stream.
    #[serde(skip)]
    pub last_rx_at: Option<Instant>,
}

/// Sends `stream` from `src` to `dst` for its whole duration and reports what the sink saw.
pub fn run(src: &PodState, dst: &PodState, stream: &Stream) -> Result<StreamStats> {
    start(src, dst, stream)?.wait()
}

/// A stream sending in the background: [`Running::stop`] ends it early (its duration is
/// then an upper bound), [`Running::wait`] lets it run out.
#[derive(Debug)]
pub struct Running {
    src: String,
    dst: String,
    stream: Stream,
    stop_sender: Arc<AtomicBool>,
    stop_sink: Arc<AtomicBool>,
    senders: Vec<JoinHandle<Result<(u64, f64)>>>,
    sink: JoinHandle<Result<SinkStats>>,
    cpu_before: f64,
}

/// Starts `stream` from `src` to `dst` (the sink is listening when this returns).
pub fn start(src: &PodState, dst: &PodState, stream: &Stream) -> Result<Running> {
    stream.check()?;
    let (src_ip, dst_ip) = (src.ip()?, dst.ip()?);
    let sink_seen = Arc::new(AtomicBool::new(false));
    let (stop_sink, stop_sender) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (seen, st, core) = (sink_seen.clone(), stop_sink.clone(), stream.sink_core);
    let sink = netns::spawn_ready(&dst.netns, move |ready| {
        pin(core)?;
        let s = UdpSocket::bind(("0.0.0.0", SINK_PORT)).context("binding the sink")?;
        let _ = setsockopt(&s, sockopt::RcvBufForce, &(16 << 20));
        setsockopt(&s, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
        ready.signal();
        sink(&s, &seen, &st)
    })
    .with_context(|| format!("sink in pod {}", dst.name))?;
    let cpu_before = busy_cpu_s()?;
    let senders = (0..stream.senders)
        .map(|lane| {
            let (cfg, stop, seen) = (stream.clone(), stop_sender.clone(), sink_seen.clone());
            let (ns, ifname) = (src.netns.clone(), src.ifname.clone());
            netns::spawn_in(&src.netns, move || {
                pin(cfg.sender_core)?;
                let mut sender = Sender::new(src_ip, dst_ip, &cfg, lane)?;
                sender.warm_up(&seen)?;
                if cfg.sender == SenderKind::Link {
                    sender.switch_to_link(&ns, &ifname, dst_ip)?;
                }
                sender.send(&cfg, &stop)
            })
            .with_context(|| format!("generator in pod {}", src.name))
        })
        .collect::<Result<Vec<_>>>()
        .inspect_err(|_| {
            // The threads already started stop, and so does the sink.
            stop_sender.store(true, Ordering::Relaxed);
            stop_sink.store(true, Ordering::Relaxed);
        })?;
    Ok(Running { src: src.name.clone(), dst: dst.name.clone(), stream: stream.clone(), stop_sender, stop_sink, senders, sink, cpu_before })
}

impl Running {
    /// Stops sending now; waits for the sink to drain.
    pub fn stop(self) -> Result<StreamStats> {
        self.stop_sender.store(true, Ordering::Relaxed);
        self.wait()
    }

    /// Waits for the stream to run out and the sink to drain.
    pub fn wait(self) -> Result<StreamStats> {
        let by_sender: Vec<Result<(u64, f64)>> = self.senders.into_iter().map(netns::join).collect();
        self.stop_sink.store(true, Ordering::Relaxed);
        let got = netns::join(self.sink).with_context(|| format!("sink in pod {}", self.dst));
        let cpu_s = busy_cpu_s()? - self.cpu_before;
        let (mut sent, mut secs) = (0u64, 0.0f64);
        for r in by_sender {
            let (n, s) = r.with_context(|| format!("generator in pod {} to {}", self.src, self.dst))?;
            sent += n;
            secs = secs.max(s);
        }
        let got = got?;
        let lost = sent.saturating_sub(got.received);
        let ip_bytes = (self.stream.frame_bytes - L2_BYTES) as f64;
        Ok(StreamStats {
            src: self.src,
            dst: self.dst,
            stream: self.stream,
            duration_s: secs,
            sent,
            received: got.received,
            lost,
            loss_pct: if sent == 0 { 100.0 } else { 100.0 * lost as f64 / sent as f64 },
            reordered: got.reordered,
            duplicates: got.duplicates,
            sent_pps: sent as f64 / secs,
            received_pps: got.received as f64 / secs,
            received_gbit_per_s: got.received as f64 * ip_bytes * 8.0 / secs / 1e9,
            latency: latency_of(&got.latency_ns),
            cpu_ms_per_mpkt: if got.received == 0 { f64::NAN } else { cpu_s * 1e3 / (got.received as f64 / 1e6) },
            last_rx_at: got.last_rx_at,
        })
    }
}

fn pin(core: Option<usize>) -> Result<()> {
    let Some(core) = core else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(core).with_context(|| format!("core {core}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to core {core}"))
}

/// The machine's non-idle CPU time so far, seconds (all cores, from /proc/stat).
fn busy_cpu_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).context("/proc/stat has no cpu line")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Ok(busy as f64 / hz)
}

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_REALTIME).unwrap_or_else(|_| TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// An IPv4 + UDP packet of `ip_len` bytes from `src:src_port` to `dst:SINK_PORT` with a zero
/// stamp; the kernel fills in the IP checksum (IP_HDRINCL).
pub fn packet(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, ip_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; ip_len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&src_port.to_be_bytes());
    p[22..24].copy_from_slice(&SINK_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    p
}

/// Writes the stamp into a packet from [`packet`].
pub fn stamp(p: &mut [u8], seq: u64, sent_ns: u64, kind: u8) {
    p[28..36].copy_from_slice(&seq.to_be_bytes());
    p[36..44].copy_from_slice(&sent_ns.to_be_bytes());
    p[44] = kind;
}

/// The Ethernet frame of a packet from [`packet`], from `src` to `dst`, with its IPv4
/// header checksum (the raw socket's kernel would have filled it in).
pub fn frame(ip: &[u8], src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip);
    let sum = crate::probe::checksum(&f[ETH_HEADER..ETH_HEADER + 20]);
    f[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// A stamp read back from a UDP payload: (seq, send time ns, kind).
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64, u8)> {
    let p = payload.get(..STAMP_BYTES)?;
    let seq = u64::from_be_bytes(p[..8].try_into().ok()?);
    let ns = u64::from_be_bytes(p[8..16].try_into().ok()?);
    Some((seq, ns, p[16]))
}

struct Sender {
    fd: OwnedFd,
    /// One template per flow.
    flows: Vec<Vec<u8>>,
    /// A batch's packets, message headers and destinations, allocated once.
    bufs: Vec<Vec<u8>>,
    hdrs: MultiHeaders<SockaddrIn>,
    addrs: [Option<SockaddrIn>; BATCH],
    /// Where the IPv4 packet starts in a template: 0, or the Ethernet header's length once
    /// the sender sends frames ([`Sender::switch_to_link`]).
    ip_at: usize,
    /// This thread's packet `i` carries sequence number `i * stride + lane`.
    lane: u64,
    stride: u64,
}

impl Sender {
    /// Sender thread `lane` of the stream's [`Stream::senders`], with its share of the flows
    /// (those whose index leaves `lane` modulo the senders).
    fn new(src: Ipv4Addr, dst: Ipv4Addr, s: &Stream, lane: u32) -> Result<Sender> {
        let fd = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Raw)
            .context("opening a raw IPv4 socket (needs CAP_NET_RAW)")?;
        let _ = setsockopt(&fd, sockopt::SndBufForce, &(4 << 20));
        let ip_len = s.frame_bytes - L2_BYTES;
        let flows = (lane..s.flows).step_by(s.senders as usize).map(|i| packet(src, dst, FIRST_SRC_PORT + i as u16, ip_len)).collect();
        Ok(Sender {
            fd,
            flows,
            bufs: vec![vec![0; ip_len]; BATCH],
            hdrs: MultiHeaders::preallocate(BATCH, None),
            addrs: [Some(SockaddrIn::from(SocketAddrV4::new(dst, SINK_PORT))); BATCH],
            ip_at: 0,
            lane: u64::from(lane),
            stride: u64::from(s.senders),
        })
    }

    /// From now on sends Ethernet frames through an AF_PACKET socket bound to the pod's
    /// interface `dev` (in namespace `ns`, the calling thread's), to the MAC of the next hop
    /// to `dst` (resolved by the warm-up).
    fn switch_to_link(&mut self, ns: &str, dev: &str, dst: Ipv4Addr) -> Result<()> {
        let hop = netns::next_hop(ns, dst.into())?;
        let mac = netns::neighbour_mac(ns, hop, dev)?;
        let dst_mac = parse_mac(&mac).with_context(|| format!("{hop}'s MAC {mac:?} in {ns}"))?;
        let link = nix::ifaddrs::getifaddrs()
            .context("listing the sending pod's interfaces")?
            .filter(|i| i.interface_name == dev)
            .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
            .with_context(|| format!("no link address for {dev} in the sending pod"))?;
        let src_mac = link.addr().with_context(|| format!("{dev} has no MAC"))?;
        let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), None)
            .context("opening an AF_PACKET socket (needs CAP_NET_RAW)")?;
        nix::sys::socket::bind(fd.as_raw_fd(), &link).with_context(|| format!("binding the AF_PACKET socket to {dev}"))?;
        let _ = setsockopt(&fd, sockopt::SndBufForce, &(4 << 20));
        for t in &mut self.flows {
            *t = frame(t, src_mac, dst_mac);
        }
        self.bufs = vec![vec![0; self.flows[0].len()]; BATCH];
        self.addrs = [None; BATCH];
        self.ip_at = ETH_HEADER;
        self.fd = fd;
        Ok(())
    }

    /// Sends `n` (at most [`BATCH`]) packets, this thread's `i`-th onwards; returns how
    /// many the kernel took.
    fn batch(&mut self, n: usize, i: u64, kind: u8) -> Result<usize> {
        let n = self.fill(n, i, kind);
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| [IoSlice::new(&self.bufs[i])]);
        match sendmmsg(self.fd.as_raw_fd(), &mut self.hdrs, &iovs[..n], &self.addrs[..n], [], MsgFlags::empty()) {
            Ok(r) => Ok(r.count()),
            // A full queue somewhere on the sending node: the packets were not sent.
            Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::EINTR) => Ok(0),
            Err(e) => bail!("sendmmsg on the sender's socket: {e}"),
        }
    }

    /// Writes this thread's packets `i` to `i + n` (at most [`BATCH`]) into the batch
    /// buffers: packet `k` on the thread's flow `k` modulo its flows, stamped with sequence
    /// number `k * stride + lane`. Returns how many it wrote.
    fn fill(&mut self, n: usize, i: u64, kind: u8) -> usize {
        let n = n.min(BATCH);
        let nflows = self.flows.len() as u64;
        for (j, b) in self.bufs[..n].iter_mut().enumerate() {
            let k = i + j as u64;
            b.copy_from_slice(&self.flows[(k % nflows) as usize]);
            stamp(&mut b[self.ip_at..], k * self.stride + self.lane, now_ns(), kind);
        }
        n
    }

    fn warm_up(&mut self, seen: &AtomicBool) -> Result<()> {
        let t0 = Instant::now();
        let mut n = 0;
        while !seen.load(Ordering::Relaxed) {
            if t0.elapsed() > WARMUP_LIMIT {
                bail!("no warm-up packet reached the sink within {WARMUP_LIMIT:?} ({n} sent)");
            }
            n += self.batch(1, 0, KIND_WARMUP)?;
            thread::sleep(Duration::from_millis(5));
        }
        // Let warm-up packets still in flight arrive before the measured ones.
        thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    /// Sends measured packets for the stream's duration or until `stop`; returns (sent,
    /// seconds).
    fn send(&mut self, s: &Stream, stop: &AtomicBool) -> Result<(u64, f64)> {
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let d = Duration::from_secs_f64(s.duration_s);
        let t0 = Instant::now();
        let mut sent = 0u64;
        loop {
            let elapsed = t0.elapsed();
            if elapsed >= d || stop.load(Ordering::Relaxed) {
                break;
            }
            let n = match s.rate_pps.map(|r| r / f64::from(s.senders)) {
                None => BATCH,
                Some(rate) => {
                    let due = (elapsed.as_secs_f64() * rate) as u64;
                    if due <= sent {
                        // Sleep (never spin: the data path needs the CPU) until the next
                        // packet is due; what falls due meanwhile goes out in one batch.
                        thread::sleep(Duration::from_secs_f64((sent + 1 - due) as f64 / rate));
                        continue;
                    }
                    ((due - sent) as usize).min(BATCH)
                }
            };
            sent += self.batch(n, sent, KIND_MEASURED)? as u64;
        }
        Ok((sent, t0.elapsed().as_secs_f64()))
    }
}

/// The sequence numbers seen so far, one bit each.
#[derive(Debug, Default)]
struct SeqSet(Vec<u64>);

impl SeqSet {
    /// Records `seq`; false if it was seen before (a duplicate).
    fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let new = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        new
    }
}

struct SinkStats {
    received: u64,
    reordered: u64,
    duplicates: u64,
    latency_ns: Histogram<u64>,
    last_rx_at: Option<Instant>,
}

/// Counts measured packets until `stop` and [`SINK_QUIET`] of silence (at most 5 s more).
fn sink(s: &UdpSocket, warmed: &AtomicBool, stop: &AtomicBool) -> Result<SinkStats> {
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut st = SinkStats {
        received: 0,
        reordered: 0,
        duplicates: 0,
        latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).context("latency histogram")?,
        last_rx_at: None,
    };
    let mut seen = SeqSet::default();
    let mut last_of_flow = vec![u64::MAX; MAX_FLOWS as usize];
    let mut bufs = [[0u8; 64]; BATCH];
    let mut hdrs = MultiHeaders::<SockaddrIn>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
    let (mut last_rx, mut stop_seen) = (Instant::now(), None::<Instant>);
    loop {
        let mut got = [(0usize, 0u16, 0u64); BATCH];
        let mut n = 0;
        {
            let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            match recvmmsg(s.as_raw_fd(), &mut hdrs, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(r) => {
                    for m in r {
                        let rx_ns = m
                            .cmsgs()
                            .ok()
                            .and_then(|mut c| {
                                c.find_map(|c| match c {
                                    ControlMessageOwned::ScmTimestampns(t) => Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64),
                                    _ => None,
                                })
                            })
                            .unwrap_or_else(now_ns);
                        got[n] = (m.bytes, m.address.map_or(0, |a| a.port()), rx_ns);
                        n += 1;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => bail!("recvmmsg in the sink: {e}"),
            }
        }
        if n > 0 {
            last_rx = Instant::now();
        }
        for (i, &(bytes, port, rx_ns)) in got[..n].iter().enumerate() {
            let Some((seq, tx_ns, kind)) = read_stamp(&bufs[i][..bytes.min(64)]) else { continue };
            if kind == KIND_WARMUP {
                warmed.store(true, Ordering::Relaxed);
                continue;
            }
            if kind != KIND_MEASURED {
                continue;
            }
            if !seen.insert(seq) {
                st.duplicates += 1;
                continue;
            }
            st.received += 1;
            let flow = usize::from(port.wrapping_sub(FIRST_SRC_PORT)).min(MAX_FLOWS as usize - 1);
            let last = &mut last_of_flow[flow];
            if *last != u64::MAX && seq < *last {
                st.reordered += 1;
            } else {
                *last = seq;
            }
            let _ = st.latency_ns.record(rx_ns.saturating_sub(tx_ns).max(1));
            st.last_rx_at = Some(last_rx);
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if last_rx.elapsed() >= SINK_QUIET || since.elapsed() > Duration::from_secs(5) {
                return Ok(st);
            }
        }
    }
}

/// Quantiles plotted in latency CDFs.
const CDF_QUANTILES: [f64; 14] = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Latency {
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1e3,
        cdf: CDF_QUANTILES.iter().map(|&q| (q, us(q))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_well_formed_ipv4_udp_of_the_frame_size() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        for frame in [MIN_FRAME, 1400, MAX_FRAME] {
            let mut p = packet(a, b, FIRST_SRC_PORT + 7, frame - L2_BYTES);
            stamp(&mut p, 0x0102_0304_0506_0708, 42, KIND_MEASURED);
            assert_eq!(p.len() + L2_BYTES, frame);
            let (ip, rest) = etherparse::Ipv4HeaderSlice::from_slice(&p).map(|h| (h.to_header(), &p[20..])).expect("IPv4");
            assert_eq!((ip.source, ip.destination, ip.protocol.0), (a.octets(), b.octets(), 17));
            assert_eq!(usize::from(ip.total_len), p.len());
            assert!(ip.dont_fragment);
            let udp = etherparse::UdpHeaderSlice::from_slice(rest).expect("UDP").to_header();
            assert_eq!((udp.source_port, udp.destination_port), (FIRST_SRC_PORT + 7, SINK_PORT));
            assert_eq!(usize::from(udp.length), p.len() - 20);
            assert_eq!(read_stamp(&rest[8..]), Some((0x0102_0304_0506_0708, 42, KIND_MEASURED)));
        }
        assert_eq!(MIN_FRAME, 64);
    }

    #[test]
    fn streams_outside_the_accepted_ranges_are_refused_by_name() {
        let e = Stream::new(1.0).frame(63).check().unwrap_err().to_string();
        assert!(e.contains("63 bytes") && e.contains("64 to 1518"), "{e}");
        let e = Stream::new(1.0).flows(0).check().unwrap_err().to_string();
        assert!(e.contains("0 flows"), "{e}");
        let e = Stream::new(1.0).paced(-1.0).check().unwrap_err().to_string();
        assert!(e.contains("rate -1"), "{e}");
        assert!(Stream::new(1.0).flows(MAX_FLOWS).frame(1400).paced(1e5).check().is_ok());
        for n in [0, MAX_SENDERS + 1] {
            let e = Stream::new(1.0).senders(n).flows(20).check().unwrap_err().to_string();
            assert!(e.contains(&format!("{n} senders")) && e.contains("1 to 4"), "{e}");
        }
        let e = Stream::new(1.0).senders(2).flows(3).check().unwrap_err().to_string();
        assert!(e.contains("3 flows from 2 senders") && e.contains("multiple"), "{e}");
        assert!(Stream::new(1.0).senders(2).flows(2).check().is_ok());
    }

    /// Two sender threads share the flows and the sequence numbers without overlap: thread
    /// k of T sends the flows k, k+T, ... and the numbers k, k+T, k+2T, ...
    #[test]
    fn sender_threads_split_flows_and_sequence_numbers() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        let s = Stream::new(1.0).senders(2).flows(4);
        let mut seen = Vec::new();
        for lane in 0..2 {
            let mut t = Sender::new(a, b, &s, lane).expect("a raw socket: run as root, as CI does");
            assert_eq!(t.fill(4, 0, KIND_MEASURED), 4);
            for b in &t.bufs[..4] {
                let port = u16::from_be_bytes([b[20], b[21]]);
                let (seq, _, kind) = read_stamp(&b[28..]).expect("a stamp");
                assert_eq!(kind, KIND_MEASURED);
                seen.push((lane, port - FIRST_SRC_PORT, seq));
            }
        }
        assert_eq!(
            seen,
            [(0, 0, 0), (0, 2, 2), (0, 0, 4), (0, 2, 6), (1, 1, 1), (1, 3, 3), (1, 1, 5), (1, 3, 7)],
        );
    }

    #[test]
    fn link_frames_carry_the_packet_behind_an_ethernet_header_with_a_good_ip_checksum() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        let ip = packet(a, b, FIRST_SRC_PORT, MIN_FRAME - L2_BYTES);
        let f = frame(&ip, [2, 0, 0, 0, 0, 1], [0xee; 6]);
        assert_eq!(f.len() + 4, MIN_FRAME);
        let eth = etherparse::Ethernet2HeaderSlice::from_slice(&f).unwrap().to_header();
        assert_eq!((eth.source, eth.destination, eth.ether_type.0), ([2, 0, 0, 0, 0, 1], [0xee; 6], 0x0800));
        let h = etherparse::Ipv4HeaderSlice::from_slice(&f[ETH_HEADER..]).unwrap().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(&f[ETH_HEADER + 20..], &ip[20..]);
    }

    #[test]
    fn sequence_sets_tell_duplicates() {
        let mut s = SeqSet::default();
        assert!(s.insert(0) && s.insert(64) && s.insert(1_000_003));
        assert!(!s.insert(64) && !s.insert(0));
        assert!(s.insert(63));
    }

    #[test]
    fn short_payloads_have_no_stamp() {
        assert_eq!(read_stamp(&[0u8; STAMP_BYTES - 1]), None);
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..1000 µs
        }
        let l = latency_of(&h);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(l.cdf.len(), CDF_QUANTILES.len());
        assert!(l.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
