//! The calculation from cluster state to data-plane tables: this node's pod subnet to
//! its local pods, every other node's subnet to that node (VTEP MAC, underlay address, the
//! resolved next-hop MAC and the tunnel its IP pool and subnet call for), and the way out
//! of the cluster (the pools with natOutgoing, the default gateway's MAC).

use std::{collections::HashMap, net::Ipv4Addr};

use encap::ethernet::EthernetAddress;
use forwarder::{Endpoint, NodeConfig, Outside, RemoteNode, RouteTarget, Snapshot, Tunnel};

use crate::cluster::{ClusterState, NodeInfo};

/// The underlay MACs the agent has resolved from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbours {
    /// The next-hop MAC toward each other node, by its address.
    pub peers: HashMap<Ipv4Addr, EthernetAddress>,
    /// The default gateway's MAC, when a pool NATs pods out through it.
    pub gateway: Option<EthernetAddress>,
}

/// Builds table version `version` for node `me`; `tunnel_to` says how each other node is
/// reached.
pub fn snapshot(
    version: u64,
    node: &NodeConfig,
    me: &str,
    cluster: &ClusterState,
    endpoints: impl IntoIterator<Item = Endpoint>,
    neighbours: &Neighbours,
    tunnel_to: impl Fn(&NodeInfo) -> Tunnel,
) -> Snapshot {
    let mut snap = Snapshot::new(version, node.clone());
    if let Some(mine) = cluster.nodes.get(me) {
        snap.routes.insert(mine.pod_cidr, RouteTarget::LocalPods);
    }
    for ep in endpoints {
        snap.add_endpoint(ep);
    }
    for (name, info) in &cluster.nodes {
        if name == me {
            continue;
        }
        let next_hop = neighbours.peers.get(&info.address).copied();
        let idx = snap.add_node(RemoteNode::new(node, name.clone(), info.address, info.vtep_mac, next_hop, tunnel_to(info)));
        snap.routes.insert(info.pod_cidr, RouteTarget::Node(idx));
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
            uplink_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            gateway_mac: EthernetAddress([0xee; 6]),
            vxlan: VxlanProfile::FLANNEL,
            uplink_mtu: 1500,
        };
        let neigh = Neighbours { peers: HashMap::from([(Ipv4Addr::new(10, 100, 0, 12), EthernetAddress([2, 0, 0, 0, 0, 12]))]), gateway: None };
        let snap = snapshot(7, &node, "n1", &cluster, [], &neigh, |n| if n.name == "n3" { Tunnel::Ipip } else { Tunnel::Vxlan });
        assert_eq!(snap.version, 7);
        assert_eq!(snap.routes.lookup(Ipv4Addr::new(10, 244, 1, 5)), Some(RouteTarget::LocalPods));
        let RouteTarget::Node(i2) = snap.routes.lookup(Ipv4Addr::new(10, 244, 2, 5)).unwrap() else { panic!() };
        let RouteTarget::Node(i3) = snap.routes.lookup(Ipv4Addr::new(10, 244, 3, 5)).unwrap() else { panic!() };
        assert!(snap.nodes[i2 as usize].vxlan.is_some());
        assert_eq!(snap.nodes[i3 as usize].tunnel, Tunnel::Ipip);
        assert!(snap.nodes[i3 as usize].ipip.is_none(), "n3's next hop is unresolved");
        assert_eq!(snap.routes.lookup(Ipv4Addr::new(10, 245, 0, 1)), None);
    }
}
