//! Policy updates at cluster scale: 10,000 pods in 100 namespaces under 1,000 policies of
//! both dialects. `policy-update/incremental/pod-add` is the incremental compiler taking in
//! one new pod (set memberships, applicable policies, its record) and publishing new tables;
//! beside it, `policy-update/full-rebuild/pod-add` is the same change made the naive way:
//! compiling the whole state again. `policy-update/incremental/policy-edit` changes one
//! policy's rule. `Throughput::Elements` = updates.
//!
//! Criterion gives medians; the bar is a p99, so each run also prints p50 / p99 /
//! max of 2,000 timed pod adds (hdrhistogram) on stderr.

use std::{hint::black_box, net::Ipv4Addr, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::{
    compiler::PolicyCompiler,
    model::{Policy, parse_manifests},
    world::{Endpoint, World},
};

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 9;
const GLOBAL_POLICIES: usize = 100;
const APPS: usize = 10;

fn pod(ns: usize, i: usize) -> Endpoint {
    let app = format!("app-{}", i % APPS);
    let tier = if i.is_multiple_of(3) { "front" } else { "back" };
    let ip = Ipv4Addr::new(10, (ns / 250) as u8, (ns % 250) as u8, (i % 250) as u8 + 1);
    Endpoint::new(&format!("ns-{ns}"), &format!("pod-{i}"), &[("app", &app), ("tier", tier)], ip).with_port("http", 6, 8080)
}

/// 900 namespaced policies (Kubernetes and Calico) and 100 global ones.
fn policies() -> Vec<Policy> {
    let mut yaml = String::new();
    for ns in 0..NAMESPACES {
        for k in 0..POLICIES_PER_NAMESPACE {
            let (app, from) = (k % APPS, (k + 1) % APPS);
            if k % 3 == 0 {
                yaml.push_str(&format!(
                    "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: ns-{ns}}}\nspec:\n  order: {k}\n  selector: app == 'app-{app}'\n  ingress:\n  - action: Deny\n    protocol: TCP\n    source: {{selector: tier == 'front', namespaceSelector: team == 't{}'}}\n    destination: {{ports: [22]}}\n  - action: Allow\n    protocol: TCP\n    source: {{selector: app == 'app-{from}'}}\n    destination: {{ports: [http, 9000]}}\n---\n",
                    ns % 7
                ));
            } else {
                yaml.push_str(&format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: ns-{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: app-{app}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: app-{from}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n    ports: [{{port: http}}, {{protocol: UDP, port: 53}}]\n---\n",
                    ns % 5
                ));
            }
        }
    }
    for g in 0..GLOBAL_POLICIES {
        yaml.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g{g}}}\nspec:\n  order: {g}\n  selector: tier == 'back' && app in {{'app-{}', 'app-{}'}}\n  types: [Ingress, Egress]\n  ingress:\n  - action: Log\n    source: {{nets: [192.168.{g}.0/24]}}\n  - action: Deny\n    source: {{nets: [192.168.{g}.0/24]}}\n  egress:\n  - action: Pass\n    destination: {{notNets: [10.0.0.0/8]}}\n---\n",
            g % APPS,
            (g + 3) % APPS
        ));
    }
    let p = parse_manifests(&yaml, "bench.yaml").expect("bench policies parse");
    assert_eq!(p.len(), NAMESPACES * POLICIES_PER_NAMESPACE + GLOBAL_POLICIES);
    p
}

fn world() -> World {
    let mut w = World::new();
    for ns in 0..NAMESPACES {
        let team = format!("t{}", ns % 7);
        w.add_namespace(&format!("ns-{ns}"), &[("team", &team)]);
        for i in 0..PODS_PER_NAMESPACE {
            w.add_endpoint(pod(ns, i));
        }
    }
    w
}

fn report_percentiles(c: &mut PolicyCompiler) {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for n in 0..2000 {
        let ns = n % NAMESPACES;
        let ep = pod(ns, PODS_PER_NAMESPACE + n / NAMESPACES);
        let t = Instant::now();
        c.upsert_endpoint(ep.clone()).expect("pod compiles");
        black_box(c.tables().expect("tables"));
        h.record(t.elapsed().as_nanos() as u64).expect("in range");
        c.remove_endpoint(&ep.namespace, &ep.name);
        c.tables().expect("tables");
    }
    eprintln!(
        "policy-update/incremental/pod-add, {} pods, {} policies, {} address sets, {} rule sets: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} adds",
        c.endpoint_count(),
        c.policy_count(),
        c.set_count(),
        c.rule_set_count(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3,
        h.len()
    );
}

fn bench(cr: &mut Criterion) {
    let world = world();
    let policies = policies();
    let t = Instant::now();
    let mut c = PolicyCompiler::from_world(&world, &policies).expect("compiles");
    c.tables().expect("tables");
    eprintln!("policy-update: the whole state compiles in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    report_percentiles(&mut c);

    let mut g = cr.benchmark_group("policy-update");
    g.throughput(Throughput::Elements(1));
    let mut n = 0usize;
    g.bench_function("incremental/pod-add", |b| {
        b.iter(|| {
            n += 1;
            let ep = pod(n % NAMESPACES, 10_000 + n);
            c.upsert_endpoint(ep.clone()).expect("pod compiles");
            black_box(c.tables().expect("tables"));
            c.remove_endpoint(&ep.namespace, &ep.name);
        })
    });
    let mut edited = policies[42].clone();
    let mut flip = false;
    g.bench_function("incremental/policy-edit", |b| {
        b.iter(|| {
            flip = !flip;
            edited.ingress[0].action = if flip { policy_engine::model::Action::Deny } else { policy_engine::model::Action::Allow };
            c.upsert_policy(edited.clone()).expect("policy compiles");
            black_box(c.tables().expect("tables"));
        })
    });
    g.sample_size(10);
    g.bench_function("full-rebuild/pod-add", |b| {
        let mut w = world.clone();
        w.add_endpoint(pod(7, 20_000));
        b.iter(|| {
            let mut full = PolicyCompiler::from_world(&w, &policies).expect("compiles");
            black_box(full.tables().expect("tables"));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
