//! What `twill-lab demo` and `check` print: a table for people, one JSON object with
//! `--json` for scripts (the same fields either way).

use std::fmt::Write as _;

use serde::Serialize;

use crate::probe::{PairResult, PathKind, ProbeResult};
use crate::topology::LabState;
use crate::generator::StreamStats;
use crate::traffic::TcpThroughput;

/// A node as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub dataplane: String,
    pub address: String,
    pub pod_cidr: String,
    pub vtep_mac: Option<String>,
}

/// A pod as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PodSummary {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Option<String>,
    /// A dual-stack pod's IPv6 address.
    pub ip6: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabSummary {
    pub nodes: Vec<NodeSummary>,
    pub pods: Vec<PodSummary>,
}

impl LabSummary {
    pub fn of(s: &LabState) -> Self {
        Self {
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeSummary {
                    name: n.name.clone(),
                    dataplane: n.dataplane.to_string(),
                    address: n.address.to_string(),
                    pod_cidr: n.pod_cidr.clone() + &n.pod_cidr6.as_ref().map(|c| format!(" {c}")).unwrap_or_default(),
                    vtep_mac: n.vtep_mac.clone(),
                })
                .collect(),
            pods: s
                .pods
                .iter()
                .map(|p| PodSummary {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    netns: p.netns.clone(),
                    ip: p.ip.map(|i| i.to_string()),
                    ip6: p.ip6.map(|i| i.to_string()),
                })
                .collect(),
        }
    }
}

/// Everything `demo` found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub lab: LabSummary,
    pub pairs: Vec<PairResult>,
    pub pairs_total: usize,
    pub pairs_failed: usize,
    pub all_pairs_ok: bool,
    /// 64-byte UDP from the lab generator, flat out.
    pub udp_flat: Option<StreamStats>,
    /// The same paced at [`crate::bench::COMMON_PPS`]: latency at a load every path carries.
    pub udp_paced: Option<StreamStats>,
    pub udp_error: Option<String>,
    pub tcp_throughput: Option<TcpThroughput>,
    pub tcp_throughput_error: Option<String>,
}

impl DemoReport {
    /// A report carrying only measurements (for `twill-lab measure`).
    pub fn measurements_only(flat: StreamStats, paced: StreamStats, tcp: TcpThroughput) -> Self {
        Self {
            lab: LabSummary {
                nodes: Vec::new(),
                pods: Vec::new(),
            },
            pairs: Vec::new(),
            pairs_total: 0,
            pairs_failed: 0,
            all_pairs_ok: true,
            udp_flat: Some(flat),
            udp_paced: Some(paced),
            udp_error: None,
            tcp_throughput: Some(tcp),
            tcp_throughput_error: None,
        }
    }

    /// Whether the demo passed: every pair reachable and both measurements taken.
    pub fn ok(&self) -> bool {
        self.all_pairs_ok && self.udp_flat.is_some() && self.udp_paced.is_some() && self.tcp_throughput.is_some()
    }
}

pub fn lab_table(s: &LabSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<15} {:<13} {:<36} vtep mac",
        "node", "dataplane", "address", "pod cidr"
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<6} {:<15} {:<13} {:<36} {}",
            n.name,
            n.dataplane,
            n.address,
            n.pod_cidr,
            n.vtep_mac.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "\n{:<10} {:<6} {:<12} ip", "pod", "node", "netns");
    for p in &s.pods {
        let _ = writeln!(
            out,
            "{:<10} {:<6} {:<12} {}{}",
            p.name,
            p.node,
            p.netns,
            p.ip.as_deref().unwrap_or("-"),
            p.ip6.as_deref().map(|a| format!(" {a}")).unwrap_or_default()
        );
    }
    out
}

fn cell(r: &ProbeResult) -> String {
    match (r.ok, r.rtt_us) {
        (true, Some(us)) => format!("ok {:>7.1}us", us),
        (true, None) => "ok".to_owned(),
        (false, _) => "FAIL".to_owned(),
    }
}

pub fn pairs_table(pairs: &[PairResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<40} {:<10} {:<13} {:<13} {:<13}",
        "pair", "addresses", "path", "icmp", "tcp", "udp"
    );
    for p in pairs {
        let _ = writeln!(
            out,
            "{:<22} {:<40} {:<10} {:<13} {:<13} {:<13}",
            format!("{} -> {}", p.src, p.dst),
            format!("{} -> {}", p.src_ip, p.dst_ip),
            match p.path {
                PathKind::SameNode => "same-node",
                PathKind::CrossNode => "cross-node",
            },
            cell(&p.icmp),
            cell(&p.tcp),
            cell(&p.udp)
        );
    }
    for p in pairs.iter().filter(|p| !p.ok()) {
        for (proto, r) in [("icmp", &p.icmp), ("tcp", &p.tcp), ("udp", &p.udp)] {
            if let Some(e) = &r.error {
                let _ = writeln!(out, "  {} -> {} {proto}: {e}", p.src, p.dst);
            }
        }
    }
    let failed = pairs.iter().filter(|p| !p.ok()).count();
    let _ = writeln!(
        out,
        "{} pairs, {} ok, {} failed",
        pairs.len(),
        pairs.len() - failed,
        failed
    );
    out
}

pub fn measurements_table(r: &DemoReport) -> String {
    let mut out = String::new();
    for s in [&r.udp_flat, &r.udp_paced].into_iter().flatten() {
        out.push_str(&stream_table(s));
    }
    if let Some(e) = &r.udp_error {
        let _ = writeln!(out, "udp stream: FAILED: {e}");
    }
    match (&r.tcp_throughput, &r.tcp_throughput_error) {
        (Some(t), _) => {
            let _ = writeln!(
                out,
                "tcp one stream {} -> {}: {:.2} Gbit/s ({} bytes in {:.1} s)",
                t.src, t.dst, t.gbit_per_s, t.bytes, t.duration_s
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "tcp throughput: FAILED: {e}");
        }
        (None, None) => {}
    }
    out
}

/// One [`generator::run`](crate::generator::run) as two lines of text.
pub fn stream_table(s: &crate::generator::StreamStats) -> String {
    let rate = s.stream.rate_pps.map_or("flat out".to_owned(), |r| format!("paced {r:.0} pps"));
    format!(
        "stream {} -> {}: {}-byte frames, {} flows, {rate}, {:.1} s\n  sent {:.0} pps, received {:.0} pps ({:.3} Gbit/s), loss {:.3}% ({} of {}), reordered {}, duplicates {}\n  latency µs: p50 {:.1}, p90 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}; machine CPU {:.0} ms per Mpkt\n",
        s.src, s.dst, s.stream.frame_bytes, s.stream.flows, s.duration_s, s.sent_pps, s.received_pps, s.received_gbit_per_s, s.loss_pct, s.lost, s.sent,
        s.reordered, s.duplicates, s.latency.p50_us, s.latency.p90_us, s.latency.p99_us, s.latency.p999_us, s.latency.max_us, s.cpu_ms_per_mpkt
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pair(ok: bool) -> PairResult {
        let r = |ok: bool| ProbeResult {
            ok,
            rtt_us: ok.then_some(42.0),
            error: (!ok).then(|| "no echo reply".to_owned()),
        };
        PairResult {
            src: "p1-n1".into(),
            dst: "p1-n2".into(),
            src_node: "n1".into(),
            dst_node: "n2".into(),
            src_ip: Ipv4Addr::new(10, 244, 1, 2).into(),
            dst_ip: Ipv4Addr::new(10, 244, 2, 2).into(),
            path: PathKind::CrossNode,
            icmp: r(ok),
            tcp: r(true),
            udp: r(true),
        }
    }

    #[test]
    fn table_lists_failures_with_reasons() {
        let t = pairs_table(&[pair(true), pair(false)]);
        assert!(t.contains("cross-node"));
        assert!(t.contains("FAIL"));
        assert!(t.contains("icmp: no echo reply"));
        assert!(t.contains("2 pairs, 1 ok, 1 failed"));
    }
}

