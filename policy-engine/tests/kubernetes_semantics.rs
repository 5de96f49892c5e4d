//! Kubernetes NetworkPolicy semantics, case by case from the upstream documentation
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>), through the
//! manifest parser and the reference evaluator.

use std::net::Ipv4Addr;

use policy_engine::model::{Policy, parse_manifests, proto};
use policy_engine::reference::{DecidedBy, Packet, Verdict, evaluate};
use policy_engine::world::{Endpoint, World};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// default: db (10.0.1.10, named port redis/TCP 6379), frontend (.11, named port redis/TCP
/// 7000), backend (.12), app (.13, role=app); myproject: app (10.0.2.10), x (10.0.2.11);
/// other: frontend (10.0.3.10).
fn world() -> World {
    let mut w = World::new();
    w.add_namespace("default", &[]);
    w.add_namespace("myproject", &[("project", "myproject")]);
    w.add_namespace("other", &[("project", "other")]);
    w.add_endpoint(
        Endpoint::new("default", "db", &[("role", "db")], ip("10.0.1.10")).with_port(
            "redis",
            proto::TCP,
            6379,
        ),
    );
    w.add_endpoint(
        Endpoint::new(
            "default",
            "frontend",
            &[("role", "frontend")],
            ip("10.0.1.11"),
        )
        .with_port("redis", proto::TCP, 7000),
    );
    w.add_endpoint(Endpoint::new(
        "default",
        "backend",
        &[("role", "backend")],
        ip("10.0.1.12"),
    ));
    w.add_endpoint(Endpoint::new(
        "default",
        "app",
        &[("role", "app")],
        ip("10.0.1.13"),
    ));
    w.add_endpoint(Endpoint::new(
        "myproject",
        "app",
        &[("role", "app")],
        ip("10.0.2.10"),
    ));
    w.add_endpoint(Endpoint::new(
        "myproject",
        "x",
        &[("role", "x")],
        ip("10.0.2.11"),
    ));
    w.add_endpoint(Endpoint::new(
        "other",
        "frontend",
        &[("role", "frontend")],
        ip("10.0.3.10"),
    ));
    w
}

fn policies(yaml: &str) -> Vec<Policy> {
    parse_manifests(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn np(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}"
    )
}

fn tcp(ps: &[Policy], src: &str, dst: &str, port: u16) -> Verdict {
    evaluate(ps, &world(), &Packet::tcp(ip(src), 40000, ip(dst), port)).verdict
}

fn udp(ps: &[Policy], src: &str, dst: &str, port: u16) -> Verdict {
    evaluate(ps, &world(), &Packet::udp(ip(src), 40000, ip(dst), port)).verdict
}

const DB: &str = "10.0.1.10";
const FRONTEND: &str = "10.0.1.11";
const BACKEND: &str = "10.0.1.12";
const APP_DEFAULT: &str = "10.0.1.13";
const APP_MYPROJECT: &str = "10.0.2.10";
const X_MYPROJECT: &str = "10.0.2.11";
const FRONTEND_OTHER: &str = "10.0.3.10";

use Verdict::{Allow, Deny};

#[test]
fn upstream_test_network_policy() {
    let ps = policies(&np(
        "test-network-policy",
        "  podSelector:\n    matchLabels: {role: db}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 172.17.0.0/16\n        except: [172.17.1.0/24]\n    - namespaceSelector:\n        matchLabels: {project: myproject}\n    - podSelector:\n        matchLabels: {role: frontend}\n    ports:\n    - protocol: TCP\n      port: 6379\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/24}\n    ports:\n    - protocol: TCP\n      port: 5978\n",
    ));
    assert_eq!(tcp(&ps, FRONTEND, DB, 6379), Allow, "podSelector peer");
    assert_eq!(
        tcp(&ps, APP_MYPROJECT, DB, 6379),
        Allow,
        "namespaceSelector peer"
    );
    assert_eq!(
        tcp(&ps, FRONTEND_OTHER, DB, 6379),
        Deny,
        "podSelector only selects in the policy's namespace"
    );
    assert_eq!(tcp(&ps, BACKEND, DB, 6379), Deny);
    assert_eq!(tcp(&ps, "172.17.0.5", DB, 6379), Allow, "ipBlock");
    assert_eq!(tcp(&ps, "172.17.1.5", DB, 6379), Deny, "ipBlock except");
    assert_eq!(tcp(&ps, FRONTEND, DB, 80), Deny, "port");
    assert_eq!(udp(&ps, FRONTEND, DB, 6379), Deny, "protocol");
    assert_eq!(tcp(&ps, DB, "10.0.0.5", 5978), Allow, "egress to ipBlock");
    assert_eq!(tcp(&ps, DB, "10.0.0.5", 80), Deny, "egress port");
    assert_eq!(tcp(&ps, DB, FRONTEND, 5978), Deny, "egress isolated");
    let d = evaluate(
        &ps,
        &world(),
        &Packet::tcp(ip(FRONTEND), 40000, ip(DB), 6379),
    );
    assert_eq!(
        d.egress.as_ref().unwrap().decided_by,
        DecidedBy::NoPolicyApplies,
        "frontend egress is not isolated"
    );
    let DecidedBy::Rule(r) = &d.ingress.as_ref().unwrap().decided_by else {
        panic!("{d:?}")
    };
    assert_eq!(
        (r.policy.as_str(), r.namespace.as_deref(), r.source_rule),
        ("test-network-policy", Some("default"), 0)
    );
    let d = evaluate(
        &ps,
        &world(),
        &Packet::tcp(ip(BACKEND), 40000, ip(DB), 6379),
    );
    assert_eq!(d.ingress.unwrap().decided_by, DecidedBy::EndOfTier);
}

#[test]
fn default_deny_ingress() {
    let ps = policies(&np(
        "default-deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    assert_eq!(tcp(&ps, FRONTEND, DB, 80), Deny);
    assert_eq!(tcp(&ps, FRONTEND_OTHER, BACKEND, 80), Deny);
    assert_eq!(
        tcp(&ps, FRONTEND, FRONTEND_OTHER, 80),
        Allow,
        "other namespace not selected; egress not isolated"
    );
    assert_eq!(tcp(&ps, DB, "8.8.8.8", 53), Allow, "egress not isolated");
}

#[test]
fn allow_all_ingress_and_empty_rule_list() {
    let all = policies(&np("allow-all", "  podSelector: {}\n  ingress:\n  - {}\n"));
    assert_eq!(tcp(&all, FRONTEND_OTHER, DB, 1), Allow);
    assert_eq!(tcp(&all, "1.2.3.4", DB, 65535), Allow);
    let none = policies(&np("none", "  podSelector: {}\n  ingress: []\n"));
    assert_eq!(
        tcp(&none, FRONTEND, DB, 80),
        Deny,
        "an empty rule list allows nothing"
    );
    let empty_from = policies(&np(
        "empty-from",
        "  podSelector: {}\n  ingress:\n  - from: []\n    ports: [{port: 80}]\n",
    ));
    assert_eq!(
        tcp(&empty_from, "1.2.3.4", DB, 80),
        Allow,
        "empty from = all peers"
    );
    assert_eq!(tcp(&empty_from, "1.2.3.4", DB, 81), Deny);
}

#[test]
fn default_deny_egress_and_allow_all_egress() {
    let ps = policies(&np(
        "default-deny-egress",
        "  podSelector: {}\n  policyTypes: [Egress]\n",
    ));
    assert_eq!(tcp(&ps, DB, "8.8.8.8", 53), Deny);
    assert_eq!(
        tcp(&ps, FRONTEND, DB, 6379),
        Deny,
        "frontend's egress is isolated"
    );
    assert_eq!(
        tcp(&ps, FRONTEND_OTHER, DB, 6379),
        Allow,
        "ingress is not isolated"
    );
    let d = evaluate(&ps, &world(), &Packet::tcp(ip(FRONTEND), 1, ip(DB), 6379));
    assert_eq!(d.egress.as_ref().unwrap().verdict, Deny);
    assert_eq!(d.ingress.as_ref().unwrap().verdict, Allow);
    let all = policies(&np(
        "allow-all-egress",
        "  podSelector: {}\n  egress:\n  - {}\n  policyTypes: [Egress]\n",
    ));
    assert_eq!(tcp(&all, DB, "8.8.8.8", 53), Allow);
}

#[test]
fn namespace_and_pod_selector_and_versus_or() {
    let and = policies(&np(
        "and",
        "  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {project: myproject}}\n      podSelector: {matchLabels: {role: app}}\n",
    ));
    assert_eq!(tcp(&and, APP_MYPROJECT, DB, 80), Allow);
    assert_eq!(
        tcp(&and, X_MYPROJECT, DB, 80),
        Deny,
        "namespace matches, pod does not"
    );
    assert_eq!(
        tcp(&and, APP_DEFAULT, DB, 80),
        Deny,
        "pod matches, namespace does not"
    );
    let or = policies(&np(
        "or",
        "  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {project: myproject}}\n    - podSelector: {matchLabels: {role: app}}\n",
    ));
    assert_eq!(tcp(&or, APP_MYPROJECT, DB, 80), Allow);
    assert_eq!(tcp(&or, X_MYPROJECT, DB, 80), Allow, "any pod of myproject");
    assert_eq!(
        tcp(&or, APP_DEFAULT, DB, 80),
        Allow,
        "role=app in the policy's namespace"
    );
    assert_eq!(tcp(&or, FRONTEND, DB, 80), Deny);
}

#[test]
fn allow_from_namespace_by_name_label_and_all_namespaces() {
    let by_name = policies(&np(
        "from-myproject",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [myproject]}]\n",
    ));
    assert_eq!(tcp(&by_name, X_MYPROJECT, DB, 80), Allow);
    assert_eq!(tcp(&by_name, FRONTEND_OTHER, DB, 80), Deny);
    let all_ns = policies(&np(
        "from-all-pods",
        "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n",
    ));
    assert_eq!(
        tcp(&all_ns, FRONTEND_OTHER, DB, 80),
        Allow,
        "namespaceSelector {{}} = every pod"
    );
    assert_eq!(
        tcp(&all_ns, "192.168.1.1", DB, 80),
        Deny,
        "but not addresses outside the cluster"
    );
}

#[test]
fn named_port_resolves_on_the_destination() {
    let ingress = policies(&np(
        "redis-by-name",
        "  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - ports: [{port: redis}]\n",
    ));
    assert_eq!(
        tcp(&ingress, FRONTEND, DB, 6379),
        Allow,
        "db's redis = 6379"
    );
    assert_eq!(
        tcp(&ingress, FRONTEND, DB, 7000),
        Deny,
        "frontend's redis (7000) is not the destination's"
    );
    assert_eq!(udp(&ingress, FRONTEND, DB, 6379), Deny, "named port is TCP");
    let egress = policies(&np(
        "egress-by-name",
        "  podSelector: {matchLabels: {role: frontend}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: redis}]\n",
    ));
    assert_eq!(
        tcp(&egress, FRONTEND, DB, 6379),
        Allow,
        "resolved on the destination (db)"
    );
    assert_eq!(
        tcp(&egress, FRONTEND, DB, 7000),
        Deny,
        "not on the source (frontend)"
    );
    assert_eq!(
        tcp(&egress, FRONTEND, "8.8.8.8", 6379),
        Deny,
        "a non-pod has no named ports"
    );
}

#[test]
fn end_port_range() {
    let ps = policies(&np(
        "range",
        "  podSelector: {}\n  ingress:\n  - ports:\n    - protocol: TCP\n      port: 32000\n      endPort: 32768\n",
    ));
    for (port, want) in [
        (31999, Deny),
        (32000, Allow),
        (32400, Allow),
        (32768, Allow),
        (32769, Deny),
    ] {
        assert_eq!(tcp(&ps, FRONTEND, DB, port), want, "port {port}");
    }
}

#[test]
fn protocols_udp_sctp_and_protocol_only_ports() {
    let ps = policies(&np(
        "protos",
        "  podSelector: {}\n  ingress:\n  - ports: [{protocol: UDP}, {protocol: SCTP, port: 9000}]\n",
    ));
    assert_eq!(
        udp(&ps, FRONTEND, DB, 1234),
        Allow,
        "protocol-only port = any UDP port"
    );
    assert_eq!(tcp(&ps, FRONTEND, DB, 1234), Deny);
    let sctp = Packet {
        protocol: proto::SCTP,
        ..Packet::tcp(ip(FRONTEND), 1, ip(DB), 9000)
    };
    assert_eq!(evaluate(&ps, &world(), &sctp).verdict, Allow);
    let icmp = Packet::icmp(ip(FRONTEND), ip(DB), 8, 0);
    assert_eq!(evaluate(&ps, &world(), &icmp).verdict, Deny);
}

#[test]
fn policy_types_defaulting_decides_egress_isolation() {
    let with_egress = policies(&np(
        "with-egress",
        "  podSelector: {matchLabels: {role: db}}\n  ingress: [{}]\n  egress:\n  - to: [{ipBlock: {cidr: 10.9.0.0/16}}]\n",
    ));
    assert_eq!(
        tcp(&with_egress, DB, "8.8.8.8", 53),
        Deny,
        "egress rules present → Egress type"
    );
    assert_eq!(tcp(&with_egress, DB, "10.9.1.1", 53), Allow);
    let ingress_only = policies(&np(
        "ingress-only",
        "  podSelector: {matchLabels: {role: db}}\n  ingress: [{}]\n",
    ));
    assert_eq!(
        tcp(&ingress_only, DB, "8.8.8.8", 53),
        Allow,
        "no egress rules → Ingress only"
    );
    let explicit = policies(&np(
        "explicit-ingress",
        "  podSelector: {matchLabels: {role: db}}\n  policyTypes: [Ingress]\n  ingress: [{}]\n  egress:\n  - to: [{ipBlock: {cidr: 10.9.0.0/16}}]\n",
    ));
    assert_eq!(
        tcp(&explicit, DB, "8.8.8.8", 53),
        Allow,
        "policyTypes given: egress rules ignored"
    );
}

#[test]
fn policies_are_additive() {
    let ps = policies(&format!(
        "{}{}",
        np(
            "a",
            "  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: frontend}}}]\n    ports: [{port: 6379}]\n"
        ),
        np(
            "b",
            "  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: backend}}}]\n    ports: [{port: 80}]\n"
        ),
    ));
    assert_eq!(ps.len(), 2);
    assert_eq!(tcp(&ps, FRONTEND, DB, 6379), Allow);
    assert_eq!(tcp(&ps, BACKEND, DB, 80), Allow);
    assert_eq!(tcp(&ps, FRONTEND, DB, 80), Deny);
    assert_eq!(tcp(&ps, BACKEND, DB, 6379), Deny);
    assert_eq!(
        tcp(&ps, DB, FRONTEND, 80),
        Allow,
        "frontend is not selected"
    );
}

#[test]
fn match_expressions_select_pods() {
    let ps = policies(&np(
        "exprs",
        "  podSelector:\n    matchExpressions:\n    - {key: role, operator: NotIn, values: [db, frontend]}\n  ingress: []\n",
    ));
    assert_eq!(tcp(&ps, DB, BACKEND, 80), Deny, "backend selected");
    assert_eq!(tcp(&ps, BACKEND, DB, 80), Allow, "db not selected");
    assert_eq!(tcp(&ps, DB, FRONTEND, 80), Allow, "frontend not selected");
}
