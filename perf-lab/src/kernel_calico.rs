//! A node wired exactly as calico-node (VXLAN mode, Felix's route and device programming)
//! and the Calico CNI plugin wire it:
//!
//! - `vxlan.calico`: vxlan id 4096, `local` = node IP, `dev eth0`, dstport 4789,
//!   `nolearning`, MTU the uplink's less 50, address = the node's tunnel address (here `<pod subnet>.0/32`,
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
//!
//! Dual stack, over an IPv6 underlay ([`setup_node6`], [`add_peer6`]): `vxlan-v6.calico`
//! (the same VNI and port, `local` = the node's IPv6 address, MTU the uplink's less 70,
//! address `<IPv6 pod subnet>::/128`, its MAC published as
//! `projectcalico.org/VXLANTunnelMACAddrV6`, the node's address as
//! `projectcalico.org/IPv6Address`); each pod also gets its IPv6 `/128` and `default via
//! fe80::ecee:eeff:feee:eeee` (the host veth's link-local address, from its MAC), the host
//! a `/128` route to it; each peer the same three entries as for IPv4, in IPv6.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::kernel_flannel::{self, Peer, cidr_network};
use crate::netns::{self, ip};

pub const VXLAN_DEV: &str = "vxlan.calico";
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

/// Creates `vxlan.calico` in node namespace `ns`, for pods of MTU `mtu`; returns its MAC.
pub fn setup_node(ns: &str, node_ip: Ipv4Addr, pod_cidr: &str, mtu: u32) -> Result<String> {
    let (vni, port, mtu) = (VNI.to_string(), VXLAN_PORT.to_string(), mtu.to_string());
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

/// Bytes VXLAN adds over an IPv6 underlay (outer Ethernet 14, IPv6 40, UDP 8, VXLAN 8).
pub const VXLAN6_OVERHEAD: u32 = 70;
pub const VXLAN6_DEV: &str = "vxlan-v6.calico";
/// The IPv6 gateway of a Calico pod: the link-local address of the host veth's MAC
/// [`HOST_VETH_MAC`].
pub const GATEWAY6: &str = "fe80::ecee:eeff:feee:eeee";

/// The IPv6 tunnel address of a node with IPv6 pod subnet `pod_cidr6` (its first address).
pub fn tunnel_addr6(pod_cidr6: &str) -> Result<Ipv6Addr> {
    let (net, _) = pod_cidr6.split_once('/').with_context(|| format!("{pod_cidr6:?} is no IPv6 CIDR"))?;
    net.parse().with_context(|| format!("{pod_cidr6:?} is no IPv6 CIDR"))
}

/// Creates `vxlan-v6.calico` in node namespace `ns` (IPv6 underlay address `node_ip6`, IPv6
/// pod subnet `pod_cidr6`), for pods of MTU `mtu`; returns its MAC.
pub fn setup_node6(ns: &str, node_ip6: Ipv6Addr, pod_cidr6: &str, mtu: u32) -> Result<String> {
    let (vni, port, mtu) = (VNI.to_string(), VXLAN_PORT.to_string(), mtu.to_string());
    netns::sysctl(ns, "net.ipv6.conf.all.forwarding", "1")?;
    // The pods' veths come up at once, without duplicate address detection (as a CNI
    // plugin's fresh veths do in practice: nothing else holds their addresses).
    netns::sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
    ip(ns, &["link", "add", VXLAN6_DEV, "type", "vxlan", "id", &vni, "local", &node_ip6.to_string(), "dev", "eth0", "dstport", &port, "nolearning"])?;
    ip(ns, &["link", "set", VXLAN6_DEV, "mtu", &mtu])?;
    ip(ns, &["addr", "add", &format!("{}/128", tunnel_addr6(pod_cidr6)?), "dev", VXLAN6_DEV, "nodad"])?;
    ip(ns, &["link", "set", VXLAN6_DEV, "up"])?;
    netns::link_mac(ns, VXLAN6_DEV)
}

/// What Felix programs for IPv6 peer `p` (tunnel address: its IPv6 subnet's first
/// address): the IPv4 recipe of [`add_peer`] on `vxlan-v6.calico`, in IPv6.
pub fn add_peer6(ns: &str, p: &Peer<Ipv6Addr>) -> Result<()> {
    kernel_flannel::add_peer_on(ns, VXLAN6_DEV, p, tunnel_addr6(&p.pod_cidr)?)
}

/// The device the lab node routes 169.254.1.1 to (see [`setup_node`]).
const GATEWAY_DEV: &str = "tw-gw";

/// Wires pod namespace `pod_ns` (already created) as the Calico CNI plugin does, with the
/// host side `host_veth` in `node_ns`, with MTU `mtu`. Returns the pod's address
/// `<subnet>.(j+1)` and, with an IPv6 subnet `pod_cidr6`, its IPv6 address `<subnet6>::(j+1)`.
pub fn add_pod(node_ns: &str, (pod_cidr, pod_cidr6): (&str, Option<&str>), pod_ns: &str, (j, mtu): (u32, u32), host_veth: &str) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
    let addr = Ipv4Addr::from(u32::from(cidr_network(pod_cidr)?) + j + 1);
    let addr6 = pod_cidr6.map(|c| tunnel_addr6(c).map(|n| Ipv6Addr::from(u128::from(n) + u128::from(j) + 1))).transpose()?;
    let mtu = mtu.to_string();
    if addr6.is_some() {
        netns::sysctl(pod_ns, "net.ipv6.conf.default.accept_dad", "0")?;
    }
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
    if let Some(a6) = addr6 {
        ip(node_ns, &["-6", "route", "add", &format!("{a6}/128"), "dev", host_veth])?;
        ip(pod_ns, &["-6", "addr", "add", &format!("{a6}/128"), "dev", "eth0", "nodad"])?;
        ip(pod_ns, &["-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"])?;
    }
    Ok((addr, addr6))
}

/// What Felix programs for peer `p` (whose tunnel address is its subnet's first address):
/// onlink route, permanent neighbour, FDB entry — the Flannel recipe on `vxlan.calico`.
pub fn add_peer(ns: &str, p: &Peer) -> Result<()> {
    kernel_flannel::add_peer_on(ns, VXLAN_DEV, p, tunnel_addr(&p.pod_cidr)?)
}
