//! The cluster state that policy evaluation reads: namespaces with their labels and
//! endpoints (pods) with their labels, IPv4 and IPv6 addresses and named container ports.
//! A dual-stack pod is one endpoint with addresses of both families; a selector that picks
//! it picks all its addresses.
//!
//! Scoping rules the evaluator applies on top of this state: a peer `selector` in a
//! namespaced policy selects endpoints of that policy's namespace unless a
//! `namespaceSelector` is given; in a GlobalNetworkPolicy it selects in all namespaces. A
//! `notSelector` excludes matching endpoints of every namespace (libcalico-go leaves it
//! unscoped and instead scopes the positive match, also when `notSelector` is alone).
//!
//! As the Kubernetes API server and Calico do, [`World::add_namespace`] adds the label
//! `kubernetes.io/metadata.name: <name>` to every namespace and [`World::add_endpoint`] adds
//! `projectcalico.org/namespace: <namespace>` to every endpoint, so selectors written against
//! those labels work.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::EntityMatch;
use crate::selector::{Labels, Selector};

/// Label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Label Calico puts on every workload endpoint.
pub const ENDPOINT_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";

/// A named container port (`containers[].ports[]` with a `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name (IANA_SVC_NAME, at most 15 characters).
    pub name: String,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// The container port.
    pub port: u16,
}

/// A workload endpoint (a pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's labels.
    pub labels: Labels,
    /// The pod's IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
    /// The pod's IPv6 addresses (empty for an IPv4-only pod).
    pub ips6: Vec<Ipv6Addr>,
    /// The pod's named container ports.
    pub ports: Vec<NamedPort>,
}

impl Endpoint {
    /// A pod with labels and one address and no named ports.
    pub fn new(namespace: &str, name: &str, labels: &[(&str, &str)], ip: Ipv4Addr) -> Endpoint {
        Endpoint {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip],
            ips6: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Adds an IPv6 address (builder style): the pod becomes dual-stack.
    pub fn with_ip6(mut self, ip: Ipv6Addr) -> Endpoint {
        self.ips6.push(ip);
        self
    }

    /// Adds a named port (builder style).
    pub fn with_port(mut self, name: &str, protocol: u8, port: u16) -> Endpoint {
        self.ports.push(NamedPort {
            name: name.to_string(),
            protocol,
            port,
        });
        self
    }

    /// The endpoint with the label Calico puts on every workload endpoint,
    /// `projectcalico.org/namespace: <namespace>` (kept if already set).
    pub fn with_implicit_labels(mut self) -> Endpoint {
        self.labels
            .entry(ENDPOINT_NAMESPACE_LABEL.to_string())
            .or_insert_with(|| self.namespace.clone());
        self
    }

    /// Resolves a named port for `protocol` on this endpoint.
    pub fn named_port(&self, name: &str, protocol: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A namespace's labels with the one the API server adds to every namespace,
/// `kubernetes.io/metadata.name: <name>` (kept if already set).
pub fn namespace_labels(name: &str, mut labels: Labels) -> Labels {
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.to_string());
    labels
}

/// Namespaces and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Namespace name → labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// All endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl World {
    /// An empty world.
    pub fn new() -> World {
        World::default()
    }

    /// Adds (or replaces) a namespace; adds `kubernetes.io/metadata.name`.
    pub fn add_namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        let l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.namespaces
            .insert(name.to_string(), namespace_labels(name, l));
    }

    /// Adds an endpoint; adds `projectcalico.org/namespace` to its labels and creates its
    /// namespace (without labels) if it is unknown.
    pub fn add_endpoint(&mut self, ep: Endpoint) {
        let ep = ep.with_implicit_labels();
        if !self.namespaces.contains_key(&ep.namespace) {
            self.add_namespace(&ep.namespace.clone(), &[]);
        }
        self.endpoints.push(ep);
    }

    /// The endpoint owning `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ips.contains(&ip))
    }

    /// The endpoint owning the IPv6 address `ip`, if any.
    pub fn endpoint_by_ip6(&self, ip: Ipv6Addr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ips6.contains(&ip))
    }

    /// The endpoint owning `ip` of either family, if any.
    pub fn endpoint_by_addr(&self, ip: std::net::IpAddr) -> Option<&Endpoint> {
        match ip {
            std::net::IpAddr::V4(a) => self.endpoint_by_ip(a),
            std::net::IpAddr::V6(a) => self.endpoint_by_ip6(a),
        }
    }

    /// The endpoint `namespace/name`, if any.
    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.namespace == namespace && e.name == name)
    }

    /// Whether `ep` is in the namespace scope of a peer match: the namespace selector if one
    /// is given, else the policy's namespace for a namespaced policy (`policy_ns`), else every
    /// namespace (a GlobalNetworkPolicy).
    pub fn in_peer_scope(
        &self,
        ep: &Endpoint,
        namespace_selector: Option<&Selector>,
        policy_ns: Option<&str>,
    ) -> bool {
        match (namespace_selector, policy_ns) {
            (Some(ns), _) => ns.matches(self.namespace_labels(&ep.namespace)),
            (None, Some(pns)) => ep.namespace == pns,
            (None, None) => true,
        }
    }

    /// Whether a peer match only matches endpoints: it has a `selector` or a
    /// `namespaceSelector`, or it is in a namespaced policy and has a `notSelector` (Calico
    /// then scopes the positive match to the policy's namespace, as libcalico-go's
    /// `GetEntityRuleSelector` does).
    pub fn peer_must_be_endpoint(m: &EntityMatch, policy_ns: Option<&str>) -> bool {
        m.selector.is_some()
            || m.namespace_selector.is_some()
            || (m.not_selector.is_some() && policy_ns.is_some())
    }

    /// Whether `ep` satisfies the positive endpoint part of a peer match: in scope (see
    /// [`World::in_peer_scope`]) and matching `selector` if there is one. `true` when the
    /// match does not constrain endpoints ([`World::peer_must_be_endpoint`] is false).
    pub fn peer_selected(&self, m: &EntityMatch, ep: &Endpoint, policy_ns: Option<&str>) -> bool {
        !Self::peer_must_be_endpoint(m, policy_ns)
            || (self.in_peer_scope(ep, m.namespace_selector.as_ref(), policy_ns)
                && m.selector.as_ref().is_none_or(|s| s.matches(&ep.labels)))
    }

    /// Whether `ep` is excluded by the `notSelector` of a peer match. Calico does not scope
    /// `notSelector` to a namespace: it excludes matching endpoints of every namespace (the
    /// positive match already limits a namespaced policy to its namespace).
    pub fn peer_not_selected(&self, m: &EntityMatch, ep: &Endpoint) -> bool {
        m.not_selector
            .as_ref()
            .is_some_and(|s| s.matches(&ep.labels))
    }

    /// The endpoints the positive endpoint part of a peer match selects; `None` when it does
    /// not constrain endpoints (any address, endpoint or not, may match). For the compiler:
    /// their addresses form the peer's address set.
    pub fn select_peers(&self, m: &EntityMatch, policy_ns: Option<&str>) -> Option<Vec<&Endpoint>> {
        if !Self::peer_must_be_endpoint(m, policy_ns) {
            return None;
        }
        Some(
            self.endpoints
                .iter()
                .filter(|e| self.peer_selected(m, e, policy_ns))
                .collect(),
        )
    }

    /// The endpoints the `notSelector` of a peer match excludes (empty without one).
    pub fn select_not_peers(&self, m: &EntityMatch) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| self.peer_not_selected(m, e))
            .collect()
    }

    /// The labels of a namespace (empty for an unknown namespace).
    pub fn namespace_labels(&self, namespace: &str) -> &Labels {
        static EMPTY: Labels = BTreeMap::new();
        self.namespaces.get(namespace).unwrap_or(&EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_labels_and_lookups() {
        let mut w = World::new();
        w.add_namespace("prod", &[("env", "prod")]);
        w.add_endpoint(
            Endpoint::new("prod", "web", &[("app", "web")], Ipv4Addr::new(10, 0, 0, 1))
                .with_port("http", 6, 8080),
        );
        w.add_endpoint(Endpoint::new("dev", "db", &[], Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            w.namespace_labels("prod")
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            w.namespace_labels("dev")
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("dev")
        );
        assert!(w.namespace_labels("nope").is_empty());
        let web = w.endpoint_by_ip(Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert_eq!(web.name, "web");
        assert_eq!(
            web.labels.get(ENDPOINT_NAMESPACE_LABEL).map(String::as_str),
            Some("prod")
        );
        assert_eq!(web.named_port("http", 6), Some(8080));
        assert_eq!(web.named_port("http", 17), None);
        assert!(w.endpoint_by_ip(Ipv4Addr::new(10, 0, 0, 9)).is_none());
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert!(w.endpoint_by_ip6(v6).is_none(), "IPv4-only pods own no IPv6 address");
        w.add_endpoint(Endpoint::new("dev", "dual", &[], Ipv4Addr::new(10, 0, 0, 3)).with_ip6(v6));
        assert_eq!(w.endpoint_by_ip6(v6).map(|e| e.name.as_str()), Some("dual"));
        assert_eq!(w.endpoint_by_addr(v6.into()).map(|e| e.name.as_str()), Some("dual"));
        assert_eq!(w.endpoint_by_addr(Ipv4Addr::new(10, 0, 0, 3).into()).map(|e| e.name.as_str()), Some("dual"));
        assert!(w.endpoint("dev", "db").is_some());
    }

    #[test]
    fn peer_scoping() {
        let mut w = World::new();
        w.add_namespace("a", &[("team", "x")]);
        w.add_namespace("b", &[("team", "y")]);
        w.add_endpoint(Endpoint::new(
            "a",
            "p1",
            &[("app", "web")],
            Ipv4Addr::new(10, 0, 0, 1),
        ));
        w.add_endpoint(Endpoint::new(
            "b",
            "p2",
            &[("app", "web")],
            Ipv4Addr::new(10, 0, 0, 2),
        ));
        let names = |v: Option<Vec<&Endpoint>>| {
            v.map(|v| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>())
        };
        let mut m = EntityMatch::default();
        assert_eq!(
            names(w.select_peers(&m, Some("a"))),
            None,
            "no endpoint constraint"
        );
        m.selector = Some(Selector::Eq("app".into(), "web".into()));
        assert_eq!(
            names(w.select_peers(&m, Some("a"))),
            Some(vec!["p1".to_string()]),
            "namespaced: own namespace"
        );
        assert_eq!(
            names(w.select_peers(&m, None)),
            Some(vec!["p1".to_string(), "p2".to_string()]),
            "global"
        );
        m.namespace_selector = Some(Selector::Eq("team".into(), "y".into()));
        assert_eq!(
            names(w.select_peers(&m, Some("a"))),
            Some(vec!["p2".to_string()]),
            "namespaceSelector"
        );
        m.selector = None;
        assert_eq!(
            names(w.select_peers(&m, Some("a"))),
            Some(vec!["p2".to_string()]),
            "namespaceSelector alone"
        );
        let mut n = EntityMatch {
            not_selector: Some(Selector::Has("app".into())),
            ..EntityMatch::default()
        };
        assert_eq!(
            w.select_not_peers(&n).len(),
            2,
            "notSelector is not namespace-scoped"
        );
        assert_eq!(
            names(w.select_peers(&n, None)),
            None,
            "global: notSelector alone"
        );
        assert_eq!(
            names(w.select_peers(&n, Some("b"))),
            Some(vec!["p2".to_string()]),
            "namespaced: notSelector alone implies the policy's namespace"
        );
        n.not_selector = None;
        assert!(w.select_not_peers(&n).is_empty());
    }
}
