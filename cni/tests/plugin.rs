//! Runs the built `twill-cni` as a container runtime would: a pod netns `twcni-…`, a
//! stand-in for the agent's socket (a test double of the docs/agent-api.md peer only),
//! `CNI_*` in a cleared environment and the network config on stdin. What the plugin
//! did is checked with iproute2 and ethtool, not with the plugin's own code.
//!
//! Needs root (network namespaces, veth) and `ip` + `ethtool`; fails loudly otherwise.
//! Every namespace and link is removed by a guard on drop, also when a test fails.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_twill-cni");

fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid: line");
    assert_eq!(
        euid, "0",
        "twill-cni integration tests need root (network namespaces, veth); run them as root"
    );
    for tool in ["ip", "ethtool"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is needed to check what the plugin did; install it (apt-get install iproute2 ethtool)"
        );
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `twcni-<pid>-<n>`.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn ip_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ip(&full);
    assert!(
        out.status.success(),
        "ip {full:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ip {full:?} printed no JSON: {e}"))
}

/// A pod network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = unique("twcni");
        let out = ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn has_link(&self, ifname: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", ifname])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The host side of a pod's veth: removed on drop if the test left it behind.
struct HostLink {
    name: String,
}

impl HostLink {
    fn exists(&self) -> bool {
        ip(&["link", "show", &self.name]).status.success()
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        if self.exists() {
            let _ = ip(&["link", "del", &self.name]);
        }
    }
}

/// What the stand-in agent answers.
#[derive(Clone)]
struct Behaviour {
    ip: &'static str,
    /// A dual-stack node's answer carries an IPv6 address and gateway as well.
    ip6: Option<&'static str>,
    mtu: u32,
    gateway_mac: &'static str,
    refuse_attach: bool,
}

/// A stand-in for the agent's end of the socket: records every request, answers as
/// docs/agent-api.md says.
struct StandInAgent {
    dir: PathBuf,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandInAgent {
    fn start(behaviour: Behaviour) -> StandInAgent {
        let dir = std::env::temp_dir().join(unique("twcni-agent"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_at(dir, behaviour)
    }

    fn start_at(dir: PathBuf, behaviour: Behaviour) -> StandInAgent {
        let socket = dir.join("twill.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut allocated = HashSet::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let stream = stream.unwrap();
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).unwrap_or(0) == 0 {
                        continue;
                    }
                    let req: Value = serde_json::from_str(&line).expect("the plugin sent JSON");
                    seen.lock().unwrap().push(req.clone());
                    let id = req["container_id"].as_str().unwrap_or_default().to_owned();
                    let answer = match req["op"].as_str() {
                        Some("allocate") => {
                            allocated.insert(id);
                            let mut a = json!({"ok": true, "ip": behaviour.ip, "prefix_len": 32, "gateway": "169.254.1.1",
                                   "mtu": behaviour.mtu, "gateway_mac": behaviour.gateway_mac});
                            if let Some(ip6) = behaviour.ip6 {
                                a["ip6"] = json!(ip6);
                                a["gateway6"] = json!("fe80::1");
                            }
                            a
                        }
                        Some("attach") if behaviour.refuse_attach => {
                            json!({"ok": false, "error": "no worker for host_ifname (stand-in told to refuse)"})
                        }
                        Some("attach") => json!({"ok": true}),
                        Some("release") => json!({"ok": true, "released": allocated.remove(&id)}),
                        Some("stats") => json!({"ok": true, "stats": {}, "workers": []}),
                        _ => json!({"ok": false, "error": "unknown op"}),
                    };
                    let mut out = serde_json::to_vec(&answer).unwrap();
                    out.push(b'\n');
                    let _ = (&stream).write_all(&out);
                }
            })
        };
        StandInAgent {
            dir,
            socket,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn ops(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r["op"].as_str().unwrap().to_owned())
            .collect()
    }

    fn requests(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening (the socket file is removed) but keeps the directory.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for StandInAgent {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts a spec error object with `code`.
    fn assert_error(&self, code: u64) -> Value {
        assert!(
            !self.ok,
            "expected failure, got success: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let v = self.json();
        assert_eq!(v["code"], code, "wrong code: {v}\nstderr: {}", self.stderr);
        assert!(v["msg"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        v
    }
}

fn run_cni(command: &str, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin")
        .env("TWILL_CNI_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twill-cni");
    // A plugin may exit before reading stdin (bad CNI_COMMAND); like Go's os/exec,
    // which runtimes use, a broken pipe here is not an error.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// One pod attachment: its netns, container id, host link guard and the env for it.
struct Pod {
    netns: Netns,
    container_id: String,
    host: HostLink,
    netns_path: String,
}

impl Pod {
    fn new() -> Pod {
        let netns = Netns::new();
        let container_id = unique("c0ffee");
        let host = HostLink {
            name: host_ifname(&container_id),
        };
        let netns_path = netns.path();
        Pod {
            netns,
            container_id,
            host,
            netns_path,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("CNI_CONTAINERID", self.container_id.as_str()),
            ("CNI_NETNS", self.netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=1234",
            ),
        ]
    }
}

fn conf(version: &str, socket: &Path) -> Value {
    json!({"cniVersion": version, "name": "twill", "type": "twill-cni", "socket": socket})
}

/// `tw` + first 11 hex digits of SHA-256(id), computed with coreutils to stay
/// independent of the plugin's own code.
fn host_ifname(container_id: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(container_id.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!("tw{}", &String::from_utf8(out.stdout).unwrap()[..11])
}

const STANDARD: Behaviour = Behaviour {
    ip: "10.244.1.2",
    ip6: None,
    mtu: 1450,
    gateway_mac: "ee:ee:ee:ee:ee:ee",
    refuse_attach: false,
};

#[test]
fn add_check_del_round_trip() {
    require_root_and_tools();
    let agent = StandInAgent::start(STANDARD);
    let pod = Pod::new();
    let conf = conf("1.0.0", &agent.socket);

    let add = run_cni("ADD", &pod.env(), &conf.to_string());
    assert!(add.ok, "ADD failed: {}\nstderr: {}", add.stdout, add.stderr);
    let result = add.json();

    // The pod side, seen by iproute2 inside the netns.
    let link = &ip_json(&["-n", &pod.netns.name, "link", "show", "eth0"])[0];
    assert_eq!(link["mtu"], 1450, "{link}");
    assert!(
        link["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    let pod_mac = link["address"].as_str().unwrap().to_owned();
    let addrs =
        &ip_json(&["-n", &pod.netns.name, "-4", "addr", "show", "dev", "eth0"])[0]["addr_info"];
    assert_eq!(addrs.as_array().unwrap().len(), 1, "{addrs}");
    assert_eq!(
        (addrs[0]["local"].as_str(), addrs[0]["prefixlen"].as_u64()),
        (Some("10.244.1.2"), Some(32))
    );
    let routes = ip_json(&["-n", &pod.netns.name, "-4", "route", "show"]);
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == "eth0"),
        "no default via 169.254.1.1 dev eth0: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == "eth0"),
        "no 169.254.1.1 scope link dev eth0: {routes:?}"
    );
    let ethtool = Command::new("ip")
        .args(["netns", "exec", &pod.netns.name, "ethtool", "-k", "eth0"])
        .output()
        .unwrap();
    let features = String::from_utf8(ethtool.stdout).unwrap();
    for line in [
        "tx-checksumming: off",
        "tx-checksum-ip-generic: off",
        "tcp-segmentation-offload: off",
        "generic-segmentation-offload: off",
        "generic-receive-offload: off",
    ] {
        assert!(
            features.lines().any(|l| l.trim() == line),
            "ethtool -k eth0 lacks {line:?}:\n{features}"
        );
    }

    // The gateway's MAC, as a permanent neighbour entry.
    let neigh = ip_json(&["-n", &pod.netns.name, "neigh", "show", "dev", "eth0"]);
    assert_eq!(neigh, json!([{"dst": "169.254.1.1", "lladdr": "ee:ee:ee:ee:ee:ee", "state": ["PERMANENT"]}]));

    // The host side.
    let host = &ip_json(&["link", "show", &pod.host.name])[0];
    assert_eq!(host["mtu"], 1450, "{host}");
    assert!(
        host["flags"].as_array().unwrap().contains(&json!("UP")),
        "{host}"
    );
    assert_eq!(
        host["operstate"], "UP",
        "carrier should be up with both ends up: {host}"
    );

    // The result.
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": pod.host.name, "mac": host["address"]},
                {"name": "eth0", "mac": pod_mac, "sandbox": pod.netns_path},
            ],
            "ips": [{"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        })
    );

    // What the agent saw.
    let seen = agent.requests();
    assert_eq!(agent.ops(), ["allocate", "attach"]);
    assert_eq!(
        seen[0],
        json!({"op": "allocate", "container_id": pod.container_id, "namespace": "shop", "pod": "cart-0", "ifname": "eth0"})
    );
    assert_eq!(
        seen[1],
        json!({"op": "attach", "container_id": pod.container_id, "host_ifname": pod.host.name, "pod_mac": pod_mac})
    );

    // CHECK with the ADD result as prevResult.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = run_cni("CHECK", &pod.env(), &check_conf.to_string());
    assert!(
        check.ok,
        "CHECK failed: {}\nstderr: {}",
        check.stdout, check.stderr
    );
    assert_eq!(check.stdout, "", "CHECK prints nothing on success");

    // DEL twice: both succeed, the veth is gone, the address was released once.
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result;
    for round in 0..2 {
        let del = run_cni("DEL", &pod.env(), &del_conf.to_string());
        assert!(
            del.ok,
            "DEL #{round} failed: {}\nstderr: {}",
            del.stdout, del.stderr
        );
        assert_eq!(del.stdout, "");
    }
    assert!(
        !pod.host.exists(),
        "host side {} still exists after DEL",
        pod.host.name
    );
    assert!(
        !pod.netns.has_link("eth0"),
        "eth0 still in the pod after DEL"
    );
    assert_eq!(
        agent.ops(),
        ["allocate", "attach", "stats", "release", "release"]
    );
}

/// A dual-stack allocation: the IPv6 address (/128, not tentative: no DAD) and the IPv6
/// default route via fe80::1 in the pod, both families in the result, and CHECK verifying
/// both (it fails once the IPv6 default route is gone).
#[test]
fn dual_stack_add_check_and_a_missing_ipv6_route() {
    require_root_and_tools();
    let agent = StandInAgent::start(Behaviour { ip6: Some("fd00:10:244:1::2"), ..STANDARD });
    let pod = Pod::new();
    let mut conf = conf("1.0.0", &agent.socket);
    let add = run_cni("ADD", &pod.env(), &conf.to_string());
    assert!(add.ok, "ADD failed: {}\nstderr: {}", add.stdout, add.stderr);
    let result = add.json();
    assert_eq!(result["ips"][1], json!({"address": "fd00:10:244:1::2/128", "gateway": "fe80::1", "interface": 1}));
    assert_eq!(result["routes"][1], json!({"dst": "::/0", "gw": "fe80::1"}));
    let addrs = &ip_json(&["-n", &pod.netns.name, "-6", "addr", "show", "dev", "eth0", "scope", "global"])[0]["addr_info"];
    assert_eq!((addrs[0]["local"].as_str(), addrs[0]["prefixlen"].as_u64()), (Some("fd00:10:244:1::2"), Some(128)), "{addrs}");
    assert!(addrs[0]["tentative"].is_null(), "no duplicate address detection: {addrs}");
    let routes = ip_json(&["-n", &pod.netns.name, "-6", "route", "show"]);
    assert!(
        routes.as_array().unwrap().iter().any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == "eth0"),
        "no default via fe80::1 dev eth0: {routes}"
    );
    conf["prevResult"] = result;
    let check = run_cni("CHECK", &pod.env(), &conf.to_string());
    assert!(check.ok, "CHECK failed: {}\nstderr: {}", check.stdout, check.stderr);
    assert!(ip(&["-n", &pod.netns.name, "-6", "route", "del", "default"]).status.success());
    let err = run_cni("CHECK", &pod.env(), &conf.to_string()).assert_error(102);
    assert!(err["details"].as_str().unwrap().contains("::/0 via fe80::1"), "{err}");
    assert!(run_cni("DEL", &pod.env(), &conf.to_string()).ok);
}

#[test]
fn check_reports_a_missing_default_route() {
    require_root_and_tools();
    let agent = StandInAgent::start(STANDARD);
    let pod = Pod::new();
    let mut conf = conf("1.0.0", &agent.socket);
    let add = run_cni("ADD", &pod.env(), &conf.to_string());
    assert!(add.ok, "ADD failed: {}\nstderr: {}", add.stdout, add.stderr);
    conf["prevResult"] = add.json();

    assert!(
        ip(&["-n", &pod.netns.name, "route", "del", "default"])
            .status
            .success()
    );
    let check = run_cni("CHECK", &pod.env(), &conf.to_string());
    let err = check.assert_error(102);
    assert!(
        err["details"].as_str().unwrap().contains("0.0.0.0/0"),
        "{err}"
    );

    // CHECK without prevResult is an invalid config.
    conf.as_object_mut().unwrap().remove("prevResult");
    run_cni("CHECK", &pod.env(), &conf.to_string()).assert_error(7);
    assert!(run_cni("DEL", &pod.env(), &conf.to_string()).ok);
}

#[test]
fn version_works_with_minimal_and_empty_stdin() {
    let expected =
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]});
    for stdin in [r#"{"cniVersion":"1.0.0"}"#, ""] {
        let out = run_cni("VERSION", &[], stdin);
        assert!(
            out.ok,
            "VERSION with {stdin:?} failed: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        assert_eq!(out.json(), expected);
    }
}

#[test]
fn bad_input_gets_spec_error_codes() {
    let env = [
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/twcni-none"),
        ("CNI_IFNAME", "eth0"),
    ];
    run_cni("ADD", &env, "{not json").assert_error(6);
    let e = run_cni(
        "ADD",
        &env,
        r#"{"cniVersion":"0.1.0","name":"n","type":"twill-cni"}"#,
    )
    .assert_error(1);
    assert!(e["details"].as_str().unwrap().contains("1.0.0"), "{e}");
    run_cni("ADD", &env, r#"{"name":"n","type":"twill-cni"}"#).assert_error(7);
    let e = run_cni(
        "ADD",
        &[("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")],
        r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
    )
    .assert_error(4);
    assert!(
        e["details"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{e}"
    );
    run_cni("FROB", &env, "{}").assert_error(4);
}

#[test]
fn add_without_agent_is_code_11_and_leaves_nothing() {
    require_root_and_tools();
    let pod = Pod::new();
    let missing = std::env::temp_dir()
        .join(unique("twcni-nosuchdir"))
        .join("twill.sock");
    let add = run_cni("ADD", &pod.env(), &conf("1.0.0", &missing).to_string());
    let err = add.assert_error(11);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains(missing.to_str().unwrap()),
        "{err}"
    );
    assert!(
        !pod.host.exists(),
        "host side {} left behind",
        pod.host.name
    );
    assert!(!pod.netns.has_link("eth0"), "eth0 left behind in the pod");
}

#[test]
fn refused_attach_rolls_back_veth_and_address() {
    require_root_and_tools();
    let agent = StandInAgent::start(Behaviour {
        refuse_attach: true,
        ..STANDARD
    });
    let pod = Pod::new();
    let add = run_cni("ADD", &pod.env(), &conf("1.0.0", &agent.socket).to_string());
    let err = add.assert_error(100);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("stand-in told to refuse"),
        "{err}"
    );
    assert_eq!(agent.ops(), ["allocate", "attach", "release"]);
    assert!(
        !pod.host.exists(),
        "host side {} left behind",
        pod.host.name
    );
    assert!(!pod.netns.has_link("eth0"), "eth0 left behind in the pod");
}

#[test]
fn a_malformed_gateway_mac_is_code_5_and_rolls_back() {
    require_root_and_tools();
    let agent = StandInAgent::start(Behaviour { gateway_mac: "ee:ee:ee:ee:ee", ..STANDARD });
    let pod = Pod::new();
    let add = run_cni("ADD", &pod.env(), &conf("1.0.0", &agent.socket).to_string());
    let err = add.assert_error(5);
    assert!(err["details"].as_str().unwrap().contains("gateway_mac \"ee:ee:ee:ee:ee\""), "{err}");
    assert_eq!(agent.ops(), ["allocate", "release"]);
    assert!(!pod.host.exists(), "host side {} left behind", pod.host.name);
    assert!(!pod.netns.has_link("eth0"), "eth0 left behind in the pod");
}

#[test]
fn existing_ifname_is_refused_before_allocating() {
    require_root_and_tools();
    let agent = StandInAgent::start(STANDARD);
    let pod = Pod::new();
    // No `dummy` driver on every kernel: a veth pair inside the pod stands in.
    assert!(
        ip(&[
            "-n",
            &pod.netns.name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0p"
        ])
        .status
        .success()
    );
    let err =
        run_cni("ADD", &pod.env(), &conf("1.0.0", &agent.socket).to_string()).assert_error(101);
    assert!(err["details"].as_str().unwrap().contains("eth0"), "{err}");
    assert!(
        agent.ops().is_empty(),
        "nothing should reach the agent: {:?}",
        agent.ops()
    );
    assert!(!pod.host.exists());
}

#[test]
fn add_with_missing_netns_is_code_3() {
    require_root_and_tools();
    let agent = StandInAgent::start(STANDARD);
    let env = [
        ("CNI_CONTAINERID", "gone"),
        ("CNI_NETNS", "/run/netns/twcni-does-not-exist"),
        ("CNI_IFNAME", "eth0"),
    ];
    run_cni("ADD", &env, &conf("1.0.0", &agent.socket).to_string()).assert_error(3);
    assert!(agent.ops().is_empty());
}

#[test]
fn del_without_agent_removes_the_veth_and_asks_for_a_retry() {
    require_root_and_tools();
    let mut agent = StandInAgent::start(STANDARD);
    let pod = Pod::new();
    let conf = conf("1.0.0", &agent.socket);
    assert!(run_cni("ADD", &pod.env(), &conf.to_string()).ok);
    assert!(pod.host.exists());

    agent.stop();
    let del = run_cni("DEL", &pod.env(), &conf.to_string());
    del.assert_error(11);
    assert!(
        !pod.host.exists(),
        "DEL must clean up the veth even without the agent"
    );

    // The runtime retries once the agent is back: the release goes through.
    let dir = agent.dir.clone();
    let agent = StandInAgent::start_at(dir, STANDARD);
    let del = run_cni("DEL", &pod.env(), &conf.to_string());
    assert!(
        del.ok,
        "retried DEL failed: {}\nstderr: {}",
        del.stdout, del.stderr
    );
    assert_eq!(agent.ops(), ["release"]);
}

#[test]
fn del_of_something_never_added_succeeds_without_netns() {
    let agent = StandInAgent::start(STANDARD);
    let env = [("CNI_CONTAINERID", "never-added"), ("CNI_IFNAME", "eth0")];
    let del = run_cni("DEL", &env, &conf("1.0.0", &agent.socket).to_string());
    assert!(del.ok, "DEL failed: {}\nstderr: {}", del.stdout, del.stderr);
    assert_eq!(agent.ops(), ["release"]);
}

#[test]
fn old_version_with_prev_result_is_chained() {
    require_root_and_tools();
    let agent = StandInAgent::start(Behaviour {
        ip: "10.244.1.3",
        ..STANDARD
    });
    let pod = Pod::new();
    let mut conf = conf("0.4.0", &agent.socket);
    conf["prevResult"] = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "lo0", "sandbox": pod.netns_path}],
        "ips": [{"version": "4", "address": "192.0.2.9/32", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let add = run_cni("ADD", &pod.env(), &conf.to_string());
    assert!(add.ok, "ADD failed: {}\nstderr: {}", add.stdout, add.stderr);
    let r = add.json();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["interfaces"][2]["name"], "eth0");
    assert_eq!(
        r["ips"][1],
        json!({"version": "4", "address": "10.244.1.3/32", "gateway": "169.254.1.1", "interface": 2})
    );
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    assert!(run_cni("DEL", &pod.env(), &conf.to_string()).ok);
    assert!(!pod.host.exists());
}
