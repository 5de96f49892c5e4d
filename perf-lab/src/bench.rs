//! `twill-lab bench`: every data path on one topology with the same traffic, in one run.
//!
//! For each trial, for each data path in turn (so slow drifts of a shared machine hit
//! them all alike): a lab of two nodes with one pod each, then from the pod on n1 to the
//! pod on n2, all with the lab's own generator ([`generator`]):
//!
//! 1. `flat`: 64-byte UDP, one flow, the sender flat out;
//! 2. `ndr`: the no-drop rate — a binary search over paced rates for the highest one with
//!    at most [`NDR_LOSS_PCT`] loss in one of its two runs ([`no_drop_rate`]);
//! 3. `half`: paced at half the NDR — one-way latency percentiles and their CDF;
//! 4. `common`: paced at [`COMMON_PPS`] for every path — latency and the machine's CPU per
//!    million packets at equal load;
//! 5. `overload`: paced at twice the NDR from two link-layer sender threads
//!    ([`SenderKind::Link`], which offers more than the raw socket, on two flows; their own
//!    limit still caps the rate, and the offered rate reported is what they sent) — what the
//!    path still delivers;
//! 6. `large`: 1,400-byte frames flat out; `flows`: 64-byte frames in 10,000 flows flat out;
//! 7. one TCP stream.
//!
//! Then the rules sweep: twill and kernel-calico with 0 / 100 / 1,000 / 10,000 ClassBench
//! rules ([`rules`]), 64-byte frames in 10,000 flows flat out (every flow's first packet
//! meets the rules; later ones are established for both data paths).
//!
//! Then twill fully loaded ([`LoadedPoint`]: VXLAN, conntrack, 1,000 rules, the full BGP
//! table) against the xdp-ceiling; then the topology sweeps: routes 10 / 10,000 / the full
//! BGP table (twill and kernel-flannel, whose FIB kernel-calico shares), workers per node,
//! pods per node, uplink MTU — 64-byte UDP flat out and one TCP stream each.
//!
//! The report gives every trial and, per data path, the medians; and twill's medians over
//! each peer's (the ratios the README quotes).

use std::{fmt::Write as _, path::PathBuf, time::Duration, time::Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    generator::{self, SenderKind, Stream, StreamStats},
    plot, rules,
    topology::{Dataplane, Lab, PodState, Topology},
    traffic::{self, TcpThroughput},
};

/// Loss that still counts as no drop.
pub const NDR_LOSS_PCT: f64 = 0.01;
/// Runs of the NDR search at one rate, at most: the second only when the first lost more
/// than [`NDR_LOSS_PCT`] ([`no_drop_rate`]).
pub const NDR_RUNS_PER_RATE: usize = 2;
/// Rates the NDR search tries below its range when no rate in it passed: 0.3× the flat-out
/// rate received, then half of that, and so on ([`no_drop_rate`]).
pub const NDR_EXPANSIONS: usize = 3;
/// The rate every path is measured at for CPU and latency at equal load.
pub const COMMON_PPS: f64 = 100_000.0;
/// Sender threads of the overload probe: one link-layer sender offered 1.2–2.0× a path's
/// NDR on these machines, short of the 2× asked.
pub const OVERLOAD_SENDERS: u32 = 2;
pub const MANY_FLOWS: u32 = 10_000;
pub const LARGE_FRAME: usize = 1400;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub dataplanes: Vec<Dataplane>,
    pub trials: usize,
    /// Seconds per measurement.
    pub duration_s: f64,
    /// Paced runs of the NDR search.
    pub ndr_steps: usize,
    /// Rule counts of the rules sweep (none: no sweep).
    pub rules: Vec<usize>,
    /// Run the topology sweeps: workers per node, pods per node.
    pub topologies: bool,
    /// Run the uplink MTU sweep: 1500 and 9000, twill and kernel-flannel.
    pub mtu: bool,
    /// Route counts of the routes sweep, a random sample of the BGP table's IPv4 prefixes
    /// ([`FULL_TABLE`]: all of them); none: no sweep.
    pub routes: Vec<usize>,
    /// Measure twill fully loaded ([`LoadedPoint`]).
    pub loaded: bool,
}

/// The routes sweep's name for every IPv4 prefix of the BGP table.
pub const FULL_TABLE: usize = usize::MAX;
/// Rules of the fully loaded measurement.
pub const LOADED_RULES: usize = 1_000;

impl BenchConfig {
    /// Every data path and the rules sweep, `trials` trials of `duration_s` seconds.
    pub fn all(trials: usize, duration_s: f64) -> BenchConfig {
        BenchConfig {
            dataplanes: vec![Dataplane::Twill, Dataplane::KernelFlannel, Dataplane::KernelCalico, Dataplane::XdpCeiling],
            trials,
            duration_s,
            ndr_steps: 6,
            rules: vec![0, 100, 1_000, 10_000],
            topologies: true,
            mtu: true,
            routes: vec![10, 10_000, FULL_TABLE],
            loaded: true,
        }
    }

    /// `--quick`: every data path, 3 trials of 0.5 s, a coarse NDR, no sweep (about two
    /// minutes).
    pub fn quick() -> BenchConfig {
        BenchConfig { ndr_steps: 2, rules: Vec::new(), topologies: false, mtu: false, routes: Vec::new(), loaded: false, ..BenchConfig::all(3, 0.5) }
    }
}

/// One data path in one trial.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub dataplane: Dataplane,
    pub trial: usize,
    pub flat: StreamStats,
    /// Highest paced rate with at most [`NDR_LOSS_PCT`] loss (0: none of the probes).
    pub ndr_pps: f64,
    /// Every probe of the search: (rate, loss %).
    pub ndr_probes: Vec<(f64, f64)>,
    pub half: StreamStats,
    pub common: StreamStats,
    pub overload: StreamStats,
    pub large: StreamStats,
    pub flows: StreamStats,
    pub tcp: TcpThroughput,
}

/// The medians of one data path.
#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    pub dataplane: Dataplane,
    pub trials: usize,
    pub flat_sent_pps: f64,
    pub flat_received_pps: f64,
    pub flat_loss_pct: f64,
    pub ndr_pps: f64,
    pub half_p50_us: f64,
    pub half_p99_us: f64,
    pub half_p999_us: f64,
    /// Median over trials of each CDF point of the half-NDR run.
    pub half_cdf: Vec<(f64, f64)>,
    pub common_p99_us: f64,
    pub common_cpu_ms_per_mpkt: f64,
    pub overload_offered_pps: f64,
    pub overload_received_pps: f64,
    /// Delivered under overload over the NDR.
    pub overload_over_ndr: f64,
    pub large_received_pps: f64,
    pub large_gbit_per_s: f64,
    pub flows_received_pps: f64,
    pub tcp_gbit_per_s: f64,
}

/// twill's medians over a peer's.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub peer: Dataplane,
    pub flat_received: f64,
    pub ndr: f64,
    pub half_p99: f64,
    pub cpu_per_mpkt: f64,
    pub large_gbit: f64,
    pub flows_received: f64,
    pub tcp: f64,
}

/// One point of the rules sweep.
#[derive(Debug, Clone, Serialize)]
pub struct RulesPoint {
    pub dataplane: Dataplane,
    pub rules: usize,
    pub trial: usize,
    pub stream: StreamStats,
}

/// Medians of one (data path, rule count).
#[derive(Debug, Clone, Serialize)]
pub struct RulesSummary {
    pub dataplane: Dataplane,
    pub rules: usize,
    pub received_pps: f64,
    /// Over the same data path with 0 rules.
    pub of_no_rules: f64,
}

/// twill with everything on at once — VXLAN, conntrack, [`LOADED_RULES`] ClassBench rules
/// and the full BGP table — in one trial: 64-byte UDP in [`MANY_FLOWS`] flows (every flow's
/// first packet meets the rules, later ones the tracker), flat out and its no-drop rate.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedPoint {
    pub trial: usize,
    pub routes: usize,
    pub rules: usize,
    pub flat: StreamStats,
    pub ndr_pps: f64,
    pub ndr_probes: Vec<(f64, f64)>,
}

/// Medians of the fully loaded trials, and over the xdp-ceiling's of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedSummary {
    pub flat_received_pps: f64,
    pub ndr_pps: f64,
    /// Over the ceiling's flat-out rate in [`MANY_FLOWS`] flows.
    pub flat_of_ceiling: f64,
    /// Over the ceiling's no-drop rate (one flow: the ceiling does nothing per flow).
    pub ndr_of_ceiling: f64,
}

/// One lab of a topology sweep: 64-byte UDP flat out and one TCP stream.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyPoint {
    /// `workers per node`, `pods per node`, `uplink MTU` or `routes`.
    pub sweep: &'static str,
    pub value: u32,
    pub dataplane: Dataplane,
    pub trial: usize,
    /// The measured pods' interface MTU.
    pub pod_mtu: u32,
    pub flat: StreamStats,
    pub tcp: TcpThroughput,
}

/// Medians of one (sweep, value, data path).
#[derive(Debug, Clone, Serialize)]
pub struct TopologySummary {
    pub sweep: &'static str,
    pub value: u32,
    pub dataplane: Dataplane,
    pub pod_mtu: u32,
    pub flat_received_pps: f64,
    pub tcp_gbit_per_s: f64,
}

/// The topology sweeps of `cfg`: (sweep, value, data path, the lab); `routes` holds the
/// route files of `cfg.routes` ([`routes_files`]).
fn topology_points(cfg: &BenchConfig, routes: &[(PathBuf, usize)]) -> Vec<(&'static str, u32, Dataplane, Topology)> {
    let mut v = Vec::new();
    // The kernel's FIB is the same for Flannel's and Calico's paths: one of them stands for both.
    for (file, count) in routes {
        for dp in [Dataplane::Twill, Dataplane::KernelFlannel] {
            v.push(("routes", *count as u32, dp, Topology::uniform(2, 1, dp).routes(file)));
        }
    }
    if cfg.topologies {
        for (workers, cores) in [(1, None), (2, Some("0,1"))] {
            let t = Topology::uniform(2, 1, Dataplane::Twill);
            v.push(("workers per node", workers, Dataplane::Twill, if let Some(c) = cores { t.cores(c) } else { t }));
        }
        for pods in [2, 50] {
            for dp in [Dataplane::Twill, Dataplane::KernelFlannel, Dataplane::KernelCalico] {
                v.push(("pods per node", pods, dp, Topology::uniform(2, pods, dp)));
            }
        }
    }
    if cfg.mtu {
        for mtu in [1500, 9000] {
            for dp in [Dataplane::Twill, Dataplane::KernelFlannel] {
                v.push(("uplink MTU", mtu, dp, Topology::uniform(2, 1, dp).uplink_mtu(mtu)));
            }
        }
    }
    v
}

/// For each count of `counts`, a file of that many IPv4 prefixes of the BGP table
/// (shared/data) — the first of one random order of fixed seed, or all of them for
/// [`FULL_TABLE`] — and how many it holds. The table is read once.
pub fn routes_files(counts: &[usize]) -> Result<Vec<(PathBuf, usize)>> {
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let text = policy_engine::dataset::read("bgp/prefixes.txt.gz").map_err(anyhow::Error::msg)?;
    let mut v4: Vec<&str> = policy_engine::dataset::content_lines(&text).map(|(_, l)| l).filter(|l| !l.contains(':')).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v4.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v4.swap(i, (x % (i as u64 + 1)) as usize);
    }
    counts
        .iter()
        .map(|&n| {
            let sample = &v4[..n.min(v4.len())];
            let path = std::env::temp_dir().join(format!("twill-bench-routes-{}.txt", sample.len()));
            std::fs::write(&path, sample.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
            Ok((path, sample.len()))
        })
        .collect()
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub config: BenchConfig,
    pub seconds: f64,
    pub trials: Vec<Trial>,
    pub paths: Vec<PathSummary>,
    pub twill_over: Vec<Ratio>,
    pub rules: Vec<RulesPoint>,
    pub rules_summary: Vec<RulesSummary>,
    pub topologies: Vec<TopologyPoint>,
    pub topologies_summary: Vec<TopologySummary>,
    pub loaded: Vec<LoadedPoint>,
    pub loaded_summary: Option<LoadedSummary>,
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
    let t0 = Instant::now();
    let mut trials = Vec::new();
    for trial in 1..=cfg.trials {
        for &dp in &cfg.dataplanes {
            let t = with_lab(dp, |lab| measure(lab, cfg, dp, trial)).with_context(|| format!("measuring {dp}, trial {trial}"))?;
            trials.push(t);
        }
    }
    let mut sweep = Vec::new();
    for trial in 1..=if cfg.rules.is_empty() { 0 } else { cfg.trials } {
        for &n in &cfg.rules {
            for dp in [Dataplane::Twill, Dataplane::KernelCalico] {
                let stream = Stream::new(cfg.duration_s).flows(MANY_FLOWS);
                let s = with_lab(dp, |lab| {
                    load_rules(lab, dp, n)?;
                    let (a, b) = traffic::cross_node_pair(lab.pods()).context("no pod on n1 and n2")?;
                    generator::run(a, b, &stream)
                })
                .with_context(|| format!("{dp} with {n} rules, trial {trial}"))?;
                sweep.push(RulesPoint { dataplane: dp, rules: n, trial, stream: s });
            }
        }
    }
    let mut loaded = Vec::new();
    if cfg.loaded {
        let full = routes_files(&[FULL_TABLE])?.remove(0);
        for trial in 1..=cfg.trials {
            loaded.push(measure_loaded(cfg, trial, &full).with_context(|| format!("twill fully loaded, trial {trial}"))?);
        }
    }
    let mut topologies = Vec::new();
    let points = topology_points(cfg, &routes_files(&cfg.routes)?);
    for trial in 1..=if points.is_empty() { 0 } else { cfg.trials } {
        for (sweep, value, dp, topo) in points.iter().cloned() {
            let what = format!("{dp} with {sweep} {value}, trial {trial}");
            let lab = topo.up().with_context(|| format!("building the lab of {what}"))?;
            let measured = (|| {
                let (a, b) = traffic::cross_node_pair(lab.pods()).context("no pod on n1 and n2")?;
                let link = crate::netns::ip(&a.netns, &["-o", "link", "show", "eth0"])?;
                let pod_mtu = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1).and_then(|m| m.parse().ok()).context("no mtu in `ip link show eth0`")?;
                let flat = generator::run(a, b, &Stream::new(cfg.duration_s))?;
                let tcp = traffic::tcp_throughput(a, b, Duration::from_secs_f64(cfg.duration_s))?;
                Ok::<_, anyhow::Error>(TopologyPoint { sweep, value, dataplane: dp, trial, pod_mtu, flat, tcp })
            })();
            lab.down().with_context(|| format!("tearing down the lab of {what}"))?;
            topologies.push(measured.with_context(|| what)?);
        }
    }
    let paths: Vec<PathSummary> = cfg.dataplanes.iter().map(|&dp| summarize(dp, &trials)).collect();
    let twill_over = match paths.iter().find(|p| p.dataplane == Dataplane::Twill) {
        Some(t) => paths.iter().filter(|p| p.dataplane != Dataplane::Twill).map(|p| ratio(t, p)).collect(),
        None => Vec::new(),
    };
    let rules_summary = summarize_rules(&sweep);
    let topologies_summary = summarize_topologies(&topologies);
    let loaded_summary = summarize_loaded(&loaded, &paths);
    Ok(BenchReport {
        machine: Machine::here(),
        config: cfg.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        trials,
        paths,
        twill_over,
        rules: sweep,
        rules_summary,
        topologies,
        topologies_summary,
        loaded,
        loaded_summary,
    })
}

/// One trial of [`LoadedPoint`] with the routes of `(file, routes)`.
fn measure_loaded(cfg: &BenchConfig, trial: usize, (file, routes): &(PathBuf, usize)) -> Result<LoadedPoint> {
    let routes = *routes;
    let lab = Topology::uniform(2, 1, Dataplane::Twill).routes(file).up().context("building the loaded twill lab")?;
    let measured = (|| {
        load_rules(&lab, Dataplane::Twill, LOADED_RULES)?;
        let (a, b) = traffic::cross_node_pair(lab.pods()).context("no pod on n1 and n2")?;
        let stream = Stream::new(cfg.duration_s).flows(MANY_FLOWS);
        let flat = generator::run(a, b, &stream)?;
        let (ndr_pps, ndr_probes) = no_drop_rate(a, b, &flat, &stream, cfg.ndr_steps, NDR_LOSS_PCT)?;
        Ok::<_, anyhow::Error>(LoadedPoint { trial, routes, rules: LOADED_RULES, flat, ndr_pps, ndr_probes })
    })();
    lab.down().context("tearing the loaded twill lab down")?;
    measured
}

fn summarize_loaded(points: &[LoadedPoint], paths: &[PathSummary]) -> Option<LoadedSummary> {
    if points.is_empty() {
        return None;
    }
    let ceiling = paths.iter().find(|p| p.dataplane == Dataplane::XdpCeiling);
    let flat_received_pps = median(points.iter().map(|p| p.flat.received_pps).collect());
    let ndr_pps = median(points.iter().map(|p| p.ndr_pps).collect());
    Some(LoadedSummary {
        flat_received_pps,
        ndr_pps,
        flat_of_ceiling: ceiling.map_or(f64::NAN, |c| flat_received_pps / c.flows_received_pps),
        ndr_of_ceiling: ceiling.map_or(f64::NAN, |c| ndr_pps / c.ndr_pps),
    })
}

/// Builds a two-node lab of `dp`, runs `f` on it, tears it down (also when `f` failed).
fn with_lab<T>(dp: Dataplane, f: impl FnOnce(&Lab) -> Result<T>) -> Result<T> {
    let lab = Topology::uniform(2, 1, dp).up().with_context(|| format!("building the {dp} lab"))?;
    let r = f(&lab);
    lab.down().with_context(|| format!("tearing the {dp} lab down"))?;
    r
}

fn load_rules(lab: &Lab, dp: Dataplane, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let rs = rules::classbench_rules(n)?;
    match dp {
        Dataplane::Twill => {
            lab.apply_manifest("classbench.yaml", &rules::calico_policy(&rs))?;
            lab.wait_for_policies(1, Duration::from_secs(20)).with_context(|| format!("loading the {n}-rule policy"))?;
        }
        Dataplane::KernelCalico => {
            let script = rules::nft_script(&rs);
            for node in lab.nodes() {
                rules::load_nft(&node.netns, &script)?;
            }
        }
        other => bail!("the rules sweep has no rule form for {other}"),
    }
    Ok(())
}

/// The no-drop rate from `a` to `b`: a binary search of `steps` rates paced between 0.3×
/// what arrived in the flat-out run `flat` and what its sender sent, for the highest rate
/// with at most `max_loss_pct` loss (the bench: [`NDR_LOSS_PCT`]; 0: no rate passed). Each
/// rate is a run of `probe` (its frames, flows and duration); a rate whose run loses more is
/// run once again and passes if that run does — at most half of a rate's trials may exceed
/// the loss, MLRsearch's default goal exceed ratio (draft-ietf-bmwg-mlrsearch), so that one
/// stall of this shared machine's host does not decide the search. A data path that drops
/// at that rate fails both runs. When no rate passed, the search goes below its range,
/// halving the rate up to [`NDR_EXPANSIONS`] times until one passes. Returns the NDR and
/// every run as (rate, loss %).
pub fn no_drop_rate(a: &PodState, b: &PodState, flat: &StreamStats, probe: &Stream, steps: usize, max_loss_pct: f64) -> Result<(f64, Vec<(f64, f64)>)> {
    let (mut lo, mut hi) = (0.3 * flat.received_pps, flat.sent_pps.max(flat.received_pps));
    let (mut ndr, mut probes) = (0.0, Vec::new());
    let mut passes = |rate: f64| -> Result<bool> {
        for _ in 0..NDR_RUNS_PER_RATE {
            let s = generator::run(a, b, &probe.clone().paced(rate))?;
            probes.push((rate, s.loss_pct));
            if s.loss_pct <= max_loss_pct {
                return Ok(true);
            }
        }
        Ok(false)
    };
    for _ in 0..steps {
        let rate = (lo + hi) / 2.0;
        if passes(rate)? {
            (ndr, lo) = (f64::max(ndr, rate), rate);
        } else {
            hi = rate;
        }
    }
    // MLRsearch's downward expansion: a lower bound never seen to pass is no bound.
    if steps > 0 && ndr == 0.0 {
        let mut rate = lo;
        for _ in 0..NDR_EXPANSIONS {
            if passes(rate)? {
                ndr = rate;
                break;
            }
            rate /= 2.0;
        }
    }
    Ok((ndr, probes))
}

fn measure(lab: &Lab, cfg: &BenchConfig, dp: Dataplane, trial: usize) -> Result<Trial> {
    let (a, b) = traffic::cross_node_pair(lab.pods()).context("no pod on n1 and n2")?;
    let d = cfg.duration_s;
    let run = |s: Stream| generator::run(a, b, &s);
    let flat = run(Stream::new(d))?;
    let (ndr, probes) = no_drop_rate(a, b, &flat, &Stream::new(d), cfg.ndr_steps, NDR_LOSS_PCT)?;
    let base = if ndr > 0.0 { ndr } else { 0.3 * flat.received_pps };
    Ok(Trial {
        dataplane: dp,
        trial,
        half: run(Stream::new(d).paced(base / 2.0))?,
        common: run(Stream::new(d).paced(COMMON_PPS))?,
        overload: run(Stream::new(d).paced(2.0 * base).sender(SenderKind::Link).senders(OVERLOAD_SENDERS).flows(OVERLOAD_SENDERS))?,
        large: run(Stream::new(d).frame(LARGE_FRAME))?,
        flows: run(Stream::new(d).flows(MANY_FLOWS))?,
        tcp: traffic::tcp_throughput(a, b, Duration::from_secs_f64(d))?,
        flat,
        ndr_pps: ndr,
        ndr_probes: probes,
    })
}

fn summarize(dp: Dataplane, trials: &[Trial]) -> PathSummary {
    let mine: Vec<&Trial> = trials.iter().filter(|t| t.dataplane == dp).collect();
    let of = |f: &dyn Fn(&Trial) -> f64| median(mine.iter().map(|t| f(t)).collect());
    let cdf_len = mine.iter().map(|t| t.half.latency.cdf.len()).min().unwrap_or(0);
    let half_cdf = (0..cdf_len).map(|i| (mine[0].half.latency.cdf[i].0, median(mine.iter().map(|t| t.half.latency.cdf[i].1).collect()))).collect();
    let ndr = of(&|t| t.ndr_pps);
    let overload_received = of(&|t| t.overload.received_pps);
    PathSummary {
        dataplane: dp,
        trials: mine.len(),
        flat_sent_pps: of(&|t| t.flat.sent_pps),
        flat_received_pps: of(&|t| t.flat.received_pps),
        flat_loss_pct: of(&|t| t.flat.loss_pct),
        ndr_pps: ndr,
        half_p50_us: of(&|t| t.half.latency.p50_us),
        half_p99_us: of(&|t| t.half.latency.p99_us),
        half_p999_us: of(&|t| t.half.latency.p999_us),
        half_cdf,
        common_p99_us: of(&|t| t.common.latency.p99_us),
        common_cpu_ms_per_mpkt: of(&|t| t.common.cpu_ms_per_mpkt),
        overload_offered_pps: of(&|t| t.overload.sent_pps),
        overload_received_pps: overload_received,
        overload_over_ndr: of(&|t| if t.ndr_pps > 0.0 { t.overload.received_pps / t.ndr_pps } else { f64::NAN }),
        large_received_pps: of(&|t| t.large.received_pps),
        large_gbit_per_s: of(&|t| t.large.received_gbit_per_s),
        flows_received_pps: of(&|t| t.flows.received_pps),
        tcp_gbit_per_s: of(&|t| t.tcp.gbit_per_s),
    }
}

fn ratio(t: &PathSummary, p: &PathSummary) -> Ratio {
    Ratio {
        peer: p.dataplane,
        flat_received: t.flat_received_pps / p.flat_received_pps,
        ndr: t.ndr_pps / p.ndr_pps,
        half_p99: t.half_p99_us / p.half_p99_us,
        cpu_per_mpkt: t.common_cpu_ms_per_mpkt / p.common_cpu_ms_per_mpkt,
        large_gbit: t.large_gbit_per_s / p.large_gbit_per_s,
        flows_received: t.flows_received_pps / p.flows_received_pps,
        tcp: t.tcp_gbit_per_s / p.tcp_gbit_per_s,
    }
}

fn summarize_rules(points: &[RulesPoint]) -> Vec<RulesSummary> {
    let mut keys: Vec<(Dataplane, usize)> = points.iter().map(|p| (p.dataplane, p.rules)).collect();
    keys.sort_by_key(|&(dp, n)| (colour(dp), n));
    keys.dedup();
    let rate = |dp: Dataplane, n: usize| median(points.iter().filter(|p| p.dataplane == dp && p.rules == n).map(|p| p.stream.received_pps).collect());
    keys.iter().map(|&(dp, n)| RulesSummary { dataplane: dp, rules: n, received_pps: rate(dp, n), of_no_rules: rate(dp, n) / rate(dp, 0) }).collect()
}

fn summarize_topologies(points: &[TopologyPoint]) -> Vec<TopologySummary> {
    let mut out: Vec<TopologySummary> = Vec::new();
    for p in points {
        if out.iter().any(|q| (q.sweep, q.value, q.dataplane) == (p.sweep, p.value, p.dataplane)) {
            continue;
        }
        let same: Vec<&TopologyPoint> = points.iter().filter(|q| (q.sweep, q.value, q.dataplane) == (p.sweep, p.value, p.dataplane)).collect();
        out.push(TopologySummary {
            sweep: p.sweep,
            value: p.value,
            dataplane: p.dataplane,
            pod_mtu: p.pod_mtu,
            flat_received_pps: median(same.iter().map(|q| q.flat.received_pps).collect()),
            tcp_gbit_per_s: median(same.iter().map(|q| q.tcp.gbit_per_s).collect()),
        });
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The report as Markdown: the machine, the medians, the ratios, the sweep, every trial.
/// `plots` names the SVG files written beside it (empty: none).
pub fn markdown(r: &BenchReport, plots: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# twill-lab bench\n");
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}. Two nodes, one pod each, traffic from p1-n1 to p1-n2 with the lab's generator (sequence numbers and send stamps; raw-socket sender, UDP sink); {} trials of {} s per measurement and data path, data paths alternating; medians. No-drop rate (NDR): highest paced rate with at most {NDR_LOSS_PCT} % loss, {} search steps; a rate that lost more is run once again and passes if that run does; when no rate passed, the search halves the lowest one up to {NDR_EXPANSIONS} times. Run took {:.0} s.\n",
        r.machine.cpus, r.machine.cpu_model, r.machine.kernel, r.config.trials, r.config.duration_s, r.config.ndr_steps, r.seconds
    );
    if !r.paths.is_empty() {
        paths_tables(&mut s, r);
    }
    if !r.twill_over.is_empty() {
        let _ = writeln!(s, "\n## twill over each peer\n\n| peer | flat-out received | NDR | p99 at NDR/2 | CPU per Mpkt | {LARGE_FRAME}-byte Gbit/s | {MANY_FLOWS} flows | TCP |\n|---|---|---|---|---|---|---|---|");
        for q in &r.twill_over {
            let _ = writeln!(
                s,
                "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                q.peer, q.flat_received, q.ndr, q.half_p99, q.cpu_per_mpkt, q.large_gbit, q.flows_received, q.tcp
            );
        }
    }
    if !r.rules_summary.is_empty() {
        let _ = writeln!(s, "\n## Rules sweep: 64-byte UDP in {MANY_FLOWS} flows, flat out for {} s\n\nClassBench acl1/fw1/ipc1 rules that never match the traffic, each a deny, then allow: twill as one GlobalNetworkPolicy, kernel-calico as an nftables forward chain after `ct state established,related accept` (as Felix's chains start). Every flow's first packet meets all the rules; the flows' later packets are established on both paths.\n\n| data path | rules | received (pps) | of 0 rules |\n|---|---|---|---|", r.config.duration_s);
        for q in &r.rules_summary {
            let _ = writeln!(s, "| {} | {} | {:.0} | {:.2} |", q.dataplane, q.rules, q.received_pps, q.of_no_rules);
        }
    }
    if !r.topologies_summary.is_empty() {
        let _ = writeln!(s, "\n## Topology sweeps: 64-byte UDP flat out and one TCP stream, {} s each\n\n| sweep | value | data path | pod MTU | UDP received (pps) | TCP (Gbit/s) |\n|---|---|---|---|---|---|", r.config.duration_s);
        for q in &r.topologies_summary {
            let _ = writeln!(s, "| {} | {} | {} | {} | {:.0} | {:.2} |", q.sweep, q.value, q.dataplane, q.pod_mtu, q.flat_received_pps, q.tcp_gbit_per_s);
        }
    }
    if let Some(l) = &r.loaded_summary {
        let _ = writeln!(
            s,
            "\n## twill fully loaded\n\nVXLAN, conntrack, {LOADED_RULES} ClassBench rules (one GlobalNetworkPolicy) and the full BGP table ({} IPv4 prefixes, `--routes`) at once; 64-byte UDP in {MANY_FLOWS} flows. Against the xdp-ceiling of this run: its flat-out rate in {MANY_FLOWS} flows and its NDR (one flow; the ceiling does nothing per flow).\n\n| | flat out received (pps) | NDR (pps) |\n|---|---|---|\n| twill, loaded | {:.0} | {:.0} |\n| of the xdp-ceiling | {:.2} | {:.2} |",
            r.loaded.first().map_or(0, |p| p.routes),
            l.flat_received_pps,
            l.ndr_pps,
            l.flat_of_ceiling,
            l.ndr_of_ceiling
        );
    }
    for (title, file) in plots {
        let _ = writeln!(s, "\n![{title}]({file})");
    }
    if r.trials.is_empty() {
        return s;
    }
    let _ = writeln!(s, "\n## Every trial\n\n| trial | data path | flat sent | flat received | NDR | NDR probes (pps: loss %) | p99 at NDR/2 (µs) | TCP (Gbit/s) |\n|---|---|---|---|---|---|---|---|");
    for t in &r.trials {
        let probes: Vec<String> = t.ndr_probes.iter().map(|(r, l)| format!("{r:.0}: {l:.2}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.2} |",
            t.trial, t.dataplane, t.flat.sent_pps, t.flat.received_pps, t.ndr_pps, probes.join(", "), t.half.latency.p99_us, t.tcp.gbit_per_s
        );
    }
    s
}

/// The per-path tables: packet rate, then latency, CPU, large frames, many flows, TCP.
fn paths_tables(s: &mut String, r: &BenchReport) {
    let _ = writeln!(s, "## Packet rate, 64-byte UDP\n\n| data path | flat out: sent (pps) | received (pps) | loss | NDR (pps) | at 2× NDR, 2 link senders: offered | received | of NDR |\n|---|---|---|---|---|---|---|---|");
    for p in &r.paths {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.1} % | {:.0} | {:.0} | {:.0} | {:.2} |",
            p.dataplane, p.flat_sent_pps, p.flat_received_pps, p.flat_loss_pct, p.ndr_pps, p.overload_offered_pps, p.overload_received_pps, p.overload_over_ndr
        );
    }
    let _ = writeln!(s, "\n## Latency, CPU, large frames, many flows, TCP\n\n| data path | at NDR/2: p50 (µs) | p99 | p99.9 | at {:.0} pps: p99 (µs) | machine CPU per Mpkt (ms) | {LARGE_FRAME}-byte flat out (pps) | Gbit/s | {MANY_FLOWS} flows (pps) | TCP (Gbit/s) |\n|---|---|---|---|---|---|---|---|---|---|", COMMON_PPS);
    for p in &r.paths {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            p.dataplane, p.half_p50_us, p.half_p99_us, p.half_p999_us, p.common_p99_us, p.common_cpu_ms_per_mpkt, p.large_received_pps, p.large_gbit_per_s, p.flows_received_pps, p.tcp_gbit_per_s
        );
    }
}

/// One colour per data path in every chart.
fn colour(dp: Dataplane) -> usize {
    match dp {
        Dataplane::Twill => 0,
        Dataplane::KernelFlannel => 1,
        Dataplane::KernelCalico => 2,
        Dataplane::XdpCeiling => 3,
    }
}

/// One line per data path through its (x, y) points, in the order given.
fn series_by_path(points: impl Iterator<Item = (Dataplane, f64, f64)>) -> Vec<plot::Series> {
    let mut series: Vec<plot::Series> = Vec::new();
    for (dp, x, y) in points {
        let name = dp.to_string();
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((x, y)),
            None => series.push(plot::Series { name, colour: colour(dp), points: vec![(x, y)] }),
        }
    }
    series
}

/// The report's plots: (title, file name, SVG).
pub fn plots(r: &BenchReport) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let cdf: Vec<plot::Series> = r
        .paths
        .iter()
        .map(|p| plot::Series { name: p.dataplane.to_string(), colour: colour(p.dataplane), points: p.half_cdf.iter().filter(|(q, _)| *q < 1.0).map(|&(q, us)| (us, q * 100.0)).collect() })
        .collect();
    if !r.paths.is_empty() {
        out.push(("One-way latency at half each path's NDR (CDF)".to_owned(), "latency-cdf.svg".to_owned(), plot::lines("One-way latency at NDR/2", "µs (log)", "% of packets", &cdf, true)));
    }
    if !r.rules_summary.is_empty() {
        let series = series_by_path(r.rules_summary.iter().map(|q| (q.dataplane, (q.rules.max(1) as f64).log10(), q.received_pps / 1e3)));
        out.push(("Packet rate against policy rules".to_owned(), "rules.svg".to_owned(), plot::lines("64-byte UDP, 10k flows, flat out", "rules (log10; 0 rules at 0)", "kpps received", &series, false)));
    }
    let routes = series_by_path(r.topologies_summary.iter().filter(|q| q.sweep == "routes").map(|q| (q.dataplane, f64::from(q.value).log10(), q.flat_received_pps / 1e3)));
    if !routes.is_empty() {
        out.push(("Packet rate against routes".to_owned(), "routes.svg".to_owned(), plot::lines("64-byte UDP flat out", "routes (log10; BGP table sample)", "kpps received", &routes, false)));
    }
    let workers: Vec<(String, usize, f64)> = r.topologies_summary.iter().filter(|q| q.sweep == "workers per node").map(|q| (format!("{} worker(s)", q.value), colour(q.dataplane), q.flat_received_pps / 1e3)).collect();
    if !workers.is_empty() {
        out.push(("twill with one and two workers per node".to_owned(), "workers.svg".to_owned(), plot::bars("twill, 64-byte UDP flat out, by workers per node", "kpps received", &workers)));
    }
    if !r.paths.is_empty() {
        let bars: Vec<(String, usize, f64)> = r.paths.iter().map(|p| (p.dataplane.to_string(), colour(p.dataplane), p.ndr_pps / 1e3)).collect();
        out.push(("No-drop rate per data path".to_owned(), "ndr.svg".to_owned(), plot::bars("No-drop rate, 64-byte UDP", "kpps", &bars)));
    }
    out
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
