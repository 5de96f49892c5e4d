//! `twill-lab bench`: every data path on one topology with the same traffic, in one run.
//!
//! For each trial, for each data path in turn (so slow drifts of a shared machine hit
//! them all alike): a lab of two nodes with one pod each, 64-byte UDP from the pod on n1 to
//! the pod on n2 with the sender flat out, then one TCP stream the same way, then the lab
//! down. The report gives every trial and, per data path, the medians; and twill's medians
//! over each peer's (the ratios the README quotes).
//!
//! Data paths: `twill` (the agent's full pipeline, VXLAN as Flannel speaks it),
//! `kernel-flannel`, `kernel-calico`, and `xdp-ceiling` (the same agent and sockets with
//! `--pipeline ceiling`: what the veths and AF_XDP move when the pipeline costs nothing).

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    topology::{Dataplane, Topology},
    traffic::{self, TcpThroughput, UdpRate},
};

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub dataplanes: Vec<Dataplane>,
    pub trials: usize,
    /// Seconds per UDP and per TCP measurement.
    pub duration_s: f64,
}

impl BenchConfig {
    /// Every data path, `trials` trials of `duration_s` seconds.
    pub fn all(trials: usize, duration_s: f64) -> BenchConfig {
        BenchConfig {
            dataplanes: vec![Dataplane::Twill, Dataplane::KernelFlannel, Dataplane::KernelCalico, Dataplane::XdpCeiling],
            trials,
            duration_s,
        }
    }

    /// `--quick`: every data path, 3 trials of 1 s (about a minute and a half).
    pub fn quick() -> BenchConfig {
        BenchConfig::all(3, 1.0)
    }
}

/// One data path in one trial.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub dataplane: Dataplane,
    pub trial: usize,
    pub udp: UdpRate,
    pub tcp: TcpThroughput,
}

/// The medians of one data path.
#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    pub dataplane: Dataplane,
    pub trials: usize,
    pub udp_sent_pps: f64,
    pub udp_received_pps: f64,
    pub udp_loss_pct: f64,
    pub tcp_gbit_per_s: f64,
}

/// twill's medians over a peer's.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub peer: Dataplane,
    pub udp_received: f64,
    pub tcp: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub config: BenchConfig,
    pub trials: Vec<Trial>,
    pub paths: Vec<PathSummary>,
    pub twill_over: Vec<Ratio>,
}

/// Where the run ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
        Machine { cpus: std::thread::available_parallelism().map_or(1, |n| n.get()), cpu_model, kernel }
    }
}

/// Runs `cfg`. Fails on the first data path that could not be built or measured.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let d = Duration::from_secs_f64(cfg.duration_s);
    let mut trials = Vec::new();
    for trial in 1..=cfg.trials {
        for &dp in &cfg.dataplanes {
            let lab = Topology::uniform(2, 1, dp).up().with_context(|| format!("building the {dp} lab"))?;
            let measured = (|| {
                let (a, b) = traffic::cross_node_pair(lab.pods()).context("no pod on n1 and n2")?;
                Ok::<_, anyhow::Error>((traffic::udp_rate(a, b, d)?, traffic::tcp_throughput(a, b, d)?))
            })();
            lab.down().with_context(|| format!("tearing the {dp} lab down"))?;
            let (udp, tcp) = measured.with_context(|| format!("measuring {dp}, trial {trial}"))?;
            trials.push(Trial { dataplane: dp, trial, udp, tcp });
        }
    }
    let paths: Vec<PathSummary> = cfg
        .dataplanes
        .iter()
        .map(|&dp| {
            let of = |f: fn(&Trial) -> f64| median(trials.iter().filter(|t| t.dataplane == dp).map(f).collect());
            PathSummary {
                dataplane: dp,
                trials: trials.iter().filter(|t| t.dataplane == dp).count(),
                udp_sent_pps: of(|t| t.udp.sent_pps),
                udp_received_pps: of(|t| t.udp.received_pps),
                udp_loss_pct: of(|t| t.udp.loss_pct),
                tcp_gbit_per_s: of(|t| t.tcp.gbit_per_s),
            }
        })
        .collect();
    let twill_over = match paths.iter().find(|p| p.dataplane == Dataplane::Twill) {
        Some(t) => paths
            .iter()
            .filter(|p| p.dataplane != Dataplane::Twill)
            .map(|p| Ratio { peer: p.dataplane, udp_received: t.udp_received_pps / p.udp_received_pps, tcp: t.tcp_gbit_per_s / p.tcp_gbit_per_s })
            .collect(),
        None => Vec::new(),
    };
    Ok(BenchReport { machine: Machine::here(), config: cfg.clone(), trials, paths, twill_over })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The report as Markdown: the machine, the medians, the ratios, every trial.
pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# twill-lab bench\n");
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}. Two nodes, one pod each; 64-byte UDP from p1-n1 to p1-n2, sender flat out, then one TCP stream; {} trials of {} s per data path, alternating; medians.\n",
        r.machine.cpus, r.machine.cpu_model, r.machine.kernel, r.config.trials, r.config.duration_s
    );
    let _ = writeln!(s, "| data path | UDP sent (pps) | UDP received (pps) | loss | TCP (Gbit/s) |\n|---|---|---|---|---|");
    for p in &r.paths {
        let _ = writeln!(s, "| {} | {:.0} | {:.0} | {:.1} % | {:.2} |", p.dataplane, p.udp_sent_pps, p.udp_received_pps, p.udp_loss_pct, p.tcp_gbit_per_s);
    }
    if !r.twill_over.is_empty() {
        let _ = writeln!(s, "\n| twill over | UDP received | TCP |\n|---|---|---|");
        for q in &r.twill_over {
            let _ = writeln!(s, "| {} | {:.2}× | {:.2}× |", q.peer, q.udp_received, q.tcp);
        }
    }
    let _ = writeln!(s, "\n| trial | data path | UDP sent | UDP received | loss | TCP |\n|---|---|---|---|---|---|");
    for t in &r.trials {
        let _ = writeln!(s, "| {} | {} | {:.0} | {:.0} | {:.1} % | {:.2} |", t.trial, t.dataplane, t.udp.sent_pps, t.udp.received_pps, t.udp.loss_pct, t.tcp.gbit_per_s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
