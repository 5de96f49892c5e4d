//! The policy model both dialects convert to: Calico-style ordered policies in one tier
//! ("default") whose rules carry an [`Action`]. Kubernetes NetworkPolicies become policies of
//! order 1000 with Allow rules (as Calico's `knp.default.*` do), so both dialects evaluate
//! together.
//!
//! Reads: manifests (multi-document YAML) through [`parse_manifests`]. Hands on: `Vec<Policy>`
//! to the reference evaluator and the compiler.
//!
//! Stateful replies are not part of the model: replies to an allowed connection are passed by
//! the data plane's conntrack, never by a rule (NetworkPolicy is stateful).

use std::fmt;
use std::net::IpAddr;

use crate::selector::Selector;

/// IP protocol numbers the dialects name.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;

    /// Whether the protocol has ports a rule can match.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | SCTP | UDPLITE)
    }

    /// Parses a protocol name as Calico spells it (case-insensitive) or a number 0..=255.
    pub fn parse(s: &str) -> Option<u8> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(TCP),
            "UDP" => Some(UDP),
            "ICMP" => Some(ICMP),
            "ICMPV6" => Some(ICMPV6),
            "SCTP" => Some(SCTP),
            "UDPLITE" => Some(UDPLITE),
            n => n.parse().ok(),
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept the connection; stop.
    Allow,
    /// Drop the connection; stop.
    Deny,
    /// Record the match and go on with the next rule.
    Log,
    /// Skip the rest of the tier; the endpoint's profile (which allows) decides.
    Pass,
}

/// Traffic direction relative to the endpoint a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// Which dialect and resource a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    KubernetesNetworkPolicy,
    /// `projectcalico.org/v3` NetworkPolicy (namespaced).
    CalicoNetworkPolicy,
    /// `projectcalico.org/v3` GlobalNetworkPolicy.
    CalicoGlobalNetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::KubernetesNetworkPolicy => "NetworkPolicy (networking.k8s.io/v1)",
            PolicyKind::CalicoNetworkPolicy => "NetworkPolicy (projectcalico.org/v3)",
            PolicyKind::CalicoGlobalNetworkPolicy => "GlobalNetworkPolicy (projectcalico.org/v3)",
        })
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host prefix). Host bits must be
    /// zero for Kubernetes; `strict = false` masks them as Calico does.
    pub fn parse(s: &str, strict: bool) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        let masked = Cidr { addr, prefix }.network();
        if strict && masked != addr {
            return Err(format!(
                "`{s}` has host bits set; did you mean `{masked}/{prefix}`?"
            ));
        }
        Ok(Cidr {
            addr: masked,
            prefix,
        })
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// Whether `ip` is inside the prefix (always false across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        Cidr {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.addr
    }

    /// Whether `other` lies inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One entry of a port list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// `lo..=hi` (a single port has `lo == hi`).
    Range {
        /// First port.
        lo: u16,
        /// Last port, inclusive.
        hi: u16,
    },
    /// A named container port, resolved on the endpoint the port belongs to (the destination
    /// endpoint for destination ports, the source endpoint for source ports) for the
    /// packet's protocol. A named port never matches a non-endpoint address.
    Named(String),
}

/// ICMP type / code match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    /// ICMP type; `None` = any type.
    pub icmp_type: Option<u8>,
    /// ICMP code; `None` = any code (only with a type).
    pub code: Option<u8>,
}

/// Match on one side (source or destination) of a connection. Every set field must match
/// (AND); an all-default `EntityMatch` matches anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityMatch {
    /// The address is in one of these (empty = any address).
    pub nets: Vec<Cidr>,
    /// The address is in none of these.
    pub not_nets: Vec<Cidr>,
    /// The address is an endpoint whose labels match, in the scope described in
    /// [`crate::world`]. Non-endpoints never match.
    pub selector: Option<Selector>,
    /// The address is not an endpoint (of any namespace) matching this. In a namespaced
    /// policy a `notSelector` also implies "an endpoint of the policy's namespace" unless a
    /// `namespaceSelector` is given (see [`crate::world::World::peer_must_be_endpoint`]).
    pub not_selector: Option<Selector>,
    /// The address is an endpoint in a namespace whose labels match.
    pub namespace_selector: Option<Selector>,
    /// The port is in one of these (empty = any port).
    pub ports: Vec<PortSpec>,
    /// The port is in none of these.
    pub not_ports: Vec<PortSpec>,
}

/// A rule: every set field must match for the rule to fire.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// What a match does.
    pub action: Action,
    /// IP protocol number; `None` = any.
    pub protocol: Option<u8>,
    /// Any protocol but this.
    pub not_protocol: Option<u8>,
    /// The packet is ICMP / ICMPv6 with this type/code.
    pub icmp: Option<IcmpMatch>,
    /// The packet is not ICMP with this type/code.
    pub not_icmp: Option<IcmpMatch>,
    /// 4 or 6; `None` = both.
    pub ip_version: Option<u8>,
    /// Source match.
    pub source: EntityMatch,
    /// Destination match.
    pub destination: EntityMatch,
    /// Index of the rule in the manifest it came from (`spec.ingress[i]` / `spec.egress[i]`).
    /// A Kubernetes rule expands to one model rule per (peer, port) pair, all sharing its index.
    pub source_rule: usize,
}

impl Rule {
    /// A rule matching everything with `action`.
    pub fn any(action: Action, source_rule: usize) -> Rule {
        Rule {
            action,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            ip_version: None,
            source: EntityMatch::default(),
            destination: EntityMatch::default(),
            source_rule,
        }
    }
}

/// A policy in the default tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The dialect / resource.
    pub kind: PolicyKind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` for a GlobalNetworkPolicy.
    pub namespace: Option<String>,
    /// Order: lower first; `None` after all ordered policies. Kubernetes policies get 1000.
    pub order: Option<f64>,
    /// Which endpoints the policy applies to (in its namespace when namespaced).
    pub selector: Selector,
    /// GlobalNetworkPolicy only: the endpoint's namespace labels must match too.
    pub namespace_selector: Option<Selector>,
    /// The directions the policy applies to (after defaulting).
    pub types: Vec<Direction>,
    /// Ingress rules, in order.
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    pub egress: Vec<Rule>,
}

/// A policy's identity: two manifests with the same one are the same policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// The dialect / resource.
    pub kind: PolicyKind,
    /// `metadata.namespace`; `None` for a GlobalNetworkPolicy.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Order Calico gives Kubernetes NetworkPolicies (`knp.default.*`).
pub const KUBERNETES_POLICY_ORDER: f64 = 1000.0;

impl Policy {
    /// The rules of a direction.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// `namespace/name` or `name`.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Evaluation order: by order (unset last), then name, then namespace, then kind (so
    /// two dialects' policies of one name still have a fixed order).
    pub fn cmp_order(&self, other: &Policy) -> std::cmp::Ordering {
        let key = |p: &Policy| (p.order.is_none(), p.order.unwrap_or(0.0));
        let (an, ao) = key(self);
        let (bn, bo) = key(other);
        an.cmp(&bn)
            .then(ao.total_cmp(&bo))
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.namespace.cmp(&other.namespace))
            .then_with(|| (self.kind as u8).cmp(&(other.kind as u8)))
    }

    /// The policy's identity: dialect, namespace and name.
    pub fn id_key(&self) -> PolicyId {
        PolicyId {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether the policy applies to `ep` (whose namespace has `ns_labels`) in `dir`: the
    /// direction is in `types`, a namespaced policy is in the endpoint's namespace, a
    /// GlobalNetworkPolicy's `namespaceSelector` matches the namespace, and `selector`
    /// matches the endpoint.
    pub fn applies(&self, ep: &crate::world::Endpoint, ns_labels: &crate::selector::Labels, dir: Direction) -> bool {
        self.types.contains(&dir)
            && self.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
            && self.namespace_selector.as_ref().is_none_or(|s| s.matches(ns_labels))
            && self.selector.matches(&ep.labels)
    }
}

/// A manifest that does not parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The YAML itself is broken.
    #[error("{file}: document {document}: not valid YAML: {reason}")]
    Yaml {
        /// The manifest file.
        file: String,
        /// 1-based document number.
        document: usize,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// A policy object has the wrong shape or an invalid field.
    #[error("{file}: {object}: {field}: {reason}")]
    Invalid {
        /// The manifest file.
        file: String,
        /// `Kind namespace/name`.
        object: String,
        /// Path of the offending field (`spec.ingress[0].from[1].ipBlock.cidr`).
        field: String,
        /// Why it was rejected and what would be accepted.
        reason: String,
    },
}

/// A validation failure inside one object, before file and object are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path.
    pub field: String,
    /// Reason.
    pub reason: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a selector, reporting `field` on error.
pub(crate) fn parse_selector(text: &str, field: &str) -> Result<Selector, FieldError> {
    Selector::parse(text).map_err(|e| FieldError::new(field, e.to_string()))
}

/// Splits a multi-document YAML text into (first line, text) documents.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs
}

/// Parses multi-document YAML. Kubernetes `networking.k8s.io/v1` NetworkPolicy and Calico
/// `projectcalico.org/v3` NetworkPolicy / GlobalNetworkPolicy become [`Policy`]s, also as
/// items of a `kind: List` (what `kubectl get -o yaml` prints); other kinds (and empty
/// documents) are skipped. Errors name `file`, the object and the field.
pub fn parse_manifests(text: &str, file: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (n, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let document = n + 1;
        let yaml_error = |e: serde_yaml::Error, at: &str| PolicyError::Yaml {
            file: file.to_string(),
            document,
            reason: format!("{e} ({at})"),
        };
        let where_ = format!("document starts at line {line}");
        let value: serde_yaml::Value =
            serde_yaml::from_str(&doc).map_err(|e| yaml_error(e, &where_))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            for (i, item) in value
                .get("items")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("{where_}, List item {i}");
                let item_text = serde_yaml::to_string(item).map_err(|e| yaml_error(e, &at))?;
                out.extend(parse_object(item, &item_text, file, &at)?);
            }
            continue;
        }
        out.extend(parse_object(&value, &doc, file, &where_)?);
    }
    Ok(out)
}

/// One object: `value` is `text` parsed; `at` says where it is for error messages.
fn parse_object(
    value: &serde_yaml::Value,
    text: &str,
    file: &str,
    at: &str,
) -> Result<Option<Policy>, PolicyError> {
    if value.is_null() {
        return Ok(None);
    }
    let get = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api, kind) = (get("apiVersion"), get("kind"));
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str());
    let object = match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    let invalid = |e: FieldError| PolicyError::Invalid {
        file: file.to_string(),
        object: object.clone(),
        field: e.field,
        reason: e.reason,
    };
    let schema = |e: serde_yaml::Error| PolicyError::Invalid {
        file: file.to_string(),
        object: object.clone(),
        field: "(schema)".to_string(),
        reason: format!("{e} ({at})"),
    };
    let policy = match (api.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            crate::k8s::check_unknown_fields(value).map_err(invalid)?;
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_yaml::from_str(text).map_err(schema)?;
            crate::k8s::from_kubernetes(&np).map_err(invalid)?
        }
        ("projectcalico.org/v3", "NetworkPolicy" | "GlobalNetworkPolicy") => {
            let cp: crate::calico::CalicoPolicy = serde_yaml::from_str(text).map_err(schema)?;
            crate::calico::from_calico(&cp).map_err(invalid)?
        }
        _ => return Ok(None),
    };
    Ok(Some(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.1.0.0/16", true).unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("10.1.0.1/16", true)
                .unwrap_err()
                .contains("host bits")
        );
        assert_eq!(Cidr::parse("10.1.0.1/16", false).unwrap(), c);
        assert_eq!(Cidr::parse("10.0.0.7", true).unwrap().prefix, 32);
        assert!(Cidr::parse("10.0.0.0/33", true).is_err());
        assert!(Cidr::parse("ten/8", true).is_err());
        assert!(
            Cidr::parse("0.0.0.0/0", true)
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        let v6 = Cidr::parse("fd00::/8", true).unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(c.covers(&Cidr::parse("10.1.2.0/24", true).unwrap()));
        assert!(!c.covers(&Cidr::parse("10.0.0.0/8", true).unwrap()));
    }

    #[test]
    fn protocols() {
        assert_eq!(proto::parse("tcp"), Some(6));
        assert_eq!(proto::parse("UDPLite"), Some(136));
        assert_eq!(proto::parse("ICMPv6"), Some(58));
        assert_eq!(proto::parse("47"), Some(47));
        assert_eq!(proto::parse("256"), None);
        assert_eq!(proto::parse("GRE"), None);
    }

    #[test]
    fn documents_split_and_other_kinds_are_left_out() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- \n");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1], (3, "b: 2\n".to_string()));
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n";
        assert_eq!(parse_manifests(text, "f.yaml").unwrap(), vec![]);
        let err = parse_manifests("a: [", "bad.yaml").unwrap_err();
        assert!(
            matches!(err, PolicyError::Yaml { document: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("bad.yaml: document 1"), "{err}");
    }
}
