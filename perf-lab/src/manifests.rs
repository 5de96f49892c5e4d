//! The Kubernetes objects the lab writes into the manifest directory the agents watch
//! (`twill agent --datastore dir:PATH`): one YAML file per object, written atomically
//! (temporary dot-file, then rename) so a watcher never reads half a file.
//!
//! A Node carries `spec.podCIDR` and its InternalIP; a kernel-flannel node also carries the
//! annotations flanneld publishes for its vxlan backend, a kernel-calico node those
//! calico-node publishes (address and subnet, VXLAN MAC and tunnel address), which is how
//! twill nodes learn their VTEP MACs. A Pod is written before CNI ADD (as the API server has it when kubelet calls the
//! plugin) and rewritten with `status.podIP` after, as kubelet reports it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// flanneld's vxlan-backend identity of a node.
#[derive(Debug, Clone)]
pub struct FlannelBackend {
    pub vtep_mac: String,
    pub public_ip: Ipv4Addr,
}

/// calico-node's VXLAN identity of a node, as it annotates the Kubernetes Node.
#[derive(Debug, Clone)]
pub struct CalicoNode {
    pub vtep_mac: String,
    /// The node's address with its underlay prefix length (`10.100.0.13/24`).
    pub address: String,
    pub vxlan_tunnel_addr: Ipv4Addr,
    /// Dual stack: the node's IPv6 address with its prefix length and its
    /// `vxlan-v6.calico` MAC.
    pub v6: Option<(String, String)>,
}

/// Who published a node's identity besides its Node spec and status.
#[derive(Debug, Clone)]
pub enum KernelNode {
    Flannel(FlannelBackend),
    Calico(CalicoNode),
}

pub fn node(
    name: &str,
    (pod_cidr, pod_cidr6): (&str, Option<&str>),
    (address, address6): (Ipv4Addr, Option<Ipv6Addr>),
    kernel: Option<&KernelNode>,
) -> Result<String> {
    let mut metadata = json!({
        "name": name,
        "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" },
    });
    match kernel {
        Some(KernelNode::Flannel(f)) => {
            let backend_data = json!({ "VNI": 1, "VtepMAC": f.vtep_mac }).to_string();
            metadata["annotations"] = json!({
                "flannel.alpha.coreos.com/backend-data": backend_data,
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": f.public_ip.to_string(),
            });
        }
        Some(KernelNode::Calico(c)) => {
            metadata["annotations"] = json!({
                "projectcalico.org/IPv4Address": c.address,
                "projectcalico.org/VXLANTunnelMACAddr": c.vtep_mac,
                "projectcalico.org/IPv4VXLANTunnelAddr": c.vxlan_tunnel_addr.to_string(),
            });
            if let Some((a6, mac6)) = &c.v6 {
                metadata["annotations"]["projectcalico.org/IPv6Address"] = json!(a6);
                metadata["annotations"]["projectcalico.org/VXLANTunnelMACAddrV6"] = json!(mac6);
            }
        }
        None => {}
    }
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": { "podCIDR": pod_cidr, "podCIDRs": std::iter::once(pod_cidr).chain(pod_cidr6).collect::<Vec<_>>() },
        "status": {
            "addresses": std::iter::once(json!({ "type": "InternalIP", "address": address.to_string() }))
                .chain(address6.map(|a| json!({ "type": "InternalIP", "address": a.to_string() })))
                .chain([json!({ "type": "Hostname", "address": name })])
                .collect::<Vec<_>>(),
        },
    }))
}

pub fn namespace(name: &str) -> Result<String> {
    labelled_namespace(name, &BTreeMap::new())
}

/// A Namespace with `labels` (and the name label the API server adds).
pub fn labelled_namespace(name: &str, labels: &BTreeMap<String, String>) -> Result<String> {
    let mut l = labels.clone();
    l.insert("kubernetes.io/metadata.name".into(), name.into());
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": l },
    }))
}

/// The lab's Calico IPPool: all pod CIDRs (10.244.0.0/16), encapsulated as the agents'
/// `--encap` (`encap`, default vxlan-flannel) says, with NAT outgoing on — the lab's pods
/// reach the outside world (the router's 198.51.100.1) with their node's address.
pub fn ip_pool(encap: Option<&str>) -> Result<String> {
    let (ipip, vxlan) = match encap.unwrap_or("vxlan-flannel") {
        "ipip" => ("Always", "Never"),
        "ipip-cross-subnet" => ("CrossSubnet", "Never"),
        "cross-subnet" | "vxlan-flannel-direct-routing" => ("Never", "CrossSubnet"),
        "direct" => ("Never", "Never"),
        _ => ("Never", "Always"),
    };
    to_yaml(&json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": { "name": "lab" },
        "spec": { "cidr": "10.244.0.0/16", "blockSize": 24, "ipipMode": ipip, "vxlanMode": vxlan, "natOutgoing": true },
    }))
}

/// The file the lab's IPPool lives in.
pub const POOL_FILE: &str = "ippool-lab.yaml";

/// The lab's IPv6 IPPool (dual stack): all IPv6 pod CIDRs (fd00:10:244::/48), in VXLAN as
/// the IPv4 pool is (`vxlanMode` of `encap`), natively where that is IP-in-IP (which
/// carries no IPv6); no natOutgoing (twill has no NAT66). `vxlan_mode` overrides the mode.
pub fn ip_pool6(encap: Option<&str>, vxlan_mode: Option<&str>) -> Result<String> {
    let mode = match encap.unwrap_or("vxlan-flannel") {
        "ipip" | "ipip-cross-subnet" | "direct" => "Never",
        "cross-subnet" | "vxlan-flannel-direct-routing" => "CrossSubnet",
        _ => "Always",
    };
    to_yaml(&json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": { "name": "lab-ipv6" },
        "spec": { "cidr": "fd00:10:244::/48", "blockSize": 122, "ipipMode": "Never", "vxlanMode": vxlan_mode.unwrap_or(mode), "natOutgoing": false },
    }))
}

/// The file the lab's IPv6 IPPool lives in.
pub const POOL6_FILE: &str = "ippool6-lab.yaml";

/// What a lab pod is besides its name and node: labels beyond the lab's own, and named
/// container ports (name, `TCP`/`UDP`/`SCTP`, port).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodLabels {
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<(String, String, u16)>,
}

/// A Pod scheduled on `node_name`; with `ip` it is Running with that address.
pub fn pod(
    name: &str,
    namespace: &str,
    node_name: &str,
    host_ip: Ipv4Addr,
    ip: Option<Ipv4Addr>,
) -> Result<String> {
    labelled_pod(name, namespace, node_name, host_ip, ip, None, &PodLabels::default())
}

/// [`pod`] with extra labels and named container ports, and for a dual-stack pod its IPv6
/// address (`ip6`) as the second of `status.podIPs`.
pub fn labelled_pod(
    name: &str,
    namespace: &str,
    node_name: &str,
    host_ip: Ipv4Addr,
    ip: Option<Ipv4Addr>,
    ip6: Option<std::net::Ipv6Addr>,
    extra: &PodLabels,
) -> Result<String> {
    let status = match ip {
        Some(ip) => json!({
            "phase": "Running",
            "hostIP": host_ip.to_string(),
            "podIP": ip.to_string(),
            "podIPs": std::iter::once(ip.to_string()).chain(ip6.map(|a| a.to_string())).map(|a| json!({ "ip": a })).collect::<Vec<_>>(),
        }),
        None => json!({ "phase": "Pending", "hostIP": host_ip.to_string() }),
    };
    let mut labels: BTreeMap<String, String> = [("app", "twill-lab"), ("twill-lab/node", node_name), ("twill-lab/pod", name)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.extend(extra.labels.clone());
    let ports: Vec<Value> = extra
        .ports
        .iter()
        .map(|(n, proto, port)| json!({"name": n, "protocol": proto, "containerPort": port}))
        .collect();
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "nodeName": node_name,
            "containers": [{ "name": "app", "image": "twill-lab/probe", "ports": ports }],
        },
        "status": status,
    }))
}

pub fn node_file(name: &str) -> String {
    format!("node-{name}.yaml")
}
pub fn namespace_file(name: &str) -> String {
    format!("namespace-{name}.yaml")
}
pub fn pod_file(namespace: &str, name: &str) -> String {
    format!("pod-{namespace}-{name}.yaml")
}

/// Writes `content` to `dir/file` via a temporary `.file.tmp` and a rename.
pub fn write(dir: &Path, file: &str, content: &str) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    let dst = dir.join(file);
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))
}

fn to_yaml(v: &Value) -> Result<String> {
    serde_yaml::to_string(v).context("serialising a manifest to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

    #[test]
    fn node_parses_as_kubernetes_node_with_flannel_annotations() {
        let f = FlannelBackend {
            vtep_mac: "aa:bb:cc:dd:ee:01".into(),
            public_ip: Ipv4Addr::new(10, 100, 0, 13),
        };
        let y = node("n3", ("10.244.3.0/24", None), (f.public_ip, None), Some(&KernelNode::Flannel(f))).unwrap();
        let n: Node = serde_yaml::from_str(&y).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("n3"));
        assert_eq!(n.spec.unwrap().pod_cidr.as_deref(), Some("10.244.3.0/24"));
        let addr = &n.status.unwrap().addresses.unwrap()[0];
        assert_eq!(
            (addr.type_.as_str(), addr.address.as_str()),
            ("InternalIP", "10.100.0.13")
        );
        let ann = n.metadata.annotations.unwrap();
        let bd: Value =
            serde_json::from_str(&ann["flannel.alpha.coreos.com/backend-data"]).unwrap();
        assert_eq!(bd, json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}));
        assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "10.100.0.13");
    }

    #[test]
    fn twill_node_has_no_flannel_annotations_and_a_dual_stack_one_two_pod_cidrs() {
        let y = node("n1", ("10.244.1.0/24", None), (Ipv4Addr::new(10, 100, 0, 11), None), None).unwrap();
        let n: Node = serde_yaml::from_str(&y).unwrap();
        assert!(n.metadata.annotations.is_none());
        assert_eq!(n.spec.unwrap().pod_cidrs.unwrap(), ["10.244.1.0/24"]);
        let y = node("n1", ("10.244.1.0/24", Some("fd00:10:244:1::/64")), (Ipv4Addr::new(10, 100, 0, 11), Some("fd00:100::11".parse().unwrap())), None).unwrap();
        let n: Node = serde_yaml::from_str(&y).unwrap();
        assert_eq!(n.spec.unwrap().pod_cidrs.unwrap(), ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let internal: Vec<String> = n.status.unwrap().addresses.unwrap().into_iter().filter(|a| a.type_ == "InternalIP").map(|a| a.address).collect();
        assert_eq!(internal, ["10.100.0.11", "fd00:100::11"], "an InternalIP per family");
    }

    #[test]
    fn pod_and_namespace_parse() {
        let y = pod(
            "p1-n1",
            "default",
            "n1",
            Ipv4Addr::new(10, 100, 0, 11),
            Some(Ipv4Addr::new(10, 244, 1, 2)),
        )
        .unwrap();
        let p: Pod = serde_yaml::from_str(&y).unwrap();
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.244.1.2"));
        let ns: Namespace = serde_yaml::from_str(&namespace("default").unwrap()).unwrap();
        assert_eq!(ns.metadata.name.as_deref(), Some("default"));
    }
}
