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
