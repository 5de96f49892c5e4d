//! Load between two pods, from threads inside their namespaces (packet rates, loss and
//! latency come from the lab's generator, [`crate::generator`]):
//!
//! - [`tcp_throughput`]: one TCP stream, bytes counted by the receiver, Gbit/s;
//! - [`UdpFlow`]: a paced, sequence-numbered UDP flow to run *while* something changes (a
//!   node joins, a snapshot is replaced), reporting loss, reordering and the longest gap.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use serde::Serialize;

use crate::netns;
use crate::topology::PodState;

/// 18 bytes of UDP payload make a 64-byte Ethernet frame (with FCS).
pub const UDP_PAYLOAD: usize = 18;
pub const TCP_BULK_PORT: u16 = 5201;
/// After the sender stops, the receiver drains until the line has been quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(300);

/// Result of [`tcp_throughput`].
#[derive(Debug, Clone, Serialize)]
pub struct TcpThroughput {
    pub src: String,
    pub dst: String,
    pub duration_s: f64,
    pub bytes: u64,
    pub gbit_per_s: f64,
}

/// One TCP stream from `src` to `dst` for `d`; Gbit/s as the receiver counts them.
pub fn tcp_throughput(src: &PodState, dst: &PodState, d: Duration) -> Result<TcpThroughput> {
    let dst_addr = SocketAddr::from((dst.ip()?, TCP_BULK_PORT));
    let rx = netns::spawn_ready(&dst.netns, move |ready| {
        let l =
            TcpListener::bind(("0.0.0.0", TCP_BULK_PORT)).context("binding the TCP receiver")?;
        l.set_nonblocking(true)?;
        ready.signal();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e).context("accepting the TCP stream"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let t0 = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the TCP stream"),
            }
        }
        Ok((bytes, t0.elapsed()))
    })
    .with_context(|| format!("TCP receiver in pod {}", dst.name))?;
    let tx = netns::run_in(&src.netns, move || {
        let mut s =
            TcpStream::connect_timeout(&dst_addr, Duration::from_secs(3)).context("connecting")?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let chunk = vec![0x5au8; 128 << 10];
        let t0 = Instant::now();
        while t0.elapsed() < d {
            s.write_all(&chunk).context("writing")?;
        }
        s.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let rx = netns::join(rx).with_context(|| format!("TCP receiver in pod {}", dst.name));
    tx.with_context(|| format!("TCP sender in pod {} to {dst_addr}", src.name))?;
    let (bytes, elapsed) = rx?;
    let secs = elapsed.as_secs_f64();
    Ok(TcpThroughput {
        src: src.name.clone(),
        dst: dst.name.clone(),
        duration_s: secs,
        bytes,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
    })
}

/// What a [`UdpFlow`] saw.
#[derive(Debug, Clone, Serialize)]
pub struct FlowStats {
    pub src: String,
    pub dst: String,
    pub sent: u64,
    /// Distinct sequence numbers received.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// The longest time between two received packets while the flow ran, ms.
    pub max_gap_ms: f64,
    /// When the last packet arrived.
    #[serde(skip)]
    pub last_rx_at: Option<Instant>,
}

static FLOW_PORT: AtomicU16 = AtomicU16::new(0);

/// A paced UDP flow (sequence numbers in the first 8 payload bytes) from one pod to another,
/// running until [`UdpFlow::stop`].
#[derive(Debug)]
pub struct UdpFlow {
    src: String,
    dst: String,
    stop: Arc<AtomicBool>,
    tx: JoinHandle<Result<u64>>,
    rx: JoinHandle<Result<FlowStats>>,
}

impl UdpFlow {
    /// Starts `pps` packets per second (sent in 1 ms ticks) from `src` to `dst`.
    pub fn start(src: &PodState, dst: &PodState, pps: u32) -> Result<Self> {
        let port = 9100 + FLOW_PORT.fetch_add(1, Ordering::Relaxed) % 800;
        let dst_addr = SocketAddr::from((dst.ip()?, port));
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let rx = netns::spawn_ready(&dst.netns, move |ready| {
            let s = UdpSocket::bind(("0.0.0.0", port)).context("binding the flow receiver")?;
            s.set_read_timeout(Some(Duration::from_millis(10)))?;
            ready.signal();
            receive_flow(&s, &st)
        })
        .with_context(|| format!("flow receiver in pod {}", dst.name))?;
        let st = stop.clone();
        let tx = netns::spawn_in(&src.netns, move || send_paced(dst_addr, pps, &st))
            .with_context(|| format!("flow sender in pod {}", src.name))?;
        Ok(Self {
            src: src.name.clone(),
            dst: dst.name.clone(),
            stop,
            tx,
            rx,
        })
    }

    /// Stops the flow and waits for the receiver to drain.
    pub fn stop(self) -> Result<FlowStats> {
        self.stop.store(true, Ordering::Relaxed);
        let sent =
            netns::join(self.tx).with_context(|| format!("flow sender in pod {}", self.src))?;
        let mut s =
            netns::join(self.rx).with_context(|| format!("flow receiver in pod {}", self.dst))?;
        s.src = self.src;
        s.dst = self.dst;
        s.sent = sent;
        s.lost = sent.saturating_sub(s.received);
        Ok(s)
    }
}

fn send_paced(dst: SocketAddr, pps: u32, stop: &AtomicBool) -> Result<u64> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.connect(dst)?;
    let t0 = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (t0.elapsed().as_secs_f64() * f64::from(pps)) as u64;
        while seq < due {
            let mut p = [0u8; UDP_PAYLOAD];
            p[..8].copy_from_slice(&seq.to_be_bytes());
            match s.send(&p) {
                Ok(_) => seq += 1,
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => seq += 1,
                Err(e) => return Err(e).with_context(|| format!("flow send to {dst}")),
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(seq)
}

fn receive_flow(s: &UdpSocket, stop: &AtomicBool) -> Result<FlowStats> {
    let mut seen = crate::generator::SeqSet::default();
    let mut st = FlowStats {
        src: String::new(),
        dst: String::new(),
        sent: 0,
        received: 0,
        lost: 0,
        duplicates: 0,
        reordered: 0,
        max_gap_ms: 0.0,
        last_rx_at: None,
    };
    let (mut highest, mut last_rx, mut stop_seen) = (None::<u64>, None::<Instant>, None::<Instant>);
    let mut buf = [0u8; 64];
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                if !seen.insert(seq) {
                    st.duplicates += 1;
                    continue;
                }
                st.received += 1;
                if highest.is_some_and(|h| seq < h) {
                    st.reordered += 1;
                }
                highest = highest.max(Some(seq));
                let now = Instant::now();
                if let Some(l) = last_rx {
                    st.max_gap_ms = st.max_gap_ms.max((now - l).as_secs_f64() * 1e3);
                }
                last_rx = Some(now);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("flow receive"),
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if since.elapsed() >= DRAIN_QUIET {
                st.last_rx_at = last_rx;
                return Ok(st);
            }
        }
    }
}

/// Pods by name, for callers holding a list.
pub fn find<'a>(pods: &'a [PodState], name: &str) -> Option<&'a PodState> {
    pods.iter().find(|p| p.name == name)
}

/// The first pod on node 1 and the first on node 2 (the demo's measured pair).
pub fn cross_node_pair(pods: &[PodState]) -> Option<(&PodState, &PodState)> {
    let a = pods.iter().find(|p| p.node_index == 1)?;
    let b = pods.iter().find(|p| p.node_index == 2)?;
    Some((a, b))
}
