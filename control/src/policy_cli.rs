//! `twill policy …`: policy answers computed offline by the compiled classifier the data
//! plane uses.
//!
//! - `explain`: the verdict on one connection between two pods (or addresses) of a state
//!   directory, and the policy and rule that decided each direction (or the default).
//! - `classify`: every header of a ClassBench trace against the ingress rules of one
//!   GlobalNetworkPolicy, first match wins: the 1-based index of the first Allow / Deny /
//!   Pass rule that matches (Log rules never decide), or 0.
//! - `from-classbench`: a ClassBench rule file as that GlobalNetworkPolicy (one Allow rule
//!   per line, in order).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use policy_engine::{
    classbench,
    classifier::Key,
    compiler::{PolicyCompiler, PolicyTables, key_of, key6_of},
    model::{Action, Direction, PolicyKind, parse_manifests, proto},
    reference::{self, Decision, IcmpFamily, Packet},
    world::World,
};
use serde_json::{Value, json};

use crate::{cluster::ClusterState, policy::PolicySync};

/// Source port `explain` gives a connection unless told otherwise (the start of Linux's
/// ephemeral range).
pub const DEFAULT_SRC_PORT: u16 = 32768;

/// Resolves `NS/POD` (the pod's first address of the family, IPv6 when `v6`) or an address.
fn endpoint_addr(cluster: &ClusterState, s: &str, v6: bool) -> Result<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Ok(ip);
    }
    let Some((ns, pod)) = s.split_once('/') else {
        bail!("{s:?} is neither NAMESPACE/POD nor an IP address");
    };
    let Some(p) = cluster.pods.get(&(ns.to_string(), pod.to_string())) else {
        let known: Vec<String> = cluster.pods.keys().map(|(n, p)| format!("{n}/{p}")).collect();
        bail!("no pod {s} in the state (pods there: {})", known.join(", "));
    };
    if v6 {
        return p.ips6.first().map(|a| IpAddr::V6(*a)).ok_or_else(|| anyhow!("pod {s} has no IPv6 address (status.podIPs) in the state"));
    }
    p.ips.first().map(|a| IpAddr::V4(*a)).ok_or_else(|| anyhow!("pod {s} has no IPv4 address (status.podIP) in the state"))
}

/// The first packet of the connection `q` asks about, between `src` and `dst`.
fn packet_of<A: IcmpFamily>(q: &ExplainQuery, src: A, dst: A) -> Result<Packet<A>> {
    Ok(match q.protocol {
        proto::ICMP | proto::ICMPV6 => {
            let icmp_type = u8::try_from(q.port).map_err(|_| anyhow!("--port {}: an ICMP type is 0..=255", q.port))?;
            Packet { protocol: q.protocol, ..Packet::icmp(src, dst, icmp_type, q.icmp_code) }
        }
        p => Packet { protocol: p, ..Packet::tcp(src, q.src_port, dst, q.port) },
    })
}

/// Parses `--proto`.
pub fn parse_protocol(s: &str) -> Result<u8, String> {
    proto::parse(s).ok_or_else(|| format!("{s:?} is not a protocol; accepted: TCP, UDP, SCTP, ICMP or a number 0..=255"))
}

/// What `explain` is asked.
#[derive(Debug, Clone)]
pub struct ExplainQuery {
    pub from: String,
    pub to: String,
    pub protocol: u8,
    /// Destination port (TCP, UDP, SCTP), or ICMP type for ICMP.
    pub port: u16,
    pub src_port: u16,
    /// ICMP code.
    pub icmp_code: u8,
}

/// The compiled tables of a cluster state (no pod is local: every address comes from the
/// manifests).
fn compile_state(cluster: &ClusterState) -> Result<std::sync::Arc<PolicyTables>> {
    let mut sync = PolicySync::new();
    Ok(sync.sync(cluster, &Default::default())?)
}

/// `twill policy explain`: the decision, and its JSON form.
pub fn explain(cluster: &ClusterState, q: &ExplainQuery) -> Result<(Decision, Value)> {
    // An IPv6 address on either side asks about IPv6; pods then answer with their IPv6 one.
    let v6 = [&q.from, &q.to].iter().any(|s| s.parse::<Ipv6Addr>().is_ok());
    let (src, dst) = (endpoint_addr(cluster, &q.from, v6)?, endpoint_addr(cluster, &q.to, v6)?);
    let tables = compile_state(cluster)?;
    let (d, src_port) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pkt = packet_of(q, s, d)?;
            (tables.explain(&key_of(&pkt)), pkt.src_port)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pkt = packet_of(q, s, d)?;
            (tables.explain6(&key6_of(&pkt)), pkt.src_port)
        }
        _ => bail!("--from {} ({src}) and --to {} ({dst}) are of different address families", q.from, q.to),
    };
    let v = json!({
        "verdict": d.verdict.to_string(),
        "from": {"name": q.from, "ip": src.to_string()},
        "to": {"name": q.to, "ip": dst.to_string()},
        "protocol": q.protocol,
        "src_port": src_port,
        "port": q.port,
        "egress": d.egress.as_ref().map(|e| e.to_json()),
        "ingress": d.ingress.as_ref().map(|e| e.to_json()),
    });
    Ok((d, v))
}

/// The human form of an explanation.
pub fn explain_text(d: &Decision, v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {} → {} ({}): {}", v["protocol"], v["from"]["name"].as_str().unwrap_or("?"), v["to"]["name"].as_str().unwrap_or("?"), v["port"], d.verdict.to_string().to_uppercase());
    for (what, dir) in [("egress of the source", &d.egress), ("ingress of the destination", &d.ingress)] {
        match dir {
            None => {
                let _ = writeln!(out, "  {what}: not a pod, not judged");
            }
            Some(dd) => {
                let _ = writeln!(out, "  {what} {}/{}: {} by {}", dd.endpoint.0, dd.endpoint.1, dd.verdict, dd.decided_by);
                if !dd.applied.is_empty() {
                    let _ = writeln!(out, "    policies applied, in order: {}", dd.applied.join(", "));
                }
                for l in &dd.logged {
                    let _ = writeln!(out, "    logged by {l}");
                }
            }
        }
    }
    out
}

/// The one GlobalNetworkPolicy of a file.
fn the_global_policy(path: &Path) -> Result<policy_engine::model::Policy> {
    let file = path.display().to_string();
    let text = policy_engine::dataset::read_text(path).map_err(|e| anyhow!(e))?;
    let mut policies = parse_manifests(&text, &file)?;
    match policies.len() {
        1 if policies[0].kind == PolicyKind::CalicoGlobalNetworkPolicy => Ok(policies.remove(0)),
        n => bail!("{file}: expected exactly one projectcalico.org/v3 GlobalNetworkPolicy, found {n} policies"),
    }
}

/// Which classifier `classify` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Compiled,
    Reference,
}

/// `twill policy classify`: the 1-based rule index for every trace line, and a summary.
pub fn classify(policy_file: &Path, trace_file: &Path, engine: Engine) -> Result<(Vec<usize>, Value)> {
    let policy = the_global_policy(policy_file)?;
    let trace_text = policy_engine::dataset::read_text(trace_file).map_err(|e| anyhow!(e))?;
    let trace = classbench::parse_trace(&trace_text).with_context(|| format!("{}", trace_file.display()))?;
    let keys: Vec<Key> = trace.iter().map(|e| e.key).collect();
    let started = Instant::now();
    let answers: Vec<Option<(usize, Action)>>;
    let compile_ms;
    let lookup_secs;
    match engine {
        Engine::Compiled => {
            let mut c = PolicyCompiler::new();
            let id = policy.id_key();
            c.upsert_policy(policy)?;
            let rs = c.rule_set(Direction::Ingress, &[id])?;
            compile_ms = started.elapsed().as_secs_f64() * 1e3;
            let tables = PolicyTables::default();
            let mut out = vec![None; keys.len()];
            let t = Instant::now();
            rs.classify_batch(&tables, &keys, &mut out);
            lookup_secs = t.elapsed().as_secs_f64();
            answers = out.iter().map(|o| o.map(|e| (rs.rule_ref(e).source_rule + 1, rs.action(e)))).collect();
        }
        Engine::Reference => {
            compile_ms = 0.0;
            let world = World::new();
            let t = Instant::now();
            answers = keys
                .iter()
                .map(|k| {
                    let pkt = Packet {
                        src_ip: Ipv4Addr::from(k.src),
                        dst_ip: Ipv4Addr::from(k.dst),
                        protocol: k.proto,
                        src_port: k.src_port,
                        dst_port: k.dst_port,
                        icmp_type: None,
                        icmp_code: None,
                    };
                    policy
                        .ingress
                        .iter()
                        .find(|r| r.action != Action::Log && reference::rule_matches(r, &pkt, &world, None))
                        .map(|r| (r.source_rule + 1, r.action))
                })
                .collect();
            lookup_secs = t.elapsed().as_secs_f64();
        }
    }
    let mut counts = serde_json::Map::new();
    for a in &answers {
        let k = match a {
            Some((_, Action::Allow)) => "allow",
            Some((_, Action::Deny)) => "deny",
            Some((_, Action::Pass)) => "pass",
            Some((_, Action::Log)) => "log",
            None => "no_match",
        };
        let e = counts.entry(k).or_insert(json!(0));
        *e = json!(e.as_u64().unwrap_or(0) + 1);
    }
    let summary = json!({
        "engine": match engine { Engine::Compiled => "compiled", Engine::Reference => "reference" },
        "rules": policy_rules(policy_file)?,
        "lookups": keys.len(),
        "counts": counts,
        "compile_ms": compile_ms,
        "lookups_per_second": if lookup_secs > 0.0 { keys.len() as f64 / lookup_secs } else { 0.0 },
    });
    Ok((answers.iter().map(|a| a.map_or(0, |(i, _)| i)).collect(), summary))
}

fn policy_rules(path: &Path) -> Result<usize> {
    Ok(the_global_policy(path)?.ingress.iter().map(|r| r.source_rule).max().map_or(0, |m| m + 1))
}

/// `twill policy from-classbench`: the rule file as a GlobalNetworkPolicy named `name`.
pub fn from_classbench(rules_file: &Path, name: &str) -> Result<String> {
    let text = policy_engine::dataset::read_text(rules_file).map_err(|e| anyhow!(e))?;
    let mut out = format!(
        "# {} rules of {}, first match wins.\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  selector: all()\n  types: [Ingress]\n  ingress:\n",
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        rules_file.display()
    );
    let nets = |p: &[(u32, u8)]| p.iter().map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(*a))).collect::<Vec<_>>();
    let ports = |p: &[(u16, u16)]| p.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("'{a}:{b}'") }).collect::<Vec<_>>();
    let mut line_no = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        line_no += 1;
        let r = classbench::parse_rule(i + 1, line).with_context(|| format!("{}", rules_file.display()))?;
        let protocol = match r.protocols.as_slice() {
            [] => None,
            [p] => Some(*p),
            _ => bail!("{} line {}: a protocol mask that matches several protocols has no Calico form", rules_file.display(), i + 1),
        };
        let has_ports = !r.src_ports.is_empty() || !r.dst_ports.is_empty();
        if has_ports && !protocol.is_some_and(proto::has_ports) {
            bail!("{} line {}: ports without TCP, UDP, SCTP or UDP-Lite have no Calico form", rules_file.display(), i + 1);
        }
        let _ = writeln!(out, "  - action: Allow  # rule {line_no}");
        if let Some(p) = protocol {
            let _ = writeln!(out, "    protocol: {p}");
        }
        for (side, n, p) in [("source", &r.src, &r.src_ports), ("destination", &r.dst, &r.dst_ports)] {
            let (n, p) = (nets(n), ports(p));
            if n.is_empty() && p.is_empty() {
                continue;
            }
            let _ = writeln!(out, "    {side}:");
            if !n.is_empty() {
                let _ = writeln!(out, "      nets: [{}]", n.join(", "));
            }
            if !p.is_empty() {
                let _ = writeln!(out, "      ports: [{}]", p.join(", "));
            }
        }
    }
    Ok(out)
}
