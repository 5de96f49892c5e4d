//! `twill-lab bench --quick` as CI runs it: every data path — twill, kernel Flannel,
//! kernel Calico and the xdp-ceiling — is built, carries UDP and TCP between the pods of
//! two nodes in every trial, and the report has a median and a ratio for each. Needs root.

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
    println!("{}", bench::markdown(&r));
    assert_eq!(r.trials.len(), cfg.trials * cfg.dataplanes.len());
    for t in &r.trials {
        assert!(t.udp.received > 0, "{} trial {}: no UDP datagram arrived: {:?}", t.dataplane, t.trial, t.udp);
        assert!(t.tcp.bytes > 0, "{} trial {}: no TCP byte arrived: {:?}", t.dataplane, t.trial, t.tcp);
    }
    for dp in [Dataplane::Twill, Dataplane::KernelFlannel, Dataplane::KernelCalico, Dataplane::XdpCeiling] {
        let p = r.paths.iter().find(|p| p.dataplane == dp).unwrap_or_else(|| panic!("no summary for {dp}"));
        assert_eq!(p.trials, cfg.trials);
        assert!(p.udp_received_pps > 0.0 && p.tcp_gbit_per_s > 0.0, "{p:?}");
    }
    assert_eq!(r.twill_over.len(), 3, "a ratio over each peer");
    assert!(r.twill_over.iter().all(|q| q.udp_received.is_finite() && q.tcp.is_finite()), "{:?}", r.twill_over);
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "the bench left namespaces behind");
}
