//! The cluster state the agent works from, read from Kubernetes manifests (users' YAML,
//! parsed with k8s-openapi's own types) and reduced to what the data plane needs.
//!
//! Network policy comes in both dialects (Kubernetes `networking.k8s.io/v1` NetworkPolicy,
//! Calico `projectcalico.org/v3` NetworkPolicy and GlobalNetworkPolicy), parsed by
//! `policy-engine`; pods bring their labels, `status.podIP(s)` and named container ports.
//!
//! A node's encapsulation identity comes from where Flannel keeps it: the VTEP MAC from
//! `flannel.alpha.coreos.com/backend-data` (`{"VNI":1,"VtepMAC":"…"}`), the underlay
//! address from `flannel.alpha.coreos.com/public-ip` or the Node's InternalIP. A node without
//! the annotation gets a VTEP MAC derived from its name: stable across restarts and the same
//! on every node that computes it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use encap::ethernet::EthernetAddress;
use forwarder::route::{Ipv4Prefix, Ipv6Prefix};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use policy_engine::{
    model::{Policy, PolicyId, proto},
    world::NamedPort,
};

use crate::pool::{AnyPool, IpPool};
use serde::{Deserialize, Serialize};

/// Flannel's annotation with the VXLAN identity of a node.
pub const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// Flannel's annotation with the underlay address of a node.
pub const FLANNEL_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Calico's annotation with a node's underlay address and subnet (`10.0.0.5/24`): what
/// CrossSubnet compares.
pub const CALICO_IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
/// Calico's annotation with the MAC of a node's `vxlan.calico`.
pub const CALICO_VXLAN_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";
/// Calico's annotation with the address of a node's `vxlan.calico`.
pub const CALICO_VXLAN_TUNNEL_ADDR: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
/// Flannel's annotation with the IPv6 underlay address of a dual-stack node.
pub const FLANNEL_PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
/// Flannel's annotation with the IPv6 VXLAN identity (`flannel-v6.1`) of a node.
pub const FLANNEL_BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
/// Calico's annotation with a node's IPv6 underlay address and subnet (`fd00::5/64`).
pub const CALICO_IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
/// Calico's annotation with the MAC of a node's `vxlan-v6.calico`.
pub const CALICO_VXLAN_MAC_V6: &str = "projectcalico.org/VXLANTunnelMACAddrV6";
/// Calico's annotation with the address of a node's `tunl0`.
pub const CALICO_IPIP_TUNNEL_ADDR: &str = "projectcalico.org/IPv4IPIPTunnelAddr";

/// A manifest that could not be used: names the file, the object and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {object}: {reason}")]
pub struct ManifestError {
    pub file: String,
    pub object: String,
    pub reason: String,
}

/// Where a node's VTEP MAC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MacSource {
    Annotation,
    Derived,
}

/// A node, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    #[serde(serialize_with = "as_display")]
    pub pod_cidr: Ipv4Prefix,
    /// The IPv6 pod subnet of a dual-stack node (the IPv6 entry of `spec.podCIDRs`).
    #[serde(serialize_with = "as_display_opt")]
    pub pod_cidr6: Option<Ipv6Prefix>,
    pub address: Ipv4Addr,
    /// The node's underlay subnet (Calico's `IPv4Address` annotation), when known: nodes in
    /// one subnet reach each other without encapsulation in CrossSubnet mode.
    #[serde(serialize_with = "as_display_opt")]
    pub subnet: Option<Ipv4Prefix>,
    #[serde(serialize_with = "as_display")]
    pub vtep_mac: EthernetAddress,
    pub vtep_mac_source: MacSource,
    /// The node's IPv6 underlay address (Flannel's `public-ipv6`, Calico's `IPv6Address`
    /// annotation or the IPv6 InternalIP), when it has one.
    pub address6: Option<Ipv6Addr>,
    /// The inner destination MAC of VXLAN over IPv6 to it (Flannel's `backend-v6-data`,
    /// Calico's `VXLANTunnelMACAddrV6`); without either, `vtep_mac`.
    #[serde(serialize_with = "as_display")]
    pub vtep_mac6: EthernetAddress,
    /// Calico's tunnel addresses of the node (`vxlan.calico`, `tunl0`), when published.
    pub vxlan_tunnel_addr: Option<Ipv4Addr>,
    pub ipip_tunnel_addr: Option<Ipv4Addr>,
}

fn as_display_opt<T: std::fmt::Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A pod, as declared (its address comes from IPAM when it runs on this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`), the IPv4 ones.
    pub ips: Vec<Ipv4Addr>,
    /// The IPv6 ones (dual stack).
    pub ips6: Vec<Ipv6Addr>,
    /// Named container ports (`spec.containers[].ports[]` with a `name`).
    pub ports: Vec<NamedPort>,
}

/// Everything read from the datastore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// Network policies of both dialects, with the file each came from.
    pub policies: BTreeMap<PolicyId, (Policy, String)>,
    /// Calico IP pools, by name.
    pub pools: BTreeMap<String, IpPool>,
    /// Calico's IPv6 IP pools (dual stack), by name.
    pub pools6: BTreeMap<String, IpPool<Ipv6Prefix>>,
}

/// The VTEP MAC derived from a node name: FNV-1a of the name with a splitmix64 finaliser
/// (so names that differ in one letter differ in every byte), locally administered unicast.
pub fn derived_vtep_mac(node: &str) -> EthernetAddress {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
    h ^= h >> 31;
    let b = h.to_be_bytes();
    EthernetAddress([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

#[derive(serde::Deserialize)]
struct FlannelBackendData {
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

impl NodeInfo {
    /// Reads a Node object. `object` names it in errors.
    pub fn from_node(node: &Node, file: &str) -> Result<NodeInfo, ManifestError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let err = |reason: String| ManifestError { file: file.to_string(), object: format!("Node {name:?}"), reason };
        if name.is_empty() {
            return Err(err("metadata.name is missing".into()));
        }
        let cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .ok_or_else(|| err("spec.podCIDR is missing (expected an IPv4 CIDR such as 10.244.1.0/24)".into()))?;
        let pod_cidr: Ipv4Prefix = cidr.parse().map_err(|e: String| err(format!("spec.podCIDR: {e}")))?;
        let mut pod_cidr6 = None;
        for (i, c) in node.spec.as_ref().and_then(|s| s.pod_cidrs.as_ref()).into_iter().flatten().enumerate() {
            if c.parse::<Ipv4Prefix>().is_ok() {
                continue;
            }
            let p: Ipv6Prefix = c.parse().map_err(|e: String| err(format!("spec.podCIDRs[{i}]: {c:?} is neither an IPv4 CIDR nor {e}")))?;
            if pod_cidr6.replace(p).is_some() {
                return Err(err(format!("spec.podCIDRs: {c:?} is a second IPv6 CIDR (accepted: one per family)")));
            }
        }
        if let Some(p6) = pod_cidr6
            && 128 - u32::from(p6.len()) < 32 - u32::from(pod_cidr.len())
        {
            // IPAM gives a pod the IPv6 address at its IPv4 address's offset.
            return Err(err(format!("spec.podCIDRs: the IPv6 subnet {p6} has fewer addresses than the IPv4 subnet {pod_cidr} (accepted: an IPv6 prefix at most {} long)", 96 + u32::from(pod_cidr.len()))));
        }
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let addr_annotation = |key: &str| -> Result<Option<Ipv4Addr>, ManifestError> {
            annotations
                .get(key)
                .map(|v| v.parse().map_err(|_| err(format!("annotation {key}: {v:?} is not an IPv4 address"))))
                .transpose()
        };
        let calico_address = annotations
            .get(CALICO_IPV4_ADDRESS)
            .map(|v| {
                let bad = || err(format!("annotation {CALICO_IPV4_ADDRESS}: {v:?} is not an IPv4 address with its prefix length (10.0.0.5/24)"));
                let (a, l) = v.split_once('/').ok_or_else(bad)?;
                let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
                let l: u8 = l.parse().map_err(|_| bad())?;
                Ok::<_, ManifestError>((a, Ipv4Prefix::new(a, l).ok_or_else(bad)?))
            })
            .transpose()?;
        // A dual-stack node lists an InternalIP per family.
        let addrs = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
        let mut internal: Vec<std::net::IpAddr> = Vec::new();
        for a in addrs.iter().filter(|a| a.type_ == "InternalIP") {
            internal.push(a.address.parse().map_err(|_| err(format!("status.addresses InternalIP {:?} is not an IP address", a.address)))?);
        }
        let internal4 = internal.iter().find_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(*a),
            std::net::IpAddr::V6(_) => None,
        });
        let internal6 = internal.iter().find_map(|a| match a {
            std::net::IpAddr::V6(a) => Some(*a),
            std::net::IpAddr::V4(_) => None,
        });
        let address = match (addr_annotation(FLANNEL_PUBLIC_IP)?, calico_address, internal4) {
            (Some(ip), _, _) | (None, Some((ip, _)), _) | (None, None, Some(ip)) => ip,
            (None, None, None) => return Err(err("status.addresses has no IPv4 InternalIP (and no flannel.alpha.coreos.com/public-ip annotation)".into())),
        };
        let addr6_annotation = |key: &str, with_len: bool| -> Result<Option<Ipv6Addr>, ManifestError> {
            let Some(v) = annotations.get(key) else { return Ok(None) };
            let bad = || err(format!("annotation {key}: {v:?} is not an IPv6 address{}", if with_len { " with its prefix length (fd00::5/64)" } else { "" }));
            let text = if with_len { v.split_once('/').filter(|(_, l)| l.parse::<u8>().is_ok_and(|l| l <= 128)).ok_or_else(bad)?.0 } else { v };
            text.parse().map(Some).map_err(|_| bad())
        };
        let address6 = addr6_annotation(FLANNEL_PUBLIC_IPV6, false)?.or(addr6_annotation(CALICO_IPV6_ADDRESS, true)?).or(internal6);
        let calico_mac = annotations
            .get(CALICO_VXLAN_MAC)
            .map(|v| v.parse::<EthernetAddress>().map_err(|_| err(format!("annotation {CALICO_VXLAN_MAC}: {v:?} is not a MAC address"))))
            .transpose()?;
        let (vtep_mac, vtep_mac_source) = match annotations.get(FLANNEL_BACKEND_DATA) {
            None if calico_mac.is_some() => (calico_mac.expect("checked"), MacSource::Annotation),
            Some(raw) => {
                let data: FlannelBackendData = serde_json::from_str(raw).map_err(|e| {
                    err(format!("annotation {FLANNEL_BACKEND_DATA}: {e} (expected {{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:ff\"}})"))
                })?;
                let mac = data
                    .vtep_mac
                    .parse()
                    .map_err(|_| err(format!("annotation {FLANNEL_BACKEND_DATA}: VtepMAC {:?} is not a MAC address", data.vtep_mac)))?;
                (mac, MacSource::Annotation)
            }
            None => (derived_vtep_mac(&name), MacSource::Derived),
        };
        let flannel_mac6 = annotations
            .get(FLANNEL_BACKEND_V6_DATA)
            .map(|raw| {
                let bad = |why: String| err(format!("annotation {FLANNEL_BACKEND_V6_DATA}: {why} (expected {{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:ff\"}})"));
                let data: FlannelBackendData = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
                data.vtep_mac.parse::<EthernetAddress>().map_err(|_| bad(format!("VtepMAC {:?} is not a MAC address", data.vtep_mac)))
            })
            .transpose()?;
        let calico_mac6 = annotations
            .get(CALICO_VXLAN_MAC_V6)
            .map(|v| v.parse::<EthernetAddress>().map_err(|_| err(format!("annotation {CALICO_VXLAN_MAC_V6}: {v:?} is not a MAC address"))))
            .transpose()?;
        let vtep_mac6 = flannel_mac6.or(calico_mac6).unwrap_or(vtep_mac);
        let vxlan_tunnel_addr = addr_annotation(CALICO_VXLAN_TUNNEL_ADDR)?;
        let ipip_tunnel_addr = addr_annotation(CALICO_IPIP_TUNNEL_ADDR)?;
        Ok(NodeInfo {
            name: name.clone(),
            pod_cidr,
            pod_cidr6,
            address,
            subnet: calico_address.map(|(_, subnet)| subnet),
            vtep_mac,
            vtep_mac_source,
            address6,
            vtep_mac6,
            vxlan_tunnel_addr,
            ipip_tunnel_addr,
        })
    }
}

impl PodInfo {
    /// Reads a Pod object: labels, node, IPv4 addresses, named container ports.
    pub fn from_pod(pod: Pod, file: &str) -> Result<PodInfo, ManifestError> {
        let namespace = pod.metadata.namespace.unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.unwrap_or_default();
        let err = |reason: String| ManifestError { file: file.to_string(), object: format!("Pod {namespace}/{name}"), reason };
        let status = pod.status.unwrap_or_default();
        let texts: Vec<String> = match status.pod_ips {
            Some(ips) if !ips.is_empty() => ips.into_iter().map(|i| i.ip).collect(),
            _ => status.pod_ip.into_iter().collect(),
        };
        let (mut ips, mut ips6) = (Vec::new(), Vec::new());
        for t in texts {
            match t.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => ips.push(a),
                Ok(std::net::IpAddr::V6(a)) => ips6.push(a),
                Err(_) => return Err(err(format!("status.podIPs: {t:?} is not an IP address"))),
            }
        }
        let mut ports = Vec::new();
        let spec = pod.spec.unwrap_or_default();
        for (ci, c) in spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let Some(port_name) = &p.name else { continue };
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => proto::TCP,
                    "UDP" => proto::UDP,
                    "SCTP" => proto::SCTP,
                    other => return Err(err(format!("{field}.protocol: {other:?} is not TCP, UDP or SCTP"))),
                };
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err(format!("{field}.containerPort: {} is not a port (1..=65535)", p.container_port)))?;
                ports.push(NamedPort { name: port_name.clone(), protocol, port });
            }
        }
        Ok(PodInfo { namespace, name, node: spec.node_name, labels: pod.metadata.labels.unwrap_or_default(), ips, ips6, ports })
    }
}

#[derive(serde::Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: String,
}

/// Reads every `*.yaml` / `*.yml` / `*.json` file in `dir` (multi-document YAML allowed).
/// Kinds other than Node, Namespace and Pod are ignored here. The first bad object fails
/// the whole read, so a caller can keep its last good state.
pub fn read_dir(dir: &Path) -> Result<ClusterState, ManifestError> {
    let mut state = ClusterState::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ManifestError { file: dir.display().to_string(), object: "directory".into(), reason: e.to_string() })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    for path in files {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // A file removed between listing and reading is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ManifestError { file, object: "file".into(), reason: e.to_string() }),
        };
        read_documents(&text, &file, &mut state)?;
    }
    Ok(state)
}

/// Adds the objects of one manifest text to `state`: Nodes, Namespaces, Pods, and network
/// policies of both dialects (a policy defined twice is refused, naming both files).
pub fn read_documents(text: &str, file: &str, state: &mut ClusterState) -> Result<(), ManifestError> {
    read_objects(text, file, state)?;
    let policies = policy_engine::model::parse_manifests(text, file).map_err(|e| match e {
        policy_engine::model::PolicyError::Invalid { file, object, field, reason } => {
            ManifestError { file, object, reason: format!("{field}: {reason}") }
        }
        other => ManifestError { file: file.to_string(), object: "policy".into(), reason: other.to_string() },
    })?;
    for p in policies {
        let id = p.id_key();
        if let Some((_, first)) = state.policies.get(&id) {
            return Err(ManifestError {
                file: file.to_string(),
                object: id.to_string(),
                reason: format!("defined again (first in {first}); a policy may be defined once"),
            });
        }
        state.policies.insert(id, (p, file.to_string()));
    }
    Ok(())
}

fn read_objects(text: &str, file: &str, state: &mut ClusterState) -> Result<(), ManifestError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| ManifestError {
            file: file.to_string(),
            object: format!("document {}", i + 1),
            reason: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        let bad = |object: &str, e: serde_yaml::Error| ManifestError {
            file: file.to_string(),
            object: format!("document {} ({object})", i + 1),
            reason: e.to_string(),
        };
        let meta: TypeMeta = serde_yaml::from_value(value.clone()).map_err(|e| bad("kind", e))?;
        match meta.kind.as_str() {
            "Node" => {
                let node: Node = serde_yaml::from_value(value).map_err(|e| bad("Node", e))?;
                let info = NodeInfo::from_node(&node, file)?;
                state.nodes.insert(info.name.clone(), info);
            }
            "Namespace" => {
                let ns: Namespace = serde_yaml::from_value(value).map_err(|e| bad("Namespace", e))?;
                let name = ns.metadata.name.unwrap_or_default();
                state.namespaces.insert(name, ns.metadata.labels.unwrap_or_default());
            }
            "Pod" => {
                let pod: Pod = serde_yaml::from_value(value).map_err(|e| bad("Pod", e))?;
                let info = PodInfo::from_pod(pod, file)?;
                state.pods.insert((info.namespace.clone(), info.name.clone()), info);
            }
            "IPPool" => {
                let pool = AnyPool::from_manifest(&value).map_err(|reason| ManifestError {
                    file: file.to_string(),
                    object: format!("IPPool {}", value["metadata"]["name"].as_str().unwrap_or("?")),
                    reason,
                })?;
                match pool {
                    AnyPool::V4(p) => {
                        state.pools.insert(p.name.clone(), p);
                    }
                    AnyPool::V6(p) => {
                        state.pools6.insert(p.name.clone(), p);
                    }
                }
            }
            "" => {
                return Err(ManifestError {
                    file: file.to_string(),
                    object: format!("document {}", i + 1),
                    reason: "no `kind` (expected a Kubernetes object such as Node, Namespace or Pod)".into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: flannel-node
  annotations:
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"a2:5e:0b:11:22:33"}'
    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/public-ip: 10.100.0.13
spec:
  podCIDR: 10.244.3.0/24
status:
  addresses:
  - type: InternalIP
    address: 10.100.0.99
---
apiVersion: v1
kind: Node
metadata:
  name: n1
spec:
  podCIDR: 10.244.1.0/24
status:
  addresses:
  - type: Hostname
    address: n1
  - type: InternalIP
    address: 10.100.0.11
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  nodeName: n1
  containers: [{name: c, image: nginx}]
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
"#;

    #[test]
    fn reads_flannel_annotations_and_internal_ip() {
        let mut s = ClusterState::default();
        read_documents(NODES, "nodes.yaml", &mut s).unwrap();
        let f = &s.nodes["flannel-node"];
        assert_eq!(f.vtep_mac.to_string(), "a2:5e:0b:11:22:33");
        assert_eq!(f.vtep_mac_source, MacSource::Annotation);
        assert_eq!(f.address, Ipv4Addr::new(10, 100, 0, 13), "public-ip annotation wins over InternalIP");
        assert_eq!(f.pod_cidr.to_string(), "10.244.3.0/24");
        let n1 = &s.nodes["n1"];
        assert_eq!(n1.address, Ipv4Addr::new(10, 100, 0, 11));
        assert_eq!(n1.vtep_mac, derived_vtep_mac("n1"));
        assert_eq!(n1.vtep_mac_source, MacSource::Derived);
        assert_eq!(s.pods[&("shop".into(), "web".into())].node.as_deref(), Some("n1"));
        assert_eq!(s.namespaces["shop"]["team"], "a");
    }

    #[test]
    fn reads_the_ipv6_underlay_of_dual_stack_nodes() {
        let y = "kind: Node\nmetadata: {name: c6, annotations: {projectcalico.org/IPv6Address: 'fd00:100::13/64', projectcalico.org/VXLANTunnelMACAddrV6: '66:aa:00:00:00:13'}}\nspec: {podCIDR: 10.244.3.0/24}\nstatus: {addresses: [{type: InternalIP, address: 'fd00:100::99'}, {type: InternalIP, address: 10.100.0.13}]}\n---\n\
                 kind: Node\nmetadata: {name: f6, annotations: {flannel.alpha.coreos.com/public-ipv6: 'fd00:100::14', flannel.alpha.coreos.com/backend-v6-data: '{\"VNI\":1,\"VtepMAC\":\"66:bb:00:00:00:14\"}'}}\nspec: {podCIDR: 10.244.4.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.14}]}\n---\n\
                 kind: Node\nmetadata: {name: k6}\nspec: {podCIDR: 10.244.5.0/24}\nstatus: {addresses: [{type: InternalIP, address: 'fd00:100::15'}, {type: InternalIP, address: 10.100.0.15}]}\n---\n\
                 kind: Node\nmetadata: {name: v4}\nspec: {podCIDR: 10.244.6.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.16}]}\n";
        let mut s = ClusterState::default();
        read_documents(y, "nodes6.yaml", &mut s).unwrap();
        let ip = |t: &str| Some(t.parse::<Ipv6Addr>().unwrap());
        let c6 = &s.nodes["c6"];
        assert_eq!((c6.address, c6.address6, c6.vtep_mac6.to_string()), (Ipv4Addr::new(10, 100, 0, 13), ip("fd00:100::13"), "66:aa:00:00:00:13".into()), "Calico's annotations win over the InternalIP");
        let f6 = &s.nodes["f6"];
        assert_eq!((f6.address6, f6.vtep_mac6.to_string()), (ip("fd00:100::14"), "66:bb:00:00:00:14".into()));
        let k6 = &s.nodes["k6"];
        assert_eq!((k6.address, k6.address6, k6.vtep_mac6), (Ipv4Addr::new(10, 100, 0, 15), ip("fd00:100::15"), k6.vtep_mac), "an InternalIP per family, in any order");
        assert_eq!(s.nodes["v4"].address6, None);
        for (bad, says) in [
            ("projectcalico.org/IPv6Address: 'fd00::13'", "is not an IPv6 address with its prefix length"),
            ("flannel.alpha.coreos.com/public-ipv6: 10.0.0.1", "is not an IPv6 address"),
            ("flannel.alpha.coreos.com/backend-v6-data: '{\"VtepMAC\":\"nope\"}'", "VtepMAC \"nope\" is not a MAC address"),
        ] {
            let y = format!("kind: Node\nmetadata: {{name: bad, annotations: {{{bad}}}}}\nspec: {{podCIDR: 10.244.7.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.100.0.17}}]}}\n");
            let e = read_documents(&y, "bad.yaml", &mut ClusterState::default()).unwrap_err().to_string();
            assert!(e.contains("bad.yaml") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn pods_bring_addresses_and_named_ports_and_policies_are_read_once() {
        let pod = "kind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: db}}\nspec:\n  containers:\n  - {name: c, image: pg, ports: [{name: sql, containerPort: 5432}, {name: stats, containerPort: 9187, protocol: UDP}, {containerPort: 1}]}\nstatus: {podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}, {ip: 'fd00::9'}]}\n";
        let mut s = ClusterState::default();
        read_documents(pod, "pod.yaml", &mut s).unwrap();
        let p = &s.pods[&("shop".into(), "db".into())];
        assert_eq!(p.ips, vec![Ipv4Addr::new(10, 244, 1, 9)], "the IPv4 address of podIPs");
        assert_eq!(p.ips6, vec!["fd00::9".parse::<Ipv6Addr>().unwrap()], "the IPv6 one");
        assert_eq!(p.ports.len(), 2, "unnamed ports name nothing");
        assert_eq!((p.ports[1].name.as_str(), p.ports[1].protocol, p.ports[1].port), ("stats", proto::UDP, 9187));

        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec: {podSelector: {}}\n";
        read_documents(np, "a.yaml", &mut s).unwrap();
        assert_eq!(s.policies.len(), 1);
        let err = read_documents(np, "b.yaml", &mut s).unwrap_err().to_string();
        assert!(err.starts_with("b.yaml: ") && err.contains("first in a.yaml"), "{err}");
        let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: y, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/99}}]}]\n";
        let err = read_documents(bad, "bad.yaml", &mut s).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml: ") && err.contains("spec.ingress[0].from[0].ipBlock.cidr"), "{err}");
    }

    #[test]
    fn calico_node_annotations_give_address_subnet_vtep_and_tunnel_addresses() {
        let y = "kind: Node\nmetadata:\n  name: c1\n  annotations:\n    projectcalico.org/IPv4Address: 10.100.0.21/24\n    projectcalico.org/VXLANTunnelMACAddr: 66:70:a5:01:02:03\n    projectcalico.org/IPv4VXLANTunnelAddr: 10.244.7.0\n    projectcalico.org/IPv4IPIPTunnelAddr: 10.244.7.1\nspec: {podCIDR: 10.244.7.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.99}]}\n";
        let mut s = ClusterState::default();
        read_documents(y, "c.yaml", &mut s).unwrap();
        let n = &s.nodes["c1"];
        assert_eq!(n.address, Ipv4Addr::new(10, 100, 0, 21), "Calico's address wins over InternalIP");
        assert_eq!(n.subnet.map(|p| p.to_string()).as_deref(), Some("10.100.0.0/24"));
        assert_eq!((n.vtep_mac.to_string(), n.vtep_mac_source), ("66:70:a5:01:02:03".to_string(), MacSource::Annotation));
        assert_eq!((n.vxlan_tunnel_addr, n.ipip_tunnel_addr), (Some(Ipv4Addr::new(10, 244, 7, 0)), Some(Ipv4Addr::new(10, 244, 7, 1))));
        let bad = y.replace("10.100.0.21/24", "10.100.0.21");
        let err = read_documents(&bad, "c.yaml", &mut ClusterState::default()).unwrap_err().to_string();
        assert!(err.contains("projectcalico.org/IPv4Address") && err.contains("prefix length"), "{err}");
        let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: default}\nspec: {cidr: 10.244.0.0/16, vxlanMode: CrossSubnet}\n";
        read_documents(pool, "pool.yaml", &mut s).unwrap();
        assert_eq!(s.pools["default"].vxlan_mode, crate::pool::EncapMode::CrossSubnet);
        let err = read_documents(&pool.replace("16,", "16, ipipMode: Always,"), "pool.yaml", &mut s).unwrap_err().to_string();
        assert!(err.starts_with("pool.yaml: IPPool default:"), "{err}");
    }

    #[test]
    fn a_dual_stack_node_brings_its_ipv6_pod_subnet() {
        let node = |cidrs: &str| format!("kind: Node\nmetadata: {{name: d}}\nspec: {{podCIDR: 10.244.1.0/24, podCIDRs: [{cidrs}]}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.100.0.11}}]}}\n");
        let mut s = ClusterState::default();
        read_documents(&node("10.244.1.0/24, 'fd00:10:244:1::/64'"), "n.yaml", &mut s).unwrap();
        assert_eq!(s.nodes["d"].pod_cidr6.unwrap().to_string(), "fd00:10:244:1::/64");
        read_documents(&node("10.244.1.0/24"), "n.yaml", &mut s).unwrap();
        assert_eq!(s.nodes["d"].pod_cidr6, None, "single stack");
        let err = |cidrs: &str| read_documents(&node(cidrs), "n.yaml", &mut ClusterState::default()).unwrap_err().to_string();
        assert!(err("10.244.1.0/24, 'fd00::/129'").contains("spec.podCIDRs[1]: \"fd00::/129\" is neither an IPv4 CIDR nor"), "{}", err("'fd00::/129'"));
        assert!(err("'fd00:1::/64', 'fd00:2::/64'").contains("a second IPv6 CIDR"));
        assert!(err("'fd00:1::/124'").contains("fewer addresses than the IPv4 subnet 10.244.1.0/24 (accepted: an IPv6 prefix at most 120 long)"), "{}", err("'fd00:1::/124'"));
    }

    #[test]
    fn derived_mac_is_stable_unicast_and_local() {
        let a = derived_vtep_mac("node-a");
        assert_eq!(a, derived_vtep_mac("node-a"));
        assert_ne!(a, derived_vtep_mac("node-b"));
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn bad_manifests_name_file_object_and_field() {
        let cases = [
            ("kind: Node\nmetadata: {name: x}\nspec: {podCIDR: 10.1.0.0/99}\n", "spec.podCIDR"),
            ("kind: Node\nmetadata: {name: x}\nspec: {}\n", "spec.podCIDR is missing"),
            ("kind: Node\nmetadata: {name: x}\nspec: {podCIDR: 10.1.0.0/24}\n", "InternalIP"),
            (
                "kind: Node\nmetadata: {name: x, annotations: {flannel.alpha.coreos.com/backend-data: 'nope'}}\nspec: {podCIDR: 10.1.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n",
                "VtepMAC",
            ),
            ("metadata: {name: x}\n", "no `kind`"),
            ("kind: Pod\nmetadata: [1, 2]\n", "Pod"),
            ("kind: Node\n  bad: : indent\n", "not valid YAML"),
        ];
        for (text, want) in cases {
            let err = read_documents(text, "bad.yaml", &mut ClusterState::default()).unwrap_err().to_string();
            assert!(err.starts_with("bad.yaml: "), "{err}");
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
