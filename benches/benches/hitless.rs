//! Hitless updates, long: 1 and 2 workers run the pipeline flat out for 10 s each while
//! 1,000 route and policy changes a second are published (`benches::hitless`). Prints
//! packets checked, wrong decisions (must be 0) and the time from a change's publication
//! to its use by every worker (p50 / p99 / max).

use std::time::Duration;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing special: run short.
    let long = std::env::args().any(|a| a == "--bench");
    let secs = if long { 10 } else { 1 };
    for workers in [1, 2] {
        let r = benches::hitless::run(workers, Duration::from_secs(secs), 1000);
        println!(
            "hitless/twill/{workers}-workers: {} packets in {secs} s ({:.2} Mpps), {} wrong, {} denied by policy, {} versions ({:.0}/s); publication → every worker: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            r.packets,
            r.packets as f64 / secs as f64 / 1e6,
            r.wrong,
            r.denied,
            r.versions,
            r.changes_per_second,
            r.takeover_p50_us,
            r.takeover_p99_us,
            r.takeover_max_us
        );
        assert_eq!(r.wrong, 0, "{:?}", r.examples);
    }
}
