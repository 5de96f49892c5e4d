//! The rtnetlink (rtnetlink(7)) requests twill-cni makes, synchronously, on a
//! NETLINK_ROUTE socket of the calling thread's network namespace: create and delete
//! the veth pair, look links up, add the pod's /32, its two routes and its gateway's
//! neighbour entry, and dump addresses and routes for CHECK. Messages are built and parsed
//! with `netlink-packet-route`; no `ip` subprocess.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A failed netlink request: what was asked and the kernel's errno.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A NETLINK_ROUTE socket bound in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetlinkError> {
        let fail = |source| NetlinkError {
            what: "opening a NETLINK_ROUTE socket".into(),
            source,
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        sock.bind_auto().map_err(fail)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Creates the veth pair `host` (here) / `peer` (created directly in the namespace
    /// `peer_netns`, IFLA_NET_NS_FD), both with `mtu`, both down: a veth end cannot be
    /// brought up before its peer is linked (veth_open answers ENOTCONN), so IFF_UP in
    /// this request would fail; see [`Rtnl::set_up`].
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: &File,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.request(
            format!("creating veth {host} <-> {peer} (mtu {mtu})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The link called `name`, or `None` when there is none (ENODEV).
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        match self.request(
            format!("looking up link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_ACK,
        ) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets link `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            format!("setting link {name} up"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Deletes link `index` (for a veth, its peer goes too). A link already gone is fine.
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(
            format!("deleting link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_ACK,
        ) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Adds `ip/prefix_len` to link `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        match ip {
            IpAddr::V4(_) => {
                msg.header.family = AddressFamily::Inet;
                msg.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
            }
            IpAddr::V6(_) => {
                // No duplicate address detection: the address is the pod's alone (IPAM
                // says so), and a tentative address could not be used for a second.
                msg.header.family = AddressFamily::Inet6;
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes = vec![AddressAttribute::Address(ip), AddressAttribute::Flags(AddressFlags::Nodad)];
            }
        }
        self.request(
            format!("adding address {ip}/{prefix_len} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds `dst/prefix_len [via gateway] dev oif` to the main table (IPv4 or IPv6): an
    /// IPv4 route has scope link without a gateway, scope global with one.
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        // IPv6 routes carry no scope (the kernel keeps them all universe).
        msg.header.scope = if gateway.is_none() && dst.is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
        if prefix_len > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.request(
            format!("adding route {dst}/{prefix_len}{via} dev {oif}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds the permanent neighbour entry `ip lladdr mac dev index` (`ip neigh add … nud
    /// permanent`).
    pub fn add_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip)), NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
        self.request(
            format!("adding neighbour {ip} lladdr {} dev {index}", format_mac(&mac)),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The addresses of link `index`, both families.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let msg = AddressMessage::default();
        let answers = self.request(
            "dumping addresses".into(),
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    // IPv4 names its own address in IFA_LOCAL, IPv6 in IFA_ADDRESS only.
                    let local = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    Some((local.or(address)?, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    /// The routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<RouteEntry>, NetlinkError> {
        let msg = RouteMessage::default();
        let answers = self.request(
            "dumping routes".into(),
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    let unspecified = match r.header.address_family {
                        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    };
                    let mut route = RouteEntry {
                        dst: unspecified,
                        prefix_len: r.header.destination_prefix_length,
                        gateway: None,
                        oif: None,
                        scope: r.header.scope,
                    };
                    let ip = |a: &RouteAddress| match a {
                        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                        _ => None,
                    };
                    for attr in &r.attributes {
                        match attr {
                            RouteAttribute::Destination(d) => route.dst = ip(d).unwrap_or(route.dst),
                            RouteAttribute::Gateway(g) => route.gateway = ip(g),
                            RouteAttribute::Oif(o) => route.oif = Some(*o),
                            _ => {}
                        }
                    }
                    Some(route)
                }
                _ => None,
            })
            .collect())
    }

    /// Sends one request and collects the answers up to the ACK (or NLMSG_DONE for
    /// dumps). A negative ACK becomes the errno it carries.
    fn request(
        &mut self,
        what: String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);

        let fail = |source| NetlinkError {
            what: what.clone(),
            source,
        };
        self.sock.send(&buf, 0).map_err(fail)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(fail)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(fail(io::Error::from_raw_os_error(-code.get()))),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        mac: String::new(),
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) => link.mac = format_mac(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0xaa, 0x0b, 0xcc, 0xdd, 0xee, 0x0f]),
            "aa:0b:cc:dd:ee:0f"
        );
    }
}
