//! Calico `projectcalico.org/v3` NetworkPolicy (namespaced) and GlobalNetworkPolicy →
//! [`Policy`] (<https://docs.tigera.io/calico/latest/reference/resources/networkpolicy>).
//!
//! The serde types here mirror the resource; `deny_unknown_fields` turns a misspelt field
//! (`notNet`, `destinaton`) into an error instead of a silently wider rule. Only the default
//! tier is modelled; `doNotTrack`, `preDNAT`, `applyOnForward`, service-account and service
//! matches and HTTP matches are rejected rather than ignored.
//!
//! Defaults: `selector` unset or empty = `all()`; `order` unset = after all ordered
//! policies; `types` unset = Ingress if there are ingress rules or no rules at all, plus
//! Egress if there are egress rules.

use serde::Deserialize;

use crate::k8s::is_port_name;
use crate::model::{
    Action, Cidr, Direction, EntityMatch, FieldError, IcmpMatch, Policy, PolicyKind, PortSpec,
    Rule, parse_selector, proto,
};

/// A Calico NetworkPolicy or GlobalNetworkPolicy as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoPolicy {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// `NetworkPolicy` or `GlobalNetworkPolicy`.
    pub kind: String,
    /// Name and namespace (other metadata is ignored).
    pub metadata: CalicoMetadata,
    /// The policy.
    #[serde(default)]
    pub spec: CalicoSpec,
}

/// The metadata fields policy evaluation reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalicoMetadata {
    /// Name.
    pub name: Option<String>,
    /// Namespace (NetworkPolicy only; `default` when unset).
    pub namespace: Option<String>,
}

/// `spec` of a Calico policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoSpec {
    /// Order (lower first; unset = last).
    pub order: Option<f64>,
    /// Tier; only `default` is supported.
    pub tier: Option<String>,
    /// Endpoints the policy applies to.
    pub selector: Option<String>,
    /// GlobalNetworkPolicy: namespaces whose endpoints the policy applies to.
    pub namespace_selector: Option<String>,
    /// `Ingress` / `Egress`.
    pub types: Option<Vec<String>>,
    /// Ingress rules.
    pub ingress: Option<Vec<CalicoRule>>,
    /// Egress rules.
    pub egress: Option<Vec<CalicoRule>>,
    /// Unsupported (must be false).
    pub do_not_track: Option<bool>,
    /// Unsupported (must be false).
    #[serde(rename = "preDNAT")]
    pub pre_dnat: Option<bool>,
    /// Unsupported (must be false).
    pub apply_on_forward: Option<bool>,
    /// Unsupported (must be empty).
    pub service_account_selector: Option<String>,
    /// Accepted and ignored.
    pub performance_hints: Option<Vec<String>>,
}

/// A number or a string (protocols and ports may be written either way).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NumOrString {
    /// `6`, `80`.
    Num(i64),
    /// `TCP`, `"80:90"`, `http`.
    Str(String),
}

/// ICMP type / code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalicoIcmp {
    /// ICMP type (0..=254).
    #[serde(rename = "type")]
    pub icmp_type: Option<i64>,
    /// ICMP code (0..=255; needs a type).
    pub code: Option<i64>,
}

/// A rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoRule {
    /// `Allow`, `Deny`, `Log` or `Pass`.
    pub action: String,
    /// Protocol name or number.
    pub protocol: Option<NumOrString>,
    /// Negated protocol.
    pub not_protocol: Option<NumOrString>,
    /// ICMP match.
    pub icmp: Option<CalicoIcmp>,
    /// Negated ICMP match.
    #[serde(rename = "notICMP")]
    pub not_icmp: Option<CalicoIcmp>,
    /// 4 or 6.
    pub ip_version: Option<i64>,
    /// Source match.
    pub source: Option<CalicoEntity>,
    /// Destination match.
    pub destination: Option<CalicoEntity>,
    /// Rule annotations (ignored).
    pub metadata: Option<serde_yaml::Value>,
    /// Unsupported (rejected).
    pub http: Option<serde_yaml::Value>,
}

/// `source` / `destination` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoEntity {
    /// CIDRs.
    pub nets: Option<Vec<String>>,
    /// Negated CIDRs.
    pub not_nets: Option<Vec<String>>,
    /// Endpoint selector.
    pub selector: Option<String>,
    /// Negated endpoint selector.
    pub not_selector: Option<String>,
    /// Namespace selector.
    pub namespace_selector: Option<String>,
    /// Ports: numbers, `"lo:hi"` ranges, named ports.
    pub ports: Option<Vec<NumOrString>>,
    /// Negated ports.
    pub not_ports: Option<Vec<NumOrString>>,
    /// Unsupported (rejected).
    pub service_accounts: Option<serde_yaml::Value>,
    /// Unsupported (rejected).
    pub services: Option<serde_yaml::Value>,
}

fn parse_protocol(v: &NumOrString, field: &str) -> Result<u8, FieldError> {
    let parsed = match v {
        NumOrString::Num(n) => u8::try_from(*n).ok(),
        NumOrString::Str(s) => proto::parse(s),
    };
    parsed.ok_or_else(|| {
        FieldError::new(
            field,
            "must be TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 0..=255",
        )
    })
}

fn icmp(v: &CalicoIcmp, field: &str) -> Result<IcmpMatch, FieldError> {
    let icmp_type = v
        .icmp_type
        .map(|t| {
            u8::try_from(t)
                .ok()
                .filter(|t| *t <= 254)
                .ok_or_else(|| FieldError::new(format!("{field}.type"), "must be 0..=254"))
        })
        .transpose()?;
    let code = v
        .code
        .map(|c| {
            u8::try_from(c).map_err(|_| FieldError::new(format!("{field}.code"), "must be 0..=255"))
        })
        .transpose()?;
    if code.is_some() && icmp_type.is_none() {
        return Err(FieldError::new(
            format!("{field}.code"),
            "a code needs a type",
        ));
    }
    Ok(IcmpMatch { icmp_type, code })
}

fn port_spec(v: &NumOrString, field: &str) -> Result<PortSpec, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            "must be a port 0..=65535, a range \"lo:hi\" or a port name",
        )
    };
    match v {
        NumOrString::Num(n) => u16::try_from(*n)
            .map(|p| PortSpec::Range { lo: p, hi: p })
            .map_err(|_| bad()),
        NumOrString::Str(s) => {
            if let Some((a, b)) = s.split_once(':') {
                let (lo, hi) = (
                    a.trim().parse::<u16>().map_err(|_| bad())?,
                    b.trim().parse::<u16>().map_err(|_| bad())?,
                );
                if lo > hi {
                    return Err(FieldError::new(
                        field,
                        format!("range `{s}` has its start after its end"),
                    ));
                }
                Ok(PortSpec::Range { lo, hi })
            } else if let Ok(p) = s.trim().parse::<u16>() {
                Ok(PortSpec::Range { lo: p, hi: p })
            } else if is_port_name(s) {
                Ok(PortSpec::Named(s.clone()))
            } else {
                Err(bad())
            }
        }
    }
}

fn entity(e: &CalicoEntity, field: &str, has_ports: bool) -> Result<EntityMatch, FieldError> {
    if e.service_accounts.is_some() {
        return Err(FieldError::new(
            format!("{field}.serviceAccounts"),
            "service-account matches are not supported",
        ));
    }
    if e.services.is_some() {
        return Err(FieldError::new(
            format!("{field}.services"),
            "service matches are not supported",
        ));
    }
    let nets = |v: &Option<Vec<String>>, name: &str| -> Result<Vec<Cidr>, FieldError> {
        v.iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| {
                Cidr::parse(s, false)
                    .map_err(|r| FieldError::new(format!("{field}.{name}[{i}]"), r))
            })
            .collect()
    };
    let sel = |v: &Option<String>, name: &str| {
        v.as_deref()
            .map(|s| parse_selector(s, &format!("{field}.{name}")))
            .transpose()
    };
    let ports = |v: &Option<Vec<NumOrString>>, name: &str| -> Result<Vec<PortSpec>, FieldError> {
        let list = v.as_deref().unwrap_or_default();
        if !list.is_empty() && !has_ports {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                "ports need the rule's protocol to be TCP, UDP, SCTP or UDPLite",
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, p)| port_spec(p, &format!("{field}.{name}[{i}]")))
            .collect()
    };
    Ok(EntityMatch {
        nets: nets(&e.nets, "nets")?,
        not_nets: nets(&e.not_nets, "notNets")?,
        selector: sel(&e.selector, "selector")?,
        not_selector: sel(&e.not_selector, "notSelector")?,
        namespace_selector: sel(&e.namespace_selector, "namespaceSelector")?,
        ports: ports(&e.ports, "ports")?,
        not_ports: ports(&e.not_ports, "notPorts")?,
    })
}

fn rule(r: &CalicoRule, index: usize, field: &str) -> Result<Rule, FieldError> {
    let action = match r.action.as_str() {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Log" => Action::Log,
        "Pass" => Action::Pass,
        other => {
            return Err(FieldError::new(
                format!("{field}.action"),
                format!("`{other}` is not Allow, Deny, Log or Pass"),
            ));
        }
    };
    if r.http.is_some() {
        return Err(FieldError::new(
            format!("{field}.http"),
            "HTTP matches are not supported",
        ));
    }
    let protocol = r
        .protocol
        .as_ref()
        .map(|p| parse_protocol(p, &format!("{field}.protocol")))
        .transpose()?;
    let not_protocol = r
        .not_protocol
        .as_ref()
        .map(|p| parse_protocol(p, &format!("{field}.notProtocol")))
        .transpose()?;
    let is_icmp = matches!(protocol, Some(proto::ICMP | proto::ICMPV6));
    for (v, name) in [(&r.icmp, "icmp"), (&r.not_icmp, "notICMP")] {
        if v.is_some() && !is_icmp {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                "needs protocol ICMP or ICMPv6",
            ));
        }
    }
    let ip_version = match r.ip_version {
        None => None,
        Some(v @ (4 | 6)) => Some(v as u8),
        Some(v) => {
            return Err(FieldError::new(
                format!("{field}.ipVersion"),
                format!("{v} is not 4 or 6"),
            ));
        }
    };
    let has_ports = protocol.is_some_and(proto::has_ports);
    let default = CalicoEntity::default();
    Ok(Rule {
        action,
        protocol,
        not_protocol,
        icmp: r
            .icmp
            .as_ref()
            .map(|i| icmp(i, &format!("{field}.icmp")))
            .transpose()?,
        not_icmp: r
            .not_icmp
            .as_ref()
            .map(|i| icmp(i, &format!("{field}.notICMP")))
            .transpose()?,
        ip_version,
        source: entity(
            r.source.as_ref().unwrap_or(&default),
            &format!("{field}.source"),
            has_ports,
        )?,
        destination: entity(
            r.destination.as_ref().unwrap_or(&default),
            &format!("{field}.destination"),
            has_ports,
        )?,
        source_rule: index,
    })
}

/// Converts a parsed Calico policy.
pub fn from_calico(cp: &CalicoPolicy) -> Result<Policy, FieldError> {
    let global = match cp.kind.as_str() {
        "NetworkPolicy" => false,
        "GlobalNetworkPolicy" => true,
        other => {
            return Err(FieldError::new(
                "kind",
                format!("`{other}` is not NetworkPolicy or GlobalNetworkPolicy"),
            ));
        }
    };
    let name = cp
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "is required"))?;
    let namespace = match (global, &cp.metadata.namespace) {
        (true, Some(_)) => {
            return Err(FieldError::new(
                "metadata.namespace",
                "a GlobalNetworkPolicy is not namespaced; remove it",
            ));
        }
        (true, None) => None,
        (false, ns) => Some(ns.clone().unwrap_or_else(|| "default".to_string())),
    };
    let s = &cp.spec;
    if let Some(t) = s.tier.as_deref().filter(|t| *t != "default") {
        return Err(FieldError::new(
            "spec.tier",
            format!("tier `{t}`: only the `default` tier is supported"),
        ));
    }
    for (v, f) in [
        (s.do_not_track, "spec.doNotTrack"),
        (s.pre_dnat, "spec.preDNAT"),
        (s.apply_on_forward, "spec.applyOnForward"),
    ] {
        if v == Some(true) {
            return Err(FieldError::new(
                f,
                "is not supported (host endpoint policy); must be false",
            ));
        }
    }
    if s.service_account_selector
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty())
    {
        return Err(FieldError::new(
            "spec.serviceAccountSelector",
            "service-account selection is not supported",
        ));
    }
    if let Some(o) = s.order.filter(|o| !o.is_finite()) {
        return Err(FieldError::new(
            "spec.order",
            format!("{o} is not a finite number"),
        ));
    }
    let selector = parse_selector(s.selector.as_deref().unwrap_or(""), "spec.selector")?;
    let namespace_selector = match (&s.namespace_selector, global) {
        (None, _) => None,
        (Some(ns), true) => Some(parse_selector(ns, "spec.namespaceSelector")?),
        (Some(_), false) => {
            return Err(FieldError::new(
                "spec.namespaceSelector",
                "only a GlobalNetworkPolicy has one",
            ));
        }
    };
    let mut ingress = Vec::new();
    for (i, r) in s.ingress.iter().flatten().enumerate() {
        ingress.push(rule(r, i, &format!("spec.ingress[{i}]"))?);
    }
    let mut egress = Vec::new();
    for (i, r) in s.egress.iter().flatten().enumerate() {
        egress.push(rule(r, i, &format!("spec.egress[{i}]"))?);
    }
    let types = match &s.types {
        Some(ts) => {
            let mut out = Vec::new();
            for (i, t) in ts.iter().enumerate() {
                let d = match t.as_str() {
                    "Ingress" => Direction::Ingress,
                    "Egress" => Direction::Egress,
                    other => {
                        return Err(FieldError::new(
                            format!("spec.types[{i}]"),
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
        None => {
            let mut out = Vec::new();
            if !ingress.is_empty() || egress.is_empty() {
                out.push(Direction::Ingress);
            }
            if !egress.is_empty() {
                out.push(Direction::Egress);
            }
            out
        }
    };
    Ok(Policy {
        kind: if global {
            PolicyKind::CalicoGlobalNetworkPolicy
        } else {
            PolicyKind::CalicoNetworkPolicy
        },
        name,
        namespace,
        order: s.order,
        selector,
        namespace_selector,
        types,
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PolicyError, parse_manifests};
    use crate::selector::Selector;

    const GNP: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n";

    #[test]
    fn full_rule_parses() {
        let text = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  order: 10.5\n  selector: app == 'web'\n  ingress:\n  - action: Log\n  - action: Allow\n    protocol: TCP\n    source:\n      nets: [10.0.0.0/8]\n      notNets: [10.1.0.0/16]\n      selector: role == 'fe'\n      notSelector: has(bad)\n      namespaceSelector: env == 'prod'\n      notPorts: [\"1:1023\"]\n    destination:\n      ports: [80, \"8000:8080\", http]\n  - action: Deny\n    protocol: ICMP\n    notICMP: {type: 8, code: 0}\n  - action: Pass\n    notProtocol: 17\n    ipVersion: 4\n  egress:\n  - action: Allow\n";
        let p = parse_manifests(text, "c.yaml").unwrap().remove(0);
        assert_eq!(p.kind, PolicyKind::CalicoNetworkPolicy);
        assert_eq!(p.namespace.as_deref(), Some("prod"));
        assert_eq!(p.order, Some(10.5));
        assert_eq!(p.types, vec![Direction::Ingress, Direction::Egress]);
        assert_eq!(p.ingress.len(), 4);
        let r = &p.ingress[1];
        assert_eq!((r.action, r.protocol), (Action::Allow, Some(proto::TCP)));
        assert_eq!(
            r.source.not_ports,
            vec![PortSpec::Range { lo: 1, hi: 1023 }]
        );
        assert_eq!(
            r.destination.ports,
            vec![
                PortSpec::Range { lo: 80, hi: 80 },
                PortSpec::Range { lo: 8000, hi: 8080 },
                PortSpec::Named("http".into())
            ]
        );
        assert_eq!(
            r.source.namespace_selector,
            Some(Selector::Eq("env".into(), "prod".into()))
        );
        assert_eq!(
            p.ingress[2].not_icmp,
            Some(IcmpMatch {
                icmp_type: Some(8),
                code: Some(0)
            })
        );
        assert_eq!(
            (
                p.ingress[3].action,
                p.ingress[3].not_protocol,
                p.ingress[3].ip_version
            ),
            (Action::Pass, Some(17), Some(4))
        );
    }

    #[test]
    fn defaults() {
        let p = parse_manifests(&format!("{GNP}  egress: [{{action: Deny}}]\n"), "f")
            .unwrap()
            .remove(0);
        assert_eq!(
            (p.selector.clone(), p.order, p.namespace.clone()),
            (Selector::All, None, None)
        );
        assert_eq!(p.types, vec![Direction::Egress]);
        let p = parse_manifests(&format!("{GNP}  selector: ''\n"), "f")
            .unwrap()
            .remove(0);
        assert_eq!(
            (p.selector, p.types),
            (Selector::All, vec![Direction::Ingress])
        );
        let p = parse_manifests(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n}\n",
            "f",
        )
        .unwrap();
        assert_eq!(p[0].namespace.as_deref(), Some("default"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "  ingress: [{action: Alow}]\n",
                "spec.ingress[0].action",
                "Allow, Deny",
            ),
            ("  selector: app = 'x'\n", "spec.selector", "at byte 4"),
            (
                "  ingress: [{action: Allow, protocol: GRE}]\n",
                "spec.ingress[0].protocol",
                "TCP, UDP",
            ),
            (
                "  ingress: [{action: Allow, destination: {ports: [80]}}]\n",
                "spec.ingress[0].destination.ports",
                "protocol",
            ),
            (
                "  ingress: [{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}]\n",
                "spec.ingress[0].destination.ports[0]",
                "start after",
            ),
            (
                "  ingress: [{action: Allow, protocol: UDP, source: {ports: [70000]}}]\n",
                "spec.ingress[0].source.ports[0]",
                "0..=65535",
            ),
            (
                "  egress: [{action: Allow, protocol: TCP, icmp: {type: 8}}]\n",
                "spec.egress[0].icmp",
                "ICMP",
            ),
            (
                "  egress: [{action: Allow, protocol: ICMP, icmp: {code: 1}}]\n",
                "spec.egress[0].icmp.code",
                "type",
            ),
            (
                "  egress: [{action: Allow, destination: {nets: [10.0.0.0/99]}}]\n",
                "spec.egress[0].destination.nets[0]",
                "prefix",
            ),
            (
                "  egress: [{action: Allow, destination: {notSelector: 'a in {'}}]\n",
                "spec.egress[0].destination.notSelector",
                "at byte",
            ),
            ("  types: [Ingres]\n", "spec.types[0]", "Ingress or Egress"),
            ("  tier: security\n", "spec.tier", "default"),
            ("  doNotTrack: true\n", "spec.doNotTrack", "not supported"),
            (
                "  ingress: [{action: Allow, ipVersion: 5}]\n",
                "spec.ingress[0].ipVersion",
                "4 or 6",
            ),
        ];
        for (spec, field, reason) in cases {
            match parse_manifests(&format!("{GNP}{spec}"), "g.yaml").unwrap_err() {
                PolicyError::Invalid {
                    file,
                    object,
                    field: f,
                    reason: r,
                } => {
                    assert_eq!(
                        (file.as_str(), object.as_str()),
                        ("g.yaml", "GlobalNetworkPolicy g")
                    );
                    assert_eq!(&f, field, "{spec}: {r}");
                    assert!(r.contains(reason), "{spec}: {r}");
                }
                e => panic!("{spec}: {e}"),
            }
        }
    }

    #[test]
    fn typos_are_rejected() {
        let e = parse_manifests(
            &format!("{GNP}  ingress: [{{action: Allow, source: {{notNet: [1.2.3.4/32]}}}}]\n"),
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("notNet") && e.contains("t.yaml") && e.contains("GlobalNetworkPolicy g"),
            "{e}"
        );
        let e = parse_manifests(&format!("{GNP}  selektor: all()\n"), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("selektor"), "{e}");
    }
}
