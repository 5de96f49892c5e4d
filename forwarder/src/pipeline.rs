//! The per-packet work: what happens to one frame between RX and TX.
//!
//! [`process`] takes a frame in its buffer (the whole UMEM chunk, so encapsulation can grow
//! it in place), the port it came from and the current [`Snapshot`], rewrites the frame and
//! says where it goes ([`Verdict`]). It does not allocate, lock, log or make system calls,
//! and it never panics on any input: every frame it refuses has a [`DropReason`].
//!
//! From a pod:   ARP for the gateway → reply on the same port; IPv4 → anti-spoofing (the
//!               source MAC and IP must be the pod's) → [`route`].
//! From uplink:  VXLAN decapsulation (outer frame validated, VNI checked, sender must be a
//!               known node, inner destination MAC must be our VTEP MAC) or, in direct
//!               mode, the plain IPv4 frame → [`route`] (local pods only).
//! [`route`]:    LPM on the destination → local pod (MAC rewrite) or remote node (VXLAN
//!               encapsulation with the node's VTEP MAC as inner destination, or MAC
//!               rewrite to the next hop in direct mode); before the frame is rewritten,
//!               the stateful policy stage ([`policy::admit`]: conntrack, then egress /
//!               ingress policy of the local pods for a new connection); TTL decremented
//!               with an incremental checksum update (RFC 1624).

use encap::{
    arp,
    direct::rewrite_macs,
    ethernet::{EtherType, EthernetAddress, EthernetFrame},
    ipv4::{self, Ipv4Packet},
    vxlan::{self, DecapError},
};

use crate::{
    counters::DropReason,
    policy::{self, FlowState},
    snapshot::{EncapProfile, GATEWAY_IP, PortId, RouteTarget, Snapshot, UPLINK, is_uplink},
};

const ETH_LEN: usize = 14;

/// What to do with a processed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the first `len` bytes of the buffer on `port`, owned by `worker`.
    Forward { port: PortId, worker: u16, len: usize, kind: Kind },
    Drop(DropReason),
}

/// What the pipeline did to a forwarded frame (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Routed,
    Encapsulated,
    Decapsulated,
    ArpReply,
}

/// Processes the frame `buf[..len]` that arrived on `in_port` of worker `worker`, whose
/// flow tables are `fs`. `buf` is the frame's whole buffer: encapsulation may grow the
/// frame up to `buf.len()`.
pub fn process(snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let len = len.min(buf.len());
    if is_uplink(in_port) { from_uplink(snap, fs, buf, len) } else { from_pod(snap, fs, worker, in_port, buf, len) }
}

fn from_pod(snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let Some(ep) = snap.port_endpoint(in_port).copied() else {
        return Verdict::Drop(DropReason::NoEndpoint);
    };
    let Ok(eth) = EthernetFrame::new_checked(&buf[..len]) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    if eth.src_addr() != ep.mac {
        return Verdict::Drop(DropReason::Spoofed);
    }
    match eth.ethertype() {
        EtherType::Ipv4 => {}
        EtherType::Arp => return arp_for_gateway(snap, worker, in_port, ep.ip, &mut buf[..len]),
        _ => return Verdict::Drop(DropReason::UnsupportedEtherType),
    }
    let src = match Ipv4Packet::new_checked(&buf[ETH_LEN..len]) {
        Ok(ip) if ip.verify_checksum() => ip.src_addr(),
        _ => return Verdict::Drop(DropReason::BadIpHeader),
    };
    if src != ep.ip {
        return Verdict::Drop(DropReason::Spoofed);
    }
    route(snap, fs, buf, len, false)
}

/// Answers an ARP request from the pod for its gateway (proxy-ARP style, as Calico does).
fn arp_for_gateway(snap: &Snapshot, worker: u16, in_port: PortId, pod_ip: std::net::Ipv4Addr, frame: &mut [u8]) -> Verdict {
    let Ok(packet) = arp::ArpPacket::new_checked(&frame[ETH_LEN..]) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    let Ok(repr) = arp::ArpRepr::parse(&packet) else {
        return Verdict::Drop(DropReason::ArpIgnored);
    };
    let asks_gateway = repr.operation == arp::Operation::Request
        && repr.target_protocol_addr == GATEWAY_IP
        && repr.source_protocol_addr == pod_ip;
    if !asks_gateway {
        return Verdict::Drop(DropReason::ArpIgnored);
    }
    match arp::reply_in_place(frame, snap.node.gateway_mac) {
        Ok(()) => Verdict::Forward { port: in_port, worker, len: frame.len(), kind: Kind::ArpReply },
        Err(_) => Verdict::Drop(DropReason::ArpIgnored),
    }
}

fn from_uplink(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize) -> Verdict {
    let profile = match snap.node.profile {
        EncapProfile::Vxlan(p) => p,
        EncapProfile::Direct => {
            return match EthernetFrame::new_checked(&buf[..len]).map(|e| e.ethertype()) {
                Ok(EtherType::Ipv4) if Ipv4Packet::new_checked(&buf[ETH_LEN..len]).is_ok() => route(snap, fs, buf, len, true),
                Ok(EtherType::Ipv4) => Verdict::Drop(DropReason::BadIpHeader),
                Ok(_) => Verdict::Drop(DropReason::UnsupportedEtherType),
                Err(_) => Verdict::Drop(DropReason::Truncated),
            };
        }
    };
    let d = match vxlan::decap(&buf[..len], snap.node.node_ip, profile) {
        Ok(d) => d,
        Err(e) => return Verdict::Drop(decap_reason(e)),
    };
    if !snap.nodes_by_ip.contains_key(&d.outer_src_ip) {
        return Verdict::Drop(DropReason::UnknownVtep);
    }
    let inner_len = d.inner.len();
    buf.copy_within(d.inner, 0);
    let Ok(eth) = EthernetFrame::new_checked(&buf[..inner_len]) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    if eth.dst_addr() != snap.node.vtep_mac {
        return Verdict::Drop(DropReason::WrongInnerMac);
    }
    if eth.ethertype() != EtherType::Ipv4 {
        return Verdict::Drop(DropReason::UnsupportedEtherType);
    }
    match Ipv4Packet::new_checked(&buf[ETH_LEN..inner_len]) {
        Ok(ip) if ip.verify_checksum() => {}
        _ => return Verdict::Drop(DropReason::BadIpHeader),
    }
    match route(snap, fs, buf, inner_len, true) {
        Verdict::Forward { port, worker, len, .. } => Verdict::Forward { port, worker, len, kind: Kind::Decapsulated },
        drop => drop,
    }
}

fn decap_reason(e: DecapError) -> DropReason {
    match e {
        DecapError::Truncated | DecapError::InnerTooShort => DropReason::Truncated,
        DecapError::Fragment => DropReason::OuterFragment,
        DecapError::NotForUs | DecapError::WrongPort => DropReason::NotForUs,
        DecapError::BadVxlanFlags => DropReason::BadVxlanFlags,
        DecapError::WrongVni => DropReason::WrongVni,
        _ => DropReason::BadOuterHeader,
    }
}

/// Routes the IPv4 frame `buf[..len]` (its IPv4 header already validated).
/// `from_uplink`: it came from another node, so only local pods are valid destinations.
fn route(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize, from_uplink: bool) -> Verdict {
    let dst = Ipv4Packet::new_unchecked(&buf[ETH_LEN..len]).dst_addr();
    let target = match snap.routes.lookup(dst) {
        Some(t) => t,
        None if from_uplink => return Verdict::Drop(DropReason::NotLocal),
        None => return Verdict::Drop(DropReason::NoRoute),
    };
    match target {
        RouteTarget::LocalPods => {
            let Some(ep) = snap.endpoints.get(&dst) else {
                return Verdict::Drop(if from_uplink { DropReason::NotLocal } else { DropReason::NoRoute });
            };
            if let Err(reason) = policy::admit(fs, &snap.policy, &buf[ETH_LEN..len], !from_uplink, true) {
                return Verdict::Drop(reason);
            }
            if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
                return Verdict::Drop(DropReason::TtlExpired);
            }
            set_macs(buf, snap.node.gateway_mac, ep.mac);
            Verdict::Forward { port: ep.port, worker: ep.worker, len, kind: Kind::Routed }
        }
        RouteTarget::Node(_) if from_uplink => Verdict::Drop(DropReason::NotLocal),
        RouteTarget::Node(idx) => {
            let Some(node) = snap.nodes.get(idx as usize) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            let ip_len = len - ETH_LEN;
            match snap.node.profile {
                EncapProfile::Vxlan(_) => {
                    let Some(encap) = node.encap.as_ref() else {
                        return Verdict::Drop(DropReason::NeighbourUnresolved);
                    };
                    let out_len = len + vxlan::OVERHEAD;
                    if ip_len + vxlan::OVERHEAD > usize::from(snap.node.uplink_mtu) || out_len > buf.len() {
                        return Verdict::Drop(DropReason::TooBig);
                    }
                    if let Err(reason) = policy::admit(fs, &snap.policy, &buf[ETH_LEN..len], true, false) {
                        return Verdict::Drop(reason);
                    }
                    if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
                        return Verdict::Drop(DropReason::TtlExpired);
                    }
                    set_macs(buf, snap.node.vtep_mac, node.vtep_mac);
                    let src_port = vxlan::flow_src_port(&buf[..len]);
                    buf.copy_within(..len, vxlan::OVERHEAD);
                    if encap.write(&mut buf[..vxlan::OVERHEAD], len, src_port).is_err() {
                        return Verdict::Drop(DropReason::TooBig);
                    }
                    Verdict::Forward { port: UPLINK, worker: u16::MAX, len: out_len, kind: Kind::Encapsulated }
                }
                EncapProfile::Direct => {
                    let Some(next_hop) = node.next_hop_mac else {
                        return Verdict::Drop(DropReason::NeighbourUnresolved);
                    };
                    if ip_len > usize::from(snap.node.uplink_mtu) {
                        return Verdict::Drop(DropReason::TooBig);
                    }
                    if let Err(reason) = policy::admit(fs, &snap.policy, &buf[ETH_LEN..len], true, false) {
                        return Verdict::Drop(reason);
                    }
                    if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
                        return Verdict::Drop(DropReason::TtlExpired);
                    }
                    set_macs(buf, snap.node.uplink_mac, next_hop);
                    Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed }
                }
            }
        }
    }
}

#[inline]
fn set_macs(buf: &mut [u8], src: EthernetAddress, dst: EthernetAddress) {
    // The frame was validated as Ethernet by the caller, so this cannot fail.
    let _ = rewrite_macs(buf, src, dst);
}

#[cfg(test)]
mod tests;
