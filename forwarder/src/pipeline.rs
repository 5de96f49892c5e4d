//! The per-packet work: what happens to one frame between RX and TX.
//!
//! [`process`] takes a frame in its buffer (the whole UMEM chunk, so encapsulation can grow
//! it in place), the port it came from and the current [`Snapshot`], rewrites the frame and
//! says where it goes ([`Verdict`]). It does not allocate, lock, log or make system calls,
//! and it never panics on any input: every frame it refuses has a [`DropReason`].
//!
//! From a pod:   ARP for the gateway → reply on the same port; IPv4 → anti-spoofing (the
//!               source MAC and IP must be the pod's) → [`route`]; IPv6 → `pipeline/ipv6.rs`
//!               (Neighbor Discovery for the gateway, anti-spoofing, its own routing step).
//! From uplink:  by the outer headers: VXLAN decapsulation over the IPv4 or the IPv6
//!               underlay (outer frame validated, VNI
//!               checked, sender must be a known node, inner destination MAC must be our
//!               VTEP MAC; an inner IPv6 frame goes on in `pipeline/ipv6.rs`), IP-in-IP
//!               decapsulation (outer validated, known sender), or a plain IPv4 (IPv6)
//!               packet routed directly → [`route`] (local pods only).
//! [`route`]:    LPM on the destination → local pod (MAC rewrite) or remote node through
//!               its tunnel (VXLAN with the node's VTEP MAC as inner destination, IP-in-IP,
//!               or MAC rewrite to the next hop), or — no route, from a pod of a NAT pool to
//!               an address in no pool — out of the uplink through source NAT (`nat.rs`;
//!               a reply to this node's address is turned back to its pod first); a DF
//!               packet too big for the tunnel gets ICMP fragmentation-needed back (RFC 1191); before the frame is rewritten,
//!               the stateful policy stage ([`policy::admit`]: conntrack, then egress /
//!               ingress policy of the local pods for a new connection); TTL decremented
//!               with an incremental checksum update (RFC 1624).

use encap::{
    IpProtocol, arp,
    direct::rewrite_macs,
    ethernet::{EtherType, EthernetAddress, EthernetFrame},
    icmpv4::{self, IcmpError},
    ipip,
    ipv4::{self, Ipv4Packet},
    nat::{self, End},
    vxlan::{self, DecapError},
    vxlan6,
};

use crate::{
    counters::{DropReason, bump},
    nat::PodEnd,
    route::Stage,
    policy::{self, FlowState},
    snapshot::{GATEWAY_IP, PortId, RemoteNode, RouteTarget, Snapshot, Tunnel, UPLINK, Underlay6, is_uplink},
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
    /// A Neighbor Advertisement for the IPv6 gateway, back to the pod that solicited it.
    NdpReply,
    /// An ICMP error the forwarder built, back to the pod that sent the packet.
    IcmpError,
}

/// Processes the frame `buf[..len]` that arrived on `in_port` of worker `worker`, whose
/// flow tables are `fs`. `buf` is the frame's whole buffer: encapsulation may grow the
/// frame up to `buf.len()`.
pub fn process(snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let len = len.min(buf.len());
    if is_uplink(in_port) { from_uplink(snap, fs, buf, len) } else { from_pod(snap, fs, worker, in_port, buf, len) }
}

/// Asks the CPU for the cache lines [`process`] will read for `frame` — the route table's
/// for its destination and the connection table's for its flow — in two stages (VPP's): a
/// worker calls [`Stage::First`] [`PREFETCH_FIRST`] frames ahead of processing and
/// [`Stage::Second`] [`PREFETCH_SECOND`] frames ahead, so the misses of different frames
/// overlap instead of queueing. Reads fixed offsets (a pod's IPv4 frame, or one inside
/// VXLAN or IP-in-IP with 20-byte headers) and only hints: a frame it guesses wrong about
/// is processed all the same. IPv6 frames (and chain continuations) are left alone: their
/// address bytes read as IPv4 would only fetch lines nobody reads.
#[inline]
pub fn prefetch(snap: &Snapshot, fs: &FlowState, frame: &[u8], stage: Stage) {
    let word = |at: usize| frame.get(at..at + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    // The IPv4 header's offset: the frame's own, or the inner one of a tunnel.
    let ip = match frame.get(23) {
        Some(17) if frame.get(36..38) == Some(&snap.node.vxlan.port.to_be_bytes()[..]) => ETH_LEN + vxlan::OVERHEAD,
        Some(4) => ETH_LEN + 20,
        _ => ETH_LEN,
    };
    if frame.get(ip).is_none_or(|b| b >> 4 != 4) {
        return;
    }
    let (src, dst, ports) = (word(ip + 12), word(ip + 16), word(ip + 20));
    snap.routes.prefetch(std::net::Ipv4Addr::from(dst), stage);
    let proto = frame.get(ip + 9).copied().unwrap_or(0);
    fs.conntrack.prefetch(&crate::conntrack::Flow { src, dst, proto, src_port: (ports >> 16) as u16, dst_port: ports as u16 }, stage);
}

/// What a worker runs on each frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// [`process`]: the data plane.
    #[default]
    Full,
    /// [`ceiling`]: the I/O ceiling the lab measures twill against (`xdp-ceiling`).
    Ceiling,
}

impl Mode {
    /// Runs this mode's function ([`process`] or [`ceiling`]) on the frame `buf[..len]`.
    #[inline]
    pub fn run(self, snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
        match self {
            Mode::Full => process(snap, fs, worker, in_port, buf, len),
            Mode::Ceiling => ceiling(snap, fs, worker, in_port, buf, len),
        }
    }
}

/// The least work that still delivers a frame, for measuring the I/O ceiling of the
/// machine's interfaces (the lab's `xdp-ceiling` data path; `twill agent --pipeline
/// ceiling`): an IPv4 frame is routed by its destination alone — a local pod's port, or
/// the route's node straight through the uplink to its next hop (no tunnel) — with its
/// MACs rewritten and nothing else: no validation, anti-spoofing, TTL, policy, conntrack,
/// encapsulation or checksum. Anything else (the pods' ARP for their gateway) takes
/// [`process`]. Not a data plane: the pods and the underlay must be trusted.
pub fn ceiling(snap: &Snapshot, fs: &FlowState, worker: u16, in_port: PortId, buf: &mut [u8], len: usize) -> Verdict {
    let len = len.min(buf.len());
    let dst = match buf.get(..ETH_LEN + 20) {
        Some(h) if h[12..14] == [0x08, 0x00] => std::net::Ipv4Addr::new(h[30], h[31], h[32], h[33]),
        _ => return process(snap, fs, worker, in_port, buf, len),
    };
    if let Some(ep) = snap.endpoints.get(&dst) {
        set_macs(buf, snap.node.gateway_mac, ep.mac);
        return Verdict::Forward { port: ep.port, worker: ep.worker, len, kind: Kind::Routed };
    }
    if is_uplink(in_port) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    let Some(RouteTarget::Node(i)) = snap.routes.lookup(dst) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    match snap.nodes.get(i as usize).and_then(|n| n.next_hop_mac) {
        Some(mac) => {
            set_macs(buf, snap.node.uplink_mac, mac);
            Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed }
        }
        None => Verdict::Drop(DropReason::NeighbourUnresolved),
    }
}

/// How many frames ahead of [`process`] a worker calls [`prefetch`]'s first stage.
pub const PREFETCH_FIRST: usize = 12;
/// How many frames ahead of [`process`] a worker calls [`prefetch`]'s second stage.
pub const PREFETCH_SECOND: usize = 6;

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
        EtherType::Ipv6 => return ipv6::from_pod(snap, fs, worker, in_port, ep.ip6, buf, len),
        _ => return Verdict::Drop(DropReason::UnsupportedEtherType),
    }
    let src = match Ipv4Packet::new_checked(&buf[ETH_LEN..len]) {
        Ok(ip) if ip.verify_checksum() => ip.src_addr(),
        _ => return Verdict::Drop(DropReason::BadIpHeader),
    };
    if src != ep.ip {
        return Verdict::Drop(DropReason::Spoofed);
    }
    route(snap, fs, buf, len, Origin::Pod { port: in_port, worker })
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

/// What an uplink frame carries, judged from its outer headers.
enum Outer {
    /// UDP to this node's VXLAN port.
    Vxlan,
    /// The same over the IPv6 underlay, to this node's IPv6 address.
    Vxlan6(std::net::Ipv6Addr),
    /// A plain IPv6 packet (direct routing over the IPv6 underlay).
    Plain6,
    /// IPv4 protocol 4 to this node.
    Ipip,
    /// A plain IPv4 packet (direct routing from another node).
    Plain,
}

fn outer_kind(snap: &Snapshot, frame: &[u8]) -> Result<Outer, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    match eth.ethertype() {
        EtherType::Ipv4 => {}
        // The hook passes VXLAN to this node's IPv6 address (decap6 checks it all) and IPv6
        // to its pods.
        EtherType::Ipv6 => {
            let me = snap.node.node_ip6.ok_or(DropReason::UnsupportedEtherType)?;
            let to_us = eth.payload().get(24..40) == Some(&me.octets()[..]);
            return Ok(if to_us { Outer::Vxlan6(me) } else { Outer::Plain6 });
        }
        _ => return Err(DropReason::UnsupportedEtherType),
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| match e {
        encap::Error::Truncated => DropReason::Truncated,
        _ => DropReason::BadOuterHeader,
    })?;
    let to_us = ip.dst_addr() == snap.node.node_ip;
    Ok(match ip.protocol() {
        IpProtocol::Udp if to_us && ip.payload().get(2..4) == Some(&snap.node.vxlan.port.to_be_bytes()[..]) => Outer::Vxlan,
        IpProtocol::IpIp if to_us => Outer::Ipip,
        _ => Outer::Plain,
    })
}

fn from_uplink(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize) -> Verdict {
    let inner = match outer_kind(snap, &buf[..len]) {
        Err(reason) => return Verdict::Drop(reason),
        Ok(Outer::Plain) => {
            let ip = Ipv4Packet::new_unchecked(&buf[ETH_LEN..len]);
            if !ip.verify_checksum() {
                return Verdict::Drop(DropReason::BadIpHeader);
            }
            if ip.dst_addr() == snap.node.node_ip {
                return from_outside(snap, fs, buf, len);
            }
            return route(snap, fs, buf, len, Origin::Uplink);
        }
        Ok(Outer::Vxlan) => match vxlan_decap(snap, buf, len) {
            Ok(inner) => inner,
            Err(reason) => return Verdict::Drop(reason),
        },
        Ok(Outer::Plain6) => return ipv6::from_tunnel(snap, fs, buf, len),
        Ok(Outer::Vxlan6(me)) => match vxlan6_decap(snap, me, buf, len) {
            Ok(inner) => inner,
            Err(reason) => return Verdict::Drop(reason),
        },
        Ok(Outer::Ipip) => match ipip_decap(snap, buf, len) {
            Ok(n) => (n, EtherType::Ipv4),
            Err(reason) => return Verdict::Drop(reason),
        },
    };
    let (inner_len, inner_type) = inner;
    let routed = if inner_type == EtherType::Ipv6 {
        ipv6::from_tunnel(snap, fs, buf, inner_len)
    } else {
        match Ipv4Packet::new_checked(&buf[ETH_LEN..inner_len]) {
            Ok(ip) if ip.verify_checksum() => {}
            _ => return Verdict::Drop(DropReason::BadIpHeader),
        }
        route(snap, fs, buf, inner_len, Origin::Uplink)
    };
    match routed {
        Verdict::Forward { port, worker, len, .. } => Verdict::Forward { port, worker, len, kind: Kind::Decapsulated },
        drop => drop,
    }
}

/// Validates a VXLAN frame from a known node and moves its inner Ethernet frame to the
/// front of the buffer; returns the inner frame's length and EtherType (IPv4 or IPv6).
fn vxlan_decap(snap: &Snapshot, buf: &mut [u8], len: usize) -> Result<(usize, EtherType), DropReason> {
    let d = vxlan::decap(&buf[..len], snap.node.node_ip, snap.node.vxlan).map_err(decap_reason)?;
    if !snap.nodes_by_ip.contains_key(&d.outer_src_ip) {
        return Err(DropReason::UnknownVtep);
    }
    inner_frame(snap, buf, d.inner)
}

/// [`vxlan_decap`] over the IPv6 underlay, to this node's IPv6 address `me`.
fn vxlan6_decap(snap: &Snapshot, me: std::net::Ipv6Addr, buf: &mut [u8], len: usize) -> Result<(usize, EtherType), DropReason> {
    let d = vxlan6::decap6(&buf[..len], me, snap.node.vxlan).map_err(decap_reason)?;
    if !snap.nodes_by_ip6.contains_key(&d.outer_src_ip) {
        return Err(DropReason::UnknownVtep);
    }
    inner_frame(snap, buf, d.inner)
}

/// Moves the decapsulated inner Ethernet frame `inner` to the front of the buffer and checks
/// it is for this node's VTEP and IPv4 or IPv6; returns its length and EtherType.
fn inner_frame(snap: &Snapshot, buf: &mut [u8], inner: std::ops::Range<usize>) -> Result<(usize, EtherType), DropReason> {
    let inner_len = inner.len();
    buf.copy_within(inner, 0);
    let eth = EthernetFrame::new_checked(&buf[..inner_len]).map_err(|_| DropReason::Truncated)?;
    if eth.dst_addr() != snap.node.vtep_mac {
        return Err(DropReason::WrongInnerMac);
    }
    match eth.ethertype() {
        t @ (EtherType::Ipv4 | EtherType::Ipv6) => Ok((inner_len, t)),
        _ => Err(DropReason::UnsupportedEtherType),
    }
}

/// Validates an IP-in-IP frame from a known node and moves its inner IPv4 packet behind an
/// Ethernet header at the front of the buffer (the routing step writes its MACs); returns
/// the frame's length.
fn ipip_decap(snap: &Snapshot, buf: &mut [u8], len: usize) -> Result<usize, DropReason> {
    let d = ipip::decap(&buf[..len], snap.node.node_ip).map_err(decap_reason)?;
    if !snap.nodes_by_ip.contains_key(&d.outer_src_ip) {
        return Err(DropReason::UnknownVtep);
    }
    let inner_len = d.inner.len();
    buf.copy_within(d.inner, ETH_LEN);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    Ok(ETH_LEN + inner_len)
}

fn decap_reason(e: DecapError) -> DropReason {
    match e {
        DecapError::Truncated | DecapError::InnerTooShort => DropReason::Truncated,
        DecapError::Fragment => DropReason::OuterFragment,
        DecapError::NotForUs | DecapError::WrongPort => DropReason::NotForUs,
        DecapError::BadVxlanFlags => DropReason::BadVxlanFlags,
        DecapError::WrongVni => DropReason::WrongVni,
        DecapError::BadInner => DropReason::BadIpHeader,
        DecapError::NotIpv4
        | DecapError::NotIpv6
        | DecapError::BadIpHeader
        | DecapError::BadIpChecksum
        | DecapError::BadLength
        | DecapError::WrongProtocol => DropReason::BadOuterHeader,
    }
}

/// Where a frame being routed came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// A local pod's port, served by `worker` (an ICMP error goes back there).
    Pod { port: PortId, worker: u16 },
    /// Another node: only local pods are valid destinations.
    Uplink,
}

/// Routes the IPv4 frame `buf[..len]` (its IPv4 header already validated).
fn route(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize, from: Origin) -> Verdict {
    let from_uplink = matches!(from, Origin::Uplink);
    let dst = Ipv4Packet::new_unchecked(&buf[ETH_LEN..len]).dst_addr();
    let Some(target) = snap.routes.lookup(dst) else {
        return if from_uplink { Verdict::Drop(DropReason::NotLocal) } else { to_outside(snap, fs, buf, len, from, false) };
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
        RouteTarget::Node(_) | RouteTarget::Outside if from_uplink => Verdict::Drop(DropReason::NotLocal),
        RouteTarget::Outside => to_outside(snap, fs, buf, len, from, true),
        RouteTarget::Node(idx) => {
            let Some(node) = snap.nodes.get(idx as usize) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            to_node(snap, fs, node, buf, len, from)
        }
    }
}

/// Sends a pod's packet to another node, through the node's tunnel.
fn to_node(snap: &Snapshot, fs: &FlowState, node: &RemoteNode, buf: &mut [u8], len: usize, from: Origin) -> Verdict {
    let Some(next_hop) = node.next_hop_mac else {
        return Verdict::Drop(DropReason::NeighbourUnresolved);
    };
    let overhead = node.tunnel.overhead();
    // The largest IPv4 packet that fits both the uplink MTU and the frame buffer.
    let fits = usize::from(snap.node.uplink_mtu).min(buf.len() - ETH_LEN) - overhead;
    let ip_len = len - ETH_LEN;
    if ip_len > fits {
        return too_big(snap, buf, len, fits, from);
    }
    let flow_hash = match policy::admit(fs, &snap.policy, &buf[ETH_LEN..len], true, false) {
        Ok(hash) => hash,
        Err(reason) => return Verdict::Drop(reason),
    };
    if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    match node.tunnel {
        Tunnel::Vxlan => vxlan_to(snap, node, buf, len, flow_hash),
        Tunnel::Ipip => {
            let Some(encap) = node.ipip.as_ref() else {
                return Verdict::Drop(DropReason::NeighbourUnresolved);
            };
            let tos = buf[ETH_LEN + 1];
            buf.copy_within(ETH_LEN..len, ipip::HEADER_LEN);
            if encap.write(&mut buf[..ipip::HEADER_LEN], ip_len, tos).is_err() {
                return Verdict::Drop(DropReason::TooBig);
            }
            Verdict::Forward { port: UPLINK, worker: u16::MAX, len: ipip::HEADER_LEN + ip_len, kind: Kind::Encapsulated }
        }
        Tunnel::None => {
            set_macs(buf, snap.node.uplink_mac, next_hop);
            Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed }
        }
    }
}

/// Sends a pod's packet to an address outside the cluster, to the uplink's default
/// gateway: with the node's address and a port of the NAT table as its source when the
/// pod's pool has natOutgoing and the destination is in no pool; otherwise, when an outside
/// route (`routed`) covers the destination, with the pod's own address (the network beyond
/// routes the pools back, as with Calico's BGP peering); otherwise there is no route.
fn to_outside(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize, from: Origin, routed: bool) -> Verdict {
    let ip = Ipv4Packet::new_unchecked(&buf[ETH_LEN..len]);
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.protocol());
    let translate = snap.outside.translates(src, dst);
    if !translate && !routed {
        return Verdict::Drop(DropReason::NoRoute);
    }
    let Some(next_hop) = snap.outside.next_hop_mac else {
        return Verdict::Drop(DropReason::NeighbourUnresolved);
    };
    let fits = usize::from(snap.node.uplink_mtu).min(buf.len() - ETH_LEN);
    if len - ETH_LEN > fits {
        return too_big(snap, buf, len, fits, from);
    }
    let packet = &buf[ETH_LEN..len];
    if !translate {
        if let Err(reason) = policy::admit(fs, &snap.policy, packet, true, false) {
            return Verdict::Drop(reason);
        }
        if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        set_macs(buf, snap.node.uplink_mac, next_hop);
        bump(&fs.counters.routed_out, 1);
        return Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed };
    }
    let Some(e) = nat::ends(packet) else {
        return Verdict::Drop(DropReason::NatUnsupported);
    };
    if let Err(reason) = policy::admit(fs, &snap.policy, packet, true, false) {
        return Verdict::Drop(reason);
    }
    let pod = PodEnd { addr: src, port: e.port(End::Source) };
    let Ok(port) = fs.nat.outbound(proto, pod, dst, e.remote_port(End::Destination), fs.now_ms, e.closes) else {
        return Verdict::Drop(DropReason::NatPortsExhausted);
    };
    if ipv4::decrement_ttl(&mut buf[ETH_LEN..len]).is_err() {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if nat::rewrite(&mut buf[ETH_LEN..len], End::Source, snap.node.node_ip, port).is_err() {
        return Verdict::Drop(DropReason::NatUnsupported);
    }
    set_macs(buf, snap.node.uplink_mac, next_hop);
    bump(&fs.counters.nat_out, 1);
    Verdict::Forward { port: UPLINK, worker: u16::MAX, len, kind: Kind::Routed }
}

/// A reply from outside the cluster to this node's address: the NAT table says which pod
/// it is for; turned back to that pod's address and port, it is routed as any packet from
/// the uplink (conntrack then sees the reply of the pod's connection). An ICMP error about
/// a translated connection (quoting the node's packet) is turned back the same way, so
/// path MTU discovery and unreachables reach the pod.
fn from_outside(snap: &Snapshot, fs: &FlowState, buf: &mut [u8], len: usize) -> Verdict {
    let packet = &buf[ETH_LEN..len];
    let ip = Ipv4Packet::new_unchecked(packet);
    let (remote, proto) = (ip.src_addr(), ip.protocol());
    let quoted = match proto {
        IpProtocol::Icmp => encap::flow::parse_flow_info(packet).ok().and_then(|f| f.related),
        _ => None,
    };
    let translated = if let Some(q) = quoted {
        // The quote is the node's packet: from the NAT port, to the remote end.
        let q_proto = IpProtocol::from(q.proto);
        let remote_port = if q_proto == IpProtocol::Icmp { 0 } else { q.dst_port };
        fs.nat
            .inbound(q_proto, q.src_port, q.dst, remote_port, fs.now_ms, false)
            .filter(|_| q.src == snap.node.node_ip)
            .map(|pod| nat::rewrite_icmp_error(&mut buf[ETH_LEN..len], pod.addr, pod.port).is_ok())
    } else {
        let pod = nat::ends(packet).and_then(|e| fs.nat.inbound(proto, e.port(End::Destination), remote, e.remote_port(End::Source), fs.now_ms, e.closes));
        pod.map(|pod| nat::rewrite(&mut buf[ETH_LEN..len], End::Destination, pod.addr, pod.port).is_ok())
    };
    if translated != Some(true) {
        return Verdict::Drop(DropReason::NatNoMapping);
    }
    bump(&fs.counters.nat_in, 1);
    route(snap, fs, buf, len, Origin::Uplink)
}

/// A pod's packet that does not fit the tunnel: with DF set, an ICMP fragmentation-needed
/// back to the pod with the MTU that fits (RFC 1191), so path MTU discovery works through
/// twill; without DF, dropped and counted — twill does not fragment (one frame in, one
/// out; the pod MTU the CNI plugin sets keeps pods from sending such packets).
fn too_big(snap: &Snapshot, buf: &mut [u8], len: usize, fits: usize, from: Origin) -> Verdict {
    let Origin::Pod { port, worker } = from else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if !Ipv4Packet::new_unchecked(&buf[ETH_LEN..len]).dont_frag() {
        return Verdict::Drop(DropReason::TooBig);
    }
    let error = IcmpError::FragNeeded { next_hop_mtu: fits.min(usize::from(u16::MAX)) as u16 };
    error_to_pod(snap, buf, len, (port, worker), |out, packet| icmpv4::emit_error(out, GATEWAY_IP, packet, error))
}

/// Sends the pod's packet `buf[..len]` (Ethernet) inside VXLAN to `node`, the outer UDP
/// source port from the flow hash. IPv4 and IPv6 alike: the inner frame is opaque here.
fn vxlan_to(snap: &Snapshot, node: &RemoteNode, buf: &mut [u8], len: usize, flow_hash: u32) -> Verdict {
    let Some(encap) = node.vxlan.as_ref() else {
        return Verdict::Drop(DropReason::NeighbourUnresolved);
    };
    set_macs(buf, snap.node.vtep_mac, node.vtep_mac);
    buf.copy_within(..len, vxlan::OVERHEAD);
    if encap.write(&mut buf[..vxlan::OVERHEAD], len, vxlan::src_port_of_hash(flow_hash)).is_err() {
        return Verdict::Drop(DropReason::TooBig);
    }
    Verdict::Forward { port: UPLINK, worker: u16::MAX, len: len + vxlan::OVERHEAD, kind: Kind::Encapsulated }
}

/// [`vxlan_to`] over the node's IPv6 underlay `u` (the caller checked it is resolved and that
/// the frame fits).
fn vxlan6_to(snap: &Snapshot, u: &Underlay6, buf: &mut [u8], len: usize, flow_hash: u32) -> Verdict {
    let Some(encap) = u.vxlan.as_ref() else {
        return Verdict::Drop(DropReason::NeighbourUnresolved);
    };
    set_macs(buf, snap.node.vtep_mac, u.vtep_mac);
    buf.copy_within(..len, vxlan6::OVERHEAD);
    if encap.write(buf, len, vxlan::src_port_of_hash(flow_hash), flow_hash).is_err() {
        return Verdict::Drop(DropReason::TooBig);
    }
    Verdict::Forward { port: UPLINK, worker: u16::MAX, len: len + vxlan6::OVERHEAD, kind: Kind::Encapsulated }
}

/// Replaces the pod's packet `buf[..len]` with the ICMP (ICMPv6) error `emit` writes about
/// it (an IP packet, built in the buffer's tailroom, then moved behind the Ethernet header),
/// sent back from the gateway MAC to the pod on `(port, worker)`.
fn error_to_pod(snap: &Snapshot, buf: &mut [u8], len: usize, (port, worker): (PortId, u16), emit: impl FnOnce(&mut [u8], &[u8]) -> Result<usize, encap::Error>) -> Verdict {
    let pod_mac = EthernetFrame::new_unchecked(&buf[..ETH_LEN]).src_addr();
    let (head, tail) = buf.split_at_mut(len);
    let Ok(n) = emit(tail, &head[ETH_LEN..]) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    buf.copy_within(len..len + n, ETH_LEN);
    set_macs(buf, snap.node.gateway_mac, pod_mac);
    Verdict::Forward { port, worker, len: ETH_LEN + n, kind: Kind::IcmpError }
}

#[inline]
fn set_macs(buf: &mut [u8], src: EthernetAddress, dst: EthernetAddress) {
    // The frame was validated as Ethernet by the caller, so this cannot fail.
    let _ = rewrite_macs(buf, src, dst);
}

mod ipv6;
#[cfg(test)]
mod tests;
