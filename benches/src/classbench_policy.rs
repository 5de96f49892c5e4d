//! ClassBench rule sets as Calico policy, for the benches that judge connections with the
//! compiled policy: each rule an Allow rule of one GlobalNetworkPolicy's egress, its sources
//! opened (the pod is the source), its destination prefixes written in either family.

use std::net::{Ipv4Addr, Ipv6Addr};

use policy_engine::{
    classifier::ClassRule,
    model::{Action, Cidr, Direction, EntityMatch, Policy, PolicyKind, PortSpec, Rule},
    selector::Selector,
};

/// An IPv4 prefix as the rule writes it: as it is, or moved into an IPv6 network.
pub type Family = fn(u32, u8) -> Cidr;

/// `addr` with the host bits of a `/len` cleared.
fn network(addr: u32, len: u8) -> u32 {
    addr & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The prefix as an IPv4 CIDR (host bits cleared).
pub fn ipv4(addr: u32, len: u8) -> Cidr {
    Cidr { addr: Ipv4Addr::from(network(addr, len)).into(), prefix: len }
}

/// The IPv6 network the benches map IPv4 addresses into: `fd00::a.b.c.d`.
pub const V6_NET: u128 = 0xfd00 << 112;

/// `a.b.c.d` as `fd00::a.b.c.d`.
pub fn to_v6(addr: u32) -> Ipv6Addr {
    Ipv6Addr::from(V6_NET | u128::from(addr))
}

/// The prefix moved into [`V6_NET`]: `a.b.c.d/len` as `fd00::a.b.c.d/(96 + len)`, so an
/// IPv6 set of rules matches the mapped addresses exactly as the IPv4 one matches the
/// originals.
pub fn ipv6(addr: u32, len: u8) -> Cidr {
    Cidr { addr: to_v6(network(addr, len)).into(), prefix: 96 + len }
}

/// ClassBench rule `r` (number `i`) as a Calico Allow rule, destinations in `family`.
pub fn calico_rule(r: &ClassRule, i: usize, family: Family) -> Rule {
    let mut rule = Rule::any(Action::Allow, i);
    rule.protocol = r.protocols.first().copied();
    rule.destination = EntityMatch {
        nets: r.dst.iter().map(|&(a, l)| family(a, l)).collect(),
        ports: r.dst_ports.iter().map(|(lo, hi)| PortSpec::Range { lo: *lo, hi: *hi }).collect(),
        ..EntityMatch::default()
    };
    rule.source.ports = r.src_ports.iter().map(|(lo, hi)| PortSpec::Range { lo: *lo, hi: *hi }).collect();
    rule
}

/// The rule set as the egress of one GlobalNetworkPolicy selecting every endpoint.
pub fn policy(name: &str, rules: &[ClassRule], family: Family) -> Policy {
    Policy {
        kind: PolicyKind::CalicoGlobalNetworkPolicy,
        name: name.into(),
        namespace: None,
        order: Some(1.0),
        selector: Selector::All,
        namespace_selector: None,
        types: vec![Direction::Egress],
        ingress: Vec::new(),
        egress: rules.iter().enumerate().map(|(i, r)| calico_rule(r, i, family)).collect(),
    }
}
