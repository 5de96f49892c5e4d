//! Per-worker counters. Each worker writes only its own [`WorkerCounters`] (one cache-line
//! padded block, plain load + store, no locked instructions); the control thread reads them
//! all and sums. Every dropped frame is counted under exactly one [`DropReason`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal, )*) => {
        /// Why a frame was dropped. One counter each; the names are the counter names that
        /// `twill stats` prints (prefixed with `drop_`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The counter name of this reason.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header, or than the header it announces.
    Truncated => "truncated",
    /// An EtherType the pipeline does not carry (neither IPv4, IPv6 nor ARP; IPv6 on the
    /// uplink outside VXLAN).
    UnsupportedEtherType => "unsupported_ethertype",
    /// ARP that is not a request for an address the forwarder answers for.
    ArpIgnored => "arp_ignored",
    /// Neighbor Discovery or MLD from a pod that is not a valid solicitation of its gateway
    /// (router solicitations, duplicate address detection, listener reports, malformed NDP).
    NdpIgnored => "ndp_ignored",
    /// An IPv4 or IPv6 header that does not validate (version, IHL, lengths, checksum).
    BadIpHeader => "bad_ip_header",
    /// A frame from a pod port whose source MAC or IP is not that pod's.
    Spoofed => "spoofed",
    /// A frame on a port that has no endpoint in the current snapshot.
    NoEndpoint => "no_endpoint",
    /// TTL would reach zero.
    TtlExpired => "ttl_expired",
    /// No route for the destination.
    NoRoute => "no_route",
    /// The underlay next hop of a remote node has no resolved MAC address yet.
    NeighbourUnresolved => "neighbour_unresolved",
    /// The packet does not fit the tunnel's MTU or the frame buffer, and may not get an
    /// ICMP fragmentation-needed (DF clear, or it came from another node): twill does not
    /// fragment.
    TooBig => "too_big",
    /// An IPv6 packet for a node reached by IP-in-IP or direct routing: only VXLAN carries
    /// IPv6 over the IPv4 underlay.
    Ipv6NoTunnel => "ipv6_no_tunnel",
    /// Outer frame on the uplink that does not validate as VXLAN for this node.
    BadOuterHeader => "bad_outer_header",
    /// Outer IPv4 is a fragment (the kernel would reassemble; overlay peers set DF).
    OuterFragment => "outer_fragment",
    /// Outer packet not addressed to this node, or not to the VXLAN port.
    NotForUs => "not_for_us",
    /// VXLAN header flags other than I (RFC 7348 section 5).
    BadVxlanFlags => "bad_vxlan_flags",
    /// VXLAN network identifier not the profile's.
    WrongVni => "wrong_vni",
    /// Encapsulated traffic from an address that is not a known node.
    UnknownVtep => "unknown_vtep",
    /// Inner destination MAC is not this node's VTEP MAC.
    WrongInnerMac => "wrong_inner_mac",
    /// Decapsulated traffic for an address that is not a pod on this node.
    NotLocal => "not_local",
    /// The destination port is not (or no longer) served by this worker.
    NoSuchPort => "no_such_port",
    /// The egress TX ring was full.
    TxRingFull => "tx_ring_full",
    /// The cross-worker hand-off ring was full.
    HandoffFull => "handoff_full",
    /// A frame spanning more UMEM chunks than a worker handles
    /// ([`crate::dataplane::MAX_CHAIN`]): longer than any MTU the data plane sets.
    TooLong => "too_long",
    /// A frame that grew past its chunks (encapsulation) found no free frame for the rest.
    NoFreeFrame => "no_free_frame",
    /// A new connection the source pod's egress policy denies.
    PolicyDeniedEgress => "policy_denied_egress",
    /// A new connection the destination pod's ingress policy denies.
    PolicyDeniedIngress => "policy_denied_ingress",
    /// A new connection allowed by policy, but the connection table is full.
    ConntrackFull => "conntrack_full",
    /// A later fragment whose first fragment was not admitted (or came after it).
    FragmentUnmatched => "fragment_unmatched",
    /// A connection leaving the cluster found no free NAT port (every one it probed is
    /// held by a live connection).
    NatPortsExhausted => "nat_ports_exhausted",
    /// A packet to this node's address in the NAT port range that no translated
    /// connection owns (or from another remote end than the one it talked to).
    NatNoMapping => "nat_no_mapping",
    /// A packet leaving the cluster that NAT cannot translate: not TCP, UDP or ICMP echo,
    /// or a later fragment.
    NatUnsupported => "nat_unsupported",
}

/// Counter block of one worker. Written by that worker only.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_batches: AtomicU64,
    pub arp_replies: AtomicU64,
    /// Neighbor Advertisements for the pods' IPv6 gateway.
    pub ndp_replies: AtomicU64,
    pub encapsulated: AtomicU64,
    pub decapsulated: AtomicU64,
    /// ICMP errors the forwarder sent back to pods (fragmentation needed).
    pub icmp_errors_sent: AtomicU64,
    /// Pod packets that left the cluster with the node's address (source NAT).
    pub nat_out: AtomicU64,
    /// Replies to them, turned back to the pod.
    pub nat_in: AtomicU64,
    /// Pod packets that left the cluster by an outside route with the pod's own address.
    pub routed_out: AtomicU64,
    pub snapshot_version: AtomicU64,
    /// Times a worker slept in poll(2) for want of work.
    pub idle_sleeps: AtomicU64,
    /// Times an adaptive worker napped between turns while traffic flowed.
    pub idle_naps: AtomicU64,
    /// Packets of tracked connections (passed without a policy lookup).
    pub ct_established: AtomicU64,
    /// Connections policy allowed and the tracker took in.
    pub ct_new: AtomicU64,
    /// ICMP errors about tracked connections, passed as related.
    pub ct_related: AtomicU64,
    /// New connections that matched a Log rule.
    pub policy_logged: AtomicU64,
    /// Log events lost because the worker's log ring was full.
    pub policy_log_dropped: AtomicU64,
    /// Frames the kernel dropped before they reached an AF_XDP socket of this worker, by
    /// cause (XDP_STATISTICS of its sockets, refreshed about once a second).
    pub xsk_rx_dropped: AtomicU64,
    pub xsk_rx_ring_full: AtomicU64,
    pub xsk_fill_ring_empty: AtomicU64,
    pub xsk_tx_invalid: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// Single-writer increment: a plain load and store (no `lock` prefix); readers may see a
/// value one batch old, never a torn one.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl WorkerCounters {
    /// Counts one drop.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    /// Reads all counters as (name, value), drops as `drop_<reason>`.
    pub fn read(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("rx_packets".to_string(), self.rx_packets.load(Relaxed)),
            ("rx_bytes".to_string(), self.rx_bytes.load(Relaxed)),
            ("tx_packets".to_string(), self.tx_packets.load(Relaxed)),
            ("tx_bytes".to_string(), self.tx_bytes.load(Relaxed)),
            ("rx_batches".to_string(), self.rx_batches.load(Relaxed)),
            ("arp_replies".to_string(), self.arp_replies.load(Relaxed)),
            ("ndp_replies".to_string(), self.ndp_replies.load(Relaxed)),
            ("encapsulated".to_string(), self.encapsulated.load(Relaxed)),
            ("decapsulated".to_string(), self.decapsulated.load(Relaxed)),
            ("icmp_errors_sent".to_string(), self.icmp_errors_sent.load(Relaxed)),
            ("nat_out".to_string(), self.nat_out.load(Relaxed)),
            ("routed_out".to_string(), self.routed_out.load(Relaxed)),
            ("nat_in".to_string(), self.nat_in.load(Relaxed)),
            ("snapshot_version".to_string(), self.snapshot_version.load(Relaxed)),
            ("idle_sleeps".to_string(), self.idle_sleeps.load(Relaxed)),
            ("idle_naps".to_string(), self.idle_naps.load(Relaxed)),
            ("ct_established".to_string(), self.ct_established.load(Relaxed)),
            ("ct_new".to_string(), self.ct_new.load(Relaxed)),
            ("ct_related".to_string(), self.ct_related.load(Relaxed)),
            ("policy_logged".to_string(), self.policy_logged.load(Relaxed)),
            ("policy_log_dropped".to_string(), self.policy_log_dropped.load(Relaxed)),
            ("xsk_rx_dropped".to_string(), self.xsk_rx_dropped.load(Relaxed)),
            ("xsk_rx_ring_full".to_string(), self.xsk_rx_ring_full.load(Relaxed)),
            ("xsk_fill_ring_empty".to_string(), self.xsk_fill_ring_empty.load(Relaxed)),
            ("xsk_tx_invalid".to_string(), self.xsk_tx_invalid.load(Relaxed)),
        ];
        out.extend(DropReason::ALL.iter().map(|r| (format!("drop_{}", r.name()), self.drops[*r as usize].load(Relaxed))));
        out
    }

    /// Total drops over all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_counter() {
        let c = WorkerCounters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.count_drop(*r);
            }
        }
        let read = c.read();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            let name = format!("drop_{}", r.name());
            let v = read.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            assert_eq!(v, Some(i as u64 + 1), "{name}");
        }
        let n = DropReason::ALL.len() as u64;
        assert_eq!(c.total_drops(), n * (n + 1) / 2);
    }
}
