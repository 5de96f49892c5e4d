//! The node the pipeline bench and the hitless harness run on: node A with one pod and
//! [`PEERS`] peer nodes reached over Flannel-style VXLAN, and the pod's 60-byte UDP or TCP
//! frames (64 bytes on the wire with the FCS). Also the benches' one random-number helper.

use std::net::Ipv4Addr;

use encap::{
    EtherType, EthernetAddress, IpProtocol,
    ethernet::{EthernetFrame, EthernetRepr},
    ipv4::{Ipv4Packet, Ipv4Repr},
    udp::{UdpPacket, UdpRepr},
    vxlan::VxlanProfile,
};
use forwarder::{Endpoint, NodeConfig, RemoteNode, RouteTarget, Snapshot, Tunnel, route::Ipv4Prefix};

pub const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 1, 2]);
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee; 6]);
/// The pod's port number in the snapshot.
pub const POD_PORT: u16 = 64;
/// Peer nodes in the snapshot.
pub const PEERS: u32 = 8;
/// Frames a worker handles per batch.
pub const BATCH: usize = 64;
/// Length of the frames [`frame`] writes.
pub const FRAME_LEN: usize = 60;

/// Node A: its underlay address, MACs and the Flannel VXLAN profile.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        node_ip: Ipv4Addr::new(10, 100, 0, 11),
        node_ip6: None,
        uplink_mac: EthernetAddress([2, 0, 0, 0, 0, 0x11]),
        vtep_mac: EthernetAddress([0x0e, 0xaa, 0, 0, 0, 1]),
        gateway_mac: GATEWAY_MAC,
        vxlan: VxlanProfile::FLANNEL,
        uplink_mtu: 1500,
    }
}

/// Peer `k`'s underlay address.
pub fn peer_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 0, 20 + k as u8)
}

/// Version `version` of node A's tables with the pod, the peers and the route to the local
/// pods; the caller adds the remote routes and the policy.
pub fn snapshot(version: u64) -> Snapshot {
    let node = node_config();
    let mut s = Snapshot::new(version, node.clone());
    s.add_endpoint(Endpoint { ip: POD, ip6: None, mac: POD_MAC, port: POD_PORT, worker: 0 });
    for k in 0..PEERS {
        let vtep = EthernetAddress([0x0e, 0xbb, 0, 0, 0, k as u8]);
        let hop = EthernetAddress([2, 0, 0, 0, 1, k as u8]);
        s.add_node(RemoteNode::new(&node, format!("peer{k}"), peer_ip(k), vtep, Some(hop), Tunnel::Vxlan));
    }
    s.routes.insert(Ipv4Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24).expect("prefix"), RouteTarget::LocalPods);
    s
}

/// Writes the pod's [`FRAME_LEN`]-byte frame to `dst` with protocol `proto` (6 or 17; the
/// ports are what the pipeline reads, so a UDP header with a TCP data offset serves TCP)
/// into `buf`; returns its length.
pub fn frame(buf: &mut [u8], dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> usize {
    let udp = UdpRepr { src_port: sport, dst_port: dport, payload: &[0u8; 18] };
    let ip = Ipv4Repr {
        src_addr: POD,
        dst_addr: dst,
        protocol: IpProtocol::from(proto),
        payload_len: udp.buffer_len(),
        ttl: 64,
        ident: 1,
        dont_frag: true,
        dscp: 0,
        ecn: 0,
    };
    let len = 14 + ip.buffer_len() + ip.payload_len;
    EthernetRepr { src_addr: POD_MAC, dst_addr: GATEWAY_MAC, ethertype: EtherType::Ipv4 }.emit(&mut EthernetFrame::new_unchecked(&mut buf[..len]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..len]));
    udp.emit(&mut UdpPacket::new_unchecked(&mut buf[34..len]), POD, dst);
    if proto == 6 {
        buf[34 + 12] = 0x50; // TCP data offset 5
    }
    len
}

/// A xorshift64 generator: cheap, reproducible from its seed, good enough to spread keys.
pub fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
