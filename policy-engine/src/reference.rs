//! The slow, obviously correct policy evaluator: a direct reading of Calico's semantics for
//! one tier ("default"). Used by tests (compiled classifier vs reference) and by
//! `twill policy explain`; never by the data plane.
//!
//! For a new connection, egress of the source endpoint (if the source address is an
//! endpoint) and ingress of the destination endpoint (if the destination address is one) are
//! evaluated; the connection is allowed when every evaluated direction allows. Both
//! directions are always evaluated so an explanation can show both. Per direction:
//!
//! 1. The policies that apply to the endpoint (selector matches; namespaced ones only in
//!    their namespace; GlobalNetworkPolicy `namespaceSelector` matches the endpoint's
//!    namespace; the direction is in `types`) are sorted by order (unset last), then name.
//! 2. Their rules run in order: the first Allow or Deny decides; Log records and continues;
//!    Pass leaves the tier and the endpoint's profile allows.
//! 3. If a policy applied but no rule decided, the end of the tier denies; if none applied,
//!    the endpoint is not isolated and the traffic is allowed.
//!
//! Replies to allowed connections are not evaluated here: the data plane's conntrack passes
//! them (NetworkPolicy is stateful).
//!
//! IPv4 connections come as [`Packet`] ([`evaluate`]), IPv6 ones as [`Packet6`]
//! ([`evaluate6`]); both families are judged by the same rules, with these family rules
//! (as Felix renders a rule once per family): a rule with `ipVersion` matches only its
//! family; nets and notNets of the other family never match (a side whose nets are all of
//! the other family matches nothing, a side without nets matches both); a selector picks a
//! pod by any of its addresses of the packet's family ([`World::endpoint_by_ip6`]). For
//! IPv6 the ICMP protocol is ICMPv6 (58): `icmp` / `notICMP` type and code apply to it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Action, Direction, EntityMatch, IcmpMatch, Policy, PortSpec, Rule, proto};
use crate::world::{Endpoint, World};

/// The first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet<A = Ipv4Addr> {
    /// Source address.
    pub src_ip: A,
    /// Destination address.
    pub dst_ip: A,
    /// IP protocol number (IPv6: the last next header: 6 TCP, 17 UDP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// Source port (0 for protocols without ports).
    pub src_port: u16,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
    /// ICMP type (ICMP / ICMPv6 only).
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP / ICMPv6 only).
    pub icmp_code: Option<u8>,
}

/// The first packet of an IPv6 connection.
pub type Packet6 = Packet<Ipv6Addr>;

impl<A: Copy> Packet<A> {
    /// A TCP SYN from `src:src_port` to `dst:dst_port`.
    pub fn tcp(src: A, src_port: u16, dst: A, dst_port: u16) -> Packet<A> {
        Packet {
            src_ip: src,
            dst_ip: dst,
            protocol: proto::TCP,
            src_port,
            dst_port,
            icmp_type: None,
            icmp_code: None,
        }
    }

    /// A UDP datagram.
    pub fn udp(src: A, src_port: u16, dst: A, dst_port: u16) -> Packet<A> {
        Packet {
            protocol: proto::UDP,
            ..Packet::tcp(src, src_port, dst, dst_port)
        }
    }

}

/// An address family's ICMP: ICMP (1) for IPv4, ICMPv6 (58) for IPv6.
pub trait IcmpFamily: Copy {
    /// Its protocol number.
    const ICMP: u8;
}

impl IcmpFamily for Ipv4Addr {
    const ICMP: u8 = proto::ICMP;
}

impl IcmpFamily for Ipv6Addr {
    const ICMP: u8 = proto::ICMPV6;
}

impl<A: IcmpFamily> Packet<A> {
    /// An ICMP (for IPv6: ICMPv6, RFC 4443 §2.1) message of `icmp_type` / `code`.
    pub fn icmp(src: A, dst: A, icmp_type: u8, code: u8) -> Packet<A> {
        Packet {
            protocol: A::ICMP,
            icmp_type: Some(icmp_type),
            icmp_code: Some(code),
            ..Packet::tcp(src, 0, dst, 0)
        }
    }
}

/// A packet of either family, as the evaluation reads it.
#[derive(Debug, Clone, Copy)]
struct Conn {
    src: IpAddr,
    dst: IpAddr,
    /// 4 or 6.
    version: u8,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

impl From<&Packet> for Conn {
    fn from(p: &Packet) -> Conn {
        Conn {
            src: p.src_ip.into(),
            dst: p.dst_ip.into(),
            version: 4,
            protocol: p.protocol,
            src_port: p.src_port,
            dst_port: p.dst_port,
            icmp_type: p.icmp_type,
            icmp_code: p.icmp_code,
        }
    }
}

impl From<&Packet6> for Conn {
    fn from(p: &Packet6) -> Conn {
        Conn {
            src: p.src_ip.into(),
            dst: p.dst_ip.into(),
            version: 6,
            protocol: p.protocol,
            src_port: p.src_port,
            dst_port: p.dst_port,
            icmp_type: p.icmp_type,
            icmp_code: p.icmp_code,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The connection may open.
    Allow,
    /// The connection is dropped.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// A rule of a policy: which policy, which direction, which model rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// The policy's name.
    pub policy: String,
    /// The policy's namespace (`None` for a GlobalNetworkPolicy).
    pub namespace: Option<String>,
    /// Index into [`Policy::rules`] of the direction.
    pub rule_index: usize,
    /// Index of the rule in the manifest (`spec.ingress[i]` / `spec.egress[i]`).
    pub source_rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{} rule {}", self.policy, self.source_rule),
            None => write!(f, "{} rule {}", self.policy, self.source_rule),
        }
    }
}

/// What decided a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// An Allow or Deny rule matched.
    Rule(RuleRef),
    /// A Pass rule matched; the endpoint's profile allowed.
    PassToProfile(RuleRef),
    /// Policies applied but no rule matched: deny at the end of the tier.
    EndOfTier,
    /// No policy applies to the endpoint in this direction: not isolated, allowed.
    NoPolicyApplies,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(r) => write!(f, "{r}"),
            DecidedBy::PassToProfile(r) => write!(f, "{r} (pass → profile allows)"),
            DecidedBy::EndOfTier => f.write_str("end of tier (no rule matched)"),
            DecidedBy::NoPolicyApplies => f.write_str("no policy applies"),
        }
    }
}

/// The outcome for one direction of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionDecision {
    /// Ingress or egress.
    pub direction: Direction,
    /// `(namespace, name)` of the endpoint evaluated.
    pub endpoint: (String, String),
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub decided_by: DecidedBy,
    /// Log rules that matched on the way, in order.
    pub logged: Vec<RuleRef>,
    /// The policies that applied, in evaluation order (`namespace/name` or `name`).
    pub applied: Vec<String>,
}

/// The outcome for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow when every evaluated direction allows.
    pub verdict: Verdict,
    /// Egress of the source endpoint; `None` when the source is not an endpoint.
    pub egress: Option<DirectionDecision>,
    /// Ingress of the destination endpoint; `None` when the destination is not an endpoint.
    pub ingress: Option<DirectionDecision>,
}

fn rule_json(r: &RuleRef) -> serde_json::Value {
    serde_json::json!({
        "policy": r.policy,
        "namespace": r.namespace,
        "rule": r.source_rule,
        "model_rule": r.rule_index,
    })
}

impl DirectionDecision {
    /// The JSON form `twill policy explain --json` prints for a direction.
    pub fn to_json(&self) -> serde_json::Value {
        let decided_by = match &self.decided_by {
            DecidedBy::Rule(r) => serde_json::json!({"kind": "rule", "rule": rule_json(r)}),
            DecidedBy::PassToProfile(r) => {
                serde_json::json!({"kind": "pass-to-profile", "rule": rule_json(r)})
            }
            DecidedBy::EndOfTier => serde_json::json!({"kind": "end-of-tier"}),
            DecidedBy::NoPolicyApplies => serde_json::json!({"kind": "no-policy-applies"}),
        };
        serde_json::json!({
            "endpoint": format!("{}/{}", self.endpoint.0, self.endpoint.1),
            "verdict": self.verdict.to_string(),
            "decided_by": decided_by,
            "explanation": self.decided_by.to_string(),
            "logged": self.logged.iter().map(rule_json).collect::<Vec<_>>(),
            "applied": self.applied,
        })
    }
}

impl Decision {
    /// `{"verdict": "allow"|"deny", "egress": {...}|null, "ingress": {...}|null}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verdict": self.verdict.to_string(),
            "egress": self.egress.as_ref().map(DirectionDecision::to_json),
            "ingress": self.ingress.as_ref().map(DirectionDecision::to_json),
        })
    }
}

impl fmt::Display for Decision {
    /// Human-readable explanation, one line per direction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verdict: {}", self.verdict)?;
        for (name, d) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            match d {
                None => writeln!(f, "  {name}: not an endpoint, not evaluated")?,
                Some(d) => {
                    writeln!(
                        f,
                        "  {name} of {}/{}: {} by {}",
                        d.endpoint.0, d.endpoint.1, d.verdict, d.decided_by
                    )?;
                    for l in &d.logged {
                        writeln!(f, "    logged by {l}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `policy` applies to `ep` in `dir`.
pub fn applies(policy: &Policy, ep: &Endpoint, world: &World, dir: Direction) -> bool {
    policy.applies(ep, world.namespace_labels(&ep.namespace), dir)
}

fn port_in(list: &[PortSpec], port: u16, protocol: u8, ep: Option<&Endpoint>) -> bool {
    list.iter().any(|p| match p {
        PortSpec::Range { lo, hi } => (*lo..=*hi).contains(&port),
        PortSpec::Named(name) => ep.and_then(|e| e.named_port(name, protocol)) == Some(port),
    })
}

/// Whether one side of a connection matches. `policy_ns` (the policy's namespace, `None`
/// for a GlobalNetworkPolicy) scopes the endpoint match as described in [`crate::world`].
fn entity_matches(
    m: &EntityMatch,
    addr: IpAddr,
    port: u16,
    protocol: u8,
    world: &World,
    policy_ns: Option<&str>,
) -> bool {
    let ep = world.endpoint_by_addr(addr);
    if !m.nets.is_empty() && !m.nets.iter().any(|c| c.contains(addr)) {
        return false;
    }
    if m.not_nets.iter().any(|c| c.contains(addr)) {
        return false;
    }
    if World::peer_must_be_endpoint(m, policy_ns)
        && !ep.is_some_and(|e| world.peer_selected(m, e, policy_ns))
    {
        return false;
    }
    if ep.is_some_and(|e| world.peer_not_selected(m, e)) {
        return false;
    }
    if !m.ports.is_empty() && !port_in(&m.ports, port, protocol, ep) {
        return false;
    }
    if port_in(&m.not_ports, port, protocol, ep) {
        return false;
    }
    true
}

fn icmp_matches(m: &IcmpMatch, pkt: &Conn) -> bool {
    matches!(pkt.protocol, proto::ICMP | proto::ICMPV6)
        && m.icmp_type.is_none_or(|t| pkt.icmp_type == Some(t))
        && m.code.is_none_or(|c| pkt.icmp_code == Some(c))
}

/// The policies that apply to `ep` in `dir`, in evaluation order (order, unset last, then
/// name).
pub fn applicable_policies<'a>(
    policies: &'a [Policy],
    world: &World,
    ep: &Endpoint,
    dir: Direction,
) -> Vec<&'a Policy> {
    let mut applied: Vec<&Policy> = policies
        .iter()
        .filter(|p| applies(p, ep, world, dir))
        .collect();
    applied.sort_by(|a, b| a.cmp_order(b));
    applied
}

/// Whether `rule` of a policy in `policy_ns` (None = global) matches `pkt`.
pub fn rule_matches(rule: &Rule, pkt: &Packet, world: &World, policy_ns: Option<&str>) -> bool {
    conn_matches(rule, &pkt.into(), world, policy_ns)
}

/// Whether `rule` of a policy in `policy_ns` (None = global) matches the IPv6 `pkt`.
pub fn rule_matches6(rule: &Rule, pkt: &Packet6, world: &World, policy_ns: Option<&str>) -> bool {
    conn_matches(rule, &pkt.into(), world, policy_ns)
}

fn conn_matches(rule: &Rule, pkt: &Conn, world: &World, policy_ns: Option<&str>) -> bool {
    rule.ip_version.is_none_or(|v| v == pkt.version)
        && rule.protocol.is_none_or(|p| p == pkt.protocol)
        && rule.not_protocol.is_none_or(|p| p != pkt.protocol)
        && rule.icmp.as_ref().is_none_or(|m| icmp_matches(m, pkt))
        && rule.not_icmp.as_ref().is_none_or(|m| !icmp_matches(m, pkt))
        && entity_matches(
            &rule.source,
            pkt.src,
            pkt.src_port,
            pkt.protocol,
            world,
            policy_ns,
        )
        && entity_matches(
            &rule.destination,
            pkt.dst,
            pkt.dst_port,
            pkt.protocol,
            world,
            policy_ns,
        )
}

/// Evaluates one direction of one endpoint.
pub fn evaluate_direction(
    policies: &[Policy],
    world: &World,
    pkt: &Packet,
    ep: &Endpoint,
    dir: Direction,
) -> DirectionDecision {
    conn_direction(policies, world, &pkt.into(), ep, dir)
}

fn conn_direction(
    policies: &[Policy],
    world: &World,
    pkt: &Conn,
    ep: &Endpoint,
    dir: Direction,
) -> DirectionDecision {
    let applied = applicable_policies(policies, world, ep, dir);
    let mut logged = Vec::new();
    let mut outcome = if applied.is_empty() {
        (Verdict::Allow, DecidedBy::NoPolicyApplies)
    } else {
        (Verdict::Deny, DecidedBy::EndOfTier)
    };
    'tier: for p in &applied {
        for (i, rule) in p.rules(dir).iter().enumerate() {
            if !conn_matches(rule, pkt, world, p.namespace.as_deref()) {
                continue;
            }
            let r = RuleRef {
                policy: p.name.clone(),
                namespace: p.namespace.clone(),
                rule_index: i,
                source_rule: rule.source_rule,
            };
            match rule.action {
                Action::Log => logged.push(r),
                Action::Allow => {
                    outcome = (Verdict::Allow, DecidedBy::Rule(r));
                    break 'tier;
                }
                Action::Deny => {
                    outcome = (Verdict::Deny, DecidedBy::Rule(r));
                    break 'tier;
                }
                Action::Pass => {
                    outcome = (Verdict::Allow, DecidedBy::PassToProfile(r));
                    break 'tier;
                }
            }
        }
    }
    DirectionDecision {
        direction: dir,
        endpoint: (ep.namespace.clone(), ep.name.clone()),
        verdict: outcome.0,
        decided_by: outcome.1,
        logged,
        applied: applied.iter().map(|p| p.id()).collect(),
    }
}

/// Evaluates a new connection: egress of the source endpoint, ingress of the destination
/// endpoint.
pub fn evaluate(policies: &[Policy], world: &World, pkt: &Packet) -> Decision {
    conn_evaluate(policies, world, &pkt.into())
}

/// Evaluates a new IPv6 connection: egress of the endpoint owning the source address,
/// ingress of the endpoint owning the destination address.
pub fn evaluate6(policies: &[Policy], world: &World, pkt: &Packet6) -> Decision {
    conn_evaluate(policies, world, &pkt.into())
}

fn conn_evaluate(policies: &[Policy], world: &World, pkt: &Conn) -> Decision {
    let egress = world
        .endpoint_by_addr(pkt.src)
        .map(|ep| conn_direction(policies, world, pkt, ep, Direction::Egress));
    let ingress = world
        .endpoint_by_addr(pkt.dst)
        .map(|ep| conn_direction(policies, world, pkt, ep, Direction::Ingress));
    let allowed = [&egress, &ingress]
        .iter()
        .all(|d| d.as_ref().is_none_or(|d| d.verdict == Verdict::Allow));
    Decision {
        verdict: if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        egress,
        ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cidr, PolicyKind};
    use crate::selector::Selector;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn world() -> World {
        let mut w = World::new();
        w.add_endpoint(
            Endpoint::new("a", "web", &[("app", "web")], ip("10.0.0.1")).with_port(
                "http",
                proto::TCP,
                8080,
            ),
        );
        w.add_endpoint(Endpoint::new(
            "b",
            "client",
            &[("app", "client")],
            ip("10.0.0.2"),
        ));
        w
    }

    fn gnp(name: &str, order: Option<f64>, ingress: Vec<Rule>) -> Policy {
        Policy {
            kind: PolicyKind::CalicoGlobalNetworkPolicy,
            name: name.into(),
            namespace: None,
            order,
            selector: Selector::Eq("app".into(), "web".into()),
            namespace_selector: None,
            types: vec![Direction::Ingress],
            ingress,
            egress: vec![],
        }
    }

    #[test]
    fn no_policy_allows_both_directions() {
        let d = evaluate(
            &[],
            &world(),
            &Packet::tcp(ip("10.0.0.2"), 1000, ip("10.0.0.1"), 80),
        );
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.egress.unwrap().decided_by, DecidedBy::NoPolicyApplies);
        assert_eq!(d.ingress.unwrap().decided_by, DecidedBy::NoPolicyApplies);
        let d = evaluate(
            &[],
            &world(),
            &Packet::tcp(ip("1.1.1.1"), 1000, ip("8.8.8.8"), 80),
        );
        assert!(d.egress.is_none() && d.ingress.is_none());
    }

    #[test]
    fn rule_fields() {
        let w = world();
        let pkt = Packet::tcp(ip("10.0.0.2"), 40000, ip("10.0.0.1"), 8080);
        let mut r = Rule::any(Action::Allow, 0);
        assert!(rule_matches(&r, &pkt, &w, None));
        r.destination.ports = vec![PortSpec::Named("http".into())];
        assert!(rule_matches(&r, &pkt, &w, None));
        assert!(!rule_matches(
            &r,
            &Packet::udp(ip("10.0.0.2"), 1, ip("10.0.0.1"), 8080),
            &w,
            None
        ));
        r.source.not_ports = vec![PortSpec::Range {
            lo: 32768,
            hi: 60999,
        }];
        assert!(!rule_matches(&r, &pkt, &w, None));
        let mut r = Rule::any(Action::Allow, 0);
        r.source.selector = Some(Selector::Eq("app".into(), "client".into()));
        assert!(rule_matches(&r, &pkt, &w, None), "global scope");
        assert!(
            !rule_matches(&r, &pkt, &w, Some("a")),
            "namespaced to a; client is in b"
        );
        r.source.namespace_selector = Some(Selector::All);
        assert!(
            rule_matches(&r, &pkt, &w, Some("a")),
            "namespaceSelector widens the scope"
        );
        let mut r = Rule::any(Action::Allow, 0);
        r.source.nets = vec![Cidr::parse("10.0.0.0/24", true).unwrap()];
        r.source.not_nets = vec![Cidr::parse("10.0.0.2/32", true).unwrap()];
        assert!(!rule_matches(&r, &pkt, &w, None));
        let mut r = Rule::any(Action::Allow, 0);
        r.not_protocol = Some(proto::TCP);
        assert!(!rule_matches(&r, &pkt, &w, None));
        r.ip_version = Some(6);
        r.not_protocol = None;
        assert!(!rule_matches(&r, &pkt, &w, None));
        let mut r = Rule::any(Action::Allow, 0);
        r.protocol = Some(proto::ICMP);
        r.icmp = Some(IcmpMatch {
            icmp_type: Some(8),
            code: None,
        });
        assert!(rule_matches(
            &r,
            &Packet::icmp(ip("10.0.0.2"), ip("10.0.0.1"), 8, 0),
            &w,
            None
        ));
        assert!(!rule_matches(
            &r,
            &Packet::icmp(ip("10.0.0.2"), ip("10.0.0.1"), 0, 0),
            &w,
            None
        ));
        r.icmp = None;
        r.not_icmp = Some(IcmpMatch {
            icmp_type: Some(8),
            code: Some(0),
        });
        assert!(!rule_matches(
            &r,
            &Packet::icmp(ip("10.0.0.2"), ip("10.0.0.1"), 8, 0),
            &w,
            None
        ));
        assert!(rule_matches(
            &r,
            &Packet::icmp(ip("10.0.0.2"), ip("10.0.0.1"), 8, 1),
            &w,
            None
        ));
    }

    #[test]
    fn order_log_pass_deny() {
        let w = world();
        let pkt = Packet::tcp(ip("10.0.0.2"), 40000, ip("10.0.0.1"), 80);
        let deny = gnp(
            "z-deny",
            Some(10.0),
            vec![Rule::any(Action::Log, 0), Rule::any(Action::Deny, 1)],
        );
        let allow = gnp("a-allow", Some(20.0), vec![Rule::any(Action::Allow, 0)]);
        let d = evaluate(&[allow.clone(), deny.clone()], &w, &pkt)
            .ingress
            .unwrap();
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.applied, vec!["z-deny", "a-allow"]);
        assert_eq!(d.logged.len(), 1);
        let DecidedBy::Rule(r) = &d.decided_by else {
            panic!("{d:?}")
        };
        assert_eq!((r.policy.as_str(), r.rule_index), ("z-deny", 1));
        // Unset order goes last; ties by name.
        let unordered = gnp("a-unordered", None, vec![Rule::any(Action::Deny, 0)]);
        let tie = gnp("b-allow", Some(20.0), vec![Rule::any(Action::Allow, 0)]);
        let d = evaluate(&[unordered, tie, allow.clone()], &w, &pkt)
            .ingress
            .unwrap();
        assert_eq!(d.applied, vec!["a-allow", "b-allow", "a-unordered"]);
        assert_eq!(d.verdict, Verdict::Allow);
        // Pass skips the rest of the tier.
        let pass = gnp("pass", Some(1.0), vec![Rule::any(Action::Pass, 0)]);
        let d = evaluate(&[deny.clone(), pass], &w, &pkt).ingress.unwrap();
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(matches!(d.decided_by, DecidedBy::PassToProfile(_)));
        // A policy with only a Log rule: end of tier denies.
        let log = gnp("log", None, vec![Rule::any(Action::Log, 0)]);
        let d = evaluate(&[log], &w, &pkt);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.ingress.as_ref().unwrap().decided_by, DecidedBy::EndOfTier);
        assert_eq!(d.ingress.as_ref().unwrap().logged.len(), 1);
    }

    #[test]
    fn explanation_text_and_json() {
        let w = world();
        let pkt = Packet::tcp(ip("10.0.0.2"), 40000, ip("10.0.0.1"), 80);
        let p = gnp(
            "deny",
            Some(1.0),
            vec![Rule::any(Action::Log, 0), Rule::any(Action::Deny, 3)],
        );
        let d = evaluate(&[p], &w, &pkt);
        let text = d.to_string();
        assert!(text.starts_with("verdict: deny\n"), "{text}");
        assert!(
            text.contains("egress of b/client: allow by no policy applies"),
            "{text}"
        );
        assert!(
            text.contains("ingress of a/web: deny by deny rule 3"),
            "{text}"
        );
        assert!(text.contains("logged by deny rule 0"), "{text}");
        let j = d.to_json();
        assert_eq!(j["verdict"], "deny");
        assert_eq!(j["ingress"]["decided_by"]["kind"], "rule");
        assert_eq!(j["ingress"]["decided_by"]["rule"]["policy"], "deny");
        assert_eq!(j["ingress"]["decided_by"]["rule"]["rule"], 3);
        assert_eq!(j["ingress"]["decided_by"]["rule"]["model_rule"], 1);
        assert_eq!(j["egress"]["decided_by"]["kind"], "no-policy-applies");
        let j = evaluate(&[], &w, &Packet::tcp(ip("1.1.1.1"), 1, ip("10.0.0.1"), 80)).to_json();
        assert!(j["egress"].is_null());
        assert_eq!(j["verdict"], "allow");
    }

    #[test]
    fn ipv6_family_rules() {
        let web6: Ipv6Addr = "fd00::1".parse().unwrap();
        let client6: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut w = World::new();
        w.add_endpoint(Endpoint::new("a", "web", &[("app", "web")], ip("10.0.0.1")).with_ip6(web6));
        w.add_endpoint(Endpoint::new("b", "client", &[("app", "client")], ip("10.0.0.2")).with_ip6(client6));
        let pkt = Packet6::tcp(client6, 40000, web6, 80);
        let mut r = Rule::any(Action::Allow, 0);
        assert!(rule_matches6(&r, &pkt, &w, None), "no nets: both families");
        r.ip_version = Some(4);
        assert!(!rule_matches6(&r, &pkt, &w, None), "ipVersion 4 never matches IPv6");
        r.ip_version = Some(6);
        assert!(rule_matches6(&r, &pkt, &w, None));
        assert!(!rule_matches(&r, &Packet::tcp(ip("10.0.0.2"), 1, ip("10.0.0.1"), 80), &w, None), "ipVersion 6 never matches IPv4");
        let mut r = Rule::any(Action::Allow, 0);
        r.source.nets = vec![Cidr::parse("10.0.0.0/8", true).unwrap()];
        assert!(!rule_matches6(&r, &pkt, &w, None), "only IPv4 nets: no IPv6 packet");
        r.source.nets.push(Cidr::parse("fd00::/64", true).unwrap());
        assert!(rule_matches6(&r, &pkt, &w, None));
        r.source.not_nets = vec![Cidr::parse("fd00::2/128", true).unwrap()];
        assert!(!rule_matches6(&r, &pkt, &w, None), "notNets in IPv6");
        r.source.not_nets = vec![Cidr::parse("10.0.0.2/32", true).unwrap()];
        assert!(rule_matches6(&r, &pkt, &w, None), "an IPv4 notNet never excludes IPv6");
        let mut r = Rule::any(Action::Allow, 0);
        r.source.selector = Some(Selector::Eq("app".into(), "client".into()));
        assert!(rule_matches6(&r, &pkt, &w, None), "a selector picks the pod by its IPv6 address");
        let outside = Packet6::tcp("2001:db8::2".parse().unwrap(), 1, web6, 80);
        assert!(!rule_matches6(&r, &outside, &w, None));
        let mut r = Rule::any(Action::Allow, 0);
        r.protocol = Some(proto::ICMPV6);
        r.icmp = Some(IcmpMatch { icmp_type: Some(128), code: None });
        assert!(rule_matches6(&r, &Packet6::icmp(client6, web6, 128, 0), &w, None));
        assert!(!rule_matches6(&r, &Packet6::icmp(client6, web6, 129, 0), &w, None));
        let d = evaluate6(&[gnp("deny", Some(1.0), vec![Rule::any(Action::Deny, 0)])], &w, &pkt);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.ingress.unwrap().endpoint, ("a".to_string(), "web".to_string()));
        assert_eq!(d.egress.unwrap().decided_by, DecidedBy::NoPolicyApplies);
        assert!(evaluate6(&[], &w, &outside).egress.is_none(), "not a pod: not evaluated");
    }
}
