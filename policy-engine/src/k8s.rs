//! Kubernetes `networking.k8s.io/v1` NetworkPolicy → [`Policy`], with the API's semantics
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>):
//!
//! - `podSelector` picks the pods of the policy's namespace it applies to (`{}` = all).
//! - `policyTypes` defaults to `[Ingress]`, plus `Egress` when `egress` has rules.
//! - A rule allows traffic matching any of its peers AND any of its ports; a missing or empty
//!   `from`/`to` = all peers, missing or empty `ports` = all ports; an empty rule list allows
//!   nothing (the policy still isolates the pod).
//! - Peers: `podSelector` alone = pods in the policy's namespace; `namespaceSelector` alone =
//!   all pods in matching namespaces; both = pods matching both (AND); `ipBlock` = addresses in
//!   `cidr` but not in any `except`.
//! - Ports: protocol TCP by default (UDP, SCTP); a number, a named port (resolved on the
//!   destination pod's container ports) or a number with `endPort` (an inclusive range).
//!
//! A policy becomes order 1000 with one Allow rule per (peer, port) pair, so a pod selected by
//! any policy of a direction is isolated (deny at the end of the tier) and the union of the
//! policies' rules is allowed.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    Action, Cidr, Direction, EntityMatch, FieldError, KUBERNETES_POLICY_ORDER, Policy, PolicyKind,
    PortSpec, Rule, proto,
};
use crate::selector::Selector;

/// Converts a Kubernetes `LabelSelector` to the selector AST (`{}` = `all()`).
pub fn label_selector(ls: &LabelSelector, field: &str) -> Result<Selector, FieldError> {
    let mut sel = Selector::All;
    for (k, v) in ls.match_labels.iter().flatten() {
        sel = sel.and(Selector::Eq(k.clone(), v.clone()));
    }
    for (i, req) in ls.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values: std::collections::BTreeSet<String> =
            req.values.iter().flatten().cloned().collect();
        let key = req.key.clone();
        let e = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(FieldError::new(
                    format!("{f}.values"),
                    "must be non-empty for In and NotIn",
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(FieldError::new(
                    format!("{f}.values"),
                    "must be empty for Exists and DoesNotExist",
                ));
            }
            "In" => Selector::In(key, values),
            "NotIn" => Selector::NotIn(key, values),
            "Exists" => Selector::Has(key),
            "DoesNotExist" => Selector::Not(Box::new(Selector::Has(key))),
            other => {
                return Err(FieldError::new(
                    format!("{f}.operator"),
                    format!("`{other}` is not one of In, NotIn, Exists, DoesNotExist"),
                ));
            }
        };
        sel = sel.and(e);
    }
    Ok(sel)
}

/// Whether `s` is a valid IANA_SVC_NAME (a container port name).
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn peer(p: &NetworkPolicyPeer, field: &str) -> Result<EntityMatch, FieldError> {
    let mut m = EntityMatch::default();
    if let Some(ib) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(FieldError::new(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; use two peers",
            ));
        }
        let cidr = Cidr::parse(&ib.cidr, false)
            .map_err(|r| FieldError::new(format!("{field}.ipBlock.cidr"), r))?;
        m.nets.push(cidr);
        for (i, e) in ib.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            let ex = Cidr::parse(e, false).map_err(|r| FieldError::new(&f, r))?;
            if !cidr.covers(&ex) || ex.prefix == cidr.prefix {
                return Err(FieldError::new(
                    f,
                    format!("`{e}` must be a strict subset of cidr `{}`", ib.cidr),
                ));
            }
            m.not_nets.push(ex);
        }
        return Ok(m);
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(FieldError::new(
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ));
    }
    if let Some(ps) = &p.pod_selector {
        m.selector = Some(label_selector(ps, &format!("{field}.podSelector"))?);
    }
    if let Some(ns) = &p.namespace_selector {
        m.namespace_selector = Some(label_selector(ns, &format!("{field}.namespaceSelector"))?);
    }
    Ok(m)
}

/// (protocol, destination ports) of one `ports[]` entry.
fn port(p: &NetworkPolicyPort, field: &str) -> Result<(u8, Vec<PortSpec>), FieldError> {
    let protocol = match p.protocol.as_deref() {
        None | Some("TCP") => proto::TCP,
        Some("UDP") => proto::UDP,
        Some("SCTP") => proto::SCTP,
        Some(other) => {
            return Err(FieldError::new(
                format!("{field}.protocol"),
                format!("`{other}` is not one of TCP, UDP, SCTP"),
            ));
        }
    };
    let ports = match (&p.port, p.end_port) {
        (None, None) => vec![],
        (None, Some(_)) => {
            return Err(FieldError::new(
                format!("{field}.endPort"),
                "endPort needs a numeric port",
            ));
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = u16::try_from(*n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                FieldError::new(format!("{field}.port"), format!("{n} is not in 1..=65535"))
            })?;
            let hi = match end {
                None => lo,
                Some(e) => u16::try_from(e).ok().filter(|e| *e >= lo).ok_or_else(|| {
                    FieldError::new(
                        format!("{field}.endPort"),
                        format!("{e} must be in {lo}..=65535 (>= port)"),
                    )
                })?,
            };
            vec![PortSpec::Range { lo, hi }]
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(FieldError::new(
                    format!("{field}.endPort"),
                    "endPort needs a numeric port, not a name",
                ));
            }
            if let Ok(n) = s.parse::<u16>() {
                if n == 0 {
                    return Err(FieldError::new(
                        format!("{field}.port"),
                        "0 is not in 1..=65535",
                    ));
                }
                vec![PortSpec::Range { lo: n, hi: n }]
            } else if is_port_name(s) {
                vec![PortSpec::Named(s.clone())]
            } else {
                return Err(FieldError::new(
                    format!("{field}.port"),
                    format!(
                        "`{s}` is neither a port number nor a port name (lowercase letters, digits, `-`, at most 15)"
                    ),
                ));
            }
        }
    };
    Ok((protocol, ports))
}

fn rules(
    dir: Direction,
    index: usize,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    field: &str,
) -> Result<Vec<Rule>, FieldError> {
    let peer_field = if dir == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let mut peer_matches = Vec::new();
    for (i, p) in peers.into_iter().flatten().enumerate() {
        peer_matches.push(peer(p, &format!("{field}.{peer_field}[{i}]"))?);
    }
    if peer_matches.is_empty() {
        peer_matches.push(EntityMatch::default());
    }
    let mut port_matches = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        port_matches.push(Some(port(p, &format!("{field}.ports[{i}]"))?));
    }
    if port_matches.is_empty() {
        port_matches.push(None);
    }
    let mut out = Vec::new();
    for pm in &peer_matches {
        for pt in &port_matches {
            let mut r = Rule::any(Action::Allow, index);
            match dir {
                Direction::Ingress => r.source = pm.clone(),
                Direction::Egress => r.destination = pm.clone(),
            }
            if let Some((protocol, ports)) = pt {
                r.protocol = Some(*protocol);
                r.destination.ports = ports.clone();
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// The fields of each object shape in a NetworkPolicy, for strict field validation.
#[derive(Clone, Copy)]
enum Shape {
    Root,
    Spec,
    Ingress,
    Egress,
    Peer,
    IpBlock,
    Port,
    LabelSelector,
    Requirement,
}

impl Shape {
    fn fields(self) -> &'static [(&'static str, Option<Shape>)] {
        match self {
            Shape::Root => &[
                ("apiVersion", None),
                ("kind", None),
                ("metadata", None),
                ("spec", Some(Shape::Spec)),
                ("status", None),
            ],
            Shape::Spec => &[
                ("podSelector", Some(Shape::LabelSelector)),
                ("policyTypes", None),
                ("ingress", Some(Shape::Ingress)),
                ("egress", Some(Shape::Egress)),
            ],
            Shape::Ingress => &[("from", Some(Shape::Peer)), ("ports", Some(Shape::Port))],
            Shape::Egress => &[("to", Some(Shape::Peer)), ("ports", Some(Shape::Port))],
            Shape::Peer => &[
                ("podSelector", Some(Shape::LabelSelector)),
                ("namespaceSelector", Some(Shape::LabelSelector)),
                ("ipBlock", Some(Shape::IpBlock)),
            ],
            Shape::IpBlock => &[("cidr", None), ("except", None)],
            Shape::Port => &[("protocol", None), ("port", None), ("endPort", None)],
            Shape::LabelSelector => &[
                ("matchLabels", None),
                ("matchExpressions", Some(Shape::Requirement)),
            ],
            Shape::Requirement => &[("key", None), ("operator", None), ("values", None)],
        }
    }
}

fn check_shape(v: &serde_yaml::Value, shape: Shape, path: &str) -> Result<(), FieldError> {
    if let Some(seq) = v.as_sequence() {
        for (i, item) in seq.iter().enumerate() {
            check_shape(item, shape, &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    let Some(map) = v.as_mapping() else {
        return Ok(());
    };
    let fields = shape.fields();
    for (k, child) in map {
        let key = k.as_str().unwrap_or("");
        let at = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        match fields.iter().find(|(name, _)| *name == key) {
            Some((_, Some(sub))) => check_shape(child, *sub, &at)?,
            Some((_, None)) => {}
            None => {
                let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                return Err(FieldError::new(
                    at,
                    format!("unknown field; expected one of {}", known.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// Strict field validation (as `kubectl apply --validate=strict`): rejects fields the
/// NetworkPolicy schema does not have, which k8s-openapi's types would silently drop.
pub fn check_unknown_fields(v: &serde_yaml::Value) -> Result<(), FieldError> {
    check_shape(v, Shape::Root, "")
}

/// Converts a parsed Kubernetes NetworkPolicy (namespace `default` when unset).
pub fn from_kubernetes(np: &NetworkPolicy) -> Result<Policy, FieldError> {
    let name = np
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "is required"))?;
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let spec = np.spec.clone().unwrap_or_default();
    let selector = match &spec.pod_selector {
        Some(ls) => label_selector(ls, "spec.podSelector")?,
        None => Selector::All,
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress.extend(rules(
            Direction::Ingress,
            i,
            r.from.as_ref(),
            r.ports.as_ref(),
            &format!("spec.ingress[{i}]"),
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress.extend(rules(
            Direction::Egress,
            i,
            r.to.as_ref(),
            r.ports.as_ref(),
            &format!("spec.egress[{i}]"),
        )?);
    }
    let types = match &spec.policy_types {
        Some(ts) => {
            let mut out = Vec::new();
            for (i, t) in ts.iter().enumerate() {
                let d = match t.as_str() {
                    "Ingress" => Direction::Ingress,
                    "Egress" => Direction::Egress,
                    other => {
                        return Err(FieldError::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("`{other}` is not Ingress or Egress"),
                        ));
                    }
                };
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            out
        }
        None if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
            vec![Direction::Ingress, Direction::Egress]
        }
        None => vec![Direction::Ingress],
    };
    Ok(Policy {
        kind: PolicyKind::KubernetesNetworkPolicy,
        name,
        namespace: Some(namespace),
        order: Some(KUBERNETES_POLICY_ORDER),
        selector,
        namespace_selector: None,
        types,
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PolicyError, parse_manifests};

    fn one(yaml: &str) -> Policy {
        let mut v = parse_manifests(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn err(yaml: &str) -> (String, String) {
        match parse_manifests(yaml, "t.yaml").unwrap_err() {
            PolicyError::Invalid {
                field,
                reason,
                file,
                object,
            } => {
                assert_eq!(file, "t.yaml");
                assert!(object.starts_with("NetworkPolicy"), "{object}");
                (field, reason)
            }
            e => panic!("{e}"),
        }
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n";

    #[test]
    fn label_selector_conversion() {
        let p = one(&format!(
            "{HEAD}  podSelector:\n    matchLabels: {{app: web}}\n    matchExpressions:\n    - {{key: tier, operator: In, values: [a, b]}}\n    - {{key: x, operator: NotIn, values: [c]}}\n    - {{key: y, operator: Exists}}\n    - {{key: z, operator: DoesNotExist}}\n"
        ));
        assert_eq!(
            p.selector.to_string(),
            "(app == 'web') && (tier in {'a', 'b'}) && (x not in {'c'}) && (has(y)) && (!(has(z)))"
        );
        assert_eq!(p.types, vec![Direction::Ingress]);
        assert_eq!(p.order, Some(1000.0));
        assert!(p.ingress.is_empty());
    }

    #[test]
    fn policy_types_defaulting() {
        let p = one(&format!("{HEAD}  podSelector: {{}}\n  egress:\n  - {{}}\n"));
        assert_eq!(p.types, vec![Direction::Ingress, Direction::Egress]);
        let p = one(&format!("{HEAD}  podSelector: {{}}\n  egress: []\n"));
        assert_eq!(p.types, vec![Direction::Ingress]);
        let p = one(&format!(
            "{HEAD}  podSelector: {{}}\n  policyTypes: [Egress]\n  ingress:\n  - {{}}\n"
        ));
        assert_eq!(p.types, vec![Direction::Egress]);
    }

    #[test]
    fn rules_expand_peers_times_ports() {
        let p = one(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{a: b}}}}\n    - ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}\n    ports:\n    - port: 80\n    - {{protocol: UDP, port: dns}}\n    - {{port: 3000, endPort: 3010, protocol: SCTP}}\n  - {{}}\n"
        ));
        assert_eq!(p.ingress.len(), 7);
        assert_eq!(p.ingress[0].protocol, Some(proto::TCP));
        assert_eq!(
            p.ingress[0].destination.ports,
            vec![PortSpec::Range { lo: 80, hi: 80 }]
        );
        assert_eq!(
            p.ingress[1].destination.ports,
            vec![PortSpec::Named("dns".into())]
        );
        assert_eq!(p.ingress[2].protocol, Some(proto::SCTP));
        assert_eq!(
            p.ingress[2].destination.ports,
            vec![PortSpec::Range { lo: 3000, hi: 3010 }]
        );
        assert_eq!(p.ingress[3].source.nets[0].to_string(), "10.0.0.0/8");
        assert_eq!(p.ingress[3].source.not_nets[0].to_string(), "10.1.0.0/16");
        assert_eq!(p.ingress[6], Rule::any(Action::Allow, 1));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "  podSelector: {}\n  policyTypes: [Ingres]\n",
                "spec.policyTypes[0]",
                "Ingress or Egress",
            ),
            (
                "  podSelector:\n    matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
                "spec.podSelector.matchExpressions[0].operator",
                "Equals",
            ),
            (
                "  podSelector:\n    matchExpressions: [{key: a, operator: In}]\n",
                "spec.podSelector.matchExpressions[0].values",
                "non-empty",
            ),
            (
                "  ingress:\n  - ports: [{protocol: ICMP}]\n",
                "spec.ingress[0].ports[0].protocol",
                "TCP, UDP, SCTP",
            ),
            (
                "  ingress:\n  - ports: [{port: 0}]\n",
                "spec.ingress[0].ports[0].port",
                "1..=65535",
            ),
            (
                "  ingress:\n  - ports: [{port: 90, endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort",
                ">= port",
            ),
            (
                "  ingress:\n  - ports: [{port: http, endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort",
                "name",
            ),
            (
                "  ingress:\n  - ports: [{port: Not_A_Name}]\n",
                "spec.ingress[0].ports[0].port",
                "port name",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/40}}]\n",
                "spec.egress[0].to[0].ipBlock.cidr",
                "prefix",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
                "spec.egress[0].to[0].ipBlock.except[0]",
                "strict subset",
            ),
            (
                "  ingress:\n  - from: [{}]\n",
                "spec.ingress[0].from[0]",
                "needs",
            ),
            (
                "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
                "spec.ingress[0].from[0]",
                "cannot be combined",
            ),
        ];
        for (spec, field, reason) in cases {
            let (f, r) = err(&format!("{HEAD}{spec}"));
            assert_eq!(&f, field, "{spec}: {r}");
            assert!(r.contains(reason), "{spec}: {r}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let cases: &[(&str, &str)] = &[
            ("  podSelecter: {}\n", "spec.podSelecter"),
            (
                "  ingress:\n  - from: [{podSelector: {matchLabel: {a: b}}}]\n",
                "spec.ingress[0].from[0].podSelector.matchLabel",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, exept: []}}]\n",
                "spec.egress[0].to[0].ipBlock.exept",
            ),
            ("  egress:\n  - from: []\n", "spec.egress[0].from"),
            (
                "  ingress:\n  - ports: [{port: 80, end_port: 90}]\n",
                "spec.ingress[0].ports[0].end_port",
            ),
        ];
        for (spec, field) in cases {
            let (f, r) = err(&format!("{HEAD}{spec}"));
            assert_eq!(&f, field, "{spec}: {r}");
            assert!(r.contains("unknown field"), "{r}");
        }
        // metadata and status are free-form.
        one(&format!("{HEAD}  podSelector: {{}}\nstatus: {{}}\n")
            .replace("  name: p\n", "  name: p\n  labels: {a: b}\n"));
    }

    #[test]
    fn schema_errors_are_reported() {
        let e = parse_manifests(&format!("{HEAD}  podSelector: 7\n"), "s.yaml").unwrap_err();
        let PolicyError::Invalid {
            file,
            object,
            field,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(
            (file.as_str(), object.as_str(), field.as_str()),
            ("s.yaml", "NetworkPolicy ns/p", "(schema)")
        );
    }
}
