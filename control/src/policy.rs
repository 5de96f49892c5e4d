//! Keeps the policy compiler in step with the cluster state and this node's pods.
//!
//! Reads: the datastore's namespaces, pods (labels, `status.podIPs`, named ports) and
//! policies, and the addresses IPAM gave the pods of this node (authoritative here: a Pod
//! manifest may not carry its address yet). Hands on: [`PolicyTables`] for the snapshot.
//!
//! Each sync compares the wanted state with what the compiler was last given and passes on
//! only the differences, so the compiler's work stays incremental: a pod added or
//! relabelled touches that pod's record, a policy edit the rule sets containing it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use policy_engine::{
    compiler::{CompileError, EndpointKey, PolicyCompiler, PolicyTables, UpdateStats},
    model::{Policy, PolicyId},
    selector::Labels,
    world::Endpoint,
};

use crate::cluster::ClusterState;

/// The compiler and what it was last given.
#[derive(Debug, Default)]
pub struct PolicySync {
    compiler: PolicyCompiler,
    namespaces: BTreeMap<String, Labels>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    policies: BTreeMap<PolicyId, Policy>,
}

/// A local pod's addresses, as IPAM gave them: IPv4, and IPv6 on a dual-stack node.
pub type PodAddrs = (Ipv4Addr, Option<Ipv6Addr>);

/// The endpoints `cluster` and this node's pods (`local`: key → addresses) describe: every
/// pod with an address; a local pod with its IPAM addresses, also before its manifest is
/// read (then without labels).
fn wanted_endpoints(cluster: &ClusterState, local: &BTreeMap<EndpointKey, PodAddrs>) -> BTreeMap<EndpointKey, Endpoint> {
    let mut out = BTreeMap::new();
    for (key, pod) in &cluster.pods {
        let (ips, ips6) = match local.get(key) {
            Some((ip, ip6)) => (vec![*ip], ip6.iter().copied().collect()),
            None => (pod.ips.clone(), pod.ips6.clone()),
        };
        if ips.is_empty() && ips6.is_empty() {
            continue;
        }
        let ep = Endpoint { namespace: key.0.clone(), name: key.1.clone(), labels: pod.labels.clone(), ips, ips6, ports: pod.ports.clone() };
        out.insert(key.clone(), ep.with_implicit_labels());
    }
    for (key, (ip, ip6)) in local {
        out.entry(key.clone()).or_insert_with(|| {
            Endpoint { namespace: key.0.clone(), name: key.1.clone(), labels: Labels::new(), ips: vec![*ip], ips6: ip6.iter().copied().collect(), ports: Vec::new() }
                .with_implicit_labels()
        });
    }
    out
}

impl PolicySync {
    /// An empty compiler.
    pub fn new() -> PolicySync {
        PolicySync::default()
    }

    /// Passes the differences between the wanted state and the last one to the compiler
    /// and returns the current tables. A policy the compiler refuses is left out and named
    /// in the log; the others stay in force.
    pub fn sync(&mut self, cluster: &ClusterState, local: &BTreeMap<EndpointKey, PodAddrs>) -> Result<Arc<PolicyTables>, CompileError> {
        let c = &mut self.compiler;
        for (name, labels) in &cluster.namespaces {
            if self.namespaces.get(name) != Some(labels) {
                c.upsert_namespace(name, labels.clone());
            }
        }
        for name in self.namespaces.keys().filter(|n| !cluster.namespaces.contains_key(*n)) {
            c.remove_namespace(name);
        }
        self.namespaces = cluster.namespaces.clone();

        let wanted_policies: BTreeMap<PolicyId, Policy> = cluster.policies.iter().map(|(id, (p, _))| (id.clone(), p.clone())).collect();
        for id in self.policies.keys().filter(|id| !wanted_policies.contains_key(*id)) {
            c.remove_policy(id);
        }
        let mut accepted = BTreeMap::new();
        for (id, p) in wanted_policies {
            if self.policies.get(&id) == Some(&p) {
                accepted.insert(id, p);
                continue;
            }
            match c.upsert_policy(p.clone()) {
                Ok(()) => {
                    accepted.insert(id, p);
                }
                Err(e) => {
                    let file = cluster.policies.get(&id).map(|(_, f)| f.as_str()).unwrap_or("?");
                    tracing::error!(policy = %id, %file, error = %e, "policy refused; the others stay in force");
                }
            }
        }
        self.policies = accepted;

        let wanted = wanted_endpoints(cluster, local);
        for key in self.endpoints.keys().filter(|k| !wanted.contains_key(*k)) {
            c.remove_endpoint(&key.0, &key.1);
        }
        for (key, ep) in &wanted {
            if self.endpoints.get(key) != Some(ep) {
                c.upsert_endpoint(ep.clone())?;
            }
        }
        self.endpoints = wanted;
        c.tables()
    }

    /// What the compiler did since the last call.
    pub fn take_stats(&mut self) -> UpdateStats {
        self.compiler.take_stats()
    }

    /// Policies in force, by identity.
    pub fn policies(&self) -> &BTreeMap<PolicyId, Policy> {
        &self.policies
    }

    /// Endpoints the compiler knows.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::read_documents;
    use policy_engine::{compiler::key_of, reference::{Packet, Verdict}};

    const STATE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec:\n  nodeName: n2\n  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]\nstatus: {podIP: 10.244.2.5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cli, namespace: shop, labels: {app: cli}}\nspec: {nodeName: n1, containers: [{name: c, image: x}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: cli}}}], ports: [{port: http}]}]\n";

    #[test]
    fn local_pods_take_their_ipam_address_and_remote_ones_their_manifest_address() {
        let mut cluster = ClusterState::default();
        read_documents(STATE, "state.yaml", &mut cluster).unwrap();
        let local = BTreeMap::from([(("shop".to_string(), "cli".to_string()), (Ipv4Addr::new(10, 244, 1, 7), None))]);
        let mut sync = PolicySync::new();
        let tables = sync.sync(&cluster, &local).unwrap();
        assert_eq!(sync.endpoint_count(), 2);
        let verdict = |from: [u8; 4], port| {
            tables.explain(&key_of(&Packet::tcp(Ipv4Addr::from(from), 40000, Ipv4Addr::new(10, 244, 2, 5), port))).verdict
        };
        assert_eq!(verdict([10, 244, 1, 7], 8080), Verdict::Allow, "cli to web's named port http");
        assert_eq!(verdict([10, 244, 1, 7], 80), Verdict::Deny);
        assert_eq!(verdict([10, 244, 1, 8], 8080), Verdict::Deny, "not cli");

        // Dual stack: the local pod's IPv6 address from IPAM, the remote one's from podIPs.
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let mut dual = cluster.clone();
        dual.pods.get_mut(&("shop".to_string(), "web".to_string())).unwrap().ips6 = vec![v6("fd00:10:244:2::5")];
        let local6 = BTreeMap::from([(("shop".to_string(), "cli".to_string()), (Ipv4Addr::new(10, 244, 1, 7), Some(v6("fd00:10:244:1::7"))))]);
        let t6 = PolicySync::new().sync(&dual, &local6).unwrap();
        assert!(std::ptr::eq(t6.peer6(v6("fd00:10:244:1::7")).unwrap(), t6.peer(Ipv4Addr::new(10, 244, 1, 7)).unwrap()), "one record for both families");
        let key = policy_engine::compiler::Key6 { src: v6("fd00:10:244:1::7"), dst: v6("fd00:10:244:2::5"), proto: 6, src_port: 40000, dst_port: 8080 };
        assert_eq!(t6.explain6(&key).verdict, Verdict::Allow, "cli to web over IPv6");
        assert_eq!(t6.explain6(&policy_engine::compiler::Key6 { src: v6("fd00:10:244:1::8"), ..key }).verdict, Verdict::Deny);

        // Nothing changed: nothing is recompiled.
        sync.take_stats();
        sync.sync(&cluster, &local).unwrap();
        assert_eq!(sync.take_stats(), UpdateStats::default());

        // The policy goes away: web is open again.
        cluster.policies.clear();
        let tables = sync.sync(&cluster, &local).unwrap();
        let open = tables.explain(&key_of(&Packet::tcp(Ipv4Addr::new(10, 244, 1, 8), 1, Ipv4Addr::new(10, 244, 2, 5), 80)));
        assert_eq!(open.verdict, Verdict::Allow);
    }
}
