//! Manifest files as users write them: several documents, several kinds, `kind: List`, and
//! errors that name the file, the object and the field.

use policy_engine::model::{PolicyError, PolicyKind, parse_manifests};

const MIXED: &str = r#"# a comment before the first document
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
---
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: g}
spec:
  order: 1
  selector: all()
  ingress: [{action: Pass}]
---
apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: NetworkPolicy
  metadata: {name: in-list, namespace: prod}
  spec: {}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
"#;

#[test]
fn mixed_file_keeps_only_policies() {
    let ps = parse_manifests(MIXED, "mixed.yaml").unwrap();
    let kinds: Vec<(PolicyKind, String)> = ps.iter().map(|p| (p.kind, p.id())).collect();
    assert_eq!(
        kinds,
        vec![
            (
                PolicyKind::KubernetesNetworkPolicy,
                "prod/deny-all".to_string()
            ),
            (PolicyKind::CalicoGlobalNetworkPolicy, "g".to_string()),
            (PolicyKind::CalicoNetworkPolicy, "prod/in-list".to_string()),
        ]
    );
}

#[test]
fn an_error_in_a_later_document_names_file_object_and_field() {
    let text = format!(
        "{MIXED}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: broken, namespace: prod}}\nspec:\n  ingress:\n  - action: Allow\n    source:\n      selector: app == 'a' &&\n"
    );
    let e = parse_manifests(&text, "policies/prod.yaml").unwrap_err();
    let PolicyError::Invalid {
        file,
        object,
        field,
        reason,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(file, "policies/prod.yaml");
    assert_eq!(object, "NetworkPolicy prod/broken");
    assert_eq!(field, "spec.ingress[0].source.selector");
    assert!(
        reason.contains("at byte 13") && reason.ends_with('^'),
        "{reason}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(
            "policies/prod.yaml: NetworkPolicy prod/broken: spec.ingress[0].source.selector: "
        ),
        "{shown}"
    );
}

#[test]
fn broken_yaml_names_the_document() {
    let e = parse_manifests("kind: A\n---\nkind: [\n", "x.yaml").unwrap_err();
    assert!(
        matches!(&e, PolicyError::Yaml { document: 2, file, .. } if file == "x.yaml"),
        "{e}"
    );
    assert!(e.to_string().contains("line 3"), "{e}");
}

#[test]
fn list_items_are_validated_too() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: n, namespace: d}\n  spec:\n    policyTypes: [Sideways]\n";
    let e = parse_manifests(text, "l.yaml").unwrap_err();
    let PolicyError::Invalid { object, field, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (object.as_str(), field.as_str()),
        ("NetworkPolicy d/n", "spec.policyTypes[0]")
    );
}

/// A Kubernetes NetworkPolicy with an IPv6 `ipBlock` (and `except`) beside an IPv4 one,
/// parsed, compiled and judged for both families, by the compiled tables and the reference
/// evaluator.
#[test]
fn kubernetes_ipv6_ip_block_end_to_end() {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use policy_engine::compiler::{PolicyCompiler, key_of, key6_of};
    use policy_engine::model::Direction;
    use policy_engine::reference::{Packet, Packet6, Verdict, evaluate, evaluate6};
    use policy_engine::world::{Endpoint, World};

    let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-office, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock:
        cidr: 2001:db8:10::/48
        except: [2001:db8:10:ff::/64]
    - ipBlock: {cidr: 192.0.2.0/24}
    ports:
    - {protocol: TCP, port: 443}
  - from:
    - podSelector: {matchLabels: {app: fe}}
"#;
    let policies = parse_manifests(text, "office.yaml").unwrap();
    let nets = &policies[0].ingress[0].source;
    assert_eq!(nets.nets[0].to_string(), "2001:db8:10::/48");
    assert_eq!(nets.not_nets[0].to_string(), "2001:db8:10:ff::/64");
    let web6: Ipv6Addr = "fd00:10::1".parse().unwrap();
    let fe6: Ipv6Addr = "fd00:10::2".parse().unwrap();
    let mut world = World::new();
    world.add_endpoint(Endpoint::new("prod", "web", &[("app", "web")], Ipv4Addr::new(10, 0, 0, 1)).with_ip6(web6));
    world.add_endpoint(Endpoint::new("prod", "fe", &[("app", "fe")], Ipv4Addr::new(10, 0, 0, 2)).with_ip6(fe6));
    let mut c = PolicyCompiler::from_world(&world, &policies).unwrap();
    let t = c.tables().unwrap();
    assert!(t.peer6(web6).unwrap().rules(Direction::Ingress).is_some(), "web is isolated for IPv6 too");
    let six = |src: &str, port: u16| Packet6::tcp(src.parse().unwrap(), 40000, web6, port);
    let cases6 = [
        (six("2001:db8:10:1::7", 443), Verdict::Allow, "in the block"),
        (six("2001:db8:10:1::7", 80), Verdict::Deny, "in the block, another port"),
        (six("2001:db8:10:ff::7", 443), Verdict::Deny, "in the except"),
        (six("2001:db8:11::7", 443), Verdict::Deny, "outside the block"),
        (six("::ffff:192.0.2.7", 443), Verdict::Deny, "IPv4-mapped: the IPv4 block does not match IPv6"),
        (six("fd00:10::2", 80), Verdict::Allow, "the frontend pod by its IPv6 address"),
    ];
    for (pkt, want, what) in cases6 {
        let d = evaluate6(&policies, &world, &pkt);
        assert_eq!(d.verdict, want, "reference: {what}");
        assert_eq!(t.explain6(&key6_of(&pkt)), d, "compiled: {what}");
    }
    let four = |src: Ipv4Addr, port: u16| Packet::tcp(src, 40000, Ipv4Addr::new(10, 0, 0, 1), port);
    let cases4 = [
        (four(Ipv4Addr::new(192, 0, 2, 7), 443), Verdict::Allow, "in the IPv4 block"),
        (four(Ipv4Addr::new(198, 51, 100, 7), 443), Verdict::Deny, "outside it"),
        (four(Ipv4Addr::new(10, 0, 0, 2), 80), Verdict::Allow, "the frontend pod by its IPv4 address"),
    ];
    for (pkt, want, what) in cases4 {
        let d = evaluate(&policies, &world, &pkt);
        assert_eq!(d.verdict, want, "reference: {what}");
        assert_eq!(t.explain(&key_of(&pkt)), d, "compiled: {what}");
    }
}

/// A Calico policy with IPv6 nets, `ipVersion` and ICMPv6 parses into the model.
#[test]
fn calico_ipv6_fields_parse() {
    let text = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6}
spec:
  selector: all()
  ingress:
  - action: Allow
    protocol: ICMPv6
    ipVersion: 6
    icmp: {type: 128, code: 0}
    source: {nets: ['fd00::/8'], notNets: ['fd00:10::5']}
"#;
    let p = parse_manifests(text, "v6.yaml").unwrap().remove(0);
    let r = &p.ingress[0];
    assert_eq!((r.protocol, r.ip_version), (Some(58), Some(6)));
    assert_eq!(r.icmp.map(|m| (m.icmp_type, m.code)), Some((Some(128), Some(0))));
    assert_eq!(r.source.nets[0].to_string(), "fd00::/8");
    assert_eq!(r.source.not_nets[0].to_string(), "fd00:10::5/128", "a bare address is a host prefix");
}
