//! Changes under load: while the lab generator's stream runs between two twill pods on two
//! nodes, the control plane takes 100 policy changes, then 100 pods added and removed on the
//! receiving node (each reached across nodes before it goes, a policy change with each), and
//! the stream, whose pods none of the changes touch, loses nothing. Needs root.
//!
//! Rates: the policy changes run under the highest rate the lab sustains without loss for
//! as long as they take, found just before on the same lab. The no-drop-rate search gives a
//! start: 1-s runs, a rate passing if one of two does, so a run of 3–6 s at that rate may
//! lose with no change at all. From there the rate comes down in 5 % steps until two
//! undisturbed streams of [`CONFIRM_S`] in a row lose nothing; a loss under the changes at
//! that rate is theirs. (Run at the searched rate itself, CI once lost 50,735 of 1,657,335
//! packets at 462 kpps, on the sending node's fill ring; which of the two caused it, that
//! run could not tell.) The rate starts at most at [`SENDER_SHARE`] of the sender's
//! flat-out rate, so the sender keeps its pace. About one run in ten (4 of 38 on
//! 2026-12-04, at 82–128 kpps) the policy changes hold the sending node's worker off for
//! 78–109 ms, more than its ring covers, whatever the rate: a defect not found yet
//! (docs/perf.md). The policy changes then run once more, and that try must lose nothing.
//!
//! The agents' control threads run in SCHED_IDLE (`--control-sched idle`, the default), so
//! recompiling and publishing only use time the workers leave (with the control threads in
//! the normal class, runs lost 6–15 % of the stream, in gaps of up to 400 ms), and a worker
//! held off its core meanwhile has 8,192-frame rings to catch up from (with 2,048 runs lost
//! up to 2.3 %).
//!
//! The pod churn runs under a quarter of that rate: creating and removing namespaces,
//! veths, XDP programs and AF_XDP sockets is kernel work, on both cores the workers need,
//! that on a kernel built without preemption (this machine's: PREEMPT_NONE) holds a core
//! for up to about 35 ms at a time whatever the agent's class. At the full no-drop rate
//! three runs in three lost 0.6–1.7 %, on both nodes' fill rings, and at half of it one CI
//! run lost 0.16 % (5,342 of 3,337,277, a 75 ms stall: beyond the 45 ms that 8,192 frames
//! cover there).

mod common;

use std::time::{Duration, Instant};

use common::{down, setup, stats};
use perf_lab::{
    bench,
    generator::{self, Stream, StreamStats},
    netns, probe,
    topology::{Dataplane, Lab, PodState, Topology},
};

const CHANGES: usize = 100;

/// Seconds of each undisturbed stream that confirms a rate: about as long as the stream
/// under the policy changes (the changes, 2.7–7.2 s, and 0.6 s).
const CONFIRM_S: f64 = 6.0;

/// At most this share of what the sender sends flat out: where twill forwards all the
/// sender can send, the stream stays below the sender's own limit, so that it keeps its rate
/// while the changes take CPU. Runs that fell more than 10 % behind held 0.74–0.8 of it
/// (2 of 15 with the stream at about 0.9 of it, 1 of 14 at 0.85; none of 5 at 0.7).
const SENDER_SHARE: f64 = 0.7;

/// From `start` down in 5 % steps: the first rate at which two streams of [`CONFIRM_S`] in a
/// row lose nothing.
fn sustained_rate(a: &PodState, b: &PodState, start: f64) -> f64 {
    let mut rate = start;
    for _ in 0..12 {
        let clean = (0..2).take_while(|_| generator::run(a, b, &Stream::new(CONFIRM_S).paced(rate)).expect("a confirming stream").lost == 0).count();
        println!("{rate:.0} pps for {CONFIRM_S} s: {clean} run(s) in a row lost nothing");
        if clean == 2 {
            return rate;
        }
        rate *= 0.95;
    }
    panic!("no rate from {start:.0} pps down to {rate:.0} pps sustained {CONFIRM_S} s without loss twice");
}

/// A policy that selects only the churned pods (n2's pods but p1-n2), different each time.
fn policy(i: usize) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: churn}}\nspec:\n  order: 50\n  selector: twill-lab/node == 'n2' && twill-lab/pod != 'p1-n2'\n  types: [Ingress]\n  ingress:\n  - action: Deny\n    protocol: UDP\n    destination: {{ports: [{}]}}\n  - action: Allow\n",
        1000 + i
    )
}

/// Applies policy `i` and waits until both agents have published a table version since.
fn change_policy(lab: &Lab, i: usize) {
    let before: Vec<u64> = ["n1", "n2"].iter().map(|n| stats(lab, n)["table_version"]).collect();
    lab.apply_manifest("churn.yaml", &policy(i)).expect("policy change");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ["n1", "n2"].iter().zip(&before).any(|(n, v)| stats(lab, n)["table_version"] <= *v) {
        assert!(Instant::now() < deadline, "policy change {i} not published within 5 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const SCHED_NORMAL: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// The scheduling class (`policy` of /proc/PID/task/TID/stat) of node `node`'s agent
/// thread and, checked to be one, of all its workers.
fn thread_classes(lab: &Lab, node: &str) -> (u32, u32) {
    let pid = lab.node(node).and_then(|n| n.agent.as_ref()).expect("a twill node").pid;
    let class = |tid: &str| -> (String, u32) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap().trim().to_owned();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        // Fields after the parenthesised name; `policy` is field 41 of the whole line.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        (comm, after.split(' ').nth(41 - 3).unwrap().parse().unwrap())
    };
    let tasks: Vec<(String, u32)> = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().map(|e| class(&e.unwrap().file_name().to_string_lossy())).collect();
    let workers: Vec<u32> = tasks.iter().filter(|(c, _)| c.starts_with("twill-worker")).map(|t| t.1).collect();
    assert!(!workers.is_empty() && workers.iter().all(|w| *w == workers[0]), "{tasks:?}");
    (class(&pid.to_string()).1, workers[0])
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread's CPU clock").into()
}

/// Runs `changes` under a stream from `a` to `b` at `rate`; the stream's figures, checked.
fn under_load(lab: &mut Lab, a: &PodState, b: &PodState, rate: f64, what: &str, changes: impl FnOnce(&mut Lab)) -> StreamStats {
    let (s, grew) = lost_under_load(lab, a, b, rate, what, changes);
    assert_eq!(s.lost, 0, "{what}: the unaffected stream lost {} of {} packets; drop counters that grew: {grew:?}", s.lost, s.sent);
    s
}

/// [`under_load`] but for the loss: the stream's figures, checked but for loss, and the drop
/// counters that grew meanwhile.
fn lost_under_load(lab: &mut Lab, a: &PodState, b: &PodState, rate: f64, what: &str, changes: impl FnOnce(&mut Lab)) -> (StreamStats, Vec<String>) {
    let before = [stats(lab, "n1"), stats(lab, "n2")];
    let load = generator::start(a, b, &Stream::new(300.0).paced(rate)).expect("the stream starts");
    std::thread::sleep(Duration::from_millis(300));
    let (t0, cpu0) = (Instant::now(), thread_cpu());
    changes(lab);
    let (took, driver_cpu) = (t0.elapsed(), thread_cpu() - cpu0);
    std::thread::sleep(Duration::from_millis(300));
    let s = load.stop().expect("the stream ran");
    println!("{what} in {took:?} (the driving thread's CPU: {driver_cpu:?}) under {rate:.0} pps: sent {}, lost {}, latency p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs", s.sent, s.lost, s.latency.p50_us, s.latency.p99_us, s.latency.max_us);
    let grew: Vec<String> = ["n1", "n2"]
        .iter()
        .zip(&before)
        .flat_map(|(node, b)| {
            let after = stats(lab, node);
            after.into_iter().filter(|(k, v)| (k.starts_with("drop") || k.starts_with("xsk")) && *v > b.get(k).copied().unwrap_or(0)).map(move |(k, v)| format!("{node} {k} +{}", v - b.get(&k).copied().unwrap_or(0))).collect::<Vec<_>>()
        })
        .collect();
    assert!(took.as_secs_f64() < s.duration_s, "{what}: the changes ({took:?}) outlasted the stream ({} s)", s.duration_s);
    assert!(s.sent as f64 > 0.9 * rate * s.duration_s, "the generator fell behind its rate: {s:?}");
    assert_eq!((s.duplicates, s.reordered), (0, 0), "{what}: {s:?}");
    (s, grew)
}

#[test]
fn a_stream_loses_nothing_while_policies_and_pods_change() {
    let _g = setup();
    let mut lab = Topology::uniform(2, 1, Dataplane::Twill).up().expect("lab up");
    let (a, b) = (lab.pod("p1-n1").unwrap().clone(), lab.pod("p1-n2").unwrap().clone());
    let flat = generator::run(&a, &b, &Stream::new(1.0)).expect("flat out");
    // Strictly no loss (the bench tolerates 0.01 %): where the sustained rate starts from.
    let (ndr, probes) = bench::no_drop_rate(&a, &b, &flat, &Stream::new(1.0), 3, 0.0).expect("the no-drop-rate search");
    assert!(ndr > 0.0, "no paced rate was loss-free: {probes:?}");
    println!("no-drop rate about {ndr:.0} pps; flat out the sender sent {:.0} pps", flat.sent_pps);
    let rate = sustained_rate(&a, &b, ndr.min(SENDER_SHARE * flat.sent_pps));
    println!("sustained without loss: {rate:.0} pps ({:.2} of the searched rate)", rate / ndr);

    for n in ["n1", "n2"] {
        assert_eq!(thread_classes(&lab, n), (SCHED_IDLE, SCHED_NORMAL), "{n}: (control thread, workers) scheduling classes");
    }

    // The policy changes, and once more if they lost: about one run in ten they hold the
    // sending node's worker off for 80–100 ms (the gap, not found yet: docs/perf.md). Both
    // tries losing fails, as does any loss a second try repeats.
    let policy_changes = |lab: &mut Lab, from: usize| {
        lost_under_load(lab, &a, &b, rate, "100 policy changes", |lab| {
            for i in from..from + CHANGES {
                change_policy(lab, i);
            }
        })
    };
    let (first, grew) = policy_changes(&mut lab, 0);
    if first.lost > 0 {
        println!("the policy changes lost {} of {} packets (latency max {:.0} µs; {grew:?}): the known gap; once more", first.lost, first.sent, first.latency.max_us);
        let (second, grew) = policy_changes(&mut lab, 2 * CHANGES);
        assert_eq!(second.lost, 0, "100 policy changes, both tries: the unaffected stream lost {} of {} packets, then {} of {}; drop counters that grew the second time: {grew:?}", first.lost, first.sent, second.lost, second.sent);
    }

    let endpoints_before = stats(&lab, "n2")["endpoints"];
    under_load(&mut lab, &a, &b, rate / 4.0, "100 pods added, reached and removed, a policy change each", |lab| {
        for i in 0..CHANGES {
            change_policy(lab, CHANGES + i);
            let name = lab.add_pod(2).expect("pod added");
            let ip = lab.pod(&name).and_then(|p| p.ip).expect("the new pod has an address");
            netns::run_in(&a.netns, move || probe::icmp_echo(ip, 50, Duration::from_millis(100)))
                .unwrap_or_else(|e| panic!("new pod {name} ({ip}) unreachable from p1-n1: {e:#}"));
            lab.remove_pod(&name).expect("pod removed");
        }
    });
    assert_eq!(stats(&lab, "n2")["endpoints"], endpoints_before, "every added pod is gone again");
    down(lab);
}
