//! What the lab tests share: taking turns (the lab's names are fixed), a clean start, the
//! agents' counters, and a teardown that checks nothing is left behind.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::{collections::BTreeMap, sync::Mutex};

use perf_lab::{netns, topology::Lab};

static SERIAL: Mutex<()> = Mutex::new(());

/// Root, this binary's turn, and no lab left by an earlier run.
pub fn setup() -> std::sync::MutexGuard<'static, ()> {
    netns::require_root().expect("lab tests create network namespaces: run them as root (CI does)");
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    perf_lab::topology::down_all().expect("clearing a lab left by an earlier run");
    g
}

/// A node agent's summed counters.
pub fn stats(lab: &Lab, node: &str) -> BTreeMap<String, u64> {
    let v = lab.agent_stats(node).expect("agent stats");
    v["stats"]
        .as_object()
        .expect("stats object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// Tears the lab down and checks that no lab namespace is left.
pub fn down(lab: Lab) {
    lab.down().expect("lab down");
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "down left namespaces behind");
}
