//! The library API a CI test uses to build mixed clusters: [`Topology`] builds, [`Lab`]
//! grows while traffic flows and tears down on drop (also on panic). Run here on the kernel
//! Flannel data plane, which needs no twill binaries. Needs root; fails loudly otherwise.

use std::time::Duration;

use perf_lab::netns;
use perf_lab::probe::check_all_pairs;
use perf_lab::topology::{Dataplane, Topology};
use perf_lab::generator::{self, Stream};

mod common;

use common::setup;

#[test]
fn node_joins_while_a_flow_runs_without_loss() {
    let _g = setup();
    let mut lab = Topology::new()
        .node(Dataplane::KernelFlannel, 1)
        .node(Dataplane::KernelFlannel, 1)
        .up()
        .unwrap();
    let (a, b) = (
        lab.pod("p1-n1").unwrap().clone(),
        lab.pod("p1-n2").unwrap().clone(),
    );
    let flow = generator::start(&a, &b, &Stream::new(60.0).paced(2000.0)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let idx = lab.add_node(Dataplane::KernelFlannel, 1).unwrap();
    assert_eq!(idx, 3);
    std::thread::sleep(Duration::from_millis(300));
    let stats = flow.stop().unwrap();
    assert!(stats.sent > 500, "{stats:?}");
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");

    let pairs = check_all_pairs(lab.pods()).unwrap();
    assert_eq!(pairs.len(), 6);
    for p in &pairs {
        assert!(p.ok(), "{p:?}");
    }
    lab.down().unwrap();
    assert_eq!(netns::list_lab(), Vec::<String>::new());
}

#[test]
fn dropping_a_lab_tears_it_down() {
    let _g = setup();
    let lab = Topology::uniform(1, 1, Dataplane::KernelFlannel)
        .up()
        .unwrap();
    assert!(!netns::list_lab().is_empty());
    assert!(perf_lab::topology::lab_json().exists());
    drop(lab);
    assert_eq!(netns::list_lab(), Vec::<String>::new());
    assert!(!perf_lab::topology::lab_json().exists());
}

#[test]
fn twill_nodes_without_binaries_fail_clearly_and_leave_nothing() {
    let _g = setup();
    // Where `twill` and `twill-cni` are not built, `up` must name them and the fix before
    // creating anything; where they are (a workspace build), they are found beside us.
    match perf_lab::twill_node::Binaries::locate() {
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains("cargo build --release"), "{msg}");
            let err = Topology::uniform(1, 1, Dataplane::Twill).up().unwrap_err();
            assert!(format!("{err:#}").contains("cannot find"), "{err:#}");
        }
        Ok(b) => {
            assert!(
                b.twill.ends_with("twill") && b.cni.ends_with("twill-cni"),
                "{b:?}"
            );
        }
    }
    assert_eq!(netns::list_lab(), Vec::<String>::new());
}
