//! What the lab tests share: taking turns (the lab's names are fixed), a clean start, the
//! agents' counters, and a teardown that checks nothing is left behind.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex, time::Duration};

use perf_lab::{
    netns,
    topology::{Lab, PodState},
};

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

/// A pod's neighbour entries on its interface, as `ip -j neigh show` lists them: (address,
/// MAC, states).
pub fn neighbours(pod: &PodState) -> Vec<(String, String, Vec<String>)> {
    let out = netns::ip(&pod.netns, &["-j", "neigh", "show", "dev", &pod.ifname]).expect("ip neigh show");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j neigh show in {}: {e}: {out}", pod.netns));
    let text = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
    v.as_array()
        .map(|a| a.iter().map(|e| (text(e, "dst"), text(e, "lladdr"), e["state"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect())).collect())
        .unwrap_or_default()
}

/// Removes the pod's neighbour entries (twill-cni's permanent one for the gateway among
/// them), so that the pod resolves its gateway by ARP or Neighbor Discovery, as a pod wired
/// by other means would.
pub fn forget_gateway(pod: &PodState) {
    netns::ip(&pod.netns, &["neigh", "flush", "dev", &pod.ifname, "nud", "all"]).expect("ip neigh flush");
    assert_eq!(neighbours(pod), Vec::new(), "{}: neighbours left after the flush", pod.name);
}

/// Tears the lab down and checks that no lab namespace is left.
pub fn down(lab: Lab) {
    lab.down().expect("lab down");
    assert_eq!(netns::list_lab(), Vec::<String>::new(), "down left namespaces behind");
}

/// Sends from `pod` to the UDP echo server at `to` one datagram of each of `sizes` bytes
/// (pseudo-random contents, up to three tries each) and returns those, as (index, bytes),
/// that did not come back byte for byte.
pub fn not_echoed_intact(pod: &PodState, to: SocketAddr, sizes: &[usize]) -> Vec<(usize, usize)> {
    let sizes = sizes.to_vec();
    netns::spawn_in(&pod.netns, move || {
        let s = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut back = vec![0u8; 65536];
        let mut bad = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
            let msg: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let ok = (0..3).any(|_| s.send(&msg).is_ok() && matches!(s.recv(&mut back), Ok(n) if back[..n] == msg[..]));
            if !ok {
                bad.push((i, size));
            }
        }
        Ok(bad)
    })
    .expect("a thread in the pod")
    .join()
    .expect("the pod's thread ends")
    .expect("the pod's socket works")
}

/// Sends from `pod` to the UDP echo server at `to`, in bursts, `bursts` times the datagrams
/// of `sizes` bytes (one socket, so one flow), each numbered in its first four bytes, and
/// returns (datagrams sent, echoes received, echoes that came back after a later one).
pub fn echoes_out_of_order(pod: &PodState, to: SocketAddr, sizes: &[usize], bursts: u32) -> (u32, u32, u32) {
    let sizes = sizes.to_vec();
    netns::spawn_in(&pod.netns, move || {
        let s = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let (mut seq, mut echoed, mut late, mut highest) = (0u32, 0, 0, None);
        let mut back = vec![0u8; 65536];
        let mut msg = vec![0u8; sizes.iter().copied().max().unwrap_or(0).max(4)];
        let mut read = |wait: bool| -> std::io::Result<()> {
            s.set_nonblocking(!wait)?;
            while let Ok(n) = s.recv(&mut back) {
                if n >= 4 {
                    let got = u32::from_be_bytes([back[0], back[1], back[2], back[3]]);
                    echoed += 1;
                    if highest.is_some_and(|h| got < h) {
                        late += 1;
                    }
                    highest = highest.max(Some(got));
                }
            }
            Ok(())
        };
        for _ in 0..bursts {
            for &size in &sizes {
                msg[..4].copy_from_slice(&seq.to_be_bytes());
                s.send(&msg[..size.max(4)])?;
                seq += 1;
            }
            read(false)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        read(true)?;
        Ok((seq, echoed, late))
    })
    .expect("a thread in the pod")
    .join()
    .expect("the pod's thread ends")
    .expect("the pod's socket works")
}
