//! `twill-cni`: the CNI plugin of twill (CNI spec 1.0.0; also speaks 0.3.0, 0.3.1 and
//! 0.4.0, whose results differ only by `ips[].version`).
//!
//! It reads `CNI_*` from the environment and the network config from stdin, talks to
//! the node agent over its Unix socket (docs/agent-api.md) and wires the pod:
//!
//! - ADD: `allocate` → veth pair over netlink (host side `tw` + 11 hex digits of
//!   SHA-256(container id), pod side `CNI_IFNAME` created inside `CNI_NETNS`), MTU on
//!   both, both up; in the pod: address /32, `GW/32 scope link`, `default via GW` (and
//!   for a dual-stack node the IPv6 address /128 without DAD and `default via fe80::1`),
//!   TX checksum and segmentation offloads off → `attach` with the pod MAC → result.
//!   Any failure after `allocate` deletes the veth and `release`s.
//! - DEL: `release` → delete the host-side veth if present. Idempotent. When the agent
//!   cannot be reached the veth is still deleted but DEL fails with code 11, so the
//!   runtime retries and the address is never leaked (see docs/agent-api.md).
//! - CHECK: compares the pod's interfaces, addresses, routes and offloads with
//!   `prevResult` and asks the agent for a sign of life.
//! - VERSION: ignores stdin (empty or `{"cniVersion":…}` alike).
//!
//! stdout carries only the result or the spec's error object; logs go to stderr
//! (`TWILL_CNI_LOG`, an `EnvFilter` directive, default `info`).
#![deny(unsafe_code)]

mod agent;
mod config;
mod ethtool;
mod netlink;
mod result;
mod sys;

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use agent::{AgentClient, AgentError, Allocation};
use config::{Attachment, CniVersion, Command, NetConf};
use netlink::{NetlinkError, Rtnl};
use netlink_packet_route::route::RouteScope;
use result::{CniError, Dns, ErrorCode, Interface, IpConfig, Route, Success, VersionResult};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWILL_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let mut version = CniVersion::LATEST;
    let outcome = run(&mut version);
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(value) = output {
                let _ = writeln!(stdout, "{value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code.code(), msg = %e.msg, details = %e.details, "failed");
            let _ = writeln!(stdout, "{}", e.to_json(version.as_str()));
            ExitCode::FAILURE
        }
    }
}

/// Dispatches on `CNI_COMMAND`; `version` is set to the config's `cniVersion` as soon
/// as it is known, so errors are tagged with it.
fn run(version: &mut CniVersion) -> Result<Option<Value>, CniError> {
    let command = Command::from_env(std::env::var("CNI_COMMAND").ok().as_deref())?;
    let stdin = read_stdin()?;
    if command == Command::Version {
        return Ok(Some(
            serde_json::to_value(VersionResult::new()).expect("serializable"),
        ));
    }
    let conf = NetConf::parse(&stdin)?;
    *version = conf.cni_version;
    let att = Attachment::from_env(command, |k| std::env::var(k).ok())?;
    let span =
        tracing::info_span!("cni", ?command, container = %att.container_id, ifname = %att.ifname);
    let _enter = span.enter();
    match command {
        Command::Add => {
            cmd_add(&conf, &att).map(|r| Some(serde_json::to_value(r).expect("serializable")))
        }
        Command::Del => cmd_del(&conf, &att).map(|()| None),
        Command::Check => cmd_check(&conf, &att).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        stdin.lock().read_to_end(&mut buf).map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                "failed to read stdin",
                format!("reading the network configuration: {e}"),
            )
        })?;
    }
    Ok(buf)
}

/// The host-side interface name: `tw` + the first 11 hex digits of SHA-256(container id)
/// (13 bytes, within IFNAMSIZ).
pub fn host_ifname(container_id: &str) -> String {
    let digest = Sha256::digest(container_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("tw{}", &hex[..11])
}

fn cmd_add(conf: &NetConf, att: &Attachment) -> Result<Success, CniError> {
    let netns_path = att.netns.as_deref().expect("ADD checked CNI_NETNS");
    let netns = open_netns(netns_path)?;
    let host = host_ifname(&att.container_id);

    // Before allocating: CNI_NETNS must be a netns, and CNI_IFNAME must be free in it
    // (SPEC.md: an existing interface of that name is an error).
    let existing = sys::in_netns(&netns, || Rtnl::open()?.link(&att.ifname))
        .map_err(|e| netns_error(netns_path, e))?;
    if existing.map_err(nl_error)?.is_some() {
        return Err(CniError::new(
            ErrorCode::InterfaceExists,
            "interface already exists",
            format!(
                "CNI_IFNAME {} already exists in CNI_NETNS {}",
                att.ifname,
                netns_path.display()
            ),
        ));
    }

    let agent = AgentClient::new(&conf.socket);
    let alloc = agent
        .allocate(
            &att.container_id,
            &att.pod_namespace,
            &att.pod_name,
            &att.ifname,
        )
        .map_err(agent_error)?;
    tracing::info!(ip = %alloc.ip, mtu = alloc.mtu, gateway = %alloc.gateway, "allocated");

    let mut veth_created = false;
    let wired = wire(att, &netns, &host, &alloc, &agent, &mut veth_created);
    let ours = match wired {
        Ok(r) => r,
        Err(e) => {
            rollback(att, &host, &agent, veth_created);
            return Err(e);
        }
    };
    tracing::info!(host_ifname = %host, ip = %alloc.ip, "pod wired and attached");
    let full = match conf.prev_result.clone() {
        Some(prev) => prev.chain(ours),
        None => ours,
    };
    Ok(full.for_version(conf.cni_version))
}

/// Everything of ADD between `allocate` and the result.
fn wire(
    att: &Attachment,
    netns: &File,
    host: &str,
    alloc: &Allocation,
    agent: &AgentClient,
    veth_created: &mut bool,
) -> Result<Success, CniError> {
    let netns_path = att.netns.as_deref().expect("ADD checked CNI_NETNS");
    let mut rtnl = Rtnl::open().map_err(nl_error)?;
    if let Err(e) = rtnl.create_veth(host, &att.ifname, netns, alloc.mtu) {
        if e.errno() == Some(libc::EEXIST) {
            let (what, name) = match rtnl.link(host) {
                Ok(Some(_)) => ("host-side interface", host.to_owned()),
                _ => ("CNI_IFNAME", att.ifname.clone()),
            };
            return Err(CniError::new(
                ErrorCode::InterfaceExists,
                "interface already exists",
                format!(
                    "{what} {name} already exists (a DEL of this container removes a stale one): {e}"
                ),
            ));
        }
        return Err(nl_error(e));
    }
    *veth_created = true;
    let host_link = rtnl.link(host).map_err(nl_error)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Io,
            "veth vanished",
            format!("{host} is gone right after creation"),
        )
    })?;
    rtnl.set_up(host_link.index, host).map_err(nl_error)?;

    let pod_link = sys::in_netns(netns, || configure_pod(&att.ifname, alloc))
        .map_err(|e| netns_error(netns_path, e))??;

    agent
        .attach(&att.container_id, host, &pod_link.mac)
        .map_err(agent_error)?;

    let ip_config = |address: String, gateway: String| IpConfig {
        version: None,
        address,
        gateway: Some(gateway),
        interface: Some(1),
        extra: Map::new(),
    };
    let route = |dst: &str, gateway: String| Route { dst: dst.into(), gw: Some(gateway), extra: Map::new() };
    let mut ips = vec![ip_config(format!("{}/{}", alloc.ip, alloc.prefix_len), alloc.gateway.to_string())];
    let mut routes = vec![route("0.0.0.0/0", alloc.gateway.to_string())];
    if let Some((ip6, gw6)) = alloc.dual_stack() {
        ips.push(ip_config(format!("{ip6}/128"), gw6.to_string()));
        routes.push(route("::/0", gw6.to_string()));
    }
    Ok(Success {
        cni_version: CniVersion::LATEST.to_string(),
        interfaces: vec![
            Interface {
                name: host.to_owned(),
                mac: Some(host_link.mac),
                sandbox: None,
                extra: Map::new(),
            },
            Interface {
                name: att.ifname.clone(),
                mac: Some(pod_link.mac),
                sandbox: Some(netns_path.display().to_string()),
                extra: Map::new(),
            },
        ],
        ips,
        routes,
        dns: Dns::default(),
        extra: Map::new(),
    })
}

/// Runs inside the pod's netns: address, routes, the gateway's neighbour entry, offloads.
/// Returns the pod link.
///
/// The gateway's MAC is the same on every node (the agent answers ARP and NDP for it with
/// that MAC), so the pod gets it as a permanent entry and never resolves it. A pod that did
/// would queue its first packets while the answer came, and the kernel sends that queue
/// after marking the entry valid, so a packet sent meanwhile from another CPU goes first:
/// a new pod's first burst arrived out of order in 5 of 30 runs of `lab_encap`'s ordering
/// test (none in 27 with the entry).
fn configure_pod(ifname: &str, alloc: &Allocation) -> Result<netlink::Link, CniError> {
    let mut rtnl = Rtnl::open().map_err(nl_error)?;
    let link = rtnl.link(ifname).map_err(nl_error)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Io,
            "veth peer missing",
            format!("{ifname} is not in the pod namespace after creation"),
        )
    })?;
    rtnl.set_up(link.index, ifname).map_err(nl_error)?;
    rtnl.add_address(link.index, alloc.ip.into(), alloc.prefix_len)
        .map_err(nl_error)?;
    rtnl.add_route(alloc.gateway.into(), 32, None, link.index)
        .map_err(nl_error)?;
    rtnl.add_route(Ipv4Addr::UNSPECIFIED.into(), 0, Some(alloc.gateway.into()), link.index)
        .map_err(nl_error)?;
    rtnl.add_neighbour(link.index, alloc.gateway.into(), alloc.gateway_mac.0).map_err(nl_error)?;
    if let Some((ip6, gw6)) = alloc.dual_stack() {
        // The gateway is link-local: on-link through fe80::/64.
        rtnl.add_address(link.index, ip6.into(), 128).map_err(nl_error)?;
        rtnl.add_route(Ipv6Addr::UNSPECIFIED.into(), 0, Some(gw6.into()), link.index)
            .map_err(nl_error)?;
        rtnl.add_neighbour(link.index, gw6.into(), alloc.gateway_mac.0).map_err(nl_error)?;
    }
    ethtool::disable_offloads(ifname)
        .map_err(|e| CniError::new(ErrorCode::Io, "ethtool failed", e.to_string()))?;
    Ok(link)
}

/// Undoes an ADD that failed after `allocate`; errors here are logged, the ADD's own
/// error is what the runtime sees.
fn rollback(att: &Attachment, host: &str, agent: &AgentClient, veth_created: bool) {
    if veth_created {
        let deleted = Rtnl::open().and_then(|mut r| match r.link(host)? {
            Some(link) => r.delete_link(link.index, host),
            None => Ok(()),
        });
        if let Err(e) = deleted {
            tracing::error!(error = %e, host_ifname = host, "rollback: deleting the veth failed");
        }
    }
    match agent.release(&att.container_id) {
        Ok(released) => tracing::info!(released, "rollback: released the address"),
        Err(e) => tracing::error!(error = %e, "rollback: release failed"),
    }
}

fn cmd_del(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let agent = AgentClient::new(&conf.socket);
    let host = host_ifname(&att.container_id);
    let released = agent.release(&att.container_id);

    let mut rtnl = Rtnl::open().map_err(nl_error)?;
    if let Some(link) = rtnl.link(&host).map_err(nl_error)? {
        rtnl.delete_link(link.index, &host).map_err(nl_error)?;
        tracing::info!(host_ifname = %host, "deleted veth");
    }
    match released {
        Ok(released) => {
            tracing::info!(released, "released");
            Ok(())
        }
        Err(e) => Err(agent_error(e)),
    }
}

fn cmd_check(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    if !conf.cni_version.has_check() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "incompatible CNI version",
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the network config has {}",
                conf.cni_version
            ),
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "invalid network configuration",
            "CHECK needs \"prevResult\" (the result of ADD)",
        )
    })?;
    let netns_path = att.netns.as_deref().expect("CHECK checked CNI_NETNS");
    let failed = |details: String| {
        CniError::new(
            ErrorCode::CheckFailed,
            "pod network not as ADD left it",
            details,
        )
    };
    let sandbox = netns_path.display().to_string();
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            failed(format!(
                "prevResult lists no interface {} with sandbox {sandbox}",
                att.ifname
            ))
        })?;
    let pod_expected = &prev.interfaces[pod_index];
    // What this plugin created, per prevResult: the addresses and gateways of the pod
    // interface, and the routes via those gateways. Entries of other plugins (other
    // interfaces, other routes) are theirs to check.
    let mut addresses = Vec::new();
    let mut gateways = Vec::new();
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(pod_index)) {
        if let Some(parsed) = parse_cidr(&ip.address) {
            addresses.push(parsed);
            gateways.extend(ip.gateway.as_deref().and_then(|g| g.parse::<IpAddr>().ok()));
        }
    }
    let routes: Vec<(String, IpAddr)> = prev
        .routes
        .iter()
        .filter_map(|r| Some((r.dst.clone(), r.gw.as_deref()?.parse::<IpAddr>().ok()?)))
        .filter(|(_, gw)| gateways.contains(gw))
        .collect();

    let host = host_ifname(&att.container_id);
    let host_link = Rtnl::open()
        .and_then(|mut r| r.link(&host))
        .map_err(nl_error)?
        .ok_or_else(|| failed(format!("host-side interface {host} does not exist")))?;
    if !host_link.up {
        return Err(failed(format!("host-side interface {host} is down")));
    }

    let netns = open_netns(netns_path)?;
    let ifname = att.ifname.clone();
    let expected_mac = pod_expected.mac.clone();
    let host_mtu = host_link.mtu;
    let check = move || -> Result<Result<(), String>, CniError> {
        let mut rtnl = Rtnl::open().map_err(nl_error)?;
        let Some(link) = rtnl.link(&ifname).map_err(nl_error)? else {
            return Ok(Err(format!("{ifname} does not exist in the pod namespace")));
        };
        if !link.up {
            return Ok(Err(format!("{ifname} is down")));
        }
        if expected_mac
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(&link.mac))
        {
            return Ok(Err(format!(
                "{ifname} has MAC {} but prevResult says {expected_mac:?}",
                link.mac
            )));
        }
        if link.mtu != host_mtu {
            return Ok(Err(format!(
                "{ifname} has MTU {} but the host side has {host_mtu}",
                link.mtu
            )));
        }
        let have = rtnl.addresses(link.index).map_err(nl_error)?;
        if let Some((ip, len)) = addresses.iter().find(|a| !have.contains(a)) {
            return Ok(Err(format!("{ifname} lacks address {ip}/{len}")));
        }
        let table = rtnl.routes().map_err(nl_error)?;
        // An IPv4 gateway has a link route of its own; an IPv6 one is link-local.
        for gw in gateways.iter().filter(|g| g.is_ipv4()) {
            if !table.iter().any(|r| {
                r.dst == *gw
                    && r.prefix_len == 32
                    && r.scope == RouteScope::Link
                    && r.oif == Some(link.index)
            }) {
                return Ok(Err(format!("no link route to gateway {gw} dev {ifname}")));
            }
        }
        for (dst, gw) in &routes {
            let found = table
                .iter()
                .any(|r| format!("{}/{}", r.dst, r.prefix_len) == *dst && r.gateway == Some(*gw));
            if !found {
                return Ok(Err(format!("route {dst} via {gw} is missing")));
            }
        }
        let on = ethtool::offloads_on(&ifname)
            .map_err(|e| CniError::new(ErrorCode::Io, "ethtool failed", e.to_string()))?;
        if !on.is_empty() {
            return Ok(Err(format!(
                "{ifname} has offloads on that must be off: {on:?}"
            )));
        }
        Ok(Ok(()))
    };
    sys::in_netns(&netns, check)
        .map_err(|e| netns_error(netns_path, e))??
        .map_err(failed)?;

    AgentClient::new(&conf.socket).ping().map_err(agent_error)?;
    tracing::info!("check passed");
    Ok(())
}

/// `"10.244.1.2/32"` or `"fd00::2/128"` → (address, prefix length); `None` for anything else.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let (addr, len): (IpAddr, u8) = (addr.parse().ok()?, len.parse().ok()?);
    (len <= if addr.is_ipv4() { 32 } else { 128 }).then_some((addr, len))
}

/// Opens `CNI_NETNS`. A path that does not exist is code 3 (the container is gone);
/// the node's own namespace is refused (code 4) so a runtime bug cannot rewire the node.
fn open_netns(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorCode::ContainerUnknown
        } else {
            ErrorCode::Io
        };
        CniError::new(
            code,
            "cannot open the network namespace",
            format!("CNI_NETNS {}: {e}", path.display()),
        )
    })?;
    let ns = file.metadata().map_err(|e| netns_error(path, e))?;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(|e| netns_error(path, e))?;
    if (ns.dev(), ns.ino()) == (own.dev(), own.ino()) {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid environment variables",
            format!(
                "CNI_NETNS {} is the node's own network namespace; expected the pod's",
                path.display()
            ),
        ));
    }
    Ok(file)
}

fn netns_error(path: &Path, e: std::io::Error) -> CniError {
    if e.raw_os_error() == Some(libc::EINVAL) {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid environment variables",
            format!(
                "CNI_NETNS {} is not a network namespace (setns: {e})",
                path.display()
            ),
        )
    } else {
        CniError::new(
            ErrorCode::Io,
            "cannot enter the network namespace",
            format!("CNI_NETNS {}: {e}", path.display()),
        )
    }
}

fn nl_error(e: NetlinkError) -> CniError {
    CniError::new(ErrorCode::Io, "netlink request failed", e.to_string())
}

/// Unreachable or broken connections are transient (11); refusals are the agent's
/// word (100); garbage is an I/O failure (5).
fn agent_error(e: AgentError) -> CniError {
    let code = match e {
        AgentError::Unreachable { .. } | AgentError::Io { .. } => ErrorCode::TryAgainLater,
        AgentError::Refused { .. } => ErrorCode::AgentRefused,
        AgentError::Protocol { .. } => ErrorCode::Io,
    };
    let msg = match code {
        ErrorCode::TryAgainLater => "twill agent not reachable, try again later",
        ErrorCode::AgentRefused => "twill agent refused the request",
        _ => "twill agent answered unexpectedly",
    };
    CniError::new(code, msg, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_tw_plus_11_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(host_ifname("abc"), "twba7816bf8f0");
        let n = host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 13);
        assert!(
            n.starts_with("tw")
                && n[2..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(host_ifname("a"), host_ifname("b"));
    }

    #[test]
    fn cidr_parse() {
        assert_eq!(parse_cidr("10.244.1.2/32"), Some((IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)), 32)));
        assert_eq!(parse_cidr("fd00::1/128"), Some(("fd00::1".parse().unwrap(), 128)));
        assert_eq!(parse_cidr("fd00::1/129"), None);
        assert_eq!(parse_cidr("10.0.0.1/33"), None);
        assert_eq!(parse_cidr("10.0.0.1"), None);
    }

    #[test]
    fn agent_errors_map_to_spec_codes() {
        let unreachable = AgentError::Unreachable {
            socket: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(agent_error(unreachable).code.code(), 11);
        assert_eq!(
            agent_error(AgentError::Refused {
                op: "allocate",
                message: "pool exhausted".into()
            })
            .code
            .code(),
            100
        );
        let e = agent_error(AgentError::Protocol {
            op: "allocate",
            socket: "/x".into(),
            reason: "?".into(),
        });
        assert_eq!(e.code.code(), 5);
    }
}
