//! Underlay next hops, from the kernel: the route to a peer (`/proc/net/route`) and the
//! neighbour table (`/proc/net/arp`) of this network namespace. A peer whose next hop has
//! no complete entry is nudged (one UDP datagram to the discard port makes the kernel
//! resolve it) and stays unresolved in the tables until the kernel has the answer: the
//! forwarder counts `neighbour_unresolved` drops instead of sending to a guessed MAC.

use std::{collections::HashMap, net::Ipv4Addr};

use encap::ethernet::EthernetAddress;

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

/// The next hop toward `dst` on `dev`: its gateway, or `dst` itself when on-link.
pub fn next_hop(dev: &str, dst: Ipv4Addr) -> Ipv4Addr {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    next_hop_in(&text, dev, dst)
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

/// Makes the kernel resolve `peer`'s next hop (it ARPs before sending the datagram).
pub fn nudge(peer: Ipv4Addr) {
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
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
}
