//! A node wired exactly as flanneld (vxlan backend, kube subnet manager) and the bridge CNI
//! plugin (flannel's delegate config: `cni0`, host-local IPAM, default gateway) wire it:
//!
//! - `flannel.1`: vxlan id 1, `local` = node IP, `dev eth0`, dstport 8472, `nolearning`,
//!   MTU the uplink's less 50 (1450 on a 1500-byte uplink), address `<pod subnet>.0/32`;
//! - `cni0`: bridge with `<pod subnet>.1/24`, the same MTU; each pod a veth on it (hairpin on),
//!   the pod side `eth0` with `<pod subnet>.(j+1)/24` and `default via <pod subnet>.1`;
//! - per peer node k: `route 10.244.k.0/24 via 10.244.k.0 dev flannel.1 onlink`, a permanent
//!   neighbour 10.244.k.0 → k's VTEP MAC, and an FDB entry VTEP MAC → k's node IP.
//!
//! The node's VTEP MAC is read back from `flannel.1` and published in its Node annotation.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};

use crate::netns::{self, ip};

pub const VXLAN_DEV: &str = "flannel.1";
pub const BRIDGE: &str = "cni0";
/// VXLAN's overhead on an IPv4 underlay: the pod MTU is the uplink's less this, as flanneld
/// and calico-node set it.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;

/// What a flannel node needs to know about a peer to reach its pods.
#[derive(Debug, Clone)]
pub struct Peer<A = Ipv4Addr> {
    /// e.g. "10.244.2.0/24" (IPv6: "fd00:10:244:2::/64")
    pub pod_cidr: String,
    pub node_ip: A,
    pub vtep_mac: String,
}

/// The network address of a `a.b.c.d/len` CIDR: flannel's per-node tunnel address.
pub fn cidr_network(cidr: &str) -> Result<Ipv4Addr> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| anyhow!("`{cidr}` is not a CIDR (want a.b.c.d/len)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("`{cidr}`: bad address"))?;
    let len: u32 = len
        .parse()
        .with_context(|| format!("`{cidr}`: bad prefix length"))?;
    anyhow::ensure!(len <= 32, "`{cidr}`: prefix length over 32");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(Ipv4Addr::from(u32::from(addr) & mask))
}

fn host(cidr: &str, n: u32) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(u32::from(cidr_network(cidr)?) + n))
}

/// Creates `flannel.1` and `cni0` in node namespace `ns`, for pods of MTU `mtu`; returns
/// the VTEP MAC.
pub fn setup_node(ns: &str, node_ip: Ipv4Addr, pod_cidr: &str, mtu: u32) -> Result<String> {
    let local = node_ip.to_string();
    let (vni, port, mtu) = (VNI.to_string(), VXLAN_PORT.to_string(), mtu.to_string());
    ip(
        ns,
        &[
            "link",
            "add",
            VXLAN_DEV,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            &port,
            "nolearning",
        ],
    )?;
    ip(ns, &["link", "set", VXLAN_DEV, "mtu", &mtu])?;
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/32", cidr_network(pod_cidr)?),
            "dev",
            VXLAN_DEV,
        ],
    )?;
    ip(ns, &["link", "set", VXLAN_DEV, "up"])?;

    ip(ns, &["link", "add", BRIDGE, "type", "bridge"])?;
    ip(ns, &["link", "set", BRIDGE, "mtu", &mtu])?;
    let prefix = pod_cidr.split_once('/').map(|(_, l)| l).unwrap_or("24");
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/{prefix}", host(pod_cidr, 1)?),
            "dev",
            BRIDGE,
        ],
    )?;
    ip(ns, &["link", "set", BRIDGE, "up"])?;
    netns::link_mac(ns, VXLAN_DEV)
}

/// Wires pod namespace `pod_ns` (already created) as the bridge plugin does, with MTU
/// `mtu`; the host side of the veth is `host_veth` in `node_ns`. Returns the pod's address
/// `<subnet>.(j+1)`.
pub fn add_pod(
    node_ns: &str,
    pod_cidr: &str,
    pod_ns: &str,
    (j, mtu): (u32, u32),
    host_veth: &str,
) -> Result<Ipv4Addr> {
    let addr = host(pod_cidr, j + 1)?;
    let gw = host(pod_cidr, 1)?.to_string();
    let prefix = pod_cidr.split_once('/').map(|(_, l)| l).unwrap_or("24");
    let mtu = mtu.to_string();
    ip(
        node_ns,
        &[
            "link", "add", host_veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "netns", pod_ns,
        ],
    )?;
    ip(node_ns, &["link", "set", host_veth, "master", BRIDGE])?;
    netns::exec(
        node_ns,
        "bridge",
        &["link", "set", "dev", host_veth, "hairpin", "on"],
    )?;
    ip(node_ns, &["link", "set", host_veth, "up"])?;
    ip(
        pod_ns,
        &["addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"],
    )?;
    ip(pod_ns, &["link", "set", "eth0", "up"])?;
    ip(
        pod_ns,
        &["route", "add", "default", "via", &gw, "dev", "eth0"],
    )?;
    Ok(addr)
}

/// Makes the node's uplink finish checksums in software before frames leave, as a real
/// NIC's checksum offload does. On veth the kernel otherwise hands CHECKSUM_PARTIAL frames
/// (inner TCP/UDP checksum = pseudo-header sum only) to the peer, which only another kernel
/// can accept; an AF_XDP receiver, like a real wire, sees the unfinished bytes. Used when a
/// Flannel node talks to twill nodes (kernel-only clusters keep their offloads) and on the
/// lab's router, the outside world of NAT'd pod traffic.
pub fn finish_checksums_on_uplink(ns: &str) -> Result<()> {
    netns::exec(ns, "ethtool", &["-K", "eth0", "tx", "off"])
        .with_context(|| format!("turning off TX checksum offload on eth0 in {ns} (needs ethtool)"))?;
    Ok(())
}

/// What flanneld does when it sees peer `p`: route, permanent neighbour, FDB entry.
pub fn add_peer(ns: &str, p: &Peer) -> Result<()> {
    add_peer_on(ns, VXLAN_DEV, p, cidr_network(&p.pod_cidr)?)
}

/// The peer recipe flanneld and Felix share, on vxlan device `dev`: `route <pod cidr> via
/// <tunnel> dev <dev> onlink`, a permanent neighbour `<tunnel>` → the peer's VTEP MAC, an
/// FDB entry VTEP MAC → the peer's node IP. IPv4 or, over an IPv6 underlay, IPv6 throughout.
pub fn add_peer_on<A: std::fmt::Display>(ns: &str, dev: &str, p: &Peer<A>, tunnel: A) -> Result<()> {
    let tunnel = tunnel.to_string();
    ip(
        ns,
        &[
            "route",
            "replace",
            &p.pod_cidr,
            "via",
            &tunnel,
            "dev",
            dev,
            "onlink",
        ],
    )?;
    ip(
        ns,
        &[
            "neigh",
            "replace",
            &tunnel,
            "lladdr",
            &p.vtep_mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )?;
    netns::exec(
        ns,
        "bridge",
        &[
            "fdb",
            "append",
            &p.vtep_mac,
            "dev",
            dev,
            "dst",
            &p.node_ip.to_string(),
            "self",
            "permanent",
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_network_and_hosts() {
        assert_eq!(
            cidr_network("10.244.3.0/24").unwrap(),
            Ipv4Addr::new(10, 244, 3, 0)
        );
        assert_eq!(
            cidr_network("10.244.3.77/24").unwrap(),
            Ipv4Addr::new(10, 244, 3, 0)
        );
        assert_eq!(
            host("10.244.3.0/24", 3).unwrap(),
            Ipv4Addr::new(10, 244, 3, 3)
        );
        assert!(cidr_network("10.244.3.0").is_err());
        assert!(cidr_network("10.244.3.0/33").is_err());
    }
}
