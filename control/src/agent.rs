//! The node agent: owns the data plane, the cluster state read from the datastore, IPAM,
//! the local endpoints and the policy compiler, and recomputes and publishes the tables
//! when any of them changes. The control loop watches the manifest directory and the
//! kernel's neighbour table and writes out the data plane's Log events; the local API
//! (`server.rs`) changes endpoints. A manifest directory that stops validating leaves the
//! last good state in force. When a publication changes policy, connections the new
//! policy denies are cut once every worker runs on it.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use encap::ethernet::EthernetAddress;
use forwarder::{
    Dataplane, DataplaneConfig, Endpoint, NodeConfig, RouteTarget, Tunnel,
    route::{Ipv4Prefix, Ipv6Prefix, RouteTable},
    port::CopyMode,
    worker::IdleStrategy,
    xdp_hook::{AttachMode, HookMode},
};
use serde_json::{Value, json};

use crate::{
    calc,
    cluster::{self, ClusterState},
    ipam::Ipam,
    neighbour,
    policy::PolicySync,
    pool::{self, DefaultEncap},
};

/// The MAC pods see as their gateway (Calico uses the same one).
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee; 6]);

/// Where cluster state comes from.
#[derive(Debug, Clone)]
pub enum Datastore {
    Dir(PathBuf),
}

impl std::str::FromStr for Datastore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(Datastore::Dir(PathBuf::from(path))),
            Some(("etcd", _)) => Err(format!("{s:?}: the etcd datastore is not available yet; accepted: dir:PATH")),
            _ => Err(format!("{s:?} is not a datastore; accepted: dir:PATH")),
        }
    }
}

/// Settings of `twill agent`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub datastore: Datastore,
    pub node: String,
    pub uplink: String,
    pub cores: Vec<usize>,
    pub state_dir: PathBuf,
    /// `--encap`: the VXLAN spoken, and how nodes no IP pool covers are reached.
    pub encap: DefaultEncap,
    pub batch: usize,
    pub idle: IdleStrategy,
    pub attach: AttachMode,
    pub copy_mode: CopyMode,
    pub frames: u32,
    /// Connections the node's tracker holds at most.
    pub conntrack_flows: usize,
    /// IPv6 connections it holds at most.
    pub conntrack6_flows: usize,
    /// `--pipeline`: the data plane, or the I/O ceiling for the lab.
    pub pipeline: forwarder::pipeline::Mode,
    /// `--routes`: a file of networks outside the cluster (see [`crate::routes`]).
    pub routes: Option<PathBuf>,
}

/// This node's underlay subnets, per family.
#[derive(Debug, Clone, Copy)]
struct Subnets {
    v4: Option<Ipv4Prefix>,
    v6: Option<Ipv6Prefix>,
}

/// How a node with underlay subnets `subnets` reaches `peer`'s pods: the IP pools (or
/// `encap`) decide for IPv4, the IPv6 pools for IPv6 (else as IPv4).
fn tunnels_to(cluster: &ClusterState, encap: &DefaultEncap, subnets: Subnets, peer: &cluster::NodeInfo) -> calc::Tunnels {
    let v4 = pool::tunnel_to(&cluster.pools, encap, subnets.v4, peer.address, peer.pod_cidr);
    calc::Tunnels { v4, v6: pool::tunnel6_to(&cluster.pools6, v4, subnets.v6, peer.address6, peer.pod_cidr6) }
}

/// Bytes tunnels `t` add: the IPv4 tunnel's, or VXLAN over IPv6's 70 when the IPv6 pods go
/// in VXLAN `over_ipv6` (an IPv6 underlay at both ends), if more.
fn overhead_of(t: calc::Tunnels, over_ipv6: bool) -> usize {
    let v6 = if t.v6 == Tunnel::Vxlan && over_ipv6 { encap::vxlan6::OVERHEAD } else { 0 };
    t.v4.overhead().max(v6)
}

/// Everything the agent owns, behind one lock.
pub struct Agent {
    cfg: AgentConfig,
    dataplane: Dataplane,
    node: NodeConfig,
    cluster: ClusterState,
    ipam: Ipam,
    endpoints: BTreeMap<String, Endpoint>,
    neighbours: calc::Neighbours,
    /// This node's underlay subnets (CrossSubnet compares peers against them).
    subnets: Subnets,
    /// `--routes`: networks outside the cluster, the start of every table version.
    outside_routes: RouteTable<RouteTarget>,
    policy: PolicySync,
    policy_tables: Arc<policy_engine::compiler::PolicyTables>,
    version: u64,
    last_error: Option<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.cfg.node).field("version", &self.version).finish()
    }
}

fn read_sys(ifname: &str, attr: &str) -> anyhow::Result<String> {
    let p = format!("/sys/class/net/{ifname}/{attr}");
    Ok(std::fs::read_to_string(&p).with_context(|| format!("cannot read {p}: is {ifname:?} an interface here?"))?.trim().to_string())
}

fn load(ds: &Datastore) -> Result<ClusterState, cluster::ManifestError> {
    match ds {
        Datastore::Dir(dir) => cluster::read_dir(dir),
    }
}

impl Agent {
    /// Reads the datastore, starts the data plane and re-attaches pods that were attached
    /// before a restart.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<Agent> {
        let cluster = load(&cfg.datastore)?;
        let Some(me) = cluster.nodes.get(&cfg.node).cloned() else {
            bail!(
                "node {:?} is not in the datastore {:?} (nodes there: {})",
                cfg.node,
                cfg.datastore,
                cluster.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let uplink_mac: EthernetAddress = read_sys(&cfg.uplink, "address")?
            .parse()
            .map_err(|_| anyhow::anyhow!("uplink {} has no Ethernet address", cfg.uplink))?;
        let uplink_mtu: u16 = read_sys(&cfg.uplink, "mtu")?.parse().context("uplink MTU")?;
        let node = NodeConfig {
            node_ip: me.address,
            node_ip6: me.address6,
            uplink_mac,
            vtep_mac: me.vtep_mac,
            gateway_mac: GATEWAY_MAC,
            vxlan: cfg.encap.vxlan,
            uplink_mtu,
        };
        // Every way a peer may send: VXLAN to our port, IP-in-IP, or plain to our pods.
        let (vxlan_port, pod_cidr) = (Some(cfg.encap.vxlan.port), Some(me.pod_cidr));
        let pod_cidr6 = me.pod_cidr6.filter(|_| me.address6.is_some());
        let subnets = Subnets {
            v4: neighbour::connected_subnet(&cfg.uplink, me.address).and_then(|(a, l)| Ipv4Prefix::new(a, l)),
            v6: me.address6.and_then(|a| neighbour::connected_subnet6(&cfg.uplink, a)).and_then(|(a, l)| Ipv6Prefix::new(a, l)),
        };
        let dp_cfg = DataplaneConfig {
            uplink: cfg.uplink.clone(),
            cores: cfg.cores.clone(),
            batch: cfg.batch,
            idle: cfg.idle,
            attach: cfg.attach,
            copy_mode: cfg.copy_mode,
            uplink_hook: HookMode::Uplink { node_ip: me.address, node_ip6: me.address6, vxlan_port, ipip: true, pod_cidr, pod_cidr6, nat: true },
            frames: cfg.frames,
            fill_target: forwarder::port::RING_SIZE as usize,
            conntrack_flows: cfg.conntrack_flows,
            conntrack6_flows: cfg.conntrack6_flows,
            pipeline: cfg.pipeline,
        };
        let outside_routes = match &cfg.routes {
            Some(path) => {
                let t = crate::routes::read(path).map_err(anyhow::Error::msg)?;
                tracing::info!(routes = t.len(), file = %path.display(), "outside routes loaded");
                t
            }
            None => RouteTable::default(),
        };
        let neighbours = calc::Neighbours::default();
        let this = calc::ThisNode { config: &node, name: &cfg.node, outside_routes: &outside_routes };
        let first = calc::snapshot(1, this, &cluster, [], &neighbours, |n| {
            tunnels_to(&cluster, &cfg.encap, subnets, n)
        });
        let dataplane = Dataplane::start(dp_cfg, first).context("starting the data plane")?;
        reserve_nat_ports();
        let ipam = Ipam::open(&cfg.state_dir, me.pod_cidr)?;
        let mut agent = Agent {
            cfg,
            dataplane,
            node,
            cluster,
            ipam,
            endpoints: BTreeMap::new(),
            neighbours,
            subnets,
            outside_routes,
            policy: PolicySync::new(),
            policy_tables: Arc::default(),
            version: 1,
            last_error: None,
        };
        agent.reattach();
        agent.refresh_neighbours(true);
        agent.publish();
        Ok(agent)
    }

    fn reattach(&mut self) {
        let existing: Vec<(String, String, String)> = self
            .ipam
            .allocations()
            .iter()
            .filter_map(|(id, a)| Some((id.clone(), a.host_ifname.clone()?, a.mac.clone()?)))
            .collect();
        for (id, host, mac) in existing {
            match self.attach(&id, &host, &mac) {
                Ok(()) => tracing::info!(container = %id, host_ifname = %host, "re-attached pod after restart"),
                Err(e) => tracing::warn!(container = %id, host_ifname = %host, error = %e, "could not re-attach pod"),
            }
        }
    }

    /// This node's pods as the policy compiler names them, with their IPAM addresses.
    fn local_pods(&self) -> BTreeMap<(String, String), crate::policy::PodAddrs> {
        self.endpoints
            .iter()
            .filter_map(|(id, ep)| self.ipam.get(id).map(|a| ((a.namespace.clone(), a.pod.clone()), (ep.ip, ep.ip6))))
            .collect()
    }

    /// Publishes a new table version from the current state. If policy changed, waits for
    /// every worker to take the version and cuts the tracked connections it now denies.
    fn publish(&mut self) {
        self.version += 1;
        let me = calc::ThisNode { config: &self.node, name: &self.cfg.node, outside_routes: &self.outside_routes };
        let mut snap = calc::snapshot(
            self.version,
            me,
            &self.cluster,
            self.endpoints.values().copied(),
            &self.neighbours,
            |n| self.tunnels_to(n),
        );
        let local = self.local_pods();
        match self.policy.sync(&self.cluster, &local) {
            Ok(tables) => self.policy_tables = tables,
            Err(e) => tracing::error!(error = %e, "policy does not compile; the last compiled policy stays in force"),
        }
        snap.policy = Arc::clone(&self.policy_tables);
        let policy_changed = !Arc::ptr_eq(&self.dataplane.tables().load_full().policy, &snap.policy);
        self.dataplane.publish(snap);
        if policy_changed {
            let stats = self.policy.take_stats();
            if !self.dataplane.wait_for_version(self.version, Duration::from_millis(100)) {
                tracing::warn!(version = self.version, "a worker did not take the new tables within 100 ms");
            }
            let cut = self.dataplane.rejudge();
            tracing::info!(version = self.version, rule_sets_built = stats.rule_sets_built, endpoints_updated = stats.peers_updated, connections_cut = cut, "policy published");
        }
    }

    /// How this node reaches `peer`'s pods.
    fn tunnels_to(&self, peer: &cluster::NodeInfo) -> calc::Tunnels {
        tunnels_to(&self.cluster, &self.cfg.encap, self.subnets, peer)
    }

    /// `peer`'s IPv6 underlay address when this node has one too (IPv6 pods then cross the
    /// IPv6 underlay; `forwarder::snapshot::RemoteNode::with_underlay6` for the tables).
    fn underlay6(&self, peer: &cluster::NodeInfo) -> Option<std::net::Ipv6Addr> {
        self.node.node_ip6.and(peer.address6)
    }

    /// Bytes the tunnel to `peer` adds ([`overhead_of`]; VXLAN over IPv6 when both nodes
    /// have an IPv6 underlay).
    fn overhead_to(&self, peer: &cluster::NodeInfo) -> usize {
        overhead_of(self.tunnels_to(peer), self.underlay6(peer).is_some())
    }

    /// Bytes the tunnel to a peer in another subnet adds when its pods share this node's
    /// pools: what this node's own pods need whatever peers the agent knows yet, so a pod's
    /// MTU does not depend on whether the peers' manifests were read before it came.
    fn own_overhead(&self) -> usize {
        let Some(me) = self.cluster.nodes.get(&self.cfg.node) else { return 0 };
        let across = Subnets { v4: None, v6: None };
        overhead_of(tunnels_to(&self.cluster, &self.cfg.encap, across, me), self.node.node_ip6.is_some() && me.pod_cidr6.is_some())
    }

    /// The pod MTU: what the uplink MTU and the longest frame the data plane carries (a
    /// chain of UMEM chunks on multi-buffer sockets, else one) leave after the largest
    /// tunnel overhead this node uses (VXLAN 50, over IPv6 70, IP-in-IP 20, direct 0).
    pub fn pod_mtu(&self) -> u16 {
        let overhead = self
            .cluster
            .nodes
            .values()
            .filter(|n| n.name != self.cfg.node)
            .map(|n| self.overhead_to(n))
            .chain([self.cfg.encap.tunnel.overhead(), self.own_overhead()])
            .max()
            .unwrap_or(0);
        let ip_room = usize::from(self.node.uplink_mtu).min(self.dataplane.max_frame() - 14);
        ip_room.saturating_sub(overhead) as u16
    }

    /// Writes the data plane's Log events out (one line each, as iptables' LOG does).
    pub fn write_policy_logs(&self) {
        self.dataplane.drain_policy_logs(|e| {
            let rule = e.rules.rule_ref(e.entry);
            tracing::info!(
                target: "twill::policy_log",
                src = %e.tuple.src, dst = %e.tuple.dst, proto = e.tuple.proto,
                src_port = e.tuple.src_port, dst_port = e.tuple.dst_port,
                direction = ?e.direction, verdict = %e.verdict, rule = %rule,
                "policy log"
            );
        });
    }

    /// Re-reads the datastore; keeps the last good state when it does not validate.
    pub fn reload(&mut self) {
        match load(&self.cfg.datastore) {
            Ok(state) if state == self.cluster => self.last_error = None,
            Ok(state) => {
                if let Some(me) = state.nodes.get(&self.cfg.node)
                    && (me.pod_cidr, me.pod_cidr6) != (self.cluster.nodes[&self.cfg.node].pod_cidr, self.cluster.nodes[&self.cfg.node].pod_cidr6)
                {
                    tracing::error!(node = %self.cfg.node, "this node's podCIDR(s) changed; keeping the old ones until restart");
                    return;
                }
                let before: Vec<_> = self.cluster.nodes.keys().cloned().collect();
                let after: Vec<_> = state.nodes.keys().cloned().collect();
                tracing::info!(?before, ?after, "cluster state changed");
                self.cluster = state;
                self.last_error = None;
                self.refresh_neighbours(true);
                self.publish();
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    tracing::error!(error = %msg, "datastore does not validate; keeping the last good state");
                    self.last_error = Some(msg);
                }
            }
        }
    }

    /// Reads next-hop MACs of the other nodes from the kernel; nudges unresolved ones.
    /// Publishes when something changed (unless `quiet`, where the caller publishes).
    pub fn refresh_neighbours(&mut self, quiet: bool) {
        let arp = neighbour::read_arp(&self.cfg.uplink);
        let ndp = if self.node.node_ip6.is_some() { neighbour::read_ndp(&self.cfg.uplink) } else { std::collections::HashMap::new() };
        let routes = neighbour::Routes::read();
        let mut next = calc::Neighbours::default();
        for (name, n) in &self.cluster.nodes {
            if *name == self.cfg.node {
                continue;
            }
            let hop = routes.next_hop(&self.cfg.uplink, n.address);
            match arp.get(&hop) {
                Some(mac) => {
                    next.peers.insert(n.address, *mac);
                }
                None => neighbour::nudge(n.address),
            }
            if let Some(a6) = self.underlay6(n) {
                match ndp.get(&routes.next_hop6(&self.cfg.uplink, a6)) {
                    Some(mac) => {
                        next.peers6.insert(a6, *mac);
                    }
                    None => neighbour::nudge(a6),
                }
            }
        }
        // The way out of the cluster, when pods may take it.
        if self.leaves_cluster()
            && let Some(gw) = neighbour::default_gateway(&self.cfg.uplink)
        {
            next.gateway = arp.get(&gw).copied();
            if next.gateway.is_none() {
                neighbour::nudge(gw);
            }
        }
        if next != self.neighbours {
            tracing::info!(resolved = next.peers.len(), resolved6 = next.peers6.len(), gateway = next.gateway.is_some(), "underlay neighbours changed");
            self.neighbours = next;
            if !quiet {
                self.publish();
            }
        }
    }

    /// Whether pods may send out of the cluster: a pool NATs or there are outside routes.
    fn leaves_cluster(&self) -> bool {
        !self.outside_routes.is_empty() || self.cluster.pools.values().any(|p| p.nat_outgoing)
    }

    /// Whether a peer node's next hop, or the default gateway when pods may leave the
    /// cluster, has no MAC yet (the agent then looks again soon).
    fn unresolved_peers(&self) -> bool {
        let peers6 = self.cluster.nodes.values().filter(|n| n.name != self.cfg.node && self.underlay6(n).is_some()).count();
        self.cluster.nodes.len().saturating_sub(1) > self.neighbours.peers.len() || peers6 > self.neighbours.peers6.len() || (self.leaves_cluster() && self.neighbours.gateway.is_none())
    }

    /// Allocates (or returns) the address of a container.
    pub fn allocate(&mut self, container_id: &str, namespace: &str, pod: &str, ifname: &str) -> anyhow::Result<Value> {
        let ip = self.ipam.allocate(container_id, namespace, pod, ifname)?;
        let mtu = self.pod_mtu();
        let ip6 = self.ip6_of(ip);
        tracing::info!(container = %container_id, %namespace, %pod, %ip, ?ip6, "allocated");
        let mut answer = json!({"ip": ip.to_string(), "prefix_len": 32, "gateway": forwarder::snapshot::GATEWAY_IP.to_string(),
                  "gateway_mac": GATEWAY_MAC.to_string(), "mtu": mtu});
        if let Some(ip6) = ip6 {
            answer["ip6"] = json!(ip6.to_string());
            answer["gateway6"] = json!(forwarder::snapshot::GATEWAY_IP6.to_string());
        }
        Ok(answer)
    }

    /// The IPv6 address that goes with a pod's IPv4 address, when this node is dual-stack.
    fn ip6_of(&self, ip: Ipv4Addr) -> Option<std::net::Ipv6Addr> {
        let me = &self.cluster.nodes[&self.cfg.node];
        crate::ipam::ipv6_twin(me.pod_cidr, me.pod_cidr6?, ip)
    }

    /// Serves a pod's host-side veth and publishes its endpoint.
    pub fn attach(&mut self, container_id: &str, host_ifname: &str, pod_mac: &str) -> anyhow::Result<()> {
        let Some(alloc) = self.ipam.get(container_id).cloned() else {
            bail!("container {container_id:?} has no address: call allocate first");
        };
        let mac: EthernetAddress =
            pod_mac.parse().map_err(|_| anyhow::anyhow!("pod_mac {pod_mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        if let Some(old) = self.endpoints.remove(container_id) {
            self.publish();
            self.dataplane.remove_pod_port(old.port)?;
        }
        let (port, worker) = self.dataplane.add_pod_port(host_ifname)?;
        self.endpoints.insert(container_id.to_string(), Endpoint { ip: alloc.ip, ip6: self.ip6_of(alloc.ip), mac, port, worker });
        self.ipam.set_attachment(container_id, host_ifname, pod_mac)?;
        self.publish();
        tracing::info!(container = %container_id, %host_ifname, port, worker, "attached");
        Ok(())
    }

    /// Withdraws a container's endpoint, detaches its port and frees its address.
    pub fn release(&mut self, container_id: &str) -> anyhow::Result<bool> {
        if let Some(ep) = self.endpoints.remove(container_id) {
            self.publish();
            self.dataplane.remove_pod_port(ep.port)?;
        }
        let released = self.ipam.release(container_id)?.is_some();
        tracing::info!(container = %container_id, released, "released");
        Ok(released)
    }

    /// Stops the workers and detaches every XDP program.
    pub fn shutdown(&mut self) {
        self.dataplane.shutdown();
    }

    /// Counters summed over workers, and per worker.
    pub fn stats(&self) -> Value {
        let mut total: BTreeMap<String, u64> = BTreeMap::new();
        let mut per_worker = Vec::new();
        for c in self.dataplane.counters() {
            let read = c.read();
            for (k, v) in &read {
                *total.entry(k.clone()).or_default() += v;
            }
            per_worker.push(read.into_iter().collect::<BTreeMap<_, _>>());
        }
        total.insert("table_version".into(), self.version);
        total.insert("endpoints".into(), self.endpoints.len() as u64);
        total.insert("nodes".into(), self.cluster.nodes.len() as u64);
        total.insert("policies".into(), self.policy.policies().len() as u64);
        total.insert("policy_endpoints".into(), self.policy.endpoint_count() as u64);
        total.insert("conntrack_capacity".into(), self.dataplane.conntrack_capacity() as u64);
        json!({"stats": total, "workers": per_worker})
    }

    /// `twill get KIND`.
    pub fn get(&self, kind: &str) -> anyhow::Result<Value> {
        Ok(match kind {
            "nodes" => Value::Array(
                self.cluster
                    .nodes
                    .values()
                    .map(|n| {
                        let mut v = serde_json::to_value(n).expect("serializable");
                        v["next_hop_mac"] = json!(self.neighbours.peers.get(&n.address).map(|m| m.to_string()));
                        v["local"] = json!(n.name == self.cfg.node);
                        if n.name != self.cfg.node {
                            let t = self.tunnels_to(n);
                            v["tunnel"] = json!(t.v4.name());
                            // Over the IPv6 underlay, when both nodes have one.
                            v["tunnel6"] = json!(self.underlay6(n).map(|_| t.v6.name()));
                        }
                        v
                    })
                    .collect(),
            ),
            "pods" => Value::Array(
                self.ipam
                    .allocations()
                    .iter()
                    .map(|(id, a)| {
                        let ep = self.endpoints.get(id);
                        json!({"container_id": id, "namespace": a.namespace, "pod": a.pod, "ip": a.ip.to_string(),
                               "ip6": self.ip6_of(a.ip).map(|ip| ip.to_string()), "host_ifname": a.host_ifname, "mac": a.mac, "port": ep.map(|e| e.port), "worker": ep.map(|e| e.worker)})
                    })
                    .collect(),
            ),
            "routes" => {
                let snap = self.dataplane.tables().load_full();
                let via = |t: &RouteTarget| match t {
                    RouteTarget::LocalPods => "local".to_string(),
                    RouteTarget::Node(i) => snap.nodes[*i as usize].name.clone(),
                    RouteTarget::Outside => "outside".to_string(),
                };
                let v4 = snap.routes.iter().map(|(p, t)| json!({"prefix": p.to_string(), "via": via(t)}));
                let v6 = snap.routes6.iter().map(|(p, t)| json!({"prefix": p.to_string(), "via": via(t)}));
                Value::Array(v4.chain(v6).collect())
            }
            "policies" => Value::Array(
                self.policy
                    .policies()
                    .values()
                    .map(|p| {
                        json!({"kind": p.kind.to_string(), "namespace": p.namespace, "name": p.name, "order": p.order,
                               "types": p.types.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>(),
                               "ingress_rules": p.ingress.len(), "egress_rules": p.egress.len()})
                    })
                    .collect(),
            ),
            _ => bail!("unknown kind {kind:?}; accepted: nodes, pods, routes, policies"),
        })
    }

    /// The Prometheus text exposition of the counters.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        for (w, c) in self.dataplane.counters().iter().enumerate() {
            for (k, v) in c.read() {
                out.push_str(&format!("twill_{k}{{worker=\"{w}\"}} {v}\n"));
            }
        }
        out
    }
}

/// Fingerprint of a manifest directory: names, sizes and modification times.
fn fingerprint(ds: &Datastore) -> Vec<(String, u64, SystemTime)> {
    let Datastore::Dir(dir) = ds;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), m.len(), m.modified().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// How often the manifest directory is looked at.
const DATASTORE_POLL: Duration = Duration::from_millis(20);

/// The control loop: watches the datastore (every 20 ms: a policy change must take effect
/// within 100 ms), the neighbour table (every 100 ms while a peer is unresolved, else every
/// second) and the data plane's Log rings, until `stop` is set.
pub fn control_loop(agent: &Arc<Mutex<Agent>>, stop: &std::sync::atomic::AtomicBool) {
    let ds = agent.lock().expect("agent lock").cfg.datastore.clone();
    let mut seen = fingerprint(&ds);
    let mut last_neigh = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(DATASTORE_POLL);
        let now = fingerprint(&ds);
        if now != seen {
            seen = now;
            agent.lock().expect("agent lock").reload();
        }
        let mut a = agent.lock().expect("agent lock");
        a.write_policy_logs();
        a.dataplane.sweep_flows();
        let every = if a.unresolved_peers() { Duration::from_millis(100) } else { Duration::from_secs(1) };
        if last_neigh.elapsed() >= every {
            last_neigh = Instant::now();
            a.refresh_neighbours(false);
        }
    }
}

/// Keeps the node's kernel from choosing its own ephemeral ports in the range the NAT of
/// pod traffic hands out (the uplink hook sends replies to those ports to the forwarder):
/// adds it to `net.ipv4.ip_local_reserved_ports`. Linux's default ephemeral range
/// (32768–60999) stays clear of it anyway; a widened one would not.
fn reserve_nat_ports() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let range = format!("{}-{}", forwarder::nat::PORTS.start(), forwarder::nat::PORTS.end());
    let current = std::fs::read_to_string(PATH).unwrap_or_default();
    if current.split(',').any(|r| r.trim() == range) {
        return;
    }
    let next = if current.trim().is_empty() { range.clone() } else { format!("{},{range}", current.trim()) };
    match std::fs::write(PATH, &next) {
        Ok(()) => tracing::info!(ports = %range, "reserved the NAT ports from the kernel's ephemeral ports"),
        Err(e) => tracing::warn!(error = %e, ports = %range, "cannot reserve the NAT ports; the kernel may pick them for its own connections"),
    }
}
