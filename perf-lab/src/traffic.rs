//! Load between two pods, from threads inside their namespaces:
//!
//! - [`udp_rate`]: 64-byte frames (14 Ethernet + 20 IPv4 + 8 UDP + 18 payload + 4 FCS), the
//!   sender flat out with sendmmsg(2) batches, the receiver counting with recvmmsg(2);
//!   sent and received packets per second and the loss between them;
//! - [`tcp_throughput`]: one TCP stream, bytes counted by the receiver, Gbit/s;
//! - [`UdpFlow`]: a paced, sequence-numbered UDP flow to run *while* something changes (a
//!   node joins, a snapshot is replaced), reporting loss, reordering and the longest gap.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg, sendmmsg, setsockopt, sockopt};
use serde::Serialize;

use crate::netns;
use crate::topology::PodState;

/// 18 bytes of UDP payload make a 64-byte Ethernet frame (with FCS).
pub const UDP_PAYLOAD: usize = 18;
pub const FRAME_BYTES: usize = 14 + 20 + 8 + UDP_PAYLOAD + 4;
pub const UDP_RATE_PORT: u16 = 9000;
pub const TCP_BULK_PORT: u16 = 5201;
const BATCH: usize = 64;
/// After the sender stops, the receiver drains until the line has been quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(300);

/// Result of [`udp_rate`].
#[derive(Debug, Clone, Serialize)]
pub struct UdpRate {
    pub src: String,
    pub dst: String,
    pub payload_bytes: usize,
    pub frame_bytes: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub received: u64,
    pub sent_pps: f64,
    pub received_pps: f64,
    pub loss_pct: f64,
}

/// Result of [`tcp_throughput`].
#[derive(Debug, Clone, Serialize)]
pub struct TcpThroughput {
    pub src: String,
    pub dst: String,
    pub duration_s: f64,
    pub bytes: u64,
    pub gbit_per_s: f64,
}

fn io_idle(e: Errno) -> bool {
    matches!(e, Errno::EAGAIN | Errno::EINTR)
}

/// Counts datagrams on `sock` until `stop` is set and the line has been quiet for
/// [`DRAIN_QUIET`] (at most 5 s after `stop`).
fn count_datagrams(sock: &UdpSocket, stop: &AtomicBool) -> Result<u64> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut bufs = [[0u8; 64]; BATCH];
    let mut hdrs = MultiHeaders::<()>::preallocate(BATCH, None);
    let fd = sock.as_raw_fd();
    let (mut received, mut last_rx, mut stop_seen) = (0u64, Instant::now(), None::<Instant>);
    loop {
        // recvmmsg ties the headers' borrow to the buffers': rebuild the (stack) slices per call.
        let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
        match recvmmsg(
            fd,
            &mut hdrs,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(r) => {
                received += r.count() as u64;
                last_rx = Instant::now();
            }
            Err(e) if io_idle(e) => {}
            Err(e) => bail!("recvmmsg: {e}"),
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if last_rx.elapsed() >= DRAIN_QUIET || since.elapsed() > Duration::from_secs(5) {
                return Ok(received);
            }
        }
    }
}

/// Sends 18-byte datagrams on the connected `sock` as fast as sendmmsg allows, for `d`.
fn send_flat_out(sock: &UdpSocket, d: Duration) -> Result<(u64, Duration)> {
    let payload = [0x5au8; UDP_PAYLOAD];
    let iovs: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&payload)]).collect();
    let addrs: Vec<Option<()>> = vec![None; BATCH];
    let mut hdrs = MultiHeaders::<()>::preallocate(BATCH, None);
    let fd = sock.as_raw_fd();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < d {
        match sendmmsg(fd, &mut hdrs, &iovs, &addrs, [], MsgFlags::empty()) {
            Ok(r) => sent += r.count() as u64,
            // Full queues and ICMP errors from earlier packets: keep going.
            Err(Errno::ENOBUFS | Errno::ECONNREFUSED) => {}
            Err(e) if io_idle(e) => {}
            Err(e) => bail!("sendmmsg: {e}"),
        }
    }
    Ok((sent, t0.elapsed()))
}

/// Cross-pod UDP packet rate: `src` sends 64-byte frames to `dst` flat out for `d`.
pub fn udp_rate(src: &PodState, dst: &PodState, d: Duration) -> Result<UdpRate> {
    let dst_addr = SocketAddr::from((dst.ip()?, UDP_RATE_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let rx = netns::spawn_ready(&dst.netns, move |ready| {
        let s =
            UdpSocket::bind(("0.0.0.0", UDP_RATE_PORT)).context("binding the UDP rate receiver")?;
        // Bigger than rmem_max allows without CAP_NET_ADMIN: absorbs bursts.
        let _ = setsockopt(&s, sockopt::RcvBufForce, &(8 << 20));
        ready.signal();
        count_datagrams(&s, &st)
    })
    .with_context(|| format!("UDP rate receiver in pod {}", dst.name))?;
    let tx = netns::run_in(&src.netns, move || {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect(dst_addr)?;
        send_flat_out(&s, d)
    });
    stop.store(true, Ordering::Relaxed);
    let received =
        netns::join(rx).with_context(|| format!("UDP rate receiver in pod {}", dst.name))?;
    let (sent, elapsed) =
        tx.with_context(|| format!("UDP rate sender in pod {} to {dst_addr}", src.name))?;
    let secs = elapsed.as_secs_f64();
    Ok(UdpRate {
        src: src.name.clone(),
        dst: dst.name.clone(),
        payload_bytes: UDP_PAYLOAD,
        frame_bytes: FRAME_BYTES,
        duration_s: secs,
        sent,
        received,
        sent_pps: sent as f64 / secs,
        received_pps: received as f64 / secs,
        loss_pct: if sent == 0 {
            100.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        },
    })
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
    let mut seen: Vec<u64> = Vec::new(); // bitmap of sequence numbers
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
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if seen.len() <= w {
                    seen.resize(w + 1, 0);
                }
                if seen[w] & (1 << b) != 0 {
                    st.duplicates += 1;
                    continue;
                }
                seen[w] |= 1 << b;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_64_bytes() {
        assert_eq!(FRAME_BYTES, 64);
    }
}
