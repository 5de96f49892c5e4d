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
//!
//! An IPv6 pool (dual stack) decides for IPv6 pods the same way, by its vxlanMode (IP-in-IP
//! carries no IPv6, and twill has no NAT66: both are refused); IPv6 pods no IPv6 pool covers
//! go as the node's IPv4 pods do.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use encap::vxlan::VxlanProfile;
use forwarder::{
    Tunnel,
    route::{Ipv4Prefix, Ipv6Prefix},
};
use serde::Deserialize;

/// When an encapsulation is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum EncapMode {
    Always,
    CrossSubnet,
    Never,
}

/// A Calico IP pool: of IPv4 pod addresses, or (`IpPool<Ipv6Prefix>`) of IPv6 ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(bound(serialize = "P: std::fmt::Display"))]
pub struct IpPool<P = Ipv4Prefix> {
    pub name: String,
    #[serde(serialize_with = "display")]
    pub cidr: P,
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

/// An IPPool of either family, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyPool {
    V4(IpPool),
    V6(IpPool<Ipv6Prefix>),
}

impl AnyPool {
    /// Reads an IPPool object; the error names the field and what is accepted.
    pub fn from_manifest(value: &serde_yaml::Value) -> Result<AnyPool, String> {
        if value["apiVersion"].as_str() != Some("projectcalico.org/v3") {
            return Err(format!("apiVersion {:?}: IPPool is accepted as projectcalico.org/v3", value["apiVersion"]));
        }
        let name = value["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("metadata.name is missing")?.to_string();
        let spec: Spec = serde_yaml::from_value(value["spec"].clone()).map_err(|e| {
            format!("spec: {e} (accepted: cidr, blockSize, ipipMode, vxlanMode (Always, CrossSubnet, Never), natOutgoing, disabled, nodeSelector, allowedUses, disableBGPExport, assignmentMode)")
        })?;
        let ipip_mode = spec.ipip_mode.unwrap_or(EncapMode::Never);
        let vxlan_mode = spec.vxlan_mode.unwrap_or(EncapMode::Never);
        if ipip_mode != EncapMode::Never && vxlan_mode != EncapMode::Never {
            return Err("spec: ipipMode and vxlanMode cannot both be enabled (as Calico refuses); set one to Never".into());
        }
        if let Ok(cidr) = spec.cidr.parse::<Ipv6Prefix>() {
            // Calico's IPv6 blocks: /122 by default, 116..=128.
            let block_size = spec.block_size.unwrap_or(122);
            if !(116..=128).contains(&block_size) || block_size < cidr.len() {
                return Err(format!("spec.blockSize: {block_size} must be 116..=128 for an IPv6 pool and not shorter than the CIDR's /{}", cidr.len()));
            }
            if ipip_mode != EncapMode::Never {
                return Err("spec.ipipMode: IP-in-IP carries no IPv6 (as Calico refuses it on IPv6 pools); accepted: Never, with vxlanMode for encapsulation".into());
            }
            if spec.nat_outgoing {
                return Err("spec.natOutgoing: twill has no NAT66 (IPv6 pods do not leave the cluster yet); accepted: false on an IPv6 pool".into());
            }
            return Ok(AnyPool::V6(IpPool { name, cidr, block_size, ipip_mode, vxlan_mode, nat_outgoing: false, disabled: spec.disabled }));
        }
        let cidr: Ipv4Prefix = spec.cidr.parse().map_err(|e: String| format!("spec.cidr: {e} (or an IPv6 CIDR such as fd00:10:244::/48)"))?;
        let block_size = spec.block_size.unwrap_or(26);
        if !(20..=32).contains(&block_size) || block_size < cidr.len() {
            return Err(format!("spec.blockSize: {block_size} must be 20..=32 and not shorter than the CIDR's /{}", cidr.len()));
        }
        Ok(AnyPool::V4(IpPool { name, cidr, block_size, ipip_mode, vxlan_mode, nat_outgoing: spec.nat_outgoing, disabled: spec.disabled }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_pool(spec: &str) -> Result<AnyPool, String> {
        let text = format!("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {spec}\n");
        AnyPool::from_manifest(&serde_yaml::from_str(&text).unwrap())
    }

    fn pool(spec: &str) -> Result<IpPool, String> {
        any_pool(spec).map(|p| match p {
            AnyPool::V4(p) => p,
            AnyPool::V6(p) => panic!("an IPv6 pool: {p:?}"),
        })
    }

    #[test]
    fn ipv6_pools_read_with_calicos_defaults_and_refusals() {
        let Ok(AnyPool::V6(p)) = any_pool("{cidr: 'fd00:10:244::/48', vxlanMode: Never}") else { panic!("an IPv6 pool") };
        assert_eq!((p.cidr.to_string().as_str(), p.block_size, p.vxlan_mode, p.nat_outgoing), ("fd00:10:244::/48", 122, EncapMode::Never, false));
        for (spec, want) in [
            ("{cidr: 'fd00:10:244::/48', ipipMode: Always}", "IP-in-IP carries no IPv6"),
            ("{cidr: 'fd00:10:244::/48', natOutgoing: true}", "no NAT66"),
            ("{cidr: 'fd00:10:244::/48', blockSize: 26}", "116..=128"),
        ] {
            let e = any_pool(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
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
    let encap = pool.map_or((default.tunnel, default.mode), pool_encap);
    decide(encap, my_subnet.is_some_and(|s| s.contains(peer_addr)))
}

/// How this node carries IPv6 pod traffic to a peer at IPv6 underlay address `peer_addr6`
/// whose IPv6 pod CIDR is `peer_pods6`: the IPv6 pool holding those pods decides (its
/// vxlanMode; CrossSubnet against `my_subnet6`), else it goes as the IPv4 pods do (`v4`).
pub fn tunnel6_to(pools6: &BTreeMap<String, IpPool<Ipv6Prefix>>, v4: Tunnel, my_subnet6: Option<Ipv6Prefix>, peer_addr6: Option<Ipv6Addr>, peer_pods6: Option<Ipv6Prefix>) -> Tunnel {
    let pool = peer_pods6.and_then(|c| pools6.values().filter(|p| p.cidr.contains(c.addr())).max_by_key(|p| p.cidr.len()));
    match pool {
        Some(p) => decide(pool_encap(p), my_subnet6.zip(peer_addr6).is_some_and(|(s, a)| s.contains(a))),
        None => v4,
    }
}

/// The tunnel and mode a pool asks for.
fn pool_encap<P>(p: &IpPool<P>) -> (Tunnel, EncapMode) {
    if p.vxlan_mode != EncapMode::Never {
        (Tunnel::Vxlan, p.vxlan_mode)
    } else if p.ipip_mode != EncapMode::Never {
        (Tunnel::Ipip, p.ipip_mode)
    } else {
        (Tunnel::None, EncapMode::Never)
    }
}

/// `tunnel` under `mode`, for a peer in this node's underlay subnet or not.
fn decide((tunnel, mode): (Tunnel, EncapMode), same_subnet: bool) -> Tunnel {
    match mode {
        EncapMode::Always => tunnel,
        EncapMode::Never => Tunnel::None,
        EncapMode::CrossSubnet if same_subnet => Tunnel::None,
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

    #[test]
    fn an_ipv6_pool_decides_for_ipv6_pods_and_without_one_they_go_as_ipv4_does() {
        let pods6: Ipv6Prefix = "fd00:10:244:2::/64".parse().unwrap();
        let (subnet6, near, far): (Ipv6Prefix, Ipv6Addr, Ipv6Addr) = ("fd00:100::/64".parse().unwrap(), "fd00:100::12".parse().unwrap(), "fd00:101::13".parse().unwrap());
        let pool6 = |vx| IpPool { name: "p6".into(), cidr: "fd00:10:244::/48".parse::<Ipv6Prefix>().unwrap(), block_size: 122, ipip_mode: EncapMode::Never, vxlan_mode: vx, nat_outgoing: false, disabled: false };
        let none = BTreeMap::new();
        assert_eq!(tunnel6_to(&none, Tunnel::Ipip, Some(subnet6), Some(near), Some(pods6)), Tunnel::Ipip, "no IPv6 pool: as IPv4");
        let never = BTreeMap::from([("p6".to_string(), pool6(EncapMode::Never))]);
        assert_eq!(tunnel6_to(&never, Tunnel::Vxlan, Some(subnet6), Some(far), Some(pods6)), Tunnel::None);
        let cross = BTreeMap::from([("p6".to_string(), pool6(EncapMode::CrossSubnet))]);
        assert_eq!(tunnel6_to(&cross, Tunnel::Vxlan, Some(subnet6), Some(near), Some(pods6)), Tunnel::None);
        assert_eq!(tunnel6_to(&cross, Tunnel::None, Some(subnet6), Some(far), Some(pods6)), Tunnel::Vxlan);
        assert_eq!(tunnel6_to(&cross, Tunnel::None, Some(subnet6), Some(near), "fd00:99::/64".parse().ok()), Tunnel::None, "pods outside the pool: as IPv4");
    }
}
