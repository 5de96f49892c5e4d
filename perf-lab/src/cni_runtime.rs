//! Calling `twill-cni` the way a container runtime does (CNI spec 1.0.0, "Execution
//! protocol"): parameters in `CNI_*` environment variables, the network configuration on
//! stdin, the result (or a structured error) on stdout. The plugin runs inside the node's
//! namespace (`ip netns exec`), as kubelet's runtime would run it on the node.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::process::run_timeout;

/// The network name in the configuration the lab hands the plugin.
pub const NETWORK_NAME: &str = "twill";
pub const CNI_VERSION: &str = "1.0.0";
/// A plugin call that takes longer than this is killed and reported.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One pod's parameters for the plugin.
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    pub plugin: &'a Path,
    pub cni_path: PathBuf,
    pub node_ns: &'a str,
    pub socket: &'a Path,
    pub container_id: &'a str,
    pub netns: PathBuf,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
}

/// The network configuration on stdin (`prevResult` for DEL when the ADD result is known).
pub fn netconf(socket: &Path, prev_result: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "twill-cni",
        "socket": socket.display().to_string(),
    });
    if let Some(p) = prev_result {
        c["prevResult"] = p.clone();
    }
    c
}

fn invoke(call: &CniCall<'_>, command: &str, conf: &Value) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", call.node_ns])
        .arg(call.plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", &call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", &call.cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                call.pod_namespace, call.pod_name
            ),
        );
    let what = format!(
        "CNI {command} of pod {}/{} (container {}) with {} in namespace {}",
        call.pod_namespace,
        call.pod_name,
        call.container_id,
        call.plugin.display(),
        call.node_ns
    );
    let out = run_timeout(&mut cmd, Some(conf.to_string().as_bytes()), CALL_TIMEOUT)
        .with_context(|| what.clone())?;
    if !out.status.success() {
        // The spec's error object: {"cniVersion", "code", "msg", "details"}.
        let detail = match serde_json::from_str::<Value>(out.stdout.trim()) {
            Ok(e) if e.get("code").is_some() => format!(
                "error code {}: {} {}",
                e["code"],
                e.get("msg").and_then(Value::as_str).unwrap_or(""),
                e.get("details").and_then(Value::as_str).unwrap_or("")
            ),
            _ => format!("stdout: {}", out.stdout.trim()),
        };
        bail!(
            "{what} failed ({}): {detail}; stderr: {}",
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// What ADD gave a pod.
#[derive(Debug, Clone)]
pub struct Added {
    pub ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address.
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The plugin's whole result, kept for DEL's `prevResult`.
    pub result: Value,
}

/// CNI ADD; the pod's address is taken from the result.
pub fn add(call: &CniCall<'_>) -> Result<Added> {
    let stdout = invoke(call, "ADD", &netconf(call.socket, None))?;
    let result: Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "CNI ADD of {} printed a result that is not JSON: {stdout:?}",
            call.pod_name
        )
    })?;
    let ip = pod_ipv4(&result, &call.netns).with_context(|| {
        format!(
            "CNI ADD result for pod {}/{}",
            call.pod_namespace, call.pod_name
        )
    })?;
    let ip6 = result["ips"].as_array().into_iter().flatten().find_map(|e| e["address"].as_str()?.split('/').next()?.parse().ok());
    Ok(Added { ip, ip6, result })
}

/// CNI DEL (idempotent on the plugin's side).
pub fn del(call: &CniCall<'_>, prev_result: Option<&Value>) -> Result<()> {
    invoke(call, "DEL", &netconf(call.socket, prev_result)).map(drop)
}

/// The pod's IPv4 address in a 1.0.0 result: the first `ips` entry whose `interface` index
/// names an interface in the pod's sandbox (or has no index), else the first IPv4 entry.
pub fn pod_ipv4(result: &Value, sandbox: &Path) -> Result<Ipv4Addr> {
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no `ips` array in {result}"))?;
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |entry: &Value| match (entry.get("interface").and_then(Value::as_u64), ifaces)
    {
        (Some(i), Some(ifs)) => ifs
            .get(i as usize)
            .and_then(|f| f.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| Path::new(s) == sandbox),
        _ => true,
    };
    let v4 = |entry: &Value| -> Option<Ipv4Addr> {
        let a = entry.get("address")?.as_str()?;
        a.split('/').next()?.parse().ok()
    };
    ips.iter()
        .filter(|e| in_sandbox(e))
        .find_map(v4)
        .or_else(|| ips.iter().find_map(v4))
        .ok_or_else(|| anyhow!("no IPv4 address in `ips` of {result}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netconf_shape() {
        let c = netconf(Path::new("/run/twill-lab/n1/twill.sock"), None);
        assert_eq!(
            c,
            json!({"cniVersion":"1.0.0","name":"twill","type":"twill-cni","socket":"/run/twill-lab/n1/twill.sock"})
        );
        let d = netconf(Path::new("/s"), Some(&json!({"ips": []})));
        assert_eq!(d["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn ip_from_result_prefers_sandbox_interface() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "tw0123456789a", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/tw-n1-p1"}
            ],
            "ips": [
                {"address": "fd00::2/128", "interface": 1},
                {"address": "10.99.0.1/32", "interface": 0},
                {"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1}
            ]
        });
        let ip = pod_ipv4(&r, Path::new("/var/run/netns/tw-n1-p1")).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 244, 1, 2));
    }

    #[test]
    fn ip_from_minimal_result_and_errors() {
        let r = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.2.7/32"}]});
        assert_eq!(
            pod_ipv4(&r, Path::new("/x")).unwrap(),
            Ipv4Addr::new(10, 244, 2, 7)
        );
        assert!(pod_ipv4(&json!({"cniVersion":"1.0.0"}), Path::new("/x")).is_err());
        assert!(pod_ipv4(&json!({"ips":[{"address":"fd00::1/128"}]}), Path::new("/x")).is_err());
    }
}
