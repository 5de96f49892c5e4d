//! The tables the pipeline reads, as one immutable [`Snapshot`], and their publication.
//!
//! The control thread builds a whole new snapshot off the fast path and swaps one pointer
//! ([`Tables::publish`], arc-swap: RCU without epochs to manage). A worker loads the current
//! snapshot once per batch, so every packet of a batch is judged by one version; the old
//! version is freed by the control thread once no worker holds it ([`Tables::publish`]).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use encap::{
    ethernet::EthernetAddress,
    ipip::IpipEncap,
    vxlan::{VxlanEncap, VxlanProfile},
    vxlan6::VxlanEncap6,
};

use policy_engine::{compiler::PolicyTables, fxhash::FxBuildHasher};

use crate::route::{Ipv4Prefix, Route6Table, RouteTable};

/// An interface socket the forwarder serves, as the tables name it. Ids below
/// [`MAX_UPLINK_QUEUES`] are the uplink's sockets (id = queue); pod ports follow. In a
/// [`crate::pipeline::Verdict`], [`UPLINK`] means "the uplink, on this worker's own socket".
pub type PortId = u16;

/// The uplink, as a destination.
pub const UPLINK: PortId = 0;

/// Uplink queues a node can serve; pod port ids start here.
pub const MAX_UPLINK_QUEUES: usize = 64;

/// Whether `port` is one of the uplink's sockets.
#[inline]
pub const fn is_uplink(port: PortId) -> bool {
    (port as usize) < MAX_UPLINK_QUEUES
}

/// Ports per node, the uplink included.
pub const MAX_PORTS: usize = 1024;

/// The address pods use as their default gateway (they ARP for it; the forwarder answers).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 default gateway of dual-stack pods, a link-local address as the ecosystem uses
/// (they solicit it by Neighbor Discovery; the forwarder advertises [`NodeConfig::gateway_mac`]).
pub const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// How traffic to one other node is carried (the control plane decides per node, from
/// the IP pool of its pods and whether it shares this node's underlay subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// VXLAN with this node's profile (Flannel's `flannel.1`, Calico's `vxlan.calico`).
    Vxlan,
    /// IPv4-in-IPv4 (Calico's `tunl0`).
    Ipip,
    /// No encapsulation: the frame goes to the next hop's MAC (Flannel host-gw, Calico
    /// BGP mode, either mode's CrossSubnet inside one subnet).
    None,
}

impl Tunnel {
    /// Its name in the agent's reports: `vxlan`, `ipip`, `direct`.
    pub const fn name(self) -> &'static str {
        match self {
            Tunnel::Vxlan => "vxlan",
            Tunnel::Ipip => "ipip",
            Tunnel::None => "direct",
        }
    }

    /// Bytes the tunnel adds to a pod's IPv4 packet on the wire.
    pub const fn overhead(self) -> usize {
        match self {
            Tunnel::Vxlan => encap::vxlan::OVERHEAD,
            Tunnel::Ipip => encap::ipip::OVERHEAD,
            Tunnel::None => 0,
        }
    }
}

/// This node, as the pipeline needs it.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_ip: Ipv4Addr,
    /// The node's IPv6 underlay address, when it has one: IPv6 pod traffic to a node that
    /// has one too goes inside VXLAN over IPv6 ([`Underlay6`]).
    pub node_ip6: Option<Ipv6Addr>,
    pub uplink_mac: EthernetAddress,
    /// Inner source MAC of encapsulated frames and inner destination MAC accepted on decap.
    pub vtep_mac: EthernetAddress,
    /// The MAC the forwarder answers ARP for [`GATEWAY_IP`] with.
    pub gateway_mac: EthernetAddress,
    /// The VXLAN this node speaks (VNI and UDP port), to send and to accept.
    pub vxlan: VxlanProfile,
    /// MTU of the uplink (IP bytes per frame).
    pub uplink_mtu: u16,
}

/// A pod on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, when it is dual-stack.
    pub ip6: Option<Ipv6Addr>,
    pub mac: EthernetAddress,
    pub port: PortId,
    /// The worker that owns `port`.
    pub worker: u16,
}

/// Another node of the cluster.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: EthernetAddress,
    /// MAC of the underlay next hop, from the neighbour table; `None` while unresolved.
    pub next_hop_mac: Option<EthernetAddress>,
    /// How traffic to its pods is carried.
    pub tunnel: Tunnel,
    /// Precomputed outer headers, present when the next hop is resolved and the tunnel
    /// needs them.
    pub vxlan: Option<VxlanEncap>,
    pub ipip: Option<IpipEncap>,
    /// Its IPv6 underlay, when both it and this node have one and its pods are reached
    /// through VXLAN or directly.
    pub underlay6: Option<Underlay6>,
}

/// Another node's IPv6 underlay: IPv6 pod traffic to it goes inside VXLAN over IPv6, as
/// Calico's `vxlan-v6.calico` and Flannel's `flannel-v6.1` carry it, or directly to its
/// IPv6 address (host-gw, BGP mode) (IPv4 pod traffic stays on the IPv4 underlay).
#[derive(Debug, Clone)]
pub struct Underlay6 {
    pub ip: Ipv6Addr,
    /// How IPv6 pod traffic to it is carried over this underlay: VXLAN or directly (its
    /// IPv6 pool's vxlanMode, or as its IPv4 pods are).
    pub tunnel: Tunnel,
    /// Inner destination MAC of its IPv6 VXLAN (Calico: `vxlanTunnelMACAddrV6`).
    pub vtep_mac: EthernetAddress,
    /// MAC of the IPv6 underlay next hop, from the neighbour table; `None` while unresolved.
    pub next_hop_mac: Option<EthernetAddress>,
    /// Precomputed outer headers, present when the next hop is resolved and the node is
    /// reached through VXLAN.
    pub vxlan: Option<VxlanEncap6>,
}

impl RemoteNode {
    /// A node reached through `tunnel`; the outer header template is derived from `local`
    /// when `next_hop_mac` is known.
    pub fn new(
        local: &NodeConfig,
        name: String,
        underlay_ip: Ipv4Addr,
        vtep_mac: EthernetAddress,
        next_hop_mac: Option<EthernetAddress>,
        tunnel: Tunnel,
    ) -> Self {
        let vxlan = match (tunnel, next_hop_mac) {
            (Tunnel::Vxlan, Some(mac)) => Some(VxlanEncap::new(local.uplink_mac, mac, local.node_ip, underlay_ip, local.vxlan)),
            _ => None,
        };
        let ipip = match (tunnel, next_hop_mac) {
            (Tunnel::Ipip, Some(mac)) => Some(IpipEncap::new(local.uplink_mac, mac, local.node_ip, underlay_ip)),
            _ => None,
        };
        RemoteNode { name, underlay_ip, vtep_mac, next_hop_mac, tunnel, vxlan, ipip, underlay6: None }
    }

    /// This node with the IPv6 underlay address `ip` (VXLAN inner destination `vtep_mac`,
    /// next hop `next_hop_mac`), its IPv6 pods reached through `tunnel`: kept only when
    /// `local` has an IPv6 underlay address too and `tunnel` is VXLAN or direct (IP-in-IP
    /// carries no IPv6).
    pub fn with_underlay6(mut self, local: &NodeConfig, ip: Ipv6Addr, vtep_mac: EthernetAddress, next_hop_mac: Option<EthernetAddress>, tunnel: Tunnel) -> Self {
        let Some(local_ip) = local.node_ip6.filter(|_| tunnel != Tunnel::Ipip) else {
            return self;
        };
        let vxlan = next_hop_mac.filter(|_| tunnel == Tunnel::Vxlan).map(|mac| VxlanEncap6::new(local.uplink_mac, mac, local_ip, ip, local.vxlan));
        self.underlay6 = Some(Underlay6 { ip, tunnel, vtep_mac, next_hop_mac, vxlan });
        self
    }
}

/// Where a route leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// This node's pod subnet: the endpoint table says which port.
    LocalPods,
    /// A remote node's pod subnet: index into [`Snapshot::nodes`].
    Node(u32),
    /// A network outside the cluster (the agent's `--routes`, such as a full BGP table),
    /// reached through the uplink's default gateway: pods send there with their own
    /// addresses, or with the node's when their pool has natOutgoing.
    Outside,
}

/// One version of every table the pipeline reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    pub node: NodeConfig,
    pub routes: RouteTable<RouteTarget>,
    /// The IPv6 pod subnets (dual stack): the same targets as [`Snapshot::routes`].
    pub routes6: Route6Table<RouteTarget>,
    pub endpoints: HashMap<Ipv4Addr, Endpoint, FxBuildHasher>,
    pub endpoints6: HashMap<Ipv6Addr, Endpoint, FxBuildHasher>,
    /// The endpoint behind each port, for anti-spoofing; indexed by [`PortId`].
    pub ports: Vec<Option<Endpoint>>,
    pub nodes: Vec<RemoteNode>,
    pub nodes_by_ip: HashMap<Ipv4Addr, u32, FxBuildHasher>,
    /// The nodes with an IPv6 underlay ([`RemoteNode::underlay6`]), by that address.
    pub nodes_by_ip6: HashMap<Ipv6Addr, u32, FxBuildHasher>,
    /// Compiled network policy: every endpoint of the cluster with its address sets and,
    /// for the pipeline's new connections, its rule sets.
    pub policy: Arc<PolicyTables>,
    /// Where pod traffic to addresses outside the cluster goes.
    pub outside: Outside,
}

/// Pod traffic to addresses outside every IP pool: which pods' traffic leaves with the
/// node's address (Calico's `natOutgoing`), and through which next hop any of it leaves.
#[derive(Debug, Clone, Default)]
pub struct Outside {
    /// Pods whose connections to the outside are translated: the pools with natOutgoing.
    pub nat_sources: Vec<Ipv4Prefix>,
    /// Every pool: a destination inside one is never translated.
    pub pools: Vec<Ipv4Prefix>,
    /// The MAC of the uplink's default gateway, through which traffic leaves the cluster;
    /// `None` while it is unresolved (or there is no default route).
    pub next_hop_mac: Option<EthernetAddress>,
}

impl Outside {
    /// Whether a packet from `src` to `dst` leaves the cluster through NAT.
    #[inline]
    pub fn translates(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.nat_sources.iter().any(|p| p.contains(src)) && !self.pools.iter().any(|p| p.contains(dst))
    }
}

impl Snapshot {
    /// An empty table set for `node` (no routes, no pods, no peers).
    pub fn new(version: u64, node: NodeConfig) -> Self {
        Snapshot {
            version,
            node,
            routes: RouteTable::default(),
            routes6: Route6Table::default(),
            endpoints: HashMap::default(),
            endpoints6: HashMap::default(),
            ports: vec![None; MAX_PORTS],
            nodes: Vec::new(),
            nodes_by_ip: HashMap::default(),
            nodes_by_ip6: HashMap::default(),
            policy: Arc::default(),
            outside: Outside::default(),
        }
    }

    /// Adds a local pod.
    pub fn add_endpoint(&mut self, ep: Endpoint) {
        self.endpoints.insert(ep.ip, ep);
        if let Some(ip6) = ep.ip6 {
            self.endpoints6.insert(ip6, ep);
        }
        if let Some(slot) = self.ports.get_mut(ep.port as usize) {
            *slot = Some(ep);
        }
    }

    /// Adds a remote node and returns its index for [`RouteTarget::Node`].
    pub fn add_node(&mut self, node: RemoteNode) -> u32 {
        let idx = self.nodes.len() as u32;
        self.nodes_by_ip.insert(node.underlay_ip, idx);
        if let Some(u) = &node.underlay6 {
            self.nodes_by_ip6.insert(u.ip, idx);
        }
        self.nodes.push(node);
        idx
    }

    /// The endpoint behind `port`.
    #[inline]
    pub fn port_endpoint(&self, port: PortId) -> Option<&Endpoint> {
        self.ports.get(port as usize).and_then(Option::as_ref)
    }
}

/// The published snapshot, shared by the control thread (writer) and the workers (readers).
#[derive(Debug)]
pub struct Tables {
    current: ArcSwap<Snapshot>,
    /// Replaced versions, kept until no worker holds them, so that the control thread, not
    /// a worker between two batches, frees them.
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

impl Tables {
    pub fn new(first: Snapshot) -> Self {
        Tables { current: ArcSwap::from_pointee(first), retired: Mutex::new(Vec::new()) }
    }

    /// Makes `next` the version every worker uses from its next batch on. The version it
    /// replaces is kept in [`Tables::retired`] and freed by a later publish once no worker
    /// holds it: a worker whose guard were the last reference would otherwise free the
    /// tables between two batches (milliseconds for a large version, while its rings fill).
    pub fn publish(&self, next: Snapshot) {
        let old = self.current.swap(Arc::new(next));
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|v| Arc::strong_count(v) > 1);
        retired.push(old);
    }

    /// The current version (cheap: no reference count traffic on the common path).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A counted reference to the current version, for the control thread.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}
