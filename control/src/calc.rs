//! The calculation from cluster state to data-plane tables: this node's pod subnets (IPv4,
//! and IPv6 for dual stack) to its local pods, every other node's subnets to that node
//! (VTEP MAC, underlay address, the resolved next-hop MAC and the tunnel its IP pool and
//! subnet call for; its IPv6 underlay when both nodes have one), and the way out of the cluster (the outside routes, the pools with
//! natOutgoing, the default gateway's MAC).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use encap::ethernet::EthernetAddress;
use forwarder::{Endpoint, NodeConfig, Outside, RemoteNode, RouteTarget, Snapshot, Tunnel, route::RouteTable};

use crate::cluster::{ClusterState, NodeInfo};

/// The underlay MACs the agent has resolved from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbours {
    /// The next-hop MAC toward each other node, by its address.
    pub peers: HashMap<Ipv4Addr, EthernetAddress>,
    /// The same over the IPv6 underlay, by the node's IPv6 address.
    pub peers6: HashMap<Ipv6Addr, EthernetAddress>,
    /// The default gateway's MAC, when a pool NATs pods out through it.
    pub gateway: Option<EthernetAddress>,
}

/// How this node reaches another node's pods, per family (IPv6: over the IPv6 underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnels {
    pub v4: Tunnel,
    pub v6: Tunnel,
}

/// This node as the calculation sees it.
#[derive(Debug, Clone, Copy)]
pub struct ThisNode<'a> {
    pub config: &'a NodeConfig,
    /// Its Node manifest's name.
    pub name: &'a str,
    /// The networks outside the cluster it routes to (`--routes`), every version's start.
    pub outside_routes: &'a RouteTable<RouteTarget>,
}

/// Builds table version `version` for node `me`; `tunnel_to` says how each other node is
/// reached.
pub fn snapshot(
    version: u64,
    me: ThisNode<'_>,
    cluster: &ClusterState,
    endpoints: impl IntoIterator<Item = Endpoint>,
    neighbours: &Neighbours,
    tunnel_to: impl Fn(&NodeInfo) -> Tunnels,
) -> Snapshot {
    let node = me.config;
    let mut snap = Snapshot::new(version, node.clone());
    snap.routes = me.outside_routes.clone();
    if let Some(mine) = cluster.nodes.get(me.name) {
        snap.routes.insert(mine.pod_cidr, RouteTarget::LocalPods);
        if let Some(p6) = mine.pod_cidr6 {
            snap.routes6.insert(p6, RouteTarget::LocalPods);
        }
    }
    for ep in endpoints {
        snap.add_endpoint(ep);
    }
    for (name, info) in &cluster.nodes {
        if name == me.name {
            continue;
        }
        let next_hop = neighbours.peers.get(&info.address).copied();
        let tunnels = tunnel_to(info);
        let mut remote = RemoteNode::new(node, name.clone(), info.address, info.vtep_mac, next_hop, tunnels.v4);
        if let Some(a6) = info.address6 {
            remote = remote.with_underlay6(node, a6, info.vtep_mac6, neighbours.peers6.get(&a6).copied(), tunnels.v6);
        }
        let idx = snap.add_node(remote);
        snap.routes.insert(info.pod_cidr, RouteTarget::Node(idx));
        if let Some(p6) = info.pod_cidr6 {
            snap.routes6.insert(p6, RouteTarget::Node(idx));
        }
    }
    snap.outside = Outside {
        nat_sources: cluster.pools.values().filter(|p| p.nat_outgoing).map(|p| p.cidr).collect(),
        pools: cluster.pools.values().map(|p| p.cidr).collect(),
        next_hop_mac: neighbours.gateway,
    };
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::read_documents;
    use encap::vxlan::VxlanProfile;

    #[test]
    fn routes_every_other_node_and_keeps_unresolved_ones_without_encap() {
        let mut cluster = ClusterState::default();
        for (n, i) in [("n1", 1), ("n2", 2), ("n3", 3)] {
            let y = format!(
                "kind: Node\nmetadata: {{name: {n}}}\nspec: {{podCIDR: 10.244.{i}.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.100.0.{}}}]}}\n",
                10 + i
            );
            read_documents(&y, "n.yaml", &mut cluster).unwrap();
        }
        let node = NodeConfig {
            node_ip: Ipv4Addr::new(10, 100, 0, 11),
            node_ip6: None,
            uplink_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            gateway_mac: EthernetAddress([0xee; 6]),
            vxlan: VxlanProfile::FLANNEL,
            uplink_mtu: 1500,
        };
        let neigh = Neighbours { peers: HashMap::from([(Ipv4Addr::new(10, 100, 0, 12), EthernetAddress([2, 0, 0, 0, 0, 12]))]), gateway: None, ..Default::default() };
        let outside = crate::routes::parse("0.0.0.0/0\n10.244.2.0/23\n").unwrap();
        let me = ThisNode { config: &node, name: "n1", outside_routes: &outside };
        let snap = snapshot(7, me, &cluster, [], &neigh, |n| {
            let t = if n.name == "n3" { Tunnel::Ipip } else { Tunnel::Vxlan };
            Tunnels { v4: t, v6: t }
        });
        assert_eq!(snap.version, 7);
        assert_eq!(snap.routes.lookup(Ipv4Addr::new(10, 244, 1, 5)), Some(RouteTarget::LocalPods));
        let RouteTarget::Node(i2) = snap.routes.lookup(Ipv4Addr::new(10, 244, 2, 5)).unwrap() else { panic!() };
        let RouteTarget::Node(i3) = snap.routes.lookup(Ipv4Addr::new(10, 244, 3, 5)).unwrap() else { panic!() };
        assert!(snap.nodes[i2 as usize].vxlan.is_some());
        assert_eq!(snap.nodes[i3 as usize].tunnel, Tunnel::Ipip);
        assert!(snap.nodes[i3 as usize].ipip.is_none(), "n3's next hop is unresolved");
        assert_eq!(snap.routes.lookup(Ipv4Addr::new(10, 245, 0, 1)), Some(RouteTarget::Outside));
        assert_eq!(snap.routes.lookup(Ipv4Addr::new(10, 244, 4, 1)), Some(RouteTarget::Outside), "the pods' routes are longer");
        assert_eq!(outside.len(), 2, "the outside table itself is not changed");
    }
}
