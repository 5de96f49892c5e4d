//! Network namespaces the lab creates (`ip netns`, bind-mounted under [`NETNS_DIR`]), links
//! inside them (`ip -n NS ...`), and running Rust code inside one: a fresh thread calls
//! setns(2) with `CLONE_NEWNET` on the namespace's file, so sockets it opens live there.
//! The calling thread never changes namespace.

use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

use crate::process::run;

/// Where `ip netns add` bind-mounts namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Every namespace and link the lab creates starts with this.
pub const PREFIX: &str = "tw-";

/// The file a CNI runtime hands over as `CNI_NETNS`.
pub fn path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// Creates namespace `ns` with its loopback up.
pub fn add(ns: &str) -> Result<()> {
    check_name(ns)?;
    run(Command::new("ip").args(["netns", "add", ns]))?;
    ip(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `ns`, first killing any process still inside it (only lab namespaces:
/// whatever runs there the lab started).
pub fn delete(ns: &str) -> Result<()> {
    check_name(ns)?;
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    run(Command::new("ip").args(["netns", "delete", ns]))?;
    Ok(())
}

/// The lab's namespaces that exist now (names starting with [`PREFIX`]).
pub fn list_lab() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn check_name(ns: &str) -> Result<()> {
    if !ns.starts_with(PREFIX) {
        bail!("namespace `{ns}` is not a lab namespace (names start with `{PREFIX}`)");
    }
    Ok(())
}

/// `ip -n NS ARGS...`, failing with the command line and stderr.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip netns exec NS PROGRAM ARGS...` (for tools without a `-n`, e.g. `bridge`).
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args))
}

/// The MAC address of `link` in `ns`.
pub fn link_mac(ns: &str, link: &str) -> Result<String> {
    let out = ip(ns, &["-j", "link", "show", "dev", link])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `ip -n {ns} -j link show dev {link}`"))?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("`ip -n {ns} link show dev {link}` has no MAC address: {out}"))
}

/// The next hop `ns` routes `dst` through: the route's gateway, or `dst` on a link route.
pub fn next_hop(ns: &str, dst: IpAddr) -> Result<IpAddr> {
    let out = ip(ns, &["-j", "route", "get", &dst.to_string()])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("parsing `ip -n {ns} -j route get {dst}`"))?;
    match v.get(0).and_then(|r| r.get("gateway")) {
        None => Ok(dst),
        Some(g) => g.as_str().and_then(|g| g.parse().ok()).ok_or_else(|| anyhow!("`ip -n {ns} route get {dst}`: gateway {g}")),
    }
}

/// The MAC of neighbour `ip` on `dev` in `ns`, if resolved (any state with a link-layer
/// address but FAILED / INCOMPLETE).
pub fn neighbour_mac(ns: &str, ip: IpAddr, dev: &str) -> Result<String> {
    let out = self::ip(ns, &["-j", "neigh", "show", &ip.to_string(), "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("parsing `ip -n {ns} -j neigh show {ip} dev {dev}`"))?;
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|n| !n.get("state").and_then(|s| s.as_array()).is_some_and(|s| s.iter().any(|s| s == "FAILED" || s == "INCOMPLETE")))
        .find_map(|n| n.get("lladdr").and_then(|a| a.as_str()).map(str::to_owned))
        .ok_or_else(|| anyhow!("{ns} has no resolved neighbour entry for {ip} on {dev}: {out}"))
}

/// Writes a sysctl (`net.ipv4.ip_forward` style key) inside `ns`: /proc/sys/net resolves
/// against the writing thread's network namespace.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    let what = format!("sysctl {key}={value} in namespace {ns}");
    run_in(ns, move || {
        std::fs::write(&file, &value).with_context(|| format!("writing {file}"))?;
        Ok(())
    })
    .context(what)
}

/// Spawns a thread that enters network namespace `ns` and runs `f` there.
pub fn spawn_in<T, F>(ns: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let p = path(ns);
    let file = File::open(&p).with_context(|| format!("opening namespace {}", p.display()))?;
    let name = ns.to_owned();
    thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into namespace {name}"))?;
            drop(file);
            f()
        })
        .with_context(|| format!("spawning a thread for namespace {ns}"))
}

/// Runs `f` inside network namespace `ns` and waits for it.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    join(spawn_in(ns, f)?)
}

/// Joins a thread from [`spawn_in`], turning a panic into an error.
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    let name = h.thread().name().unwrap_or("?").to_owned();
    h.join().map_err(|_| anyhow!("thread {name} panicked"))?
}

/// Handed to a thread from [`spawn_ready`]: signal it once the thread is ready to serve
/// (sockets bound), so clients started afterwards find it listening.
#[derive(Debug)]
pub struct Ready(std::sync::mpsc::SyncSender<()>);

impl Ready {
    pub fn signal(self) {
        let _ = self.0.send(());
    }
}

/// Like [`spawn_in`], but returns only once `f` has called [`Ready::signal`] (or failed, in
/// which case its error is returned), waiting at most 10 s.
pub fn spawn_ready<T, F>(ns: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce(Ready) -> Result<T> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let h = spawn_in(ns, move || f(Ready(tx)))?;
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(()) => Ok(h),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match join(h) {
            Err(e) => Err(e),
            Ok(_) => bail!("server thread in namespace {ns} finished before it was ready"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            bail!("server thread in namespace {ns} was not ready within 10 s")
        }
    }
}

/// Deletes a namespace on drop: for tests and for half-built objects.
#[derive(Debug)]
pub struct NetnsGuard(pub String);

impl NetnsGuard {
    pub fn add(ns: &str) -> Result<Self> {
        add(ns)?;
        Ok(Self(ns.to_owned()))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.0) {
            eprintln!("twill-lab: cleaning up namespace {}: {e:#}", self.0);
        }
    }
}

/// Fails loudly when not root: the lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "twill-lab needs root (network namespaces, veth links, raw sockets); run it with sudo"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_namespace_names() {
        assert!(delete("default").is_err());
        assert!(add("x").is_err());
    }

    #[test]
    fn thread_runs_inside_namespace_and_sysctl_is_per_namespace() {
        require_root().expect("this test creates network namespaces and must run as root");
        let g = NetnsGuard::add("tw-unit-netns").unwrap();
        sysctl(&g.0, "net.ipv4.ip_forward", "1").unwrap();
        let inside = run_in(&g.0, || {
            Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?)
        })
        .unwrap();
        assert_eq!(inside.trim(), "1");
        // Only `lo` exists in a fresh namespace: proves the thread really moved.
        let dev = run_in(&g.0, || {
            Ok(std::fs::read_to_string("/proc/thread-self/net/dev")?)
        })
        .unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "{dev}");
        let mac = link_mac(&g.0, "lo").unwrap();
        assert_eq!(mac, "00:00:00:00:00:00");
    }
}
