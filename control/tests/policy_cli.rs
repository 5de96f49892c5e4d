//! `twill policy explain | classify | from-classbench`, run as a user runs them.

use std::{path::PathBuf, process::Command};

use policy_engine::{classbench, classifier::linear_first_match, dataset};

fn twill(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twill")).args(args).output().expect("twill runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("twill-policy-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: cli, namespace: shop, labels: {app: cli}}
spec: {containers: [{name: c, image: curl}]}
status: {podIP: 10.244.2.20}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-cli, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: cli}}}]
    ports: [{port: http}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-telnet}
spec:
  order: 10
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [23]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: cli-open}
spec:
  order: 20
  selector: app == 'cli'
  ingress: [{action: Pass}]
"#;

fn explain(dir: &str, from: &str, to: &str, port: &str) -> serde_json::Value {
    let (ok, out, err) = twill(&["policy", "explain", "--state", dir, "--from", from, "--to", to, "--proto", "TCP", "--port", port, "--json"]);
    assert!(ok, "explain failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn explain_names_the_deciding_policy_and_rule() {
    let dir = scratch("explain");
    std::fs::write(dir.join("state.yaml"), STATE).unwrap();
    let d = dir.to_str().unwrap();

    let v = explain(d, "shop/cli", "shop/web", "8080");
    assert_eq!(v["verdict"], "allow", "{v:#}");
    assert_eq!(v["ingress"]["decided_by"]["rule"]["policy"], "web-from-cli", "{v:#}");
    assert_eq!(v["ingress"]["applied"], serde_json::json!(["no-telnet", "shop/web-from-cli"]), "order 10 before 1000");

    let v = explain(d, "shop/cli", "shop/web", "23");
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["ingress"]["decided_by"]["rule"]["policy"], "no-telnet");
    assert_eq!(v["ingress"]["decided_by"]["rule"]["rule"], 0);

    let v = explain(d, "10.9.9.9", "shop/web", "8080");
    assert_eq!(v["verdict"], "deny", "not cli: end of the tier");
    assert_eq!(v["ingress"]["decided_by"]["kind"], "end-of-tier");
    assert!(v["egress"].is_null(), "the source is no pod");

    let v = explain(d, "shop/web", "shop/cli", "443");
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["ingress"]["decided_by"]["kind"], "pass-to-profile", "cli is only under the global policy: Pass");

    let (ok, _, err) = twill(&["policy", "explain", "--state", d, "--from", "shop/nobody", "--to", "shop/web", "--proto", "TCP", "--port", "80"]);
    assert!(!ok && err.contains("no pod shop/nobody") && err.contains("shop/web"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Dual-stack pods: an IPv6 address on one side asks about IPv6, and the pod on the other
/// side answers with its IPv6 address; the same policies decide.
#[test]
fn explain_judges_ipv6_with_the_same_policies() {
    let dir = scratch("explain6");
    let dual = STATE
        .replace("status: {podIP: 10.244.1.10}", "status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: 'fd00:1::10'}]}")
        .replace("status: {podIP: 10.244.2.20}", "status: {podIP: 10.244.2.20, podIPs: [{ip: 10.244.2.20}, {ip: 'fd00:2::20'}]}");
    std::fs::write(dir.join("state.yaml"), dual).unwrap();
    let d = dir.to_str().unwrap();
    let v = explain(d, "fd00:2::20", "shop/web", "8080");
    assert_eq!((v["verdict"].as_str(), v["to"]["ip"].as_str()), (Some("allow"), Some("fd00:1::10")), "{v:#}");
    assert_eq!(v["ingress"]["decided_by"]["rule"]["policy"], "web-from-cli", "cli by its IPv6 address");
    let v = explain(d, "fd00:9::9", "shop/web", "8080");
    assert_eq!(v["verdict"], "deny", "{v:#}");
    let (ok, _, err) = twill(&["policy", "explain", "--state", d, "--from", "10.9.9.9", "--to", "fd00:1::10", "--proto", "TCP", "--port", "80"]);
    assert!(!ok && err.contains("different address families"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_policy_manifest_is_refused_with_file_and_field() {
    let dir = scratch("bad");
    let bad = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: broken}\nspec:\n  selector: app == 'x\n";
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let (ok, _, err) = twill(&["policy", "explain", "--state", dir.to_str().unwrap(), "--from", "1.1.1.1", "--to", "2.2.2.2", "--proto", "TCP", "--port", "80"]);
    assert!(!ok, "accepted a broken selector");
    assert!(err.contains("bad.yaml") && err.contains("spec.selector"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn classify_agrees_with_the_reference_engine_and_a_linear_scan() {
    let dir = scratch("classify");
    let data = dataset::data_dir().expect("the ClassBench data set");
    for set in ["fw1_1k", "ipc1_1k"] {
        let rules_file = data.join(format!("classbench/{set}.gz"));
        let trace_file = data.join(format!("classbench/{set}_trace.gz"));
        let (ok, yaml, err) = twill(&["policy", "from-classbench", rules_file.to_str().unwrap()]);
        assert!(ok, "{err}");
        let policy = dir.join(format!("{set}.yaml"));
        std::fs::write(&policy, yaml).unwrap();
        let args = |engine: &'static str| {
            vec!["policy".to_string(), "classify".into(), "--policy".into(), policy.display().to_string(), "--trace".into(), trace_file.display().to_string(), "--engine".into(), engine.into()]
        };
        let run = |engine| {
            let a = args(engine);
            let (ok, out, err) = twill(&a.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(ok, "{err}");
            out.lines().map(|l| l.parse::<usize>().expect("a rule number")).collect::<Vec<_>>()
        };
        let compiled = run("compiled");
        let reference = run("reference");
        let rules = classbench::parse_rules(&dataset::read(&format!("classbench/{set}.gz")).unwrap()).unwrap();
        let trace = classbench::parse_trace(&dataset::read(&format!("classbench/{set}_trace.gz")).unwrap()).unwrap();
        assert_eq!(compiled.len(), trace.len());
        for (i, e) in trace.iter().enumerate() {
            let want = linear_first_match(&rules, &e.key).map_or(0, |r| r as usize + 1);
            assert_eq!(compiled[i], want, "{set} trace line {}", i + 1);
        }
        assert_eq!(compiled, reference, "{set}");
        let mut a = args("compiled");
        a.push("--json".into());
        let (ok, out, _) = twill(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok);
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["lookups"], trace.len());
        assert_eq!(summary["rules"], rules.len());
        assert!(summary["lookups_per_second"].as_f64().unwrap() > 0.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
