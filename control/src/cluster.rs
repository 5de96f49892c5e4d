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

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use encap::ethernet::EthernetAddress;
use forwarder::route::Ipv4Prefix;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use policy_engine::{
    model::{Policy, PolicyId, proto},
    world::NamedPort,
};

use crate::pool::IpPool;
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
    pub address: Ipv4Addr,
    /// The node's underlay subnet (Calico's `IPv4Address` annotation), when known: nodes in
    /// one subnet reach each other without encapsulation in CrossSubnet mode.
    #[serde(serialize_with = "as_display_opt")]
    pub subnet: Option<Ipv4Prefix>,
    #[serde(serialize_with = "as_display")]
    pub vtep_mac: EthernetAddress,
    pub vtep_mac_source: MacSource,
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
        let address = match (addr_annotation(FLANNEL_PUBLIC_IP)?, calico_address) {
            (Some(ip), _) | (None, Some((ip, _))) => ip,
            (None, None) => {
                let addrs = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
                let internal = addrs.iter().find(|a| a.type_ == "InternalIP").ok_or_else(|| {
                    err("status.addresses has no InternalIP (and no flannel.alpha.coreos.com/public-ip annotation)".into())
                })?;
                internal
                    .address
                    .parse()
                    .map_err(|_| err(format!("status.addresses InternalIP {:?} is not an IPv4 address", internal.address)))?
            }
        };
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
        let vxlan_tunnel_addr = addr_annotation(CALICO_VXLAN_TUNNEL_ADDR)?;
        let ipip_tunnel_addr = addr_annotation(CALICO_IPIP_TUNNEL_ADDR)?;
        Ok(NodeInfo {
            name: name.clone(),
            pod_cidr,
            address,
            subnet: calico_address.map(|(_, subnet)| subnet),
            vtep_mac,
            vtep_mac_source,
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
        let mut ips = Vec::new();
        for t in texts {
            match t.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => ips.push(a),
                Ok(std::net::IpAddr::V6(_)) => {}
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
        Ok(PodInfo { namespace, name, node: spec.node_name, labels: pod.metadata.labels.unwrap_or_default(), ips, ports })
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
                let pool = IpPool::from_manifest(&value).map_err(|reason| ManifestError {
                    file: file.to_string(),
                    object: format!("IPPool {}", value["metadata"]["name"].as_str().unwrap_or("?")),
                    reason,
                })?;
                state.pools.insert(pool.name.clone(), pool);
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
    fn pods_bring_addresses_and_named_ports_and_policies_are_read_once() {
        let pod = "kind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: db}}\nspec:\n  containers:\n  - {name: c, image: pg, ports: [{name: sql, containerPort: 5432}, {name: stats, containerPort: 9187, protocol: UDP}, {containerPort: 1}]}\nstatus: {podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}, {ip: 'fd00::9'}]}\n";
        let mut s = ClusterState::default();
        read_documents(pod, "pod.yaml", &mut s).unwrap();
        let p = &s.pods[&("shop".into(), "db".into())];
        assert_eq!(p.ips, vec![Ipv4Addr::new(10, 244, 1, 9)], "the IPv4 address of podIPs");
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
