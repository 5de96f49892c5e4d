//! The lab's traffic generator against real data paths: a paced stream arrives whole, in
//! order per flow, at the rate asked for, with latencies that are plausible; 1,400-byte
//! frames and 10,000 flows work, from the raw-socket sender and from the link-layer one,
//! and from two sender threads; flat out, the sink never counts more than was sent. Needs
//! root.

mod common;

use common::{down, setup};
use perf_lab::{
    generator::{self, SenderKind, Stream},
    topology::{Dataplane, Topology},
    traffic,
};

fn paced_streams_arrive_whole(dp: Dataplane) {
    let lab = Topology::uniform(2, 1, dp).up().expect("lab up");
    let (a, b) = traffic::cross_node_pair(lab.pods()).expect("a pod on n1 and on n2");
    for stream in [
        Stream::new(1.0).paced(20_000.0).flows(100),
        Stream::new(1.0).paced(10_000.0).frame(1400),
        Stream::new(1.0).paced(20_000.0).flows(10_000),
        Stream::new(1.0).paced(20_000.0).flows(100).sender(SenderKind::Link),
        Stream::new(1.0).paced(10_000.0).frame(1400).sender(SenderKind::Link),
        Stream::new(1.0).paced(20_000.0).flows(100).senders(2),
        Stream::new(1.0).paced(20_000.0).flows(2).senders(2).sender(SenderKind::Link),
    ] {
        let s = generator::run(a, b, &stream).expect("the generator runs");
        println!("{dp}: {stream:?}\n  -> {s:?}");
        let want = stream.rate_pps.expect("paced");
        assert!((s.sent_pps - want).abs() < 0.05 * want, "{dp}: sent {} pps, asked for {want}", s.sent_pps);
        assert!(s.loss_pct < 0.1, "{dp}: {} of {} lost at {want} pps", s.lost, s.sent);
        assert_eq!((s.duplicates, s.reordered), (0, 0), "{dp}: {s:?}");
        assert!(s.latency.p50_us > 0.0 && s.latency.p99_us < 20_000.0, "{dp}: latency {:?}", s.latency);
        assert!(s.latency.p50_us <= s.latency.p99_us && s.latency.p99_us <= s.latency.max_us);
        let gbit = want * (stream.frame_bytes - 18) as f64 * 8.0 / 1e9;
        assert!((s.received_gbit_per_s - gbit).abs() < 0.05 * gbit, "{dp}: {} Gbit/s, {gbit} expected", s.received_gbit_per_s);
        assert!(s.cpu_ms_per_mpkt > 0.0, "{dp}: {s:?}");
    }
    for stream in [Stream::new(1.0), Stream::new(1.0).sender(SenderKind::Link), Stream::new(1.0).sender(SenderKind::Link).senders(2).flows(2)] {
        let s = generator::run(a, b, &stream).expect("flat out");
        println!("{dp} flat out, {stream:?}: {s:?}");
        assert!(s.received > 0 && s.received <= s.sent && s.duplicates == 0, "{dp}: {s:?}");
    }
    down(lab);
}

#[test]
fn generator_through_twill() {
    let _g = setup();
    paced_streams_arrive_whole(Dataplane::Twill);
}

#[test]
fn generator_through_kernel_flannel() {
    let _g = setup();
    paced_streams_arrive_whole(Dataplane::KernelFlannel);
}
