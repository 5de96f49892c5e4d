//! Property test: for random Kubernetes NetworkPolicies, the model (converted to ordered
//! Calico-style policies) and the reference evaluator agree with a direct, independent
//! reading of the Kubernetes API documentation written here against k8s-openapi's types.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use policy_engine::k8s::from_kubernetes;
use policy_engine::model::proto;
use policy_engine::reference::{Packet, Verdict, evaluate};
use policy_engine::world::{Endpoint, World};
use proptest::prelude::*;

const EXTERNAL: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 9)];

fn world() -> World {
    let mut w = World::new();
    w.add_namespace("a", &[("team", "x")]);
    w.add_namespace("b", &[("team", "y")]);
    let pods = [
        ("a", "p1", "r1", 80),
        ("a", "p2", "r2", 8080),
        ("b", "p3", "r1", 8080),
        ("b", "p4", "r2", 80),
    ];
    for (i, (ns, name, role, web)) in pods.into_iter().enumerate() {
        let ip = Ipv4Addr::new(10, 0, 0, 1 + i as u8);
        w.add_endpoint(Endpoint::new(ns, name, &[("role", role)], ip).with_port(
            "web",
            proto::TCP,
            web,
        ));
    }
    w
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::default()),
        Just(LabelSelector {
            match_labels: Some(labels(&[("role", "r1")])),
            ..Default::default()
        }),
        Just(LabelSelector {
            match_labels: Some(labels(&[("role", "r2")])),
            ..Default::default()
        }),
    ]
}

fn ns_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::default()),
        Just(LabelSelector {
            match_labels: Some(labels(&[("team", "x")])),
            ..Default::default()
        }),
        Just(LabelSelector {
            match_labels: Some(labels(&[("team", "y")])),
            ..Default::default()
        }),
    ]
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        selector().prop_map(|s| NetworkPolicyPeer {
            pod_selector: Some(s),
            ..Default::default()
        }),
        ns_selector().prop_map(|s| NetworkPolicyPeer {
            namespace_selector: Some(s),
            ..Default::default()
        }),
        (selector(), ns_selector()).prop_map(|(p, n)| NetworkPolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        prop::bool::ANY.prop_map(|except| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "192.168.0.0/24".into(),
                except: except.then(|| vec!["192.168.0.8/29".to_string()]),
            }),
            ..Default::default()
        }),
        Just(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.0.0/30".into(),
                except: None
            }),
            ..Default::default()
        }),
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = prop_oneof![
        Just(None),
        Just(Some("TCP".to_string())),
        Just(Some("UDP".to_string()))
    ];
    let number = prop_oneof![
        Just((None, None)),
        Just((Some(IntOrString::Int(80)), None)),
        Just((Some(IntOrString::Int(8080)), None)),
        Just((Some(IntOrString::Int(79)), Some(443))),
        Just((Some(IntOrString::String("web".into())), None)),
    ];
    (protocol, number).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol,
        port,
        end_port,
    })
}

type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    let types = prop_oneof![
        Just(None),
        Just(Some(vec!["Ingress".to_string()])),
        Just(Some(vec!["Egress".to_string()])),
        Just(Some(vec!["Ingress".to_string(), "Egress".to_string()])),
    ];
    (
        prop_oneof![Just("a"), Just("b")],
        0..1000u32,
        selector(),
        types,
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
    )
        .prop_map(
            |(ns, n, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("p{n}")),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(pod_selector),
                    policy_types,
                    ingress: ingress.map(|rs| {
                        rs.into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rs| {
                        rs.into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                }),
            },
        )
}

// ---- The oracle: the Kubernetes documentation, read literally. ----

fn ls_matches(ls: &LabelSelector, l: &BTreeMap<String, String>) -> bool {
    ls.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| l.get(k) == Some(v))
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (a, p) = cidr.split_once('/').unwrap();
    let (a, p): (Ipv4Addr, u32) = (a.parse().unwrap(), p.parse().unwrap());
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    u32::from(ip) & mask == u32::from(a) & mask
}

fn peer_ok(peer: &NetworkPolicyPeer, policy_ns: &str, ip: Ipv4Addr, w: &World) -> bool {
    if let Some(b) = &peer.ip_block {
        return in_cidr(ip, &b.cidr) && !b.except.iter().flatten().any(|e| in_cidr(ip, e));
    }
    let Some(ep) = w.endpoint_by_ip(ip) else {
        return false;
    };
    let ns_ok = match &peer.namespace_selector {
        Some(ns) => ls_matches(ns, w.namespace_labels(&ep.namespace)),
        None => ep.namespace == policy_ns,
    };
    ns_ok
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| ls_matches(s, &ep.labels))
}

fn port_ok(p: &NetworkPolicyPort, pkt: &Packet, w: &World) -> bool {
    let protocol = match p.protocol.as_deref() {
        Some("UDP") => proto::UDP,
        _ => proto::TCP,
    };
    if pkt.protocol != protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let hi = p.end_port.unwrap_or(*n);
            (*n..=hi).contains(&i32::from(pkt.dst_port))
        }
        Some(IntOrString::String(name)) => {
            w.endpoint_by_ip(pkt.dst_ip)
                .and_then(|d| d.named_port(name, protocol))
                == Some(pkt.dst_port)
        }
    }
}

fn types(np: &NetworkPolicy) -> (bool, bool) {
    let spec = np.spec.as_ref().unwrap();
    match &spec.policy_types {
        Some(t) => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn oracle(nps: &[NetworkPolicy], pkt: &Packet, w: &World) -> bool {
    let selects = |np: &NetworkPolicy, ip: Ipv4Addr| {
        w.endpoint_by_ip(ip).is_some_and(|ep| {
            np.metadata.namespace.as_deref() == Some(ep.namespace.as_str())
                && ls_matches(
                    np.spec.as_ref().unwrap().pod_selector.as_ref().unwrap(),
                    &ep.labels,
                )
        })
    };
    let rule_ok = |np: &NetworkPolicy,
                   peers: &Option<Vec<NetworkPolicyPeer>>,
                   ports: &Option<Vec<NetworkPolicyPort>>,
                   peer_ip| {
        let ns = np.metadata.namespace.as_deref().unwrap();
        let peers_ok = peers
            .as_ref()
            .is_none_or(|v| v.is_empty() || v.iter().any(|p| peer_ok(p, ns, peer_ip, w)));
        let ports_ok = ports
            .as_ref()
            .is_none_or(|v| v.is_empty() || v.iter().any(|p| port_ok(p, pkt, w)));
        peers_ok && ports_ok
    };
    let egress_isolating: Vec<_> = nps
        .iter()
        .filter(|np| types(np).1 && selects(np, pkt.src_ip))
        .collect();
    let egress_ok = egress_isolating.is_empty()
        || egress_isolating.iter().any(|np| {
            np.spec
                .as_ref()
                .unwrap()
                .egress
                .iter()
                .flatten()
                .any(|r| rule_ok(np, &r.to, &r.ports, pkt.dst_ip))
        });
    let ingress_isolating: Vec<_> = nps
        .iter()
        .filter(|np| types(np).0 && selects(np, pkt.dst_ip))
        .collect();
    let ingress_ok = ingress_isolating.is_empty()
        || ingress_isolating.iter().any(|np| {
            np.spec
                .as_ref()
                .unwrap()
                .ingress
                .iter()
                .flatten()
                .any(|r| rule_ok(np, &r.from, &r.ports, pkt.src_ip))
        });
    egress_ok && ingress_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn model_agrees_with_the_kubernetes_documentation(nps in prop::collection::vec(policy(), 0..4)) {
        let w = world();
        let policies: Vec<_> = nps.iter().map(|np| from_kubernetes(np).unwrap()).collect();
        let mut addrs: Vec<Ipv4Addr> = w.endpoints.iter().flat_map(|e| e.ips.clone()).collect();
        addrs.extend(EXTERNAL);
        for &src in &addrs {
            for &dst in &addrs {
                for port in [80, 443, 8080] {
                    for pkt in [Packet::tcp(src, 40000, dst, port), Packet::udp(src, 40000, dst, port)] {
                        let got = evaluate(&policies, &w, &pkt).verdict == Verdict::Allow;
                        prop_assert_eq!(got, oracle(&nps, &pkt, &w), "{:?}", pkt);
                    }
                }
            }
        }
    }
}
