//! `twill-lab bench --quick` as CI runs it: every data path — twill, kernel Flannel,
//! kernel Calico and the xdp-ceiling — is built and, in every trial, delivers the lab
//! generator's traffic in each of its measurements (flat out, the NDR probes, paced at half
//! the NDR and at the common rate, overload, 1,400-byte frames, 10,000 flows) and a TCP
//! stream; the report has a median and a ratio for each. Then the rules sweep at 10,000
//! rules, twill fully loaded and the routes sweep. Needs root.

mod common;

use common::setup;
use perf_lab::{
    bench::{self, BenchConfig},
    netns,
    topology::Dataplane,
};

#[test]
fn every_data_path_delivers_traffic_in_every_trial() {
    let _g = setup();
    let cfg = BenchConfig::quick();
    let r = bench::run(&cfg).expect("the quick bench runs");
    println!("{}", bench::markdown(&r, &[]));
    assert_eq!(r.trials.len(), cfg.trials * cfg.dataplanes.len());
    for t in &r.trials {
        let what = format!("{} trial {}", t.dataplane, t.trial);
        for (name, s) in [("flat", &t.flat), ("half", &t.half), ("common", &t.common), ("overload", &t.overload), ("large", &t.large), ("flows", &t.flows)] {
            assert!(s.received > 0 && s.received <= s.sent, "{what}, {name}: {s:?}");
            assert!(s.latency.p50_us > 0.0, "{what}, {name}: no latency measured");
        }
        let runs = cfg.ndr_steps..=(cfg.ndr_steps + bench::NDR_EXPANSIONS) * bench::NDR_RUNS_PER_RATE;
        assert!(runs.contains(&t.ndr_probes.len()), "{what}: {} NDR runs, not in {runs:?}", t.ndr_probes.len());
        assert!(t.tcp.bytes > 0, "{what}: no TCP byte arrived: {:?}", t.tcp);
    }
    for dp in [Dataplane::Twill, Dataplane::KernelFlannel, Dataplane::KernelCalico, Dataplane::XdpCeiling] {
        let p = r.paths.iter().find(|p| p.dataplane == dp).unwrap_or_else(|| panic!("no summary for {dp}"));
        assert_eq!(p.trials, cfg.trials);
        assert!(p.flat_received_pps > 0.0 && p.tcp_gbit_per_s > 0.0 && p.common_cpu_ms_per_mpkt > 0.0, "{p:?}");
        assert!(!p.half_cdf.is_empty(), "{dp}: no latency CDF");
    }
    assert_eq!(r.twill_over.len(), 3, "a ratio over each peer");
    assert!(r.twill_over.iter().all(|q| q.flat_received.is_finite() && q.tcp.is_finite()), "{:?}", r.twill_over);
    for (_, file, svg) in bench::plots(&r) {
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{file}");
    }
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "the bench left namespaces behind");
}

/// The rules sweep at its largest point: the same 10,000 ClassBench rules load into twill
/// (one GlobalNetworkPolicy) and into kernel-calico (an nftables chain), and both still
/// deliver the traffic the rules never match.
#[test]
fn rules_sweep_loads_ten_thousand_rules_into_both_paths() {
    let _g = setup();
    let cfg = BenchConfig { rules: vec![0, 10_000], ..nothing() };
    let r = bench::run(&cfg).expect("the sweep runs");
    println!("{}", bench::markdown(&r, &[]));
    assert_eq!(r.rules.len(), 4, "{:?}", r.rules_summary);
    for p in &r.rules {
        assert!(p.stream.received > 0, "{} with {} rules delivered nothing: {:?}", p.dataplane, p.rules, p.stream);
    }
    assert_eq!(r.rules_summary.len(), 4);
    assert!(r.rules_summary.iter().all(|q| q.of_no_rules.is_finite()), "{:?}", r.rules_summary);
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "the sweep left namespaces behind");
}

/// twill fully loaded (VXLAN, conntrack, 1,000 rules, every IPv4 prefix of the BGP table in
/// the agents' `--routes`) beside the xdp-ceiling, and the routes sweep's 10,000-route
/// point for twill and for the kernel FIB: all deliver traffic, and the loaded twill has a
/// no-drop rate and a ratio over the ceiling.
#[test]
fn twill_fully_loaded_and_the_routes_sweep_deliver_traffic() {
    let _g = setup();
    let cfg = BenchConfig { dataplanes: vec![Dataplane::XdpCeiling], ndr_steps: 2, routes: vec![10_000], loaded: true, ..nothing() };
    let r = bench::run(&cfg).expect("the loaded run and the routes sweep");
    println!("{}", bench::markdown(&r, &[]));
    let [l] = &r.loaded[..] else { panic!("one loaded trial: {:?}", r.loaded) };
    assert_eq!((l.routes, l.rules), (901_899, bench::LOADED_RULES));
    assert!(l.flat.received > 0 && l.ndr_pps > 0.0, "{l:?}");
    let summary = r.loaded_summary.as_ref().expect("a loaded summary");
    assert!(summary.ndr_of_ceiling.is_finite() && summary.flat_of_ceiling.is_finite(), "{summary:?}");
    assert_eq!(r.topologies.len(), 2, "{:?}", r.topologies_summary);
    for p in &r.topologies {
        assert_eq!((p.sweep, p.value), ("routes", 10_000));
        assert!(p.flat.received > 0 && p.tcp.bytes > 0, "{} with 10,000 routes: {:?} {:?}", p.dataplane, p.flat, p.tcp);
    }
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "the run left namespaces behind");
}

/// A configuration that runs nothing, one trial of 0.5 s, for a test to add to.
fn nothing() -> BenchConfig {
    BenchConfig { dataplanes: Vec::new(), trials: 1, duration_s: 0.5, ndr_steps: 0, rules: Vec::new(), topologies: false, mtu: false, routes: Vec::new(), loaded: false }
}
