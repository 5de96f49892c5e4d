//! End to end through the `twill-lab` binary on the kernel Flannel data plane: `demo` on a
//! 2×2 lab must reach every ordered pod pair over ICMP, TCP and UDP, measure a nonzero UDP
//! packet rate and TCP throughput, and `down` must leave no `tw-` namespace behind.
//! Needs root (CI runs as root); fails loudly otherwise.

use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

const LAB: &str = env!("CARGO_BIN_EXE_twill-lab");
/// The lab's names are fixed: tests in this binary take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "lab tests create network namespaces and veth links: run them as root (CI does)"
    );
}

/// Runs `twill-lab down` when the test ends, also by panic.
struct DownOnDrop;
impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(LAB).arg("down").status();
    }
}

fn lab(args: &[&str]) -> Output {
    let out = Command::new(LAB)
        .args(args)
        .output()
        .expect("running twill-lab");
    eprintln!(
        "$ twill-lab {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("tw-"))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_left() {
    assert_eq!(
        lab_namespaces(),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    assert!(
        !std::path::Path::new("/run/twill-lab").exists(),
        "/run/twill-lab left behind"
    );
}

#[test]
fn demo_2x2_reaches_every_pair_measures_and_cleans_up() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _down = DownOnDrop;
    // A lab left by a crashed earlier run would make `demo` refuse to start.
    assert!(lab(&["down"]).status.success());

    let out = lab(&[
        "demo",
        "--dataplane",
        "kernel-flannel",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--duration",
        "2",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("demo --json printed no JSON ({e}): {stdout}"));

    let pairs = r["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 12, "4 pods make 12 ordered pairs");
    let cross = pairs.iter().filter(|p| p["path"] == "cross-node").count();
    assert_eq!(cross, 8);
    for p in pairs {
        for proto in ["icmp", "tcp", "udp"] {
            assert_eq!(
                p[proto]["ok"], true,
                "{} -> {} {proto}: {}",
                p["src"], p["dst"], p[proto]["error"]
            );
            assert!(p[proto]["rtt_us"].as_f64().unwrap() > 0.0);
        }
    }
    assert_eq!(r["all_pairs_ok"], true);

    let udp = &r["udp_flat"];
    assert_eq!(udp["stream"]["frame_bytes"], 64);
    assert_eq!(r["udp_paced"]["lost"], 0, "kernel Flannel lost packets at 100 kpps: {}", r["udp_paced"]);
    assert!(udp["sent_pps"].as_f64().unwrap() > 0.0, "udp: {udp}");
    assert!(udp["received_pps"].as_f64().unwrap() > 0.0, "udp: {udp}");
    let tcp = &r["tcp_throughput"];
    assert!(tcp["gbit_per_s"].as_f64().unwrap() > 0.0, "tcp: {tcp}");
    eprintln!(
        "kernel-flannel: udp sent {:.0} pps, received {:.0} pps, loss {:.2}%; tcp {:.2} Gbit/s",
        udp["sent_pps"].as_f64().unwrap(),
        udp["received_pps"].as_f64().unwrap(),
        udp["loss_pct"].as_f64().unwrap(),
        tcp["gbit_per_s"].as_f64().unwrap()
    );
    assert!(out.status.success(), "demo exited with {}", out.status);
    assert_nothing_left();
}

#[test]
fn up_check_add_node_down_through_the_cli() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _down = DownOnDrop;
    assert!(lab(&["down"]).status.success());

    let up = lab(&[
        "up",
        "--dataplane",
        "kernel-flannel",
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--json",
    ]);
    assert!(up.status.success());
    let s: Value = serde_json::from_slice(&up.stdout).expect("up --json");
    assert_eq!(s["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(s["pods"][0]["ip"], "10.244.1.2");
    assert!(
        lab(&["up", "--dataplane", "kernel-flannel"]).status.code() != Some(0),
        "a second up must refuse"
    );

    assert!(
        lab(&["add-node", "--dataplane", "kernel-flannel", "--pods", "1"])
            .status
            .success()
    );
    let check = lab(&["check", "--json"]);
    let pairs: Value = serde_json::from_slice(&check.stdout).expect("check --json");
    assert_eq!(
        pairs.as_array().unwrap().len(),
        6,
        "3 pods make 6 ordered pairs"
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    assert!(lab(&["down"]).status.success());
    assert_nothing_left();
    // down is idempotent.
    assert!(lab(&["down"]).status.success());
}
