//! IP pools: which encapsulation carries traffic to which pod addresses, as Calico's
//! `projectcalico.org/v3` IPPool says it — and how Flannel's backends map onto the same
//! three choices.
//!
//! An IPPool names a CIDR of pod addresses and, for traffic to a pod in it on another
//! node, `vxlanMode` / `ipipMode`: `Always` (encapsulate), `CrossSubnet` (encapsulate only
//! when the other node is not in this node's underlay subnet; route directly when it is),
//! `Never`. At most one of the two may be enabled (Calico refuses both). `natOutgoing`
//! asks for source NAT of pod traffic leaving every pool; `disabled` pools hand out no new
//! addresses but still route.
//!
//! Flannel's `vxlan` backend is VXLAN Always (with `DirectRouting: true`, CrossSubnet);
//! `host-gw` is Never. Without a pool, the agent's `--encap` decides for every node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use encap::vxlan::VxlanProfile;
use forwarder::{Tunnel, route::Ipv4Prefix};
use serde::Deserialize;

/// When an encapsulation is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum EncapMode {
    Always,
    CrossSubnet,
    Never,
}

/// A Calico IP pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IpPool {
    pub name: String,
    #[serde(serialize_with = "display")]
    pub cidr: Ipv4Prefix,
    pub block_size: u8,
    pub ipip_mode: EncapMode,
    pub vxlan_mode: EncapMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    cidr: String,
    block_size: Option<u8>,
    ipip_mode: Option<EncapMode>,
    vxlan_mode: Option<EncapMode>,
    #[serde(default)]
    nat_outgoing: bool,
    #[serde(default)]
    disabled: bool,
    // Accepted and not used by twill: where the pool applies, what it is for, BGP export.
    #[serde(rename = "nodeSelector")]
    _node_selector: Option<String>,
    #[serde(rename = "allowedUses")]
    _allowed_uses: Option<Vec<String>>,
    #[serde(rename = "disableBGPExport")]
    _disable_bgp_export: Option<bool>,
    #[serde(rename = "assignmentMode")]
    _assignment_mode: Option<String>,
}

impl IpPool {
    /// Reads an IPPool object; the error names the field and what is accepted.
    pub fn from_manifest(value: &serde_yaml::Value) -> Result<IpPool, String> {
        if value["apiVersion"].as_str() != Some("projectcalico.org/v3") {
            return Err(format!("apiVersion {:?}: IPPool is accepted as projectcalico.org/v3", value["apiVersion"]));
        }
        let name = value["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("metadata.name is missing")?.to_string();
        let spec: Spec = serde_yaml::from_value(value["spec"].clone()).map_err(|e| {
            format!("spec: {e} (accepted: cidr, blockSize, ipipMode, vxlanMode (Always, CrossSubnet, Never), natOutgoing, disabled, nodeSelector, allowedUses, disableBGPExport, assignmentMode)")
        })?;
        let cidr: Ipv4Prefix = spec.cidr.parse().map_err(|e: String| format!("spec.cidr: {e} (IPv6 pools come with dual stack)"))?;
        let block_size = spec.block_size.unwrap_or(26);
        if !(20..=32).contains(&block_size) || block_size < cidr.len() {
            return Err(format!("spec.blockSize: {block_size} must be 20..=32 and not shorter than the CIDR's /{}", cidr.len()));
        }
        let ipip_mode = spec.ipip_mode.unwrap_or(EncapMode::Never);
        let vxlan_mode = spec.vxlan_mode.unwrap_or(EncapMode::Never);
        if ipip_mode != EncapMode::Never && vxlan_mode != EncapMode::Never {
            return Err("spec: ipipMode and vxlanMode cannot both be enabled (as Calico refuses); set one to Never".into());
        }
        Ok(IpPool { name, cidr, block_size, ipip_mode, vxlan_mode, nat_outgoing: spec.nat_outgoing, disabled: spec.disabled })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec: &str) -> Result<IpPool, String> {
        let text = format!("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {spec}\n");
        IpPool::from_manifest(&serde_yaml::from_str(&text).unwrap())
    }

    #[test]
    fn calico_pools_read_with_their_defaults_and_refusals() {
        let p = pool("{cidr: 10.244.0.0/16, ipipMode: CrossSubnet, natOutgoing: true, nodeSelector: all()}").unwrap();
        assert_eq!((p.block_size, p.ipip_mode, p.vxlan_mode, p.nat_outgoing), (26, EncapMode::CrossSubnet, EncapMode::Never, true));
        assert_eq!(p.cidr.to_string(), "10.244.0.0/16");
        let cases = [
            ("{cidr: 10.244.0.0/16, ipipMode: Always, vxlanMode: Always}", "cannot both"),
            ("{cidr: 10.244.0.0/16, vxlanMode: Sometimes}", "vxlanMode"),
            ("{cidr: 10.244.0.0/33}", "spec.cidr"),
            ("{cidr: 10.244.0.0/16, blockSize: 12}", "spec.blockSize"),
            ("{cidr: 10.244.0.0/16, bogus: 1}", "bogus"),
        ];
        for (spec, want) in cases {
            let e = pool(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}

/// The agent's `--encap`: the VXLAN this node speaks, and how it reaches the pods of nodes
/// that no IP pool covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultEncap {
    pub vxlan: VxlanProfile,
    pub tunnel: Tunnel,
    pub mode: EncapMode,
}

/// The `--encap` names, with what each means.
pub const ENCAP_NAMES: &str = "vxlan-flannel (VNI 1, UDP 8472, always), vxlan-flannel-direct-routing (Flannel's vxlan with DirectRouting: direct within the subnet), vxlan-calico (VNI 4096, UDP 4789, always), ipip (always), direct (never encapsulate: host-gw), cross-subnet (vxlan-calico across subnets, direct within), ipip-cross-subnet (IP-in-IP across subnets, direct within)";

/// Parses `--encap`.
pub fn parse_encap(s: &str) -> Result<DefaultEncap, String> {
    let (vxlan, tunnel, mode) = match s {
        "vxlan-flannel" => (VxlanProfile::FLANNEL, Tunnel::Vxlan, EncapMode::Always),
        "vxlan-flannel-direct-routing" => (VxlanProfile::FLANNEL, Tunnel::Vxlan, EncapMode::CrossSubnet),
        "vxlan-calico" => (VxlanProfile::CALICO, Tunnel::Vxlan, EncapMode::Always),
        "ipip" => (VxlanProfile::CALICO, Tunnel::Ipip, EncapMode::Always),
        "direct" => (VxlanProfile::FLANNEL, Tunnel::None, EncapMode::Never),
        "cross-subnet" => (VxlanProfile::CALICO, Tunnel::Vxlan, EncapMode::CrossSubnet),
        "ipip-cross-subnet" => (VxlanProfile::CALICO, Tunnel::Ipip, EncapMode::CrossSubnet),
        _ => return Err(format!("{s:?} is not an encapsulation; accepted: {ENCAP_NAMES}")),
    };
    Ok(DefaultEncap { vxlan, tunnel, mode })
}

/// How this node reaches the pods of a peer at `peer_addr` whose pod CIDR is `peer_pods`:
/// the IP pool holding those pods decides (longest pool CIDR first), else `default`;
/// CrossSubnet routes directly when `my_subnet` holds the peer, Never always does.
pub fn tunnel_to(pools: &BTreeMap<String, IpPool>, default: &DefaultEncap, my_subnet: Option<Ipv4Prefix>, peer_addr: Ipv4Addr, peer_pods: Ipv4Prefix) -> Tunnel {
    let pool = pools.values().filter(|p| p.cidr.contains(peer_pods.addr())).max_by_key(|p| p.cidr.len());
    let (tunnel, mode) = match pool {
        Some(p) if p.vxlan_mode != EncapMode::Never => (Tunnel::Vxlan, p.vxlan_mode),
        Some(p) if p.ipip_mode != EncapMode::Never => (Tunnel::Ipip, p.ipip_mode),
        Some(_) => (Tunnel::None, EncapMode::Never),
        None => (default.tunnel, default.mode),
    };
    match mode {
        EncapMode::Always => tunnel,
        EncapMode::Never => Tunnel::None,
        EncapMode::CrossSubnet if my_subnet.is_some_and(|s| s.contains(peer_addr)) => Tunnel::None,
        EncapMode::CrossSubnet => tunnel,
    }
}

#[cfg(test)]
mod tunnel_tests {
    use super::*;

    #[test]
    fn pools_then_default_decide_and_cross_subnet_routes_locally() {
        let subnet: Ipv4Prefix = "10.100.0.0/24".parse().unwrap();
        let (near, far) = (Ipv4Addr::new(10, 100, 0, 12), Ipv4Addr::new(10, 100, 1, 13));
        let pods: Ipv4Prefix = "10.244.2.0/24".parse().unwrap();
        let vxlan = parse_encap("vxlan-flannel").unwrap();
        assert_eq!(tunnel_to(&BTreeMap::new(), &vxlan, Some(subnet), near, pods), Tunnel::Vxlan);
        let cross = parse_encap("cross-subnet").unwrap();
        assert_eq!(tunnel_to(&BTreeMap::new(), &cross, Some(subnet), near, pods), Tunnel::None);
        assert_eq!(tunnel_to(&BTreeMap::new(), &cross, Some(subnet), far, pods), Tunnel::Vxlan);
        assert_eq!(tunnel_to(&BTreeMap::new(), &cross, None, near, pods), Tunnel::Vxlan, "no known subnet: encapsulate");
        let pool = |ipip, vx| IpPool { name: "p".into(), cidr: "10.244.0.0/16".parse().unwrap(), block_size: 26, ipip_mode: ipip, vxlan_mode: vx, nat_outgoing: false, disabled: false };
        let pools = BTreeMap::from([("p".to_string(), pool(EncapMode::CrossSubnet, EncapMode::Never))]);
        assert_eq!(tunnel_to(&pools, &vxlan, Some(subnet), far, pods), Tunnel::Ipip, "the pool overrides --encap");
        assert_eq!(tunnel_to(&pools, &vxlan, Some(subnet), near, pods), Tunnel::None);
        let never = BTreeMap::from([("p".to_string(), pool(EncapMode::Never, EncapMode::Never))]);
        assert_eq!(tunnel_to(&never, &vxlan, Some(subnet), far, pods), Tunnel::None);
        assert!(parse_encap("gre").unwrap_err().contains("cross-subnet"));
        // Flannel's vxlan backend with DirectRouting: its VXLAN across subnets, direct within.
        let flannel_dr = parse_encap("vxlan-flannel-direct-routing").unwrap();
        assert_eq!(flannel_dr.vxlan, VxlanProfile::FLANNEL);
        assert_eq!(tunnel_to(&BTreeMap::new(), &flannel_dr, Some(subnet), near, pods), Tunnel::None);
        assert_eq!(tunnel_to(&BTreeMap::new(), &flannel_dr, Some(subnet), far, pods), Tunnel::Vxlan);
    }
}
