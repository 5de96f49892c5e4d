//! Reachability probes between pods, run from threads inside the pods' namespaces:
//! ICMP echo over a raw socket (RFC 792; the reply must match identifier, sequence, payload
//! and source; ICMPv6 echo, RFC 4443 §4, for IPv6), a TCP connect + echoed exchange, and a
//! UDP request/response, against echo servers started in each destination pod (one socket
//! for both families). Dual-stack pods are probed over IPv4 and over IPv6. Every probe is time-bound: a failure is a
//! result with a reason, never a hang.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, recv, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use serde::Serialize;

use crate::netns;
use crate::topology::PodState;

pub const TCP_ECHO_PORT: u16 = 7000;
pub const UDP_ECHO_PORT: u16 = 7001;
/// Per ICMP / UDP attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);
pub const ATTEMPTS: u32 = 3;
/// TCP connect (covers one lost SYN: the first retransmission is at 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// Round trip of the successful exchange, microseconds.
    pub rtt_us: Option<f64>,
    pub error: Option<String>,
}

impl ProbeResult {
    fn of(r: Result<Duration>) -> Self {
        match r {
            Ok(d) => Self {
                ok: true,
                rtt_us: Some(d.as_secs_f64() * 1e6),
                error: None,
            },
            Err(e) => Self {
                ok: false,
                rtt_us: None,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

/// Where a pair's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    SameNode,
    CrossNode,
}

/// ICMP, TCP and UDP from one pod to another.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub src: String,
    pub dst: String,
    pub src_node: String,
    pub dst_node: String,
    /// IPv4 or IPv6 (a dual-stack pair is probed once per family).
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub path: PathKind,
    pub icmp: ProbeResult,
    pub tcp: ProbeResult,
    pub udp: ProbeResult,
}

impl PairResult {
    pub fn ok(&self) -> bool {
        self.icmp.ok && self.tcp.ok && self.udp.ok
    }
}

/// TCP and UDP echo servers in a set of pods, stopped on drop.
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl EchoServers {
    /// Starts both servers in every pod; returns once all are bound.
    pub fn start(pods: &[PodState]) -> Result<Self> {
        let mut s = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for p in pods {
            let stop = s.stop.clone();
            s.threads.push(
                netns::spawn_ready(&p.netns, move |ready| {
                    // "::" takes IPv4 as well (net.ipv6.bindv6only is 0 in a new namespace).
                    let l = TcpListener::bind(("::", TCP_ECHO_PORT))
                        .context("binding the TCP echo server")?;
                    l.set_nonblocking(true)?;
                    ready.signal();
                    tcp_echo_server(l, &stop)
                })
                .with_context(|| format!("TCP echo server in pod {}", p.name))?,
            );
            let stop = s.stop.clone();
            s.threads.push(
                netns::spawn_ready(&p.netns, move |ready| {
                    let u = UdpSocket::bind(("::", UDP_ECHO_PORT))
                        .context("binding the UDP echo server")?;
                    u.set_read_timeout(Some(Duration::from_millis(20)))?;
                    ready.signal();
                    udp_echo_server(u, &stop)
                })
                .with_context(|| format!("UDP echo server in pod {}", p.name))?,
            );
        }
        Ok(s)
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Err(e) = netns::join(t) {
                eprintln!("twill-lab: echo server: {e:#}");
            }
        }
    }
}

fn tcp_echo_server(l: TcpListener, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                // Handlers end by themselves: EOF or the 3 s read timeout.
                thread::spawn(move || {
                    let _ = echo_stream(s);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e).context("accepting on the TCP echo server"),
        }
    }
    Ok(())
}

fn echo_stream(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 2048];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

fn udp_echo_server(u: UdpSocket, stop: &AtomicBool) -> Result<()> {
    // Any datagram, up to a jumbo pod MTU's and beyond.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match u.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = u.send_to(&buf[..n], from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving on the UDP echo server"),
        }
    }
    Ok(())
}

/// Destinations one source probes at the same time (threads spawned by a thread inside a
/// namespace stay in it).
const PARALLEL_PER_SOURCE: usize = 16;

/// Probes every ordered pair of distinct pods (ICMP, TCP, UDP), over IPv4 and, where both
/// pods have an IPv6 address, over IPv6. Sources run in parallel, each probing up to
/// [`PARALLEL_PER_SOURCE`] destinations at once, so a broken lab fails in seconds. Errors
/// only when probing could not start.
pub fn check_all_pairs(pods: &[PodState]) -> Result<Vec<PairResult>> {
    for p in pods {
        p.ip()?;
    }
    let _servers = EchoServers::start(pods)?;
    let mut workers = Vec::new();
    for src in pods {
        let mut pairs: Vec<(PodState, IpAddr, IpAddr)> = Vec::new();
        for d in pods.iter().filter(|d| d.name != src.name) {
            pairs.push((d.clone(), src.ip()?.into(), d.ip()?.into()));
            if let (Some(a), Some(b)) = (src.ip6, d.ip6) {
                pairs.push((d.clone(), a.into(), b.into()));
            }
        }
        let src = src.clone();
        let ns = src.netns.clone();
        workers.push(netns::spawn_in(&ns, move || {
            let mut out = Vec::with_capacity(pairs.len());
            for chunk in pairs.chunks(PARALLEL_PER_SOURCE) {
                thread::scope(|s| {
                    let hs: Vec<_> = chunk
                        .iter()
                        .map(|(dst, from, to)| s.spawn(|| probe_pair(&src, dst, *from, *to)))
                        .collect();
                    out.extend(
                        hs.into_iter()
                            .map(|h| h.join().expect("probe thread panicked")),
                    );
                });
            }
            Ok(out)
        })?);
    }
    let mut out = Vec::new();
    for w in workers {
        out.extend(netns::join(w)?);
    }
    Ok(out)
}

/// Runs in the source pod's namespace.
fn probe_pair(src: &PodState, dst: &PodState, src_ip: IpAddr, dst_ip: IpAddr) -> PairResult {
    PairResult {
        src: src.name.clone(),
        dst: dst.name.clone(),
        src_node: src.node.clone(),
        dst_node: dst.node.clone(),
        src_ip,
        dst_ip,
        path: if src.node == dst.node {
            PathKind::SameNode
        } else {
            PathKind::CrossNode
        },
        icmp: ProbeResult::of(icmp_echo(dst_ip, ATTEMPTS, ATTEMPT_TIMEOUT)),
        tcp: ProbeResult::of(tcp_exchange(dst_ip, TCP_ECHO_PORT, CONNECT_TIMEOUT)),
        udp: ProbeResult::of(udp_exchange(
            dst_ip,
            UDP_ECHO_PORT,
            ATTEMPTS,
            ATTEMPT_TIMEOUT,
        )),
    }
}

static IDENT: AtomicU16 = AtomicU16::new(0);

/// RFC 1071 Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (type 8) with identifier, sequence and payload.
pub fn echo_request(ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether `pkt` (IPv4 header + ICMP, as a raw socket delivers it) is the echo reply from
/// `from` to our request.
pub fn is_echo_reply(pkt: &[u8], from: Ipv4Addr, ident: u16, seq: u16, payload: &[u8]) -> bool {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let Some(icmp) = pkt.get(ihl..) else {
        return false;
    };
    pkt[9] == 1
        && Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]) == from
        && icmp.len() >= 8
        && icmp[0] == 0
        && icmp[1] == 0
        && icmp[4..6] == ident.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && &icmp[8..] == payload
        && checksum(icmp) == 0
}

/// ICMP echo (ICMPv6 echo for an IPv6 `dst`) from the calling thread's namespace;
/// `attempts` requests, each waited for `timeout`. Returns the round trip of the first
/// matching reply.
pub fn icmp_echo(dst: impl Into<IpAddr>, attempts: u32, timeout: Duration) -> Result<Duration> {
    let dst = dst.into();
    let (family, protocol) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let fd = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol).context("opening a raw ICMP socket")?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 20_000))?;
    let ident =
        (std::process::id() as u16) ^ IDENT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37);
    let mut buf = [0u8; 1500];
    for seq in 1..=attempts as u16 {
        let payload: Vec<u8> = (0..32u8).map(|b| b ^ seq as u8 ^ (ident as u8)).collect();
        let t0 = Instant::now();
        match dst {
            IpAddr::V4(v4) => sendto(fd.as_raw_fd(), &echo_request(ident, seq, &payload), &SockaddrIn::from(SocketAddrV4::new(v4, 0)), MsgFlags::empty()),
            // The kernel fills in an ICMPv6 raw socket's checksum (RFC 3542 §3.1).
            IpAddr::V6(v6) => sendto(fd.as_raw_fd(), &echo6_request(ident, seq, &payload), &SockaddrIn6::from(SocketAddrV6::new(v6, 0, 0, 0)), MsgFlags::empty()),
        }
        .with_context(|| format!("sending echo request to {dst}"))?;
        while t0.elapsed() < timeout {
            let answer = match dst {
                IpAddr::V4(v4) => recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map(|n| is_echo_reply(&buf[..n], v4, ident, seq, &payload)),
                IpAddr::V6(v6) => recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf).map(|(n, from)| {
                    from.and_then(|f| f.as_sockaddr_in6().map(|a| a.ip())) == Some(v6) && is_echo6_reply(&buf[..n], ident, seq, &payload)
                }),
            };
            match answer {
                Ok(true) => return Ok(t0.elapsed()),
                Ok(false) | Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => bail!("receiving echo reply from {dst}: {e}"),
            }
        }
    }
    bail!("no ICMP echo reply from {dst} to {attempts} requests ({timeout:?} each)")
}

/// An ICMPv6 echo request (type 128) with identifier, sequence and payload; checksum 0
/// (the kernel computes it).
fn echo6_request(ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![128, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Whether `icmp` (an ICMPv6 message, as a raw ICMPv6 socket delivers it: no IPv6 header;
/// the kernel verified its checksum) is the echo reply (type 129) to our request.
fn is_echo6_reply(icmp: &[u8], ident: u16, seq: u16, payload: &[u8]) -> bool {
    icmp.len() >= 8 && icmp[0] == 129 && icmp[1] == 0 && icmp[4..6] == ident.to_be_bytes() && icmp[6..8] == seq.to_be_bytes() && &icmp[8..] == payload
}

/// TCP connect to `dst:port`, send 32 bytes, expect them echoed. Returns the exchange's RTT.
pub fn tcp_exchange(dst: impl Into<IpAddr>, port: u16, connect_timeout: Duration) -> Result<Duration> {
    let addr = SocketAddr::from((dst.into(), port));
    let mut s = TcpStream::connect_timeout(&addr, connect_timeout)
        .with_context(|| format!("TCP connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    let msg: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(7) ^ (port as u8))
        .collect();
    let t0 = Instant::now();
    s.write_all(&msg)
        .with_context(|| format!("TCP send to {addr}"))?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .with_context(|| format!("TCP echo from {addr}"))?;
    let rtt = t0.elapsed();
    if back != msg {
        bail!("TCP echo from {addr} differs from what was sent");
    }
    Ok(rtt)
}

/// UDP request to `dst:port`, expect it echoed; `attempts` tries of `timeout` each.
pub fn udp_exchange(
    dst: impl Into<IpAddr>,
    port: u16,
    attempts: u32,
    timeout: Duration,
) -> Result<Duration> {
    let addr = SocketAddr::from((dst.into(), port));
    let any: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let s = UdpSocket::bind((any, 0)).context("binding a UDP socket")?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buf = [0u8; 256];
    let mut last = anyhow!("no UDP answer from {addr} to {attempts} requests ({timeout:?} each)");
    for attempt in 0..attempts {
        let msg = format!(
            "twill-lab {} {attempt} {:?}",
            std::process::id(),
            Instant::now()
        )
        .into_bytes();
        let t0 = Instant::now();
        s.send(&msg)
            .with_context(|| format!("UDP send to {addr}"))?;
        while t0.elapsed() < timeout {
            match s.recv(&mut buf) {
                Ok(n) if buf[..n] == msg[..] => return Ok(t0.elapsed()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // ICMP port unreachable from an earlier send; keep trying.
                Err(e) => last = anyhow!("UDP to {addr}: {e}"),
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 §3 example words 0001 f203 f4f5 f6f7 sum to ddf2, complement 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        let r = echo_request(0x1234, 7, b"abc");
        assert_eq!(checksum(&r), 0);
    }

    #[test]
    fn echo_reply_matching() {
        let payload = b"0123456789";
        let mut icmp = echo_request(0x4242, 3, payload);
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 3, 10, 244, 1, 2,
        ];
        pkt.extend_from_slice(&icmp);
        let from = Ipv4Addr::new(10, 244, 2, 3);
        assert!(is_echo_reply(&pkt, from, 0x4242, 3, payload));
        assert!(!is_echo_reply(&pkt, from, 0x4243, 3, payload));
        assert!(!is_echo_reply(&pkt, from, 0x4242, 4, payload));
        assert!(!is_echo_reply(
            &pkt,
            Ipv4Addr::new(10, 244, 2, 4),
            0x4242,
            3,
            payload
        ));
        assert!(!is_echo_reply(&pkt[..25], from, 0x4242, 3, payload));
        let mut req = pkt.clone();
        req[20] = 8;
        assert!(!is_echo_reply(&req, from, 0x4242, 3, payload));
    }

    #[test]
    fn probes_on_loopback_in_a_namespace() {
        netns::require_root().expect("this test creates a network namespace and must run as root");
        let g = netns::NetnsGuard::add("tw-unit-probe").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let tcp = netns::spawn_ready(&g.0, move |ready| {
            let l = TcpListener::bind(("0.0.0.0", TCP_ECHO_PORT))?;
            l.set_nonblocking(true)?;
            ready.signal();
            tcp_echo_server(l, &st)
        })
        .unwrap();
        let st = stop.clone();
        let udp = netns::spawn_ready(&g.0, move |ready| {
            let u = UdpSocket::bind(("0.0.0.0", UDP_ECHO_PORT))?;
            u.set_read_timeout(Some(Duration::from_millis(20)))?;
            ready.signal();
            udp_echo_server(u, &st)
        })
        .unwrap();
        let lo = Ipv4Addr::LOCALHOST;
        let (i, t, u, refused) = netns::run_in(&g.0, move || {
            Ok((
                icmp_echo(lo, 1, Duration::from_secs(1)),
                tcp_exchange(lo, TCP_ECHO_PORT, Duration::from_secs(1)),
                udp_exchange(lo, UDP_ECHO_PORT, 1, Duration::from_secs(1)),
                tcp_exchange(lo, 1, Duration::from_secs(1)),
            ))
        })
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        netns::join(tcp).unwrap();
        netns::join(udp).unwrap();
        i.unwrap();
        t.unwrap();
        u.unwrap();
        assert!(refused.is_err());
        // Nothing answers 127.0.0.2's UDP port 9: a failure with a reason, bounded in time.
        let t0 = Instant::now();
        let e = netns::run_in(&g.0, || {
            Ok(udp_exchange(
                Ipv4Addr::new(127, 0, 0, 2),
                9,
                2,
                Duration::from_millis(100),
            ))
        })
        .unwrap()
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(format!("{e}").contains("127.0.0.2:9"), "{e}");
    }
}
