//! Calico `projectcalico.org/v3` semantics (order, Log, Pass, Deny, end of tier, selector
//! scoping, negated matches) and Kubernetes + Calico policies evaluated together.

use std::net::Ipv4Addr;

use policy_engine::model::{Policy, parse_manifests, proto};
use policy_engine::reference::{DecidedBy, Decision, Packet, Verdict, evaluate};
use policy_engine::world::{Endpoint, World};

use Verdict::{Allow, Deny};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const DB: &str = "10.0.1.10";
const FRONTEND: &str = "10.0.1.11";
const QUARANTINED: &str = "10.0.1.12";
const MONITOR: &str = "10.0.9.10";
const SYSTEM: &str = "10.0.8.10";
const PROD_WEB: &str = "10.0.2.10";

/// app: db (named port metrics/TCP 9090), frontend, quarantined frontend; monitoring:
/// prometheus; kube-system: dns; prod (env=prod): web.
fn world() -> World {
    let mut w = World::new();
    w.add_namespace("app", &[("env", "dev")]);
    w.add_namespace("monitoring", &[("purpose", "monitoring")]);
    w.add_namespace("kube-system", &[]);
    w.add_namespace("prod", &[("env", "prod")]);
    w.add_endpoint(
        Endpoint::new("app", "db", &[("role", "db")], ip(DB)).with_port(
            "metrics",
            proto::TCP,
            9090,
        ),
    );
    w.add_endpoint(Endpoint::new(
        "app",
        "frontend",
        &[("role", "frontend")],
        ip(FRONTEND),
    ));
    w.add_endpoint(Endpoint::new(
        "app",
        "bad",
        &[("role", "frontend"), ("quarantine", "true")],
        ip(QUARANTINED),
    ));
    w.add_endpoint(Endpoint::new(
        "monitoring",
        "prometheus",
        &[("app", "prometheus")],
        ip(MONITOR),
    ));
    w.add_endpoint(Endpoint::new(
        "kube-system",
        "dns",
        &[("k8s-app", "kube-dns")],
        ip(SYSTEM),
    ));
    w.add_endpoint(Endpoint::new(
        "prod",
        "web",
        &[("role", "web")],
        ip(PROD_WEB),
    ));
    w
}

fn policies(yaml: &str) -> Vec<Policy> {
    parse_manifests(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn eval(ps: &[Policy], pkt: Packet) -> Decision {
    evaluate(ps, &world(), &pkt)
}

fn tcp(ps: &[Policy], src: &str, dst: &str, port: u16) -> Decision {
    eval(ps, Packet::tcp(ip(src), 40000, ip(dst), port))
}

fn decided(d: &Decision) -> (String, usize) {
    let ing = d.ingress.as_ref().expect("destination is an endpoint");
    match &ing.decided_by {
        DecidedBy::Rule(r) | DecidedBy::PassToProfile(r) => (r.policy.clone(), r.rule_index),
        other => (other.to_string(), usize::MAX),
    }
}

const ORDERED: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-quarantine
spec:
  order: 100
  selector: role == 'db'
  ingress:
  - action: Log
    source:
      selector: has(quarantine)
  - action: Deny
    source:
      selector: has(quarantine)
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-frontend
  namespace: app
spec:
  order: 200
  selector: role == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == "frontend"
    destination:
      ports: ["5000:5999"]
"#;

#[test]
fn lower_order_first_log_continues_deny_decides() {
    let ps = policies(ORDERED);
    let d = tcp(&ps, QUARANTINED, DB, 5432);
    assert_eq!(d.verdict, Deny);
    assert_eq!(decided(&d), ("deny-quarantine".to_string(), 1));
    let ing = d.ingress.unwrap();
    assert_eq!(ing.logged.len(), 1, "the Log rule recorded and continued");
    assert_eq!(ing.applied, vec!["deny-quarantine", "app/allow-frontend"]);
    let d = tcp(&ps, FRONTEND, DB, 5432);
    assert_eq!(d.verdict, Allow);
    assert_eq!(decided(&d), ("allow-frontend".to_string(), 0));
    assert!(d.ingress.unwrap().logged.is_empty());
    let d = tcp(&ps, FRONTEND, DB, 6000);
    assert_eq!(d.verdict, Deny);
    assert_eq!(d.ingress.unwrap().decided_by, DecidedBy::EndOfTier);
    // Swapping the orders lets the allow win.
    let swapped = policies(&ORDERED.replace("order: 100", "order: 300"));
    assert_eq!(tcp(&swapped, QUARANTINED, DB, 5432).verdict, Allow);
}

#[test]
fn unset_order_is_last_and_ties_go_by_name() {
    let ps = policies(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-unordered-deny}
spec:
  selector: role == 'db'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b-allow}
spec:
  order: 5
  selector: role == 'db'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-deny}
spec:
  order: 5
  selector: role == 'db'
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [81]}}]
"#,
    );
    let d = tcp(&ps, FRONTEND, DB, 80);
    assert_eq!(d.verdict, Allow);
    assert_eq!(
        d.ingress.as_ref().unwrap().applied,
        vec!["a-deny", "b-allow", "a-unordered-deny"]
    );
    assert_eq!(
        decided(&tcp(&ps, FRONTEND, DB, 81)),
        ("a-deny".to_string(), 0)
    );
    assert_eq!(
        decided(&tcp(&ps, FRONTEND, DB, 82)),
        ("a-unordered-deny".to_string(), 0)
    );
}

#[test]
fn pass_leaves_the_rest_of_the_tier_unread() {
    let ps = policies(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-system}
spec:
  order: 1
  ingress:
  - action: Pass
    source:
      namespaceSelector: projectcalico.org/name == 'kube-system' || kubernetes.io/metadata.name == 'kube-system'
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec:
  order: 2
  ingress: [{action: Deny}]
"#,
    );
    let d = tcp(&ps, SYSTEM, DB, 53);
    assert_eq!(d.verdict, Allow);
    assert!(
        matches!(d.ingress.unwrap().decided_by, DecidedBy::PassToProfile(ref r) if r.policy == "pass-system")
    );
    let d = tcp(&ps, FRONTEND, DB, 53);
    assert_eq!(decided(&d), ("deny-all".to_string(), 0));
    assert_eq!(d.verdict, Deny);
}

#[test]
fn selector_scoping_namespaced_vs_global() {
    // The same source selector in a namespaced policy (app) and a global one.
    let namespaced = policies(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n, namespace: prod}\nspec:\n  ingress:\n  - action: Allow\n    source: {selector: role == 'frontend'}\n",
    );
    assert_eq!(
        tcp(&namespaced, FRONTEND, PROD_WEB, 80).verdict,
        Deny,
        "frontend is in app, not prod"
    );
    assert_eq!(
        tcp(&namespaced, FRONTEND, DB, 80).verdict,
        Allow,
        "policy in prod does not apply to app/db"
    );
    let global = policies(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: role == 'web'\n  ingress:\n  - action: Allow\n    source: {selector: role == 'frontend'}\n",
    );
    assert_eq!(
        tcp(&global, FRONTEND, PROD_WEB, 80).verdict,
        Allow,
        "global selector spans namespaces"
    );
    let with_ns = policies(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n, namespace: prod}\nspec:\n  ingress:\n  - action: Allow\n    source: {selector: role == 'frontend', namespaceSelector: env == 'dev'}\n",
    );
    assert_eq!(
        tcp(&with_ns, FRONTEND, PROD_WEB, 80).verdict,
        Allow,
        "namespaceSelector widens"
    );
    assert_eq!(tcp(&with_ns, MONITOR, PROD_WEB, 80).verdict, Deny);
    let gnp_ns = policies(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  namespaceSelector: env == 'prod'\n  ingress: [{action: Deny}]\n",
    );
    assert_eq!(
        tcp(&gnp_ns, FRONTEND, PROD_WEB, 80).verdict,
        Deny,
        "applies in env=prod namespaces"
    );
    assert_eq!(tcp(&gnp_ns, PROD_WEB, DB, 80).verdict, Allow, "not in app");
}

#[test]
fn negated_matches_and_icmp() {
    let ps = policies(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: g}
spec:
  selector: role == 'db'
  ingress:
  - action: Allow
    protocol: ICMP
    notICMP: {type: 8, code: 0}
  - action: Allow
    protocol: TCP
    source:
      notSelector: has(quarantine)
      notNets: [10.0.9.0/24]
    destination:
      notPorts: ["0:1023", metrics]
  - action: Allow
    notProtocol: TCP
    source: {nets: [192.168.0.0/16]}
"#,
    );
    assert_eq!(
        eval(&ps, Packet::icmp(ip(FRONTEND), ip(DB), 8, 0)).verdict,
        Deny,
        "echo request excluded"
    );
    assert_eq!(
        eval(&ps, Packet::icmp(ip(FRONTEND), ip(DB), 3, 4)).verdict,
        Allow
    );
    assert_eq!(tcp(&ps, FRONTEND, DB, 5432).verdict, Allow);
    assert_eq!(tcp(&ps, QUARANTINED, DB, 5432).verdict, Deny, "notSelector");
    assert_eq!(tcp(&ps, MONITOR, DB, 5432).verdict, Deny, "notNets");
    assert_eq!(tcp(&ps, FRONTEND, DB, 443).verdict, Deny, "notPorts range");
    assert_eq!(
        tcp(&ps, FRONTEND, DB, 9090).verdict,
        Deny,
        "notPorts named port on the destination"
    );
    assert_eq!(
        tcp(&ps, "8.8.8.8", DB, 5432).verdict,
        Allow,
        "a non-endpoint is not selected by notSelector"
    );
    assert_eq!(
        eval(&ps, Packet::udp(ip("192.168.3.3"), 1, ip(DB), 53)).verdict,
        Allow
    );
    assert_eq!(tcp(&ps, "192.168.3.3", DB, 80).verdict, Deny, "notProtocol");
}

#[test]
fn egress_with_destination_selector() {
    let ps = policies(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: fe-egress, namespace: app}
spec:
  selector: role == 'frontend'
  types: [Egress]
  egress:
  - action: Allow
    protocol: UDP
    destination:
      selector: k8s-app == 'kube-dns'
      namespaceSelector: all()
      ports: [53]
  - action: Allow
    protocol: TCP
    destination:
      selector: role == 'db'
"#,
    );
    assert_eq!(
        eval(&ps, Packet::udp(ip(FRONTEND), 1, ip(SYSTEM), 53)).verdict,
        Allow
    );
    assert_eq!(
        eval(&ps, Packet::udp(ip(FRONTEND), 1, ip(SYSTEM), 54)).verdict,
        Deny
    );
    assert_eq!(tcp(&ps, FRONTEND, DB, 1).verdict, Allow);
    assert_eq!(tcp(&ps, FRONTEND, "8.8.8.8", 443).verdict, Deny);
    let d = tcp(&ps, FRONTEND, "8.8.8.8", 443);
    assert!(d.ingress.is_none(), "8.8.8.8 is not an endpoint");
    assert_eq!(d.egress.unwrap().decided_by, DecidedBy::EndOfTier);
    assert_eq!(
        tcp(&ps, DB, "8.8.8.8", 443).verdict,
        Allow,
        "db is not selected"
    );
}

const KUBERNETES_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-frontend, namespace: app}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
    ports: [{port: 5432}]
"#;

#[test]
fn kubernetes_and_calico_evaluate_together() {
    let text = format!(
        "{KUBERNETES_DB}---{}",
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: quarantine}
spec:
  order: 10
  ingress:
  - action: Deny
    source: {selector: has(quarantine)}
  - action: Pass
    source: {namespaceSelector: kubernetes.io/metadata.name == 'kube-system'}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: metrics, namespace: app}
spec:
  order: 2000
  selector: role == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'prometheus', namespaceSelector: purpose == 'monitoring'}
    destination: {ports: [metrics]}
---
apiVersion: v1
kind: Namespace
metadata: {name: ignored}
"#
    );
    let ps = policies(&text);
    assert_eq!(ps.len(), 3, "the Namespace is skipped");
    let d = tcp(&ps, FRONTEND, DB, 5432);
    assert_eq!(d.verdict, Allow);
    assert_eq!(decided(&d), ("db-from-frontend".to_string(), 0));
    assert_eq!(
        d.ingress.unwrap().applied,
        vec!["quarantine", "app/db-from-frontend", "app/metrics"]
    );
    assert_eq!(
        decided(&tcp(&ps, QUARANTINED, DB, 5432)),
        ("quarantine".to_string(), 0),
        "Calico deny before k8s allow"
    );
    assert_eq!(tcp(&ps, QUARANTINED, DB, 5432).verdict, Deny);
    let d = tcp(&ps, MONITOR, DB, 9090);
    assert_eq!(
        (d.verdict, decided(&d)),
        (Allow, ("metrics".to_string(), 0)),
        "Calico allow after k8s order 1000"
    );
    assert_eq!(tcp(&ps, MONITOR, DB, 5432).verdict, Deny, "end of tier");
    assert_eq!(
        tcp(&ps, SYSTEM, DB, 1).verdict,
        Allow,
        "Pass skips the k8s isolation"
    );
    assert_eq!(
        tcp(&ps, FRONTEND, PROD_WEB, 1).verdict,
        Deny,
        "the GNP selects every endpoint; nothing else allows"
    );
    assert_eq!(tcp(&ps, PROD_WEB, FRONTEND, 1).verdict, Deny);
    // Without the Calico policies frontend is not isolated at all.
    let k8s_only = policies(KUBERNETES_DB);
    assert_eq!(tcp(&k8s_only, PROD_WEB, FRONTEND, 1).verdict, Allow);
    // A Calico policy ordered before 1000 with a Deny overrides the k8s allow.
    let before = policies(&format!(
        "{KUBERNETES_DB}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: block, namespace: app}}\nspec:\n  order: 999\n  ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [5432]}}}}]\n"
    ));
    assert_eq!(tcp(&before, FRONTEND, DB, 5432).verdict, Deny);
    let after = policies(&before_to_after(&format!(
        "{KUBERNETES_DB}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: block, namespace: app}}\nspec:\n  order: 999\n  ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [5432]}}}}]\n"
    )));
    assert_eq!(
        tcp(&after, FRONTEND, DB, 5432).verdict,
        Allow,
        "k8s allow (1000) before the deny (1001)"
    );
}

fn before_to_after(s: &str) -> String {
    s.replace("order: 999", "order: 1001")
}

#[test]
fn not_selector_scoping_follows_libcalico() {
    // Namespaced: a notSelector alone still means "an endpoint of this namespace".
    let namespaced = policies(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n, namespace: app}\nspec:\n  selector: role == 'db'\n  ingress:\n  - action: Allow\n    source: {notSelector: has(quarantine)}\n",
    );
    assert_eq!(tcp(&namespaced, FRONTEND, DB, 1).verdict, Allow);
    assert_eq!(tcp(&namespaced, QUARANTINED, DB, 1).verdict, Deny);
    assert_eq!(
        tcp(&namespaced, MONITOR, DB, 1).verdict,
        Deny,
        "other namespace"
    );
    assert_eq!(
        tcp(&namespaced, "8.8.8.8", DB, 1).verdict,
        Deny,
        "not an endpoint"
    );
    // Global: a notSelector alone only excludes.
    let global = policies(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: role == 'db'\n  ingress:\n  - action: Allow\n    source: {notSelector: has(quarantine)}\n",
    );
    assert_eq!(tcp(&global, MONITOR, DB, 1).verdict, Allow);
    assert_eq!(tcp(&global, "8.8.8.8", DB, 1).verdict, Allow);
    assert_eq!(tcp(&global, QUARANTINED, DB, 1).verdict, Deny);
}
