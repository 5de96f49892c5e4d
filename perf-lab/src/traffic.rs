//! TCP between two pods, from threads inside their namespaces: [`tcp_throughput`], one
//! stream, bytes counted by the receiver, Gbit/s. (UDP rates, loss, reordering and latency
//! — also for flows run while something changes — come from the lab's generator,
//! [`crate::generator`].)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::netns;
use crate::topology::PodState;

pub const TCP_BULK_PORT: u16 = 5201;

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
