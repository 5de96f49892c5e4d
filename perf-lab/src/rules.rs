//! The same policy rules for every data path of the rules sweep: real ClassBench rules
//! (acl1, then fw1, then ipc1, 10k sets; see ../shared/data/README.md) that never match the
//! lab's pod-to-pod traffic, each a Deny, ending in an Allow — given to twill as one Calico
//! `GlobalNetworkPolicy` (ingress, every pod) and to the kernel-calico node as an nftables
//! chain in the forward path, in front of the packets to local pods, after the
//! `ct state established,related accept` that Felix's iptables chains also start with.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use policy_engine::classbench;
use policy_engine::classifier::ClassRule;

use crate::netns;

/// Every lab pod address is in here; a rule whose source and destination both overlap it
/// could match the measured traffic and is left out.
const LAB_PODS: (u32, u8) = (u32::from_be_bytes([10, 244, 0, 0]), 16);
const SETS: [&str; 3] = ["classbench/acl1_10k.gz", "classbench/fw1_10k.gz", "classbench/ipc1_10k.gz"];
pub const TABLE: &str = "twill_lab_policy";

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// A rule the sweep can use: one protocol or none, ports only with TCP or UDP, and it
/// cannot match traffic between two lab pods.
fn usable(r: &ClassRule) -> bool {
    let proto_ok = match r.protocols[..] {
        [] | [1] => r.src_ports.is_empty() && r.dst_ports.is_empty(),
        [6] | [17] => true,
        _ => false,
    };
    let any = (0, 0);
    let src = r.src.first().copied().unwrap_or(any);
    let dst = r.dst.first().copied().unwrap_or(any);
    proto_ok && r.src.len() <= 1 && r.dst.len() <= 1 && !(overlaps(src, LAB_PODS) && overlaps(dst, LAB_PODS))
}

/// The first `n` usable rules of the ClassBench sets, in their order.
pub fn classbench_rules(n: usize) -> Result<Vec<ClassRule>> {
    let mut out = Vec::with_capacity(n);
    for set in SETS {
        if out.len() >= n {
            break;
        }
        let text = policy_engine::dataset::read(set).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("the rules sweep needs {set}"))?;
        let rules = classbench::parse_rules(&text).with_context(|| format!("parsing {set}"))?;
        out.extend(rules.into_iter().filter(usable).take(n - out.len()));
    }
    if out.len() < n {
        bail!("only {} usable ClassBench rules, {n} asked for", out.len());
    }
    Ok(out)
}

fn cidr((addr, len): (u32, u8)) -> String {
    format!("{}/{len}", Ipv4Addr::from(addr))
}

fn proto_name(r: &ClassRule) -> Option<&'static str> {
    match r.protocols[..] {
        [1] => Some("icmp"),
        [6] => Some("tcp"),
        [17] => Some("udp"),
        _ => None,
    }
}

/// The rules as one Calico GlobalNetworkPolicy: each a Deny on ingress to every pod, then
/// an Allow.
pub fn calico_policy(rules: &[ClassRule]) -> String {
    let mut s = String::from("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: classbench}\nspec:\n  order: 100\n  selector: all()\n  types: [Ingress]\n  ingress:\n");
    for r in rules {
        s.push_str("  - action: Deny\n");
        if let Some(p) = proto_name(r) {
            let _ = writeln!(s, "    protocol: {}", p.to_uppercase());
        }
        for (side, nets, ports) in [("source", &r.src, &r.src_ports), ("destination", &r.dst, &r.dst_ports)] {
            if nets.is_empty() && ports.is_empty() {
                continue;
            }
            let _ = writeln!(s, "    {side}:");
            if let Some(&n) = nets.first() {
                let _ = writeln!(s, "      nets: [{}]", cidr(n));
            }
            if let Some(&(lo, hi)) = ports.first() {
                let _ = writeln!(s, "      ports: [\"{lo}:{hi}\"]");
            }
        }
    }
    s.push_str("  - action: Allow\n");
    s
}

/// The rules as an nftables script: a forward-hook chain that accepts established traffic
/// and traffic not headed for a local pod, then drops on each rule.
pub fn nft_script(rules: &[ClassRule]) -> String {
    let mut s = format!(
        "table ip {TABLE} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    oifname {{ \"eth0\", \"vxlan.calico\" }} accept\n"
    );
    for r in rules {
        s.push_str("    ");
        if let Some(&n) = r.src.first() {
            let _ = write!(s, "ip saddr {} ", cidr(n));
        }
        if let Some(&n) = r.dst.first() {
            let _ = write!(s, "ip daddr {} ", cidr(n));
        }
        if let Some(p) = proto_name(r) {
            let _ = write!(s, "meta l4proto {p} ");
            for (dir, ports) in [("sport", &r.src_ports), ("dport", &r.dst_ports)] {
                if let Some(&(lo, hi)) = ports.first() {
                    let _ = write!(s, "{p} {dir} {lo}-{hi} ");
                }
            }
        }
        s.push_str("drop\n");
    }
    s.push_str("  }\n}\n");
    s
}

/// Loads `script` into node namespace `ns` (replacing an earlier one).
pub fn load_nft(ns: &str, script: &str) -> Result<()> {
    let _ = netns::exec(ns, "nft", &["delete", "table", "ip", TABLE]);
    let file = std::env::temp_dir().join(format!("twill-lab-{ns}.nft"));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let r = netns::exec(ns, "nft", &["-f", &file.display().to_string()]).with_context(|| format!("loading {} nftables rules in {ns} (is nftables installed? scripts/setup installs it)", script.lines().count()));
    let _ = std::fs::remove_file(&file);
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_rules_none_of_which_match_lab_traffic() {
        let rules = classbench_rules(10_000).expect("the ClassBench sets of ../shared/data");
        assert_eq!(rules.len(), 10_000);
        let pod = |o: u8| u32::from_be_bytes([10, 244, o, 2]);
        for r in &rules {
            let hit = |nets: &Vec<(u32, u8)>, a: u32| nets.first().is_none_or(|&n| overlaps(n, (a, 32)));
            assert!(!(hit(&r.src, pod(1)) && hit(&r.dst, pod(2))), "{r:?} matches lab traffic");
        }
    }

    #[test]
    fn both_renderings_carry_every_rule() {
        let rules = classbench_rules(100).unwrap();
        let yaml = calico_policy(&rules);
        assert_eq!(yaml.matches("action: Deny").count(), 100);
        assert!(yaml.trim_end().ends_with("- action: Allow"));
        let cp: policy_engine::calico::CalicoPolicy = serde_yaml::from_str(&yaml).expect("a Calico policy");
        let p = policy_engine::calico::from_calico(&cp).expect("twill accepts it");
        assert_eq!(p.ingress.len(), 101, "{p:?}");
        let nft = nft_script(&rules);
        assert_eq!(nft.matches(" drop\n").count(), 100);
    }

    #[test]
    fn prefixes_overlap_when_one_contains_the_other() {
        assert!(overlaps((u32::from_be_bytes([10, 0, 0, 0]), 8), LAB_PODS));
        assert!(overlaps((0, 0), LAB_PODS));
        assert!(!overlaps((u32::from_be_bytes([10, 245, 0, 0]), 16), LAB_PODS));
    }
}
