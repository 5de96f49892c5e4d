//! Tearing a lab down, also one that `up` left half-built: CNI DEL for twill pods (while
//! their agents still answer), agents stopped (SIGTERM, then SIGKILL), every `tw-` namespace
//! deleted, stray `tw-` links in the root namespace deleted, `/run/twill-lab` removed. Every
//! step runs even when an earlier one failed; the errors are reported together.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::cni_runtime;
use crate::netns;
use crate::topology::{LAB_DIR, LabState, cni_call, load_state};
use crate::twill_node;

/// `twill-lab down`: tears down whatever lab exists, from lab.json when it is readable and
/// from what is found (pid files, `tw-` namespaces) when it is not.
pub fn down_all() -> Result<()> {
    netns::require_root()?;
    let state = match load_state() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twill-lab: {e:#}; cleaning up from what exists");
            None
        }
    };
    teardown(state.as_ref())
}

/// CNI DEL for twill pods, stop agents, delete `tw-` namespaces and links, remove LAB_DIR.
/// Every step runs even when an earlier one failed; the errors are reported together.
pub(crate) fn teardown(state: Option<&LabState>) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    if let Some(state) = state {
        for pod in state
            .pods
            .iter()
            .filter(|p| p.container_id.is_some() && netns::exists(&p.netns))
        {
            let res = cni_call(state, pod)
                .and_then(|call| cni_runtime::del(&call, pod.cni_result.as_ref()));
            if let Err(e) = res {
                errors.push(format!("{e:#}"));
            }
        }
    }
    let mut pid_files: Vec<PathBuf> = state
        .into_iter()
        .flat_map(|s| {
            s.nodes
                .iter()
                .filter_map(|n| n.agent.as_ref().map(|a| a.files.pid_file.clone()))
        })
        .collect();
    if let Ok(rd) = std::fs::read_dir(LAB_DIR) {
        for e in rd.flatten() {
            let p = e.path().join("agent.pid");
            if p.exists() && !pid_files.contains(&p) {
                pid_files.push(p);
            }
        }
    }
    for p in &pid_files {
        if let Err(e) = twill_node::stop_agent(p) {
            errors.push(format!("{e:#}"));
        }
    }
    // Pods first, then nodes, then the underlay: veth peers go with their namespace.
    let mut names = netns::list_lab();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for ns in names {
        if let Err(e) = netns::delete(&ns) {
            errors.push(format!("{e:#}"));
        }
    }
    for link in root_lab_links() {
        if let Err(e) = crate::process::run_args("ip", &["link", "del", &link]) {
            errors.push(format!("{e:#}"));
        }
    }
    match std::fs::remove_dir_all(LAB_DIR) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.push(format!("removing {LAB_DIR}: {e}"))
        }
        _ => {}
    }
    let left = netns::list_lab();
    if !left.is_empty() {
        errors.push(format!("namespaces still present: {}", left.join(", ")));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("teardown left errors:\n  {}", errors.join("\n  "))
    }
}

/// Links named `tw-*` in the root namespace (the lab makes none; a failed run might).
fn root_lab_links() -> Vec<String> {
    let Ok(out) = crate::process::run_args("ip", &["-j", "link", "show"]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str))
        .filter(|n| n.starts_with(netns::PREFIX))
        .map(str::to_owned)
        .collect()
}
