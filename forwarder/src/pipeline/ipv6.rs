//! IPv6 in the pipeline (dual stack): a pod's IPv6 frame, and one that arrives inside VXLAN.
//!
//! From a pod:  ICMPv6 Neighbor Solicitation for the gateway [`GATEWAY_IP6`] → Neighbor
//!              Advertisement with the gateway MAC on the same port (RFC 4861 §7.2.4);
//!              other Neighbor Discovery and MLD (router solicitations, duplicate address
//!              detection, listener reports) → `ndp_ignored`; other multicast is not
//!              forwarded (`no_route`); any other packet must come from the pod's own
//!              IPv6 address → [`route`].
//! From a node: the inner IPv6 frame of a VXLAN packet over either underlay (validated by
//!              the caller), or a plain IPv6 packet (direct routing) → [`route`]
//!              (local pods only).
//! [`route`]:   LPM on the IPv6 routes → a local pod (MAC rewrite) or a remote node through
//!              VXLAN (inner destination MAC = its VTEP MAC): over the IPv6 underlay when
//!              both nodes have an IPv6 address (Calico's `vxlan-v6.calico`, 70 bytes of
//!              outer headers), otherwise over the IPv4 underlay (50 bytes; between twill
//!              nodes); a node reached by direct routing that has an IPv6 address gets it
//!              directly (MAC rewrite to its IPv6 next hop). Over the IPv6 underlay the
//!              node's IPv6 tunnel ([`crate::snapshot::Underlay6::tunnel`], from its IPv6
//!              pool) decides. A node reached by IP-in-IP,
//!              or directly without an IPv6 address, gets no IPv6
//!              (`ipv6_no_tunnel`: neither carries it over an IPv4 underlay), and nothing
//!              routes out of the cluster (twill has no NAT66 or IPv6 outside routes:
//!              `no_route`). Before the frame is rewritten, the stateful policy stage
//!              ([`policy::admit6`]); the hop limit is decremented (IPv6 has no header
//!              checksum). A packet too big for the tunnel gets ICMPv6 Packet Too Big
//!              back (RFC 4443 §3.2, RFC 8201): IPv6 routers never fragment.

use encap::{flow, icmpv6, ipv6, vxlan, vxlan6};

use super::{ETH_LEN, Kind, Origin, UPLINK, Verdict, error_to_pod, set_macs, vxlan6_to, vxlan_to};
use crate::{
    counters::DropReason,
    policy::{self, FlowState},
    snapshot::{GATEWAY_IP6, PortId, RemoteNode, RouteTarget, Snapshot, Tunnel},
};

/// Whether an ICMPv6 type is Neighbor Discovery (RFC 4861 §4) or MLD (RFC 2710, RFC 3810):
/// never forwarded, only answered (a solicitation of the gateway) or dropped.
fn ndp_or_mld(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 143)
}

/// A pod's IPv6 frame `buf[..len]` (Ethernet source already checked against the pod's).
pub(super) fn from_pod(snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, pod_ip6: Option<std::net::Ipv6Addr>, buf: &mut [u8], len: usize) -> Verdict {
    let Ok(ip) = ipv6::Ipv6Packet::new_checked(&buf[ETH_LEN..len]) else {
        return Verdict::Drop(DropReason::BadIpHeader);
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if icmpv6::message_type_of(&ip).is_some_and(ndp_or_mld) {
        // The whole buffer: an advertisement is longer than a solicitation without options.
        return match icmpv6::advert_in_place(buf, GATEWAY_IP6, snap.node.gateway_mac) {
            Ok(n) => Verdict::Forward { port: in_port, worker, len: n, kind: Kind::NdpReply },
            Err(_) => Verdict::Drop(DropReason::NdpIgnored),
        };
    }
    if dst.is_multicast() {
        // MLD reports carry a hop-by-hop header before their ICMPv6 (RFC 3810 §5).
        let mld = flow::parse_flow_info6(&buf[ETH_LEN..len]).is_ok_and(|f| f.tuple.proto == icmpv6::NEXT_HEADER && f.icmp.is_some_and(|(t, _)| ndp_or_mld(t)));
        return Verdict::Drop(if mld { DropReason::NdpIgnored } else { DropReason::NoRoute });
    }
    if Some(src) != pod_ip6 {
        return Verdict::Drop(DropReason::Spoofed);
    }
    route(snap, fs, buf, len, Origin::Pod { port: in_port, worker })
}

/// The inner IPv6 frame of a VXLAN packet from another node, at the front of the buffer.
pub(super) fn from_tunnel(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize) -> Verdict {
    if ipv6::Ipv6Packet::new_checked(&buf[ETH_LEN..len]).is_err() {
        return Verdict::Drop(DropReason::BadIpHeader);
    }
    route(snap, fs, buf, len, Origin::Uplink)
}

/// Routes the IPv6 frame `buf[..len]` (its header validated).
fn route(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize, from: Origin) -> Verdict {
    let from_uplink = matches!(from, Origin::Uplink);
    let dst = ipv6::Ipv6Packet::new_unchecked(&buf[ETH_LEN..len]).dst_addr();
    match snap.routes6.lookup(dst) {
        Some(RouteTarget::LocalPods) => {
            let Some(ep) = snap.endpoints6.get(&dst) else {
                return Verdict::Drop(if from_uplink { DropReason::NotLocal } else { DropReason::NoRoute });
            };
            if let Err(reason) = policy::admit6(fs, &snap.policy, &buf[ETH_LEN..len], !from_uplink, true) {
                return Verdict::Drop(reason);
            }
            if ipv6::decrement_hop_limit(&mut buf[ETH_LEN..len]).is_err() {
                return Verdict::Drop(DropReason::TtlExpired);
            }
            set_macs(buf, snap.node.gateway_mac, ep.mac);
            Verdict::Forward { port: ep.port, worker: ep.worker, len, kind: Kind::Routed }
        }
        _ if from_uplink => Verdict::Drop(DropReason::NotLocal),
        Some(RouteTarget::Node(idx)) => match snap.nodes.get(idx as usize) {
            Some(node) => to_node(snap, fs, node, buf, len, from),
            None => Verdict::Drop(DropReason::NoRoute),
        },
        Some(RouteTarget::Outside) | None => Verdict::Drop(DropReason::NoRoute),
    }
}

/// Sends a pod's IPv6 packet to another node inside VXLAN (over the IPv6 underlay when
/// both nodes have one, over the IPv4 one otherwise), or directly to its IPv6 address.
fn to_node(snap: &Snapshot, fs: &FlowState, node: &RemoteNode, buf: &mut [u8], len: usize, from: Origin) -> Verdict {
    // An IPv6 underlay is kept only with VXLAN or direct (RemoteNode::with_underlay6).
    let (next_hop, overhead) = match &node.underlay6 {
        Some(u) if u.tunnel == Tunnel::Vxlan => (u.next_hop_mac, vxlan6::OVERHEAD),
        Some(u) => (u.next_hop_mac, 0),
        None if node.tunnel == Tunnel::Vxlan => (node.next_hop_mac, vxlan::OVERHEAD),
        None => return Verdict::Drop(DropReason::Ipv6NoTunnel),
    };
    let Some(next_hop) = next_hop else {
        return Verdict::Drop(DropReason::NeighbourUnresolved);
    };
    // The largest IPv6 packet that fits both the uplink MTU and the frame buffer.
    let fits = usize::from(snap.node.uplink_mtu).min(buf.len() - ETH_LEN) - overhead;
    if len - ETH_LEN > fits {
        return too_big(snap, buf, len, fits, from);
    }
    let flow_hash = match policy::admit6(fs, &snap.policy, &buf[ETH_LEN..len], true, false) {
        Ok(hash) => hash,
        Err(reason) => return Verdict::Drop(reason),
    };
    if ipv6::decrement_hop_limit(&mut buf[ETH_LEN..len]).is_err() {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    match &node.underlay6 {
        Some(u) if u.tunnel == Tunnel::Vxlan => vxlan6_to(snap, u, buf, len, flow_hash),
        Some(_) => {
            set_macs(buf, snap.node.uplink_mac, next_hop);
            Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed }
        }
        None => vxlan_to(snap, node, buf, len, flow_hash),
    }
}

/// A pod's IPv6 packet that does not fit the tunnel: ICMPv6 Packet Too Big from the gateway
/// back to the pod with the MTU that fits. From another node: dropped as `too_big`.
fn too_big(snap: &Snapshot, buf: &mut [u8], len: usize, fits: usize, from: Origin) -> Verdict {
    let Origin::Pod { port, worker } = from else {
        return Verdict::Drop(DropReason::TooBig);
    };
    error_to_pod(snap, buf, len, (port, worker), |out, packet| icmpv6::emit_packet_too_big(out, GATEWAY_IP6, packet, fits as u32))
}
