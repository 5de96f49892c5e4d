//! `twill-lab`: up / add-node / status / check / demo / down for a cluster of network
//! namespaces run by twill or by the kernel path Flannel sets up.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use perf_lab::generator::{self, Stream, StreamStats};
use perf_lab::probe;
use perf_lab::report::{self, DemoReport, LabSummary};
use perf_lab::topology::{self, Dataplane, Lab, PodState, Topology};
use perf_lab::traffic;

#[derive(Parser, Debug)]
#[command(
    name = "twill-lab",
    about = "Clusters of network namespaces run by twill or kernel Flannel, and traffic between their pods"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a lab and leave it running (state in /run/twill-lab/lab.json).
    Up {
        #[command(flatten)]
        topo: TopoArgs,
        /// Print the lab as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a node (and its pods) to the running lab.
    AddNode {
        #[arg(long, value_enum, default_value_t = Dataplane::Twill)]
        dataplane: Dataplane,
        #[arg(long, default_value_t = 2)]
        pods: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show the running lab.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Probe every ordered pod pair of the running lab (ICMP, TCP, UDP).
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Measure UDP pps and TCP Gbit/s between two pods of the running lab
    /// (default: the first pod of node 1 and the first of node 2).
    Measure {
        #[arg(long, requires = "dst")]
        src: Option<String>,
        #[arg(long, requires = "src")]
        dst: Option<String>,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long)]
        json: bool,
    },
    /// The lab's traffic generator between two pods of the running lab (default: the first
    /// pod of node 1 and the first of node 2): sequence-numbered, time-stamped UDP; loss,
    /// reordering and one-way latency at the sink.
    Stream {
        #[arg(long, requires = "dst")]
        src: Option<String>,
        #[arg(long, requires = "src")]
        dst: Option<String>,
        /// Packets per second (default: flat out).
        #[arg(long)]
        rate: Option<f64>,
        /// Flows (UDP source ports), 1 to 20000.
        #[arg(long, default_value_t = 1)]
        flows: u32,
        /// Ethernet frame bytes with FCS, 64 to 1518.
        #[arg(long, default_value_t = 64)]
        frame: usize,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Pin the sender and the sink: `SENDER,SINK` core numbers.
        #[arg(long, value_delimiter = ',')]
        pin: Vec<usize>,
        /// raw: IPv4 through a raw socket, routed by the pod's kernel; link: Ethernet frames
        /// through AF_PACKET to the next hop, the faster sender that can overrun a data path.
        #[arg(long, value_enum, default_value = "raw")]
        sender: generator::SenderKind,
        /// Sender threads, 1 to 4, each with its share of the rate and of the flows (which
        /// must be a multiple of them).
        #[arg(long, default_value_t = 1)]
        senders: u32,
        #[arg(long)]
        json: bool,
    },
    /// up, probe every pair, measure cross-node UDP pps and TCP Gbit/s, down.
    Demo {
        #[command(flatten)]
        topo: TopoArgs,
        #[arg(long)]
        json: bool,
        /// Leave the lab running afterwards.
        #[arg(long)]
        keep: bool,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// Every data path (twill, kernel-flannel, kernel-calico, xdp-ceiling) on one
    /// topology with the same traffic, several alternating trials; prints a Markdown
    /// report of the medians and ratios.
    Bench {
        /// 3 trials of 0.5 s, a coarse NDR, no rules sweep (CI's check that every data path delivers traffic).
        #[arg(long)]
        quick: bool,
        /// Trials per data path (default 3; 3 with --quick).
        #[arg(long)]
        trials: Option<usize>,
        /// Seconds per measurement (default 2; 0.5 with --quick).
        #[arg(long)]
        duration: Option<f64>,
        /// Sections to run (default all): paths (every data path, every measurement),
        /// rules (the rules sweep), topologies (workers per node, pods per node), mtu
        /// (uplink MTU 1500 and 9000, twill and kernel-flannel), routes (10, 10,000 and every
        /// IPv4 prefix of the BGP table), loaded (twill with the full table and 1,000 rules).
        #[arg(long, value_delimiter = ',', value_parser = ["paths", "rules", "topologies", "mtu", "routes", "loaded"])]
        only: Vec<String>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Also write report.md and bench.json into this directory.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Tear down whatever lab exists (also a half-built one).
    Down,
}

#[derive(Args, Debug)]
struct TopoArgs {
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    #[arg(long, default_value_t = 2)]
    pods_per_node: u32,
    /// Data plane of the nodes not named by --flannel-nodes.
    #[arg(long, value_enum, default_value_t = Dataplane::Twill)]
    dataplane: Dataplane,
    /// Node numbers (1-based, comma separated) wired as kernel Flannel whatever --dataplane
    /// says: `--nodes 3 --flannel-nodes 3` is two twill nodes and one Flannel node.
    #[arg(long, value_delimiter = ',')]
    flannel_nodes: Vec<u32>,
    /// Node numbers wired as kernel Calico (VXLAN mode) whatever --dataplane says; twill
    /// nodes then need `--encap vxlan-calico` to talk to them.
    #[arg(long, value_delimiter = ',')]
    calico_nodes: Vec<u32>,
    /// --cores for every agent (default: node i gets core (i-1) mod the core count).
    #[arg(long)]
    cores: Option<String>,
    /// --encap for every agent.
    #[arg(long)]
    encap: Option<String>,
    /// --idle for every agent: spin, yield, adaptive or adaptive:SPIN[:NAP] (default: the agent's,
    /// adaptive with a 5 µs spin and 50 µs naps).
    #[arg(long)]
    idle: Option<String>,
    /// Routes to networks outside the cluster on every node (a file of IPv4 CIDRs, one per
    /// line; .gz is read as gzip): the agents' --routes, the kernel nodes' FIB, via the router.
    #[arg(long)]
    routes: Option<std::path::PathBuf>,
    /// Dual stack: every node gets an IPv6 underlay address (fd00:100::{10+i}/64), twill and
    /// kernel-calico nodes an IPv6 pod subnet (fd00:10:244:i::/64) and their pods an IPv6
    /// address beside the IPv4 one (IPv6 pods cross the IPv6 underlay); `check` probes every
    /// pair over both.
    #[arg(long)]
    dual_stack: bool,
    /// MTU of every node's uplink and of the underlay (default 1500); twill derives its pod
    /// MTU from it (8950 at 9000 with VXLAN).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    uplink_mtu: Option<u32>,
    /// When up fails, leave what was built (agent logs in /run/twill-lab/n*/agent.log).
    #[arg(long)]
    keep_on_failure: bool,
}

impl TopoArgs {
    fn topology(&self) -> Result<Topology> {
        for (flag, list) in [("--flannel-nodes", &self.flannel_nodes), ("--calico-nodes", &self.calico_nodes)] {
            if let Some(bad) = list.iter().find(|&&i| i == 0 || i > self.nodes) {
                bail!("{flag} {bad}: nodes are numbered 1..={}", self.nodes);
            }
        }
        if let Some(both) = self.flannel_nodes.iter().find(|i| self.calico_nodes.contains(i)) {
            bail!("node {both} is in both --flannel-nodes and --calico-nodes");
        }
        let mut t = Topology::new().keep_on_failure(self.keep_on_failure);
        for i in 1..=self.nodes {
            let dp = if self.flannel_nodes.contains(&i) {
                Dataplane::KernelFlannel
            } else if self.calico_nodes.contains(&i) {
                Dataplane::KernelCalico
            } else {
                self.dataplane
            };
            t = t.node(dp, self.pods_per_node);
        }
        if let Some(c) = &self.cores {
            t = t.cores(c);
        }
        if let Some(e) = &self.encap {
            t = t.encap(e);
        }
        if let Some(i) = &self.idle {
            t = t.idle(i);
        }
        if let Some(r) = &self.routes {
            t = t.routes(r);
        }
        if self.dual_stack {
            t = t.dual_stack();
        }
        if let Some(m) = self.uplink_mtu {
            t = t.uplink_mtu(m);
        }
        Ok(t)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twill-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_lab(lab: &Lab, json: bool) -> Result<()> {
    let s = LabSummary::of(lab.state());
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", report::lab_table(&s));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up { topo, json } => {
            let lab = topo.topology()?.up()?;
            print_lab(&lab, json)?;
            lab.detach();
        }
        Cmd::AddNode {
            dataplane,
            pods,
            json,
        } => {
            let mut lab = Lab::attach()?;
            let i = lab.add_node(dataplane, pods)?;
            if json {
                print_lab(&lab, true)?;
            } else {
                println!("added node n{i} ({dataplane}) with {pods} pods");
            }
        }
        Cmd::Status { json } => print_lab(&Lab::attach()?, json)?,
        Cmd::Check { json } => {
            let lab = Lab::attach()?;
            let pairs = probe::check_all_pairs(lab.pods())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pairs)?);
            } else {
                print!("{}", report::pairs_table(&pairs));
            }
            if pairs.iter().any(|p| !p.ok()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Measure {
            src,
            dst,
            duration,
            json,
        } => {
            let lab = Lab::attach()?;
            let (a, b) = pair(&lab, src, dst)?;
            let d = Duration::from_secs_f64(duration);
            let (flat, paced) = udp_streams(a, b, duration)?;
            let tcp = traffic::tcp_throughput(a, b, d)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"udp_flat": flat, "udp_paced": paced, "tcp_throughput": tcp})
                    )?
                );
            } else {
                let r = DemoReport::measurements_only(flat, paced, tcp);
                print!("{}", report::measurements_table(&r));
            }
        }
        Cmd::Stream { src, dst, rate, flows, frame, duration, pin, sender, senders, json } => {
            let lab = Lab::attach()?;
            let (a, b) = pair(&lab, src, dst)?;
            let mut stream = Stream::new(duration).flows(flows).frame(frame).sender(sender).senders(senders);
            if let Some(r) = rate {
                stream = stream.paced(r);
            }
            match pin[..] {
                [] => {}
                [s, k] => stream = stream.pinned(s, k),
                _ => bail!("--pin {}: two core numbers are needed, SENDER,SINK", pin.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")),
            }
            let r = generator::run(a, b, &stream)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::stream_table(&r));
            }
        }
        Cmd::Demo {
            topo,
            json,
            keep,
            duration,
        } => {
            let lab = topo.topology()?.up()?;
            let r = demo(&lab, Duration::from_secs_f64(duration));
            let torn_down = if keep {
                lab.detach();
                Ok(())
            } else {
                lab.down().context("tearing the demo lab down")
            };
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!(
                    "{}\n{}\n{}",
                    report::lab_table(&r.lab),
                    report::pairs_table(&r.pairs),
                    report::measurements_table(&r)
                );
            }
            torn_down?;
            if !r.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Bench { quick, trials, duration, only, json, report } => {
            let base = if quick { perf_lab::bench::BenchConfig::quick() } else { perf_lab::bench::BenchConfig::all(3, 2.0) };
            let mut cfg = perf_lab::bench::BenchConfig { trials: trials.unwrap_or(base.trials).max(1), duration_s: duration.unwrap_or(base.duration_s), ..base };
            if !only.is_empty() {
                let has = |s: &str| only.iter().any(|o| o == s);
                if !has("paths") {
                    cfg.dataplanes.clear();
                }
                if !has("rules") {
                    cfg.rules.clear();
                }
                cfg.topologies &= has("topologies");
                cfg.mtu &= has("mtu");
                cfg.loaded &= has("loaded");
                if !has("routes") {
                    cfg.routes.clear();
                }
            }
            let r = perf_lab::bench::run(&cfg)?;
            let plots = perf_lab::bench::plots(&r);
            let names: Vec<(String, String)> = plots.iter().map(|(t, f, _)| (t.clone(), f.clone())).collect();
            let md = perf_lab::bench::markdown(&r, if report.is_some() { &names } else { &[] });
            print!("{md}");
            let text = serde_json::to_string_pretty(&r)?;
            if let Some(f) = json {
                std::fs::write(&f, &text).with_context(|| format!("writing {}", f.display()))?;
            }
            if let Some(dir) = report {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut files = vec![("report.md".to_owned(), md), ("bench.json".to_owned(), text)];
                files.extend(plots.into_iter().map(|(_, f, svg)| (f, svg)));
                for (f, content) in files {
                    std::fs::write(dir.join(&f), content).with_context(|| format!("writing {}/{f}", dir.display()))?;
                }
            }
        }
        Cmd::Down => {
            topology::down_all()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The pods named, or the first pod of node 1 and the first of node 2.
fn pair(lab: &Lab, src: Option<String>, dst: Option<String>) -> Result<(&PodState, &PodState)> {
    Ok(match (src, dst) {
        (Some(s), Some(d)) => (
            lab.pod(&s).with_context(|| format!("no pod {s} in the lab"))?,
            lab.pod(&d).with_context(|| format!("no pod {d} in the lab"))?,
        ),
        _ => traffic::cross_node_pair(lab.pods()).context("no pod on node 1 and node 2 to measure between")?,
    })
}

/// 64-byte UDP from `a` to `b` with the lab generator: flat out, then paced at the bench's
/// common rate.
fn udp_streams(a: &PodState, b: &PodState, secs: f64) -> Result<(StreamStats, StreamStats)> {
    let flat = generator::run(a, b, &Stream::new(secs))?;
    let paced = generator::run(a, b, &Stream::new(secs).paced(perf_lab::bench::COMMON_PPS))?;
    Ok((flat, paced))
}

fn demo(lab: &Lab, d: Duration) -> Result<DemoReport> {
    let pairs = probe::check_all_pairs(lab.pods())?;
    let failed = pairs.iter().filter(|p| !p.ok()).count();
    let (mut flat, mut paced, mut udp_err, mut tcp, mut tcp_err) = (None, None, None, None, None);
    match traffic::cross_node_pair(lab.pods()) {
        Some((a, b)) => {
            match udp_streams(a, b, d.as_secs_f64()) {
                Ok((f, p)) => (flat, paced) = (Some(f), Some(p)),
                Err(e) => udp_err = Some(format!("{e:#}")),
            }
            match traffic::tcp_throughput(a, b, d) {
                Ok(r) => tcp = Some(r),
                Err(e) => tcp_err = Some(format!("{e:#}")),
            }
        }
        None => {
            let e = "no pod on node 1 and node 2 to measure between".to_owned();
            (udp_err, tcp_err) = (Some(e.clone()), Some(e));
        }
    }
    Ok(DemoReport {
        lab: LabSummary::of(lab.state()),
        pairs_total: pairs.len(),
        pairs_failed: failed,
        all_pairs_ok: failed == 0,
        pairs,
        udp_flat: flat,
        udp_paced: paced,
        udp_error: udp_err,
        tcp_throughput: tcp,
        tcp_throughput_error: tcp_err,
    })
}
