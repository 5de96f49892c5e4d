//! The agent's local API on a Unix socket (docs/agent-api.md): one JSON request per
//! connection, one JSON answer. Used by `twill-cni`, `twill stats` and `twill get`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::agent::Agent;

/// Binds `path` (replacing a stale socket file) and serves requests on a thread each.
pub fn serve(path: &Path, agent: Arc<Mutex<Agent>>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding the API socket {}", path.display()))?;
    std::thread::Builder::new().name("twill-api".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let agent = Arc::clone(&agent);
            let _ = std::thread::Builder::new().name("twill-api-conn".into()).spawn(move || handle(conn, &agent));
        }
    })?;
    Ok(())
}

fn handle(conn: UnixStream, agent: &Mutex<Agent>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let answer = match BufReader::new(&conn).read_line(&mut line) {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Value>(&line) {
            Ok(req) => dispatch(&req, agent),
            Err(e) => Err(anyhow::anyhow!("request is not JSON: {e}")),
        },
        Err(e) => Err(anyhow::anyhow!("reading the request: {e}")),
    };
    let mut out = match answer {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v
        }
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    };
    if !out.is_object() {
        out = json!({"ok": true});
    }
    // One write: a Value's Display writes token by token, a syscall (and an skb) each.
    let mut w = &conn;
    let _ = w.write_all(format!("{out}\n").as_bytes());
}

fn field<'a>(req: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    req.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("request field {name:?} is missing or not a non-empty string"))
}

fn dispatch(req: &Value, agent: &Mutex<Agent>) -> anyhow::Result<Value> {
    let op = field(req, "op")?;
    let mut a = agent.lock().map_err(|_| anyhow::anyhow!("agent state is poisoned"))?;
    match op {
        "allocate" => a.allocate(
            field(req, "container_id")?,
            req.get("namespace").and_then(Value::as_str).unwrap_or("default"),
            req.get("pod").and_then(Value::as_str).unwrap_or(""),
            req.get("ifname").and_then(Value::as_str).unwrap_or("eth0"),
        ),
        "attach" => {
            a.attach(field(req, "container_id")?, field(req, "host_ifname")?, field(req, "pod_mac")?)?;
            Ok(json!({}))
        }
        "release" => Ok(json!({"released": a.release(field(req, "container_id")?)?})),
        "stats" => Ok(a.stats()),
        "get" => Ok(json!({"items": a.get(field(req, "kind")?)?})),
        other => anyhow::bail!("unknown op {other:?}; accepted: allocate, attach, release, stats, get"),
    }
}

/// Sends one request to the agent at `path` and returns its answer (an error when the
/// agent says `ok: false`).
pub fn request(path: &Path, req: &Value) -> anyhow::Result<Value> {
    let mut conn = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the twill agent at {} (is `twill agent` running?)", path.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(conn, "{req}")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("the agent's answer is not JSON: {line:?}"))?;
    if v["ok"] != json!(true) {
        anyhow::bail!("agent: {}", v["error"].as_str().unwrap_or("unknown error"));
    }
    Ok(v)
}
