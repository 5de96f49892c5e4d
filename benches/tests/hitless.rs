//! The hitless-update proof, short, in CI: two workers run the pipeline flat out for a
//! second while 1,000 route and policy changes are published; no packet may be judged by
//! anything but the table version it loaded. `cargo bench -p benches --bench hitless` runs
//! it long.

use std::time::Duration;

#[test]
fn a_thousand_changes_a_second_and_no_packet_misjudged() {
    let r = benches::hitless::run(2, Duration::from_secs(1), 1000);
    eprintln!("{r:#?}");
    assert_eq!(r.wrong, 0, "packets judged against the wrong version: {:?}", r.examples);
    assert!(r.versions >= 900, "only {} versions published in a second", r.versions);
    assert!(r.packets >= 20_000, "only {} packets checked", r.packets);
    assert!(r.denied > 0 && r.denied < r.packets, "the policy part never (or always) denied: {r:?}");
    assert!(r.takeover_p99_us.is_finite(), "no version was taken by every worker");
}
