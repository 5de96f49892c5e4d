//! Underlay next hops, from the kernel: the route to a peer ([`Routes`]: `/proc/net/route`,
//! `/proc/net/ipv6_route`) and the neighbour table of this network namespace (IPv4:
//! `/proc/net/arp`; IPv6, which has no such file: a netlink dump of Neighbor Discovery's
//! cache). A peer whose next hop has no complete entry is nudged (one UDP datagram to the
//! discard port makes the kernel resolve it) and stays unresolved in the tables until the
//! kernel has the answer: the forwarder counts `neighbour_unresolved` drops instead of
//! sending to a guessed MAC.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use encap::ethernet::EthernetAddress;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Complete IPv6 neighbour entries on `dev` (reachable, stale, delay, probe, permanent);
/// empty when the dump fails (the peers then stay unresolved and are nudged again).
pub fn read_ndp(dev: &str) -> HashMap<Ipv6Addr, EthernetAddress> {
    let ifindex = match forwarder::xdp_hook::ifindex(dev) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(%dev, "IPv6 neighbours: {e}");
            return HashMap::new();
        }
    };
    match dump_neighbours6() {
        Ok(msgs) => ndp_entries(msgs, ifindex),
        Err(e) => {
            tracing::warn!(%dev, "IPv6 neighbours: the RTM_GETNEIGH dump failed: {e}");
            HashMap::new()
        }
    }
}

/// The complete entries on interface `ifindex` among a neighbour dump's messages, with a
/// real (six-byte, non-zero) MAC.
fn ndp_entries(msgs: Vec<NeighbourMessage>, ifindex: u32) -> HashMap<Ipv6Addr, EthernetAddress> {
    let complete = |s: NeighbourState| matches!(s, NeighbourState::Reachable | NeighbourState::Stale | NeighbourState::Delay | NeighbourState::Probe | NeighbourState::Permanent);
    msgs.into_iter()
        .filter(|m| m.header.ifindex == ifindex && complete(m.header.state))
        .filter_map(|m| {
            let mut ip = None;
            let mut mac = None;
            for a in m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(a),
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 && b != [0; 6] => mac = Some(EthernetAddress([b[0], b[1], b[2], b[3], b[4], b[5]])),
                    _ => {}
                }
            }
            Some((ip?, mac?))
        })
        .collect()
}

/// Every IPv6 neighbour entry of this namespace (RTM_GETNEIGH dump).
fn dump_neighbours6() -> std::io::Result<Vec<NeighbourMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut query = NeighbourMessage::default();
    query.header.family = AddressFamily::Inet6;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetNeighbour(query)));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(std::io::Error::other(format!("neighbour dump: {e:?}"))),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => out.push(m),
                _ => {}
            }
            let len = reply.header.length as usize;
            if len == 0 {
                return Ok(out);
            }
            offset += (len + 3) & !3;
        }
    }
}

/// This namespace's routing tables, read once for a round of next-hop lookups
/// (/proc/net/route and /proc/net/ipv6_route; a table that cannot be read is empty, so every
/// destination is its own next hop).
#[derive(Debug)]
pub struct Routes {
    v4: String,
    v6: String,
}

impl Routes {
    pub fn read() -> Routes {
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        Routes { v4: read("/proc/net/route"), v6: read("/proc/net/ipv6_route") }
    }

    /// The next hop on `dev` towards `dst`: the gateway of the longest route covering it,
    /// or `dst` itself when on-link (or no route matches).
    pub fn next_hop(&self, dev: &str, dst: Ipv4Addr) -> Ipv4Addr {
        next_hop_in(&self.v4, dev, dst)
    }

    /// [`Routes::next_hop`] for IPv6.
    pub fn next_hop6(&self, dev: &str, dst: Ipv6Addr) -> Ipv6Addr {
        next_hop6_in(&self.v6, dev, dst)
    }
}

fn next_hop6_in(text: &str, dev: &str, dst: Ipv6Addr) -> Ipv6Addr {
    routes6_of(text, dev, dst)
        .max_by_key(|&(_, len, _)| len)
        .map(|(_, _, gw)| if gw == 0 { dst } else { Ipv6Addr::from(gw) })
        .unwrap_or(dst)
}

/// The IPv6 routes of `dev` in the text of /proc/net/ipv6_route that cover `dst`, as
/// (network, prefix length, gateway; 0 when on-link).
fn routes6_of<'a>(text: &'a str, dev: &'a str, dst: Ipv6Addr) -> impl Iterator<Item = (u128, u8, u128)> + 'a {
    let d = u128::from(dst);
    let hex = |s: &str| u128::from_str_radix(s, 16).ok();
    text.lines().filter_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[9] != dev {
            return None;
        }
        let (net, len, gw) = (hex(f[0])?, u8::from_str_radix(f[1], 16).ok()?.min(128), hex(f[4])?);
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
        (d & mask == net & mask).then_some((net & mask, len, gw))
    })
}

/// The connected IPv6 subnet of `dev` that holds `addr` (an on-link route shorter than a
/// host route): what CrossSubnet compares IPv6 peers against.
pub fn connected_subnet6(dev: &str, addr: Ipv6Addr) -> Option<(Ipv6Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    connected_subnet6_in(&text, dev, addr)
}

fn connected_subnet6_in(text: &str, dev: &str, addr: Ipv6Addr) -> Option<(Ipv6Addr, u8)> {
    routes6_of(text, dev, addr).filter(|&(_, len, gw)| gw == 0 && (1..128).contains(&len)).max_by_key(|&(_, len, _)| len).map(|(net, len, _)| (Ipv6Addr::from(net), len))
}

/// Complete IPv4 neighbour entries on `dev`.
pub fn read_arp(dev: &str) -> HashMap<Ipv4Addr, EthernetAddress> {
    let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    parse_arp(&text, dev)
}

fn parse_arp(text: &str, dev: &str) -> HashMap<Ipv4Addr, EthernetAddress> {
    const ATF_COM: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[5] != dev {
                return None;
            }
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
            if flags & ATF_COM == 0 {
                return None;
            }
            let mac: EthernetAddress = f[3].parse().ok()?;
            (mac.0 != [0; 6]).then_some((f[0].parse().ok()?, mac))
        })
        .collect()
}

fn next_hop_in(text: &str, dev: &str, dst: Ipv4Addr) -> Ipv4Addr {
    let d = u32::from(dst);
    routes_of(text, dev)
        .filter(|r| d & r.mask == r.net)
        .max_by_key(|r| r.mask.count_ones())
        .map(|r| if r.gateway == 0 { dst } else { Ipv4Addr::from(r.gateway) })
        .unwrap_or(dst)
}

/// One IPv4 route of /proc/net/route, addresses as host-order words.
struct Route {
    net: u32,
    gateway: u32,
    mask: u32,
}

/// The routes of `dev` in the text of /proc/net/route.
fn routes_of<'a>(text: &'a str, dev: &'a str) -> impl Iterator<Item = Route> + 'a {
    // /proc/net/route prints each address as the hex of its network-order bytes read as a
    // native-endian word.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| u32::from_be_bytes(v.to_ne_bytes()));
    text.lines().skip(1).filter_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != dev {
            return None;
        }
        Some(Route { net: hex(f[1])?, gateway: hex(f[2])?, mask: hex(f[7])? })
    })
}

/// The gateway of `dev`'s default route: where traffic leaving the cluster goes.
pub fn default_gateway(dev: &str) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    default_gateway_in(&text, dev)
}

fn default_gateway_in(text: &str, dev: &str) -> Option<Ipv4Addr> {
    routes_of(text, dev).find(|r| r.mask == 0 && r.gateway != 0).map(|r| Ipv4Addr::from(r.gateway))
}

/// The connected subnet of `dev` that holds `addr` (a route without a gateway): this
/// node's underlay subnet, which CrossSubnet compares peers against.
pub fn connected_subnet(dev: &str, addr: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    connected_subnet_in(&text, dev, addr)
}

fn connected_subnet_in(text: &str, dev: &str, addr: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
    let a = u32::from(addr);
    routes_of(text, dev)
        .filter(|r| r.gateway == 0 && r.mask != 0 && a & r.mask == r.net)
        .max_by_key(|r| r.mask.count_ones())
        .map(|r| (Ipv4Addr::from(r.net), r.mask.count_ones() as u8))
}

/// Makes the kernel resolve `peer`'s next hop (it ARPs, or solicits its IPv6 neighbour,
/// before sending the datagram).
pub fn nudge(peer: impl Into<IpAddr>) {
    let peer = peer.into();
    let any = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    if let Ok(sock) = std::net::UdpSocket::bind(any) {
        let _ = sock.send_to(b"", (peer, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_complete_entries_of_the_device() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    10.100.0.12      0x1         0x2         aa:bb:cc:00:00:12     *        eth0\n\
                    10.100.0.13      0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                    10.100.0.14      0x1         0x2         aa:bb:cc:00:00:14     *        eth1\n";
        let m = parse_arp(text, "eth0");
        assert_eq!(m.len(), 1);
        assert_eq!(m[&Ipv4Addr::new(10, 100, 0, 12)].to_string(), "aa:bb:cc:00:00:12");
    }

    #[test]
    fn next_hop_is_the_gateway_or_the_peer() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t0000640A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    eth0\t00000000\t0100640A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(next_hop_in(text, "eth0", Ipv4Addr::new(10, 100, 0, 12)), Ipv4Addr::new(10, 100, 0, 12));
        assert_eq!(next_hop_in(text, "eth0", Ipv4Addr::new(10, 200, 0, 1)), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(connected_subnet_in(text, "eth0", Ipv4Addr::new(10, 100, 0, 11)), Some((Ipv4Addr::new(10, 100, 0, 0), 24)));
        assert_eq!(connected_subnet_in(text, "eth0", Ipv4Addr::new(10, 101, 0, 11)), None, "the default route is no subnet");
        assert_eq!(default_gateway_in(text, "eth0"), Some(Ipv4Addr::new(10, 100, 0, 1)));
        assert_eq!(default_gateway_in(text, "eth1"), None);
    }

    #[test]
    fn ipv6_next_hop_is_the_gateway_or_the_peer() {
        let text = "fd000100000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                    00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000100000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
                    fd000200000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n";
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(next_hop6_in(text, "eth0", ip("fd00:100::12")), ip("fd00:100::12"));
        assert_eq!(next_hop6_in(text, "eth0", ip("fd00:200::12")), ip("fd00:100::1"), "eth1's route is not eth0's");
        assert_eq!(connected_subnet6_in(text, "eth0", ip("fd00:100::11")), Some((ip("fd00:100::"), 64)));
        assert_eq!(connected_subnet6_in(text, "eth0", ip("fd00:200::11")), None, "the default route is no subnet");
    }

    #[test]
    fn reads_ipv6_neighbours_of_loopback_without_error() {
        // The dump itself must work here (loopback has no neighbours worth keeping).
        dump_neighbours6().expect("an RTM_GETNEIGH dump");
        assert!(read_ndp("lo").is_empty());
    }

    #[test]
    fn only_complete_entries_with_a_real_mac_on_the_interface_count() {
        let entry = |ifindex: u32, state: NeighbourState, ip: &str, mac: &[u8]| {
            let mut m = NeighbourMessage::default();
            m.header.ifindex = ifindex;
            m.header.state = state;
            m.attributes = vec![
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip.parse().unwrap())),
                NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            ];
            m
        };
        let mac = [2, 0, 0, 0, 0, 7];
        let msgs = vec![
            entry(2, NeighbourState::Reachable, "fd00:100::12", &mac),
            entry(2, NeighbourState::Stale, "fd00:100::13", &mac),
            entry(2, NeighbourState::Incomplete, "fd00:100::14", &mac),
            entry(2, NeighbourState::Reachable, "fd00:100::15", &[0; 6]),
            entry(2, NeighbourState::Reachable, "fd00:100::16", &mac[..4]),
            entry(3, NeighbourState::Reachable, "fd00:100::17", &mac),
        ];
        let got = ndp_entries(msgs, 2);
        let want: HashMap<Ipv6Addr, EthernetAddress> =
            ["fd00:100::12", "fd00:100::13"].iter().map(|ip| (ip.parse().unwrap(), EthernetAddress(mac))).collect();
        assert_eq!(got, want, "incomplete, all-zero, short and other interfaces' entries are left out");
    }
}
