//! A node wired exactly as calico-node (VXLAN mode, Felix's route and device programming)
//! and the Calico CNI plugin wire it:
//!
//! - `vxlan.calico`: vxlan id 4096, `local` = node IP, `dev eth0`, dstport 4789,
//!   `nolearning`, MTU 1450, address = the node's tunnel address (here `<pod subnet>.0/32`,
//!   published as `projectcalico.org/IPv4VXLANTunnelAddr`); its MAC published as
//!   `projectcalico.org/VXLANTunnelMACAddr`;
//! - a route for 169.254.1.1 out of a stand-in device (on a real node the default route), so
//!   proxy ARP answers for it;
//! - each pod: a veth `cali<j>` (host side: no address, MAC `ee:ee:ee:ee:ee:ee`,
//!   `proxy_arp` on, `neigh proxy_delay` 0, forwarding on) whose pod side `eth0` has the
//!   pod's `/32`, `169.254.1.1 dev eth0 scope link` and `default via 169.254.1.1`; on the
//!   host `route <pod ip>/32 dev cali<j> scope link`;
//! - per peer node k: `route 10.244.k.0/24 via <k's tunnel address> dev vxlan.calico
//!   onlink`, a permanent neighbour <k's tunnel address> → k's VTEP MAC, and an FDB entry
//!   VTEP MAC → k's node IP (Felix's vxlan manager programs the same three).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::kernel_flannel::{self, Peer, cidr_network};
use crate::netns::{self, ip};

pub const VXLAN_DEV: &str = "vxlan.calico";
pub const MTU: u32 = 1450;
pub const VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// The MAC Calico gives the host side of every pod veth.
pub const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' default gateway (answered by proxy ARP on the host side).
pub const GATEWAY: &str = "169.254.1.1";

/// The tunnel address of a node with pod subnet `pod_cidr` (what Calico IPAM gives
/// `vxlan.calico` from the node's block; here the block's first address).
pub fn tunnel_addr(pod_cidr: &str) -> Result<Ipv4Addr> {
    cidr_network(pod_cidr)
}

/// Creates `vxlan.calico` in node namespace `ns`; returns its MAC.
pub fn setup_node(ns: &str, node_ip: Ipv4Addr, pod_cidr: &str) -> Result<String> {
    let (vni, port, mtu) = (VNI.to_string(), VXLAN_PORT.to_string(), MTU.to_string());
    ip(ns, &["link", "add", VXLAN_DEV, "type", "vxlan", "id", &vni, "local", &node_ip.to_string(), "dev", "eth0", "dstport", &port, "nolearning"])?;
    ip(ns, &["link", "set", VXLAN_DEV, "mtu", &mtu])?;
    ip(ns, &["addr", "add", &format!("{}/32", tunnel_addr(pod_cidr)?), "dev", VXLAN_DEV])?;
    ip(ns, &["link", "set", VXLAN_DEV, "up"])?;
    // Proxy ARP answers for 169.254.1.1 only when the node routes it out of another device;
    // a real node's default route does that, the lab node has none: give it a stand-in
    // device (a veth pair inside the node; this kernel has no dummy devices).
    ip(ns, &["link", "add", GATEWAY_DEV, "type", "veth", "peer", "name", "tw-gw-peer"])?;
    ip(ns, &["link", "set", "tw-gw-peer", "up"])?;
    ip(ns, &["link", "set", GATEWAY_DEV, "up"])?;
    ip(ns, &["route", "add", &format!("{GATEWAY}/32"), "dev", GATEWAY_DEV])?;
    netns::link_mac(ns, VXLAN_DEV)
}

/// The device the lab node routes 169.254.1.1 to (see [`setup_node`]).
const GATEWAY_DEV: &str = "tw-gw";

/// Wires pod namespace `pod_ns` (already created) as the Calico CNI plugin does, with the
/// host side `host_veth` in `node_ns`. Returns the pod's address `<subnet>.(j+1)`.
pub fn add_pod(node_ns: &str, pod_cidr: &str, pod_ns: &str, j: u32, host_veth: &str) -> Result<Ipv4Addr> {
    let addr = Ipv4Addr::from(u32::from(cidr_network(pod_cidr)?) + j + 1);
    let mtu = MTU.to_string();
    ip(node_ns, &["link", "add", host_veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu, "netns", pod_ns])?;
    ip(node_ns, &["link", "set", host_veth, "address", HOST_VETH_MAC])?;
    for (key, value) in [
        (format!("net.ipv4.conf.{host_veth}.proxy_arp"), "1"),
        (format!("net.ipv4.neigh.{host_veth}.proxy_delay"), "0"),
        (format!("net.ipv4.conf.{host_veth}.forwarding"), "1"),
    ] {
        netns::sysctl(node_ns, &key, value).with_context(|| format!("{key} on the Calico node"))?;
    }
    ip(node_ns, &["link", "set", host_veth, "up"])?;
    ip(node_ns, &["route", "add", &format!("{addr}/32"), "dev", host_veth, "scope", "link"])?;
    ip(pod_ns, &["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
    ip(pod_ns, &["link", "set", "eth0", "up"])?;
    ip(pod_ns, &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
    ip(pod_ns, &["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
    Ok(addr)
}

/// What Felix programs for peer `p` (whose tunnel address is its subnet's first address):
/// onlink route, permanent neighbour, FDB entry — the Flannel recipe on `vxlan.calico`.
pub fn add_peer(ns: &str, p: &Peer) -> Result<()> {
    kernel_flannel::add_peer_on(ns, VXLAN_DEV, p, tunnel_addr(&p.pod_cidr)?)
}
