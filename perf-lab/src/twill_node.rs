//! A node run by twill: `twill agent` started inside the node namespace, detached from the
//! lab (its own session, stdout/stderr to the node's log file, a pid file), with a bpffs
//! mounted in the mount namespace `ip netns exec` gives it; readiness is an answered
//! `{"op":"stats"}` on its socket (docs/agent-api.md); VTEP MACs come from
//! `twill get nodes --json`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::process::{describe, run};

/// How long an agent may take to answer its first `stats`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The twill binaries the lab runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binaries {
    pub twill: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    /// Finds `twill` and `twill-cni`: `$TWILL_BIN_DIR`, then beside the current executable
    /// (and its parent when that is cargo's `deps/`), then `$PATH`.
    pub fn locate() -> Result<Self> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("TWILL_BIN_DIR") {
            dirs.push(d.into());
        }
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            if let Some(p) = d
                .parent()
                .filter(|_| d.file_name().is_some_and(|n| n == "deps"))
            {
                dirs.push(p.to_path_buf());
            }
            dirs.push(d);
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p));
        match (find("twill"), find("twill-cni")) {
            (Some(twill), Some(cni)) => Ok(Self { twill, cni }),
            (t, c) => {
                let missing: Vec<&str> = [("twill", t.is_none()), ("twill-cni", c.is_none())]
                    .into_iter()
                    .filter_map(|(n, m)| m.then_some(n))
                    .collect();
                bail!(
                    "cannot find {} (looked in $TWILL_BIN_DIR, beside {} and on $PATH); \
                     build them with `cargo build --release` and run the twill-lab from the same target directory",
                    missing.join(" and "),
                    std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            }
        }
    }

    /// The directory given to plugins as `CNI_PATH`.
    pub fn cni_dir(&self) -> PathBuf {
        self.cni
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where one node's agent keeps its things.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentFiles {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl AgentFiles {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            socket: dir.join("twill.sock"),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            pid_file: dir.join("agent.pid"),
            dir,
        }
    }
}

/// What `twill agent` is started with, beyond the per-node paths.
#[derive(Debug, Clone)]
pub struct AgentConfig<'a> {
    pub manifests: &'a Path,
    pub node: &'a str,
    pub cores: &'a str,
    pub encap: Option<&'a str>,
    /// `--idle`; the agent's default when `None`.
    pub idle: Option<&'a str>,
    /// `--frames`; the agent's default when `None`.
    pub frames: Option<u32>,
    /// `--pipeline` (full or ceiling); the agent's default when `None`.
    pub pipeline: Option<&'a str>,
    /// `--routes FILE`: networks outside the cluster.
    pub routes: Option<&'a Path>,
}

/// Starts `twill agent` in node namespace `ns`, detached; returns its pid (also written to
/// the pid file). `setsid` and `sh -c 'exec …'` exec in place, so the pid is the agent's.
pub fn start_agent(
    bins: &Binaries,
    ns: &str,
    files: &AgentFiles,
    cfg: &AgentConfig<'_>,
) -> Result<u32> {
    std::fs::create_dir_all(&files.state_dir)
        .with_context(|| format!("creating {}", files.state_dir.display()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .with_context(|| format!("opening {}", files.log.display()))?;
    let mut cmd = Command::new("setsid");
    cmd.args(["ip", "netns", "exec", ns, "sh", "-c"])
        .arg("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || exit 97; exec \"$@\"")
        .arg("twill-agent")
        .arg(&bins.twill)
        .arg("agent")
        .arg("--datastore")
        .arg(format!("dir:{}", cfg.manifests.display()))
        .args(["--node", cfg.node, "--uplink", "eth0", "--cores", cfg.cores])
        .arg("--socket")
        .arg(&files.socket)
        .arg("--state-dir")
        .arg(&files.state_dir);
    if let Some(e) = cfg.encap {
        cmd.args(["--encap", e]);
    }
    if let Some(i) = cfg.idle {
        cmd.args(["--idle", i]);
    }
    if let Some(f) = cfg.frames {
        cmd.args(["--frames", &f.to_string()]);
    }
    if let Some(p) = cfg.pipeline {
        cmd.args(["--pipeline", p]);
    }
    if let Some(r) = cfg.routes {
        cmd.arg("--routes").arg(r);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let line = describe(&cmd);
    writeln!(&log, "# twill-lab: {line}").ok();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start `{line}` for node {}", cfg.node))?;
    let pid = child.id();
    // The child is deliberately not waited for here: it outlives `twill-lab up`.
    drop(child);
    std::fs::write(&files.pid_file, format!("{pid}\n"))
        .with_context(|| format!("writing {}", files.pid_file.display()))?;
    Ok(pid)
}

/// One request on the agent's socket (one JSON line each way), with a timeout.
pub fn request(socket: &Path, req: &Value, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{req}\n").as_bytes())
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .with_context(|| format!("reading the answer from {}", socket.display()))?;
    let v: Value = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "{} answered with something that is not JSON: {line:?}",
            socket.display()
        )
    })?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        bail!("{} answered {req} with {v}", socket.display());
    }
    Ok(v)
}

/// Whether process `pid` is alive (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// What an agent that exited printed of its error: from its last `Error:` line (anyhow's
/// report: the message and its causes) up to the backtrace that `RUST_BACKTRACE` adds; the
/// last `n` lines of its log when it printed none.
pub fn exit_report(path: &Path, n: usize) -> String {
    let tail = log_tail(path, n);
    let Ok(log) = std::fs::read_to_string(path) else { return tail };
    let Some(start) = log.rfind("\nError: ").map(|i| i + 1).or_else(|| log.starts_with("Error: ").then_some(0)) else { return tail };
    let report = &log[start..];
    let end = report.find("\nStack backtrace:").unwrap_or(report.len());
    report[..end].trim_end().to_owned()
}

/// Waits until the agent answers `stats`, failing early if it exits.
pub fn wait_ready(node: &str, pid: u32, files: &AgentFiles, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = anyhow!("socket {} not created yet", files.socket.display());
    loop {
        if files.socket.exists() {
            match request(
                &files.socket,
                &json!({"op": "stats"}),
                Duration::from_secs(2),
            ) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        if !alive(pid) {
            bail!(
                "twill agent of node {node} (pid {pid}) exited before answering on {}; from {}:\n{}",
                files.socket.display(),
                files.log.display(),
                exit_report(&files.log, 30)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "twill agent of node {node} (pid {pid}) did not answer {{\"op\":\"stats\"}} on {} within {timeout:?} \
                 (last: {last:#}); last lines of {}:\n{}",
                files.socket.display(),
                files.log.display(),
                log_tail(&files.log, 30)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A node as `twill get nodes --json` lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TwillNode {
    pub name: String,
    #[serde(default)]
    pub pod_cidr: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub vtep_mac: Option<String>,
}

/// `twill get nodes --socket SOCK --json`.
pub fn get_nodes(bins: &Binaries, socket: &Path) -> Result<Vec<TwillNode>> {
    let out = run(Command::new(&bins.twill)
        .args(["get", "nodes", "--socket"])
        .arg(socket)
        .arg("--json"))?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| {
        format!("`twill get nodes --json` printed something that is not JSON: {out:?}")
    })?;
    // The contract is a JSON array; accept the socket's `{"items": [...]}` shape too.
    let items = v.get("items").cloned().unwrap_or(v);
    serde_json::from_value(items)
        .with_context(|| format!("`twill get nodes --json` is not a list of nodes: {out}"))
}

/// Polls the agent on `socket` until it lists `node` with a VTEP MAC.
pub fn wait_vtep_mac(
    bins: &Binaries,
    socket: &Path,
    node: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get_nodes(bins, socket) {
            Ok(nodes) => match nodes
                .iter()
                .find(|n| n.name == node)
                .and_then(|n| n.vtep_mac.clone())
            {
                Some(mac) if !mac.is_empty() => return Ok(mac),
                _ => anyhow!("node {node} not listed with a vtep_mac: {nodes:?}"),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!(
                "no VTEP MAC for node {node} from the agent on {}",
                socket.display()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the agent whose pid is in `pid_file`: SIGTERM, up to 5 s, then SIGKILL. Only a
/// process whose command line names twill is signalled (pids get reused).
pub fn stop_agent(pid_file: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid: {text:?}", pid_file.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !alive(pid) || !String::from_utf8_lossy(&cmdline).contains("twill") {
        return Ok(());
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            bail!("twill agent pid {pid} survived SIGKILL");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_files_layout() {
        let f = AgentFiles::new(PathBuf::from("/run/twill-lab/n1"));
        assert_eq!(f.socket, Path::new("/run/twill-lab/n1/twill.sock"));
        assert_eq!(f.state_dir, Path::new("/run/twill-lab/n1/state"));
    }

    #[test]
    fn an_exited_agents_error_is_reported_without_its_backtrace() {
        let dir = std::env::temp_dir().join(format!("twill-lab-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("agent.log");
        let lines: Vec<String> = (0..40).map(|i| format!("   {i}: frame")).collect();
        std::fs::write(&log, format!("# started\nError: --frames 1024 is too few\n\nCaused by:\n    x\n\nStack backtrace:\n{}\n", lines.join("\n"))).unwrap();
        assert_eq!(exit_report(&log, 30), "Error: --frames 1024 is too few\n\nCaused by:\n    x");
        // No error line (a panic, a signal): the log's tail.
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(exit_report(&log, 2), "b\nc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nodes_parse_from_contract_shape() {
        let v = json!([{"name":"n1","pod_cidr":"10.244.1.0/24","address":"10.100.0.11","vtep_mac":"02:00:0a:64:00:0b","vtep_mac_source":"derived"}]);
        let n: Vec<TwillNode> = serde_json::from_value(v).unwrap();
        assert_eq!(n[0].vtep_mac.as_deref(), Some("02:00:0a:64:00:0b"));
    }

    #[test]
    fn request_round_trip_and_refusal() {
        let dir = std::env::temp_dir().join(format!("twill-lab-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("a.sock");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let h = thread::spawn(move || {
            for answer in [
                r#"{"ok":true,"stats":{}}"#,
                r#"{"ok":false,"error":"nope"}"#,
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                assert_eq!(line, "{\"op\":\"stats\"}\n");
                s.write_all(format!("{answer}\n").as_bytes()).unwrap();
            }
        });
        assert!(request(&sock, &json!({"op":"stats"}), Duration::from_secs(2)).is_ok());
        let e = request(&sock, &json!({"op":"stats"}), Duration::from_secs(2)).unwrap_err();
        assert!(format!("{e}").contains("nope"));
        h.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dead_pid_is_not_alive() {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
    }
}
