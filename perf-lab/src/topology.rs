//! The lab's cluster: an underlay namespace `tw-ul` with bridge `br0`, node namespaces
//! `tw-n{i}` (eth0 = 10.100.0.{10+i}/24, pod CIDR 10.244.{i}.0/24; dual stack: also
//! fd00:100::{10+i}/64 and fd00:10:244:{i}::/64), pod namespaces
//! `tw-n{i}-p{j}`, each node run by twill or wired as kernel Flannel (see
//! [`crate::kernel_flannel`]), mixed freely. [`Topology`] describes one; [`Lab`] is a running
//! one and the guard that tears it down. Its state is kept in `/run/twill-lab/lab.json`
//! after every step, so `twill-lab down` can clean up after a lab that failed halfway.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni_runtime::{self, CniCall};
use crate::{kernel_calico, kernel_flannel};
use crate::manifests::{self, CalicoNode, FlannelBackend, KernelNode, PodLabels};
use crate::netns::{self, ip};
pub use crate::teardown::down_all;
use crate::teardown::teardown;
use crate::twill_node::{self, AgentConfig, AgentFiles, Binaries};

pub const LAB_DIR: &str = "/run/twill-lab";
pub const UNDERLAY_NS: &str = "tw-ul";
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The Kubernetes namespace of every lab pod.
pub const POD_NAMESPACE: &str = "default";
/// Node addresses are 10.100.0.{10+i}: at most this many nodes.
pub const MAX_NODES: u32 = 200;

/// Which data plane runs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// `twill agent` + `twill-cni`.
    Twill,
    /// The kernel path flanneld's vxlan backend and the bridge plugin set up.
    KernelFlannel,
    /// The kernel path calico-node (VXLAN mode) and the Calico CNI plugin set up.
    KernelCalico,
    /// The I/O ceiling: twill's agent, sockets and workers with `--pipeline ceiling`
    /// (frames routed by destination, MACs rewritten, nothing else), plain frames on the
    /// underlay — what the machine's veths and AF_XDP move when the data plane costs
    /// nothing, for the performance lab to measure twill against.
    XdpCeiling,
}

impl Dataplane {
    /// A kernel data path (Flannel's or Calico's), wired by the lab itself.
    pub fn is_kernel(self) -> bool {
        matches!(self, Dataplane::KernelFlannel | Dataplane::KernelCalico)
    }

    /// A node run by `twill agent` (the data plane or its I/O ceiling), pods wired by
    /// `twill-cni`.
    pub fn runs_agent(self) -> bool {
        matches!(self, Dataplane::Twill | Dataplane::XdpCeiling)
    }
}

impl fmt::Display for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dataplane::Twill => "twill",
            Dataplane::XdpCeiling => "xdp-ceiling",
            Dataplane::KernelFlannel => "kernel-flannel",
            Dataplane::KernelCalico => "kernel-calico",
        })
    }
}

/// One node of a [`Topology`].
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec {
    pub dataplane: Dataplane,
    pub pods: u32,
    /// Underlay subnet: the node's address is 10.100.{subnet}.{10+i}/24; subnets reach
    /// each other through the lab's router.
    pub subnet: u8,
}

/// A cluster to build: nodes in order (node i is the i-th, 1-based), each with its data
/// plane and pod count.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<NodeSpec>,
    /// `--cores` for every agent; default: node i gets core (i-1) mod the core count.
    pub cores: Option<String>,
    /// `--encap` for every agent; default: the agent's.
    pub encap: Option<String>,
    /// `--idle` for every agent (spin, yield, adaptive, adaptive:SPIN[:NAP]); default: the agent's.
    pub idle: Option<String>,
    /// Leave what was built in place when `up` fails (for reading agent logs).
    pub keep_on_failure: bool,
    /// MTU of the underlay and every node's uplink; default 1500.
    pub uplink_mtu: Option<u32>,
    /// Routes to networks outside the cluster, via the lab's router, on every node but the
    /// xdp-ceiling ones: the agents' `--routes FILE`, the kernel nodes' FIB.
    pub routes: Option<PathBuf>,
    /// IPv6 pod subnets and addresses beside the IPv4 ones ([`Topology::dual_stack`]).
    pub dual_stack: bool,
    /// `--frames` (UMEM frames) for every agent; default: the agent's.
    pub frames: Option<u32>,
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// `nodes` nodes of one data plane with `pods_per_node` pods each.
    pub fn uniform(nodes: u32, pods_per_node: u32, dataplane: Dataplane) -> Self {
        (0..nodes).fold(Self::new(), |t, _| t.node(dataplane, pods_per_node))
    }

    /// Appends a node.
    pub fn node(mut self, dataplane: Dataplane, pods: u32) -> Self {
        self.nodes.push(NodeSpec { dataplane, pods, subnet: 0 });
        self
    }

    /// Appends a node in underlay subnet 10.100.`subnet`.0/24 (0..=3); nodes of different
    /// subnets reach each other through the lab's router (`tw-rt`).
    pub fn node_in_subnet(mut self, dataplane: Dataplane, pods: u32, subnet: u8) -> Self {
        self.nodes.push(NodeSpec { dataplane, pods, subnet });
        self
    }

    pub fn cores(mut self, cores: &str) -> Self {
        self.cores = Some(cores.to_owned());
        self
    }

    pub fn idle(mut self, idle: &str) -> Self {
        self.idle = Some(idle.to_owned());
        self
    }

    pub fn frames(mut self, frames: u32) -> Self {
        self.frames = Some(frames);
        self
    }

    pub fn encap(mut self, encap: &str) -> Self {
        self.encap = Some(encap.to_owned());
        self
    }

    pub fn keep_on_failure(mut self, keep: bool) -> Self {
        self.keep_on_failure = keep;
        self
    }

    /// Underlay and uplink MTU (jumbo frames: 9000).
    pub fn uplink_mtu(mut self, mtu: u32) -> Self {
        self.uplink_mtu = Some(mtu);
        self
    }

    /// Dual stack: every node gets an IPv6 underlay address (fd00:100:<subnet>::<10+i>/64)
    /// beside its IPv4 one; twill and kernel-calico nodes an IPv6 pod subnet
    /// (fd00:10:244:i::/64) as well, and their pods an IPv6 address beside the IPv4 one.
    /// IPv6 pod traffic then crosses the IPv6 underlay inside VXLAN (Calico's
    /// `vxlan-v6.calico`).
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    /// Outside routes (a file of IPv4 CIDRs, as `twill agent --routes` reads) on every node.
    pub fn routes(mut self, file: &Path) -> Self {
        self.routes = Some(file.to_owned());
        self
    }

    /// Builds the lab; see [`Lab::up`].
    pub fn up(&self) -> Result<Lab> {
        Lab::up(self)
    }
}

/// A running twill agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub files: AgentFiles,
    pub pid: u32,
    pub cores: String,
}

/// A node as built.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub index: u32,
    /// Kubernetes Node name `n{i}`.
    pub name: String,
    pub netns: String,
    pub dataplane: Dataplane,
    pub address: Ipv4Addr,
    /// The IPv6 underlay address of a node of a dual-stack lab (`fd00:100:<subnet>::<10+i>`).
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    pub pod_cidr: String,
    /// The IPv6 pod subnet of a dual-stack twill or kernel-calico node.
    #[serde(default)]
    pub pod_cidr6: Option<String>,
    /// The veth end in `tw-ul` attached to `br0`.
    pub underlay_link: String,
    /// flannel.1's MAC, or what the twill agent reports.
    pub vtep_mac: Option<String>,
    /// A dual-stack kernel-calico node's `vxlan-v6.calico` MAC (a twill node has one VTEP MAC).
    #[serde(default)]
    pub vtep_mac6: Option<String>,
    pub agent: Option<AgentState>,
    /// Pods created so far (the next one is `p{next_pod+1}`).
    pub pods_created: u32,
    /// Kernel nodes: peers whose route, neighbour and FDB entry are installed.
    #[serde(default, alias = "flannel_peers")]
    pub kernel_peers: Vec<String>,
}

/// A pod as built.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// Kubernetes Pod name `p{j}-n{i}`.
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub node_index: u32,
    pub index: u32,
    pub dataplane: Dataplane,
    pub netns: String,
    pub ifname: String,
    /// Known once ADD succeeded (twill: from the CNI result).
    pub ip: Option<Ipv4Addr>,
    /// A dual-stack pod's IPv6 address, from the CNI result.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// Twill pods: the CNI container id used for ADD and DEL.
    pub container_id: Option<String>,
    /// Twill pods: the CNI ADD result (DEL's prevResult).
    pub cni_result: Option<Value>,
    /// Kernel pods: the host end of the pod's veth (on cni0 for Flannel, `cali<j>` for Calico).
    pub host_veth: Option<String>,
    /// Labels beyond the lab's own and named container ports, as its manifest has them.
    #[serde(default)]
    pub extra: PodLabels,
}

impl PodState {
    pub fn ip(&self) -> Result<Ipv4Addr> {
        self.ip.ok_or_else(|| {
            anyhow!(
                "pod {} has no address (its CNI ADD did not complete)",
                self.name
            )
        })
    }
}

/// Everything `lab.json` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub cores: Option<String>,
    pub encap: Option<String>,
    #[serde(default)]
    pub idle: Option<String>,
    pub binaries: Option<Binaries>,
    /// MTU of every node's uplink and the underlay (default 1500).
    #[serde(default)]
    pub uplink_mtu: Option<u32>,
    /// The outside routes every node carries ([`Topology::routes`]).
    #[serde(default)]
    pub routes: Option<PathBuf>,
    /// Nodes have IPv6 underlay addresses, twill and kernel-calico pods IPv6 addresses
    /// ([`Topology::dual_stack`]).
    #[serde(default)]
    pub dual_stack: bool,
    /// `--frames` of every agent ([`Topology::frames`]).
    #[serde(default)]
    pub frames: Option<u32>,
}

impl LabState {
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

pub fn lab_dir() -> PathBuf {
    PathBuf::from(LAB_DIR)
}
pub fn lab_json() -> PathBuf {
    lab_dir().join("lab.json")
}
pub fn manifests_dir() -> PathBuf {
    lab_dir().join("manifests")
}

/// One lab per process at a time (the names are fixed); tests in one binary queue here.
static LAB_SERIAL: Mutex<()> = Mutex::new(());

/// The router between the underlay subnets, a namespace on the underlay bridge.
pub const ROUTER_NS: &str = "tw-rt";
/// Underlay subnets 10.100.0.0/24 .. 10.100.{ROUTER_SUBNETS-1}.0/24, routed by `tw-rt`.
pub const ROUTER_SUBNETS: u8 = 4;

/// An address of the world outside the cluster: the router answers on it (a /32 on its
/// loopback) and routes nothing back to the pods, so a pod reaches it only through NAT.
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Puts the routes of `file` (IPv4 CIDRs, one per line, as `twill agent --routes` reads
/// them) into the FIB of kernel node `ns`, via `gateway`, in one `ip -batch`.
fn install_kernel_routes(ns: &str, file: &Path, gateway: &str, dir: &Path) -> Result<()> {
    let text = policy_engine::dataset::read_text(file).map_err(anyhow::Error::msg)?;
    let mut batch = String::new();
    for (_, line) in policy_engine::dataset::content_lines(&text) {
        writeln!(batch, "route replace {line} via {gateway} dev eth0").expect("writing to a String");
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("routes.batch");
    std::fs::write(&path, batch)?;
    // A full table takes the kernel about half a minute per namespace.
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-n", ns, "-batch"]).arg(&path);
    let out = crate::process::run_timeout(&mut cmd, None, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!("installing the routes of {} in {ns}: `{}` failed ({}): {}", file.display(), crate::process::describe(&cmd), out.status, out.stderr.trim());
    }
    Ok(())
}

/// The router: one leg on the underlay bridge with the .1 address of every subnet, and
/// [`WORLD_IP`] standing for the outside world; every node's default gateway.
fn create_router(mtu: u32) -> Result<()> {
    netns::add(ROUTER_NS)?;
    let mtu = mtu.to_string();
    ip(UNDERLAY_NS, &["link", "add", "tw-rt", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu, "netns", ROUTER_NS])?;
    ip(UNDERLAY_NS, &["link", "set", "tw-rt", "master", UNDERLAY_BRIDGE, "up"])?;
    for s in 0..ROUTER_SUBNETS {
        ip(ROUTER_NS, &["addr", "add", &format!("10.100.{s}.1/24"), "dev", "eth0"])?;
    }
    ip(ROUTER_NS, &["link", "set", "eth0", "up"])?;
    ip(ROUTER_NS, &["addr", "add", &format!("{WORLD_IP}/32"), "dev", "lo"])?;
    // The world's TCP and UDP leave with whole checksums, as from a host behind a real
    // NIC (NAT's incremental update cannot complete the kernel's partial offload sum).
    kernel_flannel::finish_checksums_on_uplink(ROUTER_NS)?;
    netns::sysctl(ROUTER_NS, "net.ipv4.ip_forward", "1")?;
    // Routing back out of the interface a packet came in on is the router's job here.
    netns::sysctl(ROUTER_NS, "net.ipv4.conf.all.send_redirects", "0")?;
    netns::sysctl(ROUTER_NS, "net.ipv4.conf.eth0.send_redirects", "0")
}

/// A running lab. Dropping it tears it down (agents, CNI DEL, namespaces, /run/twill-lab)
/// unless [`Lab::detach`] was called or it came from [`Lab::attach`].
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    teardown_on_drop: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds `topo`: underlay, nodes (agents started and ready, Flannel peers installed),
    /// then pods. Fails if a lab is already up. On failure everything built is torn down
    /// (unless `topo.keep_on_failure`).
    pub fn up(topo: &Topology) -> Result<Lab> {
        netns::require_root()?;
        anyhow::ensure!(!topo.nodes.is_empty(), "a lab needs at least one node");
        anyhow::ensure!(
            topo.nodes.len() as u32 <= MAX_NODES,
            "at most {MAX_NODES} nodes"
        );
        let serial = LAB_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if lab_json().exists() {
            bail!(
                "a lab is already up ({} exists); run `twill-lab down` first",
                lab_json().display()
            );
        }
        let stale = netns::list_lab();
        if !stale.is_empty() {
            bail!(
                "lab namespaces already exist ({}); run `twill-lab down` first",
                stale.join(", ")
            );
        }
        let binaries = if topo.nodes.iter().any(|n| n.dataplane.runs_agent()) {
            Some(Binaries::locate()?)
        } else {
            None
        };
        let mut lab = Lab {
            state: LabState {
                cores: topo.cores.clone(),
                encap: topo.encap.clone(),
                idle: topo.idle.clone(),
                uplink_mtu: topo.uplink_mtu,
                routes: topo.routes.clone(),
                dual_stack: topo.dual_stack,
                frames: topo.frames,
                binaries,
                ..Default::default()
            },
            teardown_on_drop: true,
            _serial: serial,
        };
        if let Err(e) = lab.build(topo) {
            if topo.keep_on_failure {
                lab.teardown_on_drop = false;
                eprintln!(
                    "twill-lab: up failed; keeping the lab for inspection (`twill-lab down` removes it)"
                );
            }
            return Err(e);
        }
        Ok(lab)
    }

    fn build(&mut self, topo: &Topology) -> Result<()> {
        std::fs::create_dir_all(manifests_dir())
            .with_context(|| format!("creating {}", manifests_dir().display()))?;
        self.persist()?;
        netns::add(UNDERLAY_NS)?;
        ip(
            UNDERLAY_NS,
            &["link", "add", UNDERLAY_BRIDGE, "type", "bridge"],
        )?;
        ip(UNDERLAY_NS, &["link", "set", UNDERLAY_BRIDGE, "up"])?;
        create_router(self.state.uplink_mtu.unwrap_or(1500))?;
        manifests::write(
            &manifests_dir(),
            &manifests::namespace_file(POD_NAMESPACE),
            &manifests::namespace(POD_NAMESPACE)?,
        )?;
        manifests::write(&manifests_dir(), manifests::POOL_FILE, &manifests::ip_pool(self.state.encap.as_deref())?)?;
        if self.state.dual_stack {
            manifests::write(&manifests_dir(), manifests::POOL6_FILE, &manifests::ip_pool6(self.state.encap.as_deref(), None)?)?;
        }
        let mut created = Vec::new();
        for spec in &topo.nodes {
            created.push(self.create_node(spec.dataplane, spec.subnet)?);
        }
        self.finish_nodes(&created)?;
        for (idx, spec) in created.iter().zip(&topo.nodes) {
            for _ in 0..spec.pods {
                self.add_pod(*idx)?;
            }
        }
        Ok(())
    }

    /// The lab `twill-lab up` left running, from lab.json. Dropping it leaves the lab up.
    pub fn attach() -> Result<Lab> {
        netns::require_root()?;
        let serial = LAB_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let state = load_state()?.ok_or_else(|| {
            anyhow!(
                "no lab is up ({} not found); run `twill-lab up`",
                lab_json().display()
            )
        })?;
        Ok(Lab {
            state,
            teardown_on_drop: false,
            _serial: serial,
        })
    }

    /// Leaves the lab running after this value is gone (for `twill-lab up`).
    pub fn detach(mut self) {
        self.teardown_on_drop = false;
    }

    /// Tears the lab down now, reporting what could not be cleaned.
    pub fn down(mut self) -> Result<()> {
        self.teardown_on_drop = false;
        teardown(Some(&self.state))
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }
    pub fn nodes(&self) -> &[NodeState] {
        &self.state.nodes
    }
    pub fn pods(&self) -> &[PodState] {
        &self.state.pods
    }
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.state.node(name)
    }
    pub fn pod(&self, name: &str) -> Option<&PodState> {
        self.state.pods.iter().find(|p| p.name == name)
    }
    /// The pods of node `n{index}`.
    pub fn pods_on(&self, index: u32) -> impl Iterator<Item = &PodState> {
        self.state
            .pods
            .iter()
            .filter(move |p| p.node_index == index)
    }

    /// Adds a node (and `pods` pods on it) to the running lab; Flannel nodes learn it at once,
    /// twill agents from its Node manifest. Returns its index.
    pub fn add_node(&mut self, dataplane: Dataplane, pods: u32) -> Result<u32> {
        if dataplane.runs_agent() && self.state.binaries.is_none() {
            self.state.binaries = Some(Binaries::locate()?);
        }
        let idx = self.create_node(dataplane, 0)?;
        self.finish_nodes(&[idx])?;
        for _ in 0..pods {
            self.add_pod(idx)?;
        }
        Ok(idx)
    }

    /// Waits until every twill agent of the lab holds `policies` compiled policies.
    pub fn wait_for_policies(&self, policies: u64, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let counts: Vec<u64> = self
                .nodes()
                .iter()
                .filter(|n| n.agent.is_some())
                .map(|n| self.agent_stats(&n.name).map(|v| v["stats"]["policies"].as_u64().unwrap_or(0)))
                .collect::<Result<_>>()?;
            if counts.iter().all(|c| *c == policies) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the agents hold {counts:?} policies after {timeout:?}, {policies} expected");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `{"op":"stats"}` answered by the agent of twill node `name`.
    pub fn agent_stats(&self, name: &str) -> Result<Value> {
        let n = self
            .node(name)
            .ok_or_else(|| anyhow!("no node {name} in the lab"))?;
        let a = n
            .agent
            .as_ref()
            .ok_or_else(|| anyhow!("node {name} runs {}, not a twill agent", n.dataplane))?;
        twill_node::request(
            &a.files.socket,
            &serde_json::json!({"op": "stats"}),
            Duration::from_secs(5),
        )
    }

    fn persist(&self) -> Result<()> {
        let path = lab_json();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.state)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn node_mut(&mut self, index: u32) -> &mut NodeState {
        self.state
            .nodes
            .iter_mut()
            .find(|n| n.index == index)
            .expect("node index from this lab")
    }

    fn create_node(&mut self, dataplane: Dataplane, subnet: u8) -> Result<u32> {
        let i = self.state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        anyhow::ensure!(i <= MAX_NODES, "at most {MAX_NODES} nodes");
        anyhow::ensure!(subnet < ROUTER_SUBNETS, "underlay subnets are 0..{ROUTER_SUBNETS}");
        let node = NodeState {
            index: i,
            name: format!("n{i}"),
            netns: format!("tw-n{i}"),
            dataplane,
            address: Ipv4Addr::new(10, 100, subnet, (10 + i) as u8),
            address6: self.state.dual_stack.then(|| Ipv6Addr::new(0xfd00, 0x100, u16::from(subnet), 0, 0, 0, 0, (10 + i) as u16)),
            pod_cidr: format!("10.244.{i}.0/24"),
            pod_cidr6: (self.state.dual_stack && matches!(dataplane, Dataplane::Twill | Dataplane::KernelCalico)).then(|| format!("fd00:10:244:{i}::/64")),
            underlay_link: format!("tw-n{i}"),
            vtep_mac: None,
            vtep_mac6: None,
            agent: None,
            pods_created: 0,
            kernel_peers: Vec::new(),
        };
        self.state.nodes.push(node.clone());
        self.persist()?;
        let ns = node.netns.as_str();
        netns::add(ns)?;
        // One queue per CPU on each end, so an agent may run one worker per core (each
        // worker binds its own uplink queue).
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        ip(
            UNDERLAY_NS,
            &[
                "link", "add", &node.underlay_link, "numtxqueues", &queues, "numrxqueues", &queues,
                "type", "veth", "peer", "name", "eth0", "numtxqueues", &queues, "numrxqueues",
                &queues, "netns", ns,
            ],
        )?;
        ip(
            UNDERLAY_NS,
            &[
                "link",
                "set",
                &node.underlay_link,
                "master",
                UNDERLAY_BRIDGE,
                "up",
            ],
        )?;
        let mtu = self.state.uplink_mtu.unwrap_or(1500).to_string();
        ip(ns, &["link", "set", "eth0", "mtu", &mtu])?;
        ip(UNDERLAY_NS, &["link", "set", &node.underlay_link, "mtu", &mtu])?;
        ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "eth0",
            ],
        )?;
        if let Some(a6) = node.address6 {
            // The IPv6 underlay: one /64 per subnet on the same bridge (no router between
            // them); no duplicate address detection to wait for.
            ip(ns, &["addr", "add", &format!("{a6}/64"), "dev", "eth0", "nodad"])?;
        }
        ip(ns, &["link", "set", "eth0", "up"])?;
        // Other subnets and the world outside through the lab's router (its address in
        // this node's subnet).
        ip(ns, &["route", "add", "default", "via", &format!("10.100.{subnet}.1")])?;
        if let Some(file) = self.state.routes.clone().filter(|_| dataplane.is_kernel()) {
            install_kernel_routes(ns, &file, &format!("10.100.{subnet}.1"), &lab_dir().join(&node.name))?;
        }
        netns::sysctl(ns, "net.ipv4.ip_forward", "1")?;
        let mdir = manifests_dir();
        match dataplane {
            Dataplane::KernelFlannel => {
                let mac = kernel_flannel::setup_node(ns, node.address, &node.pod_cidr, self.kernel_pod_mtu())
                    .with_context(|| format!("wiring node {} as kernel Flannel", node.name))?;
                let fb = KernelNode::Flannel(FlannelBackend { vtep_mac: mac.clone(), public_ip: node.address });
                let y = manifests::node(&node.name, (&node.pod_cidr, None), (node.address, None), Some(&fb))?;
                manifests::write(&mdir, &manifests::node_file(&node.name), &y)?;
                self.node_mut(i).vtep_mac = Some(mac);
            }
            Dataplane::KernelCalico => {
                let mtu = self.kernel_pod_mtu();
                let wire = || -> Result<(String, Option<String>)> {
                    let mac = kernel_calico::setup_node(ns, node.address, &node.pod_cidr, mtu)?;
                    let mac6 = match (node.address6, &node.pod_cidr6) {
                        (Some(a6), Some(c6)) => Some(kernel_calico::setup_node6(ns, a6, c6, mtu)?),
                        _ => None,
                    };
                    Ok((mac, mac6))
                };
                let (mac, mac6) = wire().with_context(|| format!("wiring node {} as kernel Calico", node.name))?;
                let id = KernelNode::Calico(CalicoNode {
                    vtep_mac: mac.clone(),
                    address: format!("{}/24", node.address),
                    vxlan_tunnel_addr: kernel_calico::tunnel_addr(&node.pod_cidr)?,
                    v6: node.address6.zip(mac6.clone()).map(|(a6, m)| (format!("{a6}/64"), m)),
                });
                let y = manifests::node(&node.name, (&node.pod_cidr, node.pod_cidr6.as_deref()), (node.address, node.address6), Some(&id))?;
                manifests::write(&mdir, &manifests::node_file(&node.name), &y)?;
                self.node_mut(i).vtep_mac = Some(mac);
                self.node_mut(i).vtep_mac6 = mac6;
            }
            Dataplane::Twill | Dataplane::XdpCeiling => {
                let y = manifests::node(&node.name, (&node.pod_cidr, node.pod_cidr6.as_deref()), (node.address, node.address6), None)?;
                manifests::write(&mdir, &manifests::node_file(&node.name), &y)?;
                let bins = self
                    .state
                    .binaries
                    .clone()
                    .ok_or_else(|| anyhow!("twill binaries not located"))?;
                let cores = self.state.cores.clone().unwrap_or_else(|| default_core(i));
                let files = AgentFiles::new(lab_dir().join(&node.name));
                let cfg = AgentConfig {
                    manifests: &mdir,
                    node: &node.name,
                    cores: &cores,
                    encap: self.state.encap.as_deref(),
                    idle: self.state.idle.as_deref(),
                    frames: self.state.frames,
                    pipeline: (dataplane == Dataplane::XdpCeiling).then_some("ceiling"),
                    routes: self.state.routes.as_deref().filter(|_| dataplane == Dataplane::Twill),
                };
                let pid = twill_node::start_agent(&bins, ns, &files, &cfg)?;
                self.node_mut(i).agent = Some(AgentState { files, pid, cores });
            }
        }
        self.persist()?;
        Ok(i)
    }

    /// Waits for new agents, learns their VTEP MACs, installs Flannel peers everywhere.
    fn finish_nodes(&mut self, created: &[u32]) -> Result<()> {
        let twill: Vec<NodeState> = created
            .iter()
            .filter_map(|i| {
                self.state
                    .nodes
                    .iter()
                    .find(|n| n.index == *i && n.dataplane.runs_agent())
            })
            .cloned()
            .collect();
        for n in &twill {
            let a = n.agent.as_ref().expect("twill node has an agent");
            twill_node::wait_ready(&n.name, a.pid, &a.files, twill_node::READY_TIMEOUT)?;
        }
        for n in &twill {
            let a = n.agent.as_ref().expect("twill node has an agent");
            let bins = self
                .state
                .binaries
                .as_ref()
                .expect("binaries located for twill nodes");
            let mac =
                twill_node::wait_vtep_mac(bins, &a.files.socket, &n.name, Duration::from_secs(10))
                    .with_context(|| {
                        format!(
                            "agent log tail ({}):\n{}",
                            a.files.log.display(),
                            twill_node::log_tail(&a.files.log, 20)
                        )
                    })?;
            self.node_mut(n.index).vtep_mac = Some(mac);
        }
        self.persist()?;
        self.sync_kernel_peers()
    }

    /// For every kernel node, installs each other node it does not know yet, as flanneld
    /// or Felix would.
    fn sync_kernel_peers(&mut self) -> Result<()> {
        let all = self.state.nodes.clone();
        for f in all.iter().filter(|n| n.dataplane.is_kernel()) {
            for k in all
                .iter()
                .filter(|k| k.index != f.index && !f.kernel_peers.contains(&k.name))
            {
                let vtep_mac = k
                    .vtep_mac
                    .clone()
                    .ok_or_else(|| anyhow!("node {} has no VTEP MAC yet", k.name))?;
                let peer = kernel_flannel::Peer {
                    pod_cidr: k.pod_cidr.clone(),
                    node_ip: k.address,
                    vtep_mac,
                };
                let added = match f.dataplane {
                    Dataplane::KernelCalico => kernel_calico::add_peer(&f.netns, &peer),
                    _ => kernel_flannel::add_peer(&f.netns, &peer),
                };
                added.with_context(|| format!("installing peer {} on {} node {}", k.name, f.dataplane, f.name))?;
                // Felix's IPv6 VXLAN manager, when both ends have an IPv6 underlay.
                if let (Dataplane::KernelCalico, Some(_), Some(node_ip6), Some(pod_cidr6)) = (f.dataplane, f.address6, k.address6, &k.pod_cidr6) {
                    let vtep_mac = k.vtep_mac6.clone().unwrap_or(peer.vtep_mac.clone());
                    kernel_calico::add_peer6(&f.netns, &kernel_flannel::Peer { pod_cidr: pod_cidr6.clone(), node_ip: node_ip6, vtep_mac })
                        .with_context(|| format!("installing IPv6 peer {} on {} node {}", k.name, f.dataplane, f.name))?;
                }
                if k.dataplane.runs_agent() {
                    kernel_flannel::finish_checksums_on_uplink(&f.netns)?;
                }
                self.node_mut(f.index).kernel_peers.push(k.name.clone());
                self.persist()?;
            }
        }
        Ok(())
    }

    /// The pod MTU of the kernel paths: the uplink's less VXLAN's 50 bytes (70 over an IPv6
    /// underlay, in a dual-stack lab), as flanneld and calico-node set it.
    fn kernel_pod_mtu(&self) -> u32 {
        let overhead = if self.state.dual_stack { kernel_calico::VXLAN6_OVERHEAD } else { kernel_flannel::VXLAN_OVERHEAD };
        self.state.uplink_mtu.unwrap_or(1500) - overhead
    }

    /// Adds a pod on node `n{index}` in namespace `default`; returns its name.
    pub fn add_pod(&mut self, index: u32) -> Result<String> {
        self.add_pod_in(index, POD_NAMESPACE, &PodLabels::default())
    }

    /// Writes (or rewrites) a Namespace manifest with `labels`.
    pub fn add_namespace(&mut self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> Result<()> {
        manifests::write(&manifests_dir(), &manifests::namespace_file(name), &manifests::labelled_namespace(name, labels)?)
    }

    /// Writes a manifest file of the user's (a policy, say) into the directory the agents
    /// watch; a file of that name is replaced whole.
    pub fn apply_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        manifests::write(&manifests_dir(), file, yaml)
    }

    /// Removes a manifest written by [`Lab::apply_manifest`].
    pub fn delete_manifest(&self, file: &str) -> Result<()> {
        let path = manifests_dir().join(file);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// Adds a pod on node `n{index}` in `namespace` with `extra` labels and named ports;
    /// returns its name.
    pub fn add_pod_in(&mut self, index: u32, namespace: &str, extra: &PodLabels) -> Result<String> {
        let node = self
            .state
            .nodes
            .iter()
            .find(|n| n.index == index)
            .cloned()
            .ok_or_else(|| anyhow!("no node n{index}"))?;
        let j = node.pods_created + 1;
        anyhow::ensure!(j <= 250, "at most 250 pods per node");
        self.node_mut(index).pods_created = j;
        let name = format!("p{j}-n{index}");
        let pod_ns = format!("tw-n{index}-p{j}");
        let twill = node.dataplane.runs_agent();
        self.state.pods.push(PodState {
            name: name.clone(),
            namespace: namespace.to_owned(),
            node: node.name.clone(),
            node_index: index,
            index: j,
            dataplane: node.dataplane,
            netns: pod_ns.clone(),
            ifname: "eth0".to_owned(),
            ip: None,
            ip6: None,
            container_id: twill.then(|| format!("n{index}-p{j}-{}", random_hex(8))),
            cni_result: None,
            host_veth: match node.dataplane {
                Dataplane::Twill | Dataplane::XdpCeiling => None,
                Dataplane::KernelFlannel => Some(format!("tw-p{j}")),
                Dataplane::KernelCalico => Some(format!("cali{j}")),
            },
            extra: extra.clone(),
        });
        self.persist()?;
        netns::add(&pod_ns)?;
        let mdir = manifests_dir();
        let pod_file = manifests::pod_file(namespace, &name);
        manifests::write(
            &mdir,
            &pod_file,
            &manifests::labelled_pod(&name, namespace, &node.name, node.address, None, None, extra)?,
        )?;
        let pod = self.state.pods.last().cloned().expect("pod just pushed");
        let (ip, ip6, result) = if twill {
            let added = cni_runtime::add(&self.cni_call(&pod)?)?;
            (added.ip, added.ip6, Some(added.result))
        } else {
            let host = pod
                .host_veth
                .as_deref()
                .expect("flannel pod has a host veth");
            let mtu = self.kernel_pod_mtu();
            let wired = match node.dataplane {
                Dataplane::KernelCalico => kernel_calico::add_pod(&node.netns, (&node.pod_cidr, node.pod_cidr6.as_deref()), &pod_ns, (j, mtu), host),
                _ => kernel_flannel::add_pod(&node.netns, &node.pod_cidr, &pod_ns, (j, mtu), host).map(|ip| (ip, None)),
            };
            let (ip, ip6) = wired.with_context(|| format!("wiring pod {name} on {} node {}", node.dataplane, node.name))?;
            (ip, ip6, None)
        };
        let p = self
            .state
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .expect("pod just pushed");
        p.ip = Some(ip);
        p.ip6 = ip6;
        p.cni_result = result;
        manifests::write(
            &mdir,
            &pod_file,
            &manifests::labelled_pod(&name, namespace, &node.name, node.address, Some(ip), ip6, extra)?,
        )?;
        self.persist()?;
        Ok(name)
    }

    /// Removes pod `name` as the kubelet would: CNI DEL (twill pods), its manifest, its
    /// namespace (which takes its veth, and a kernel node's /32 route through it, along).
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let pod = self.pod(name).cloned().ok_or_else(|| anyhow!("no pod {name} in the lab"))?;
        if pod.dataplane.runs_agent() {
            cni_runtime::del(&self.cni_call(&pod)?, pod.cni_result.as_ref()).with_context(|| format!("CNI DEL of pod {name}"))?;
        }
        let file = manifests_dir().join(manifests::pod_file(&pod.namespace, name));
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        netns::delete(&pod.netns)?;
        self.state.pods.retain(|p| p.name != name);
        self.persist()
    }

    fn cni_call<'a>(&'a self, pod: &'a PodState) -> Result<CniCall<'a>> {
        cni_call(&self.state, pod)
    }
}

pub(crate) fn cni_call<'a>(state: &'a LabState, pod: &'a PodState) -> Result<CniCall<'a>> {
    let bins = state
        .binaries
        .as_ref()
        .ok_or_else(|| anyhow!("twill binaries not located"))?;
    let node = state
        .node(&pod.node)
        .ok_or_else(|| anyhow!("pod {} is on unknown node {}", pod.name, pod.node))?;
    let agent = node
        .agent
        .as_ref()
        .ok_or_else(|| anyhow!("node {} has no agent", node.name))?;
    Ok(CniCall {
        plugin: &bins.cni,
        cni_path: bins.cni_dir(),
        node_ns: &node.netns,
        socket: &agent.files.socket,
        container_id: pod
            .container_id
            .as_deref()
            .ok_or_else(|| anyhow!("pod {} has no container id", pod.name))?,
        netns: netns::path(&pod.netns),
        ifname: &pod.ifname,
        pod_namespace: &pod.namespace,
        pod_name: &pod.name,
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.teardown_on_drop {
            return;
        }
        if let Err(e) = teardown(Some(&self.state)) {
            eprintln!("twill-lab: tearing the lab down: {e:#}");
        }
    }
}

fn default_core(i: u32) -> String {
    let n = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    ((i - 1) % n).to_string()
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    s
}

/// lab.json, if a lab was (at least partly) built.
pub fn load_state() -> Result<Option<LabState>> {
    let path = lab_json();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_builder_agree() {
        let a = Topology::uniform(2, 3, Dataplane::Twill);
        let b = Topology::new()
            .node(Dataplane::Twill, 3)
            .node(Dataplane::Twill, 3);
        assert_eq!(format!("{:?}", a.nodes), format!("{:?}", b.nodes));
    }

    #[test]
    fn dataplane_names() {
        assert_eq!(
            serde_json::to_string(&Dataplane::KernelFlannel).unwrap(),
            "\"kernel-flannel\""
        );
        assert_eq!(Dataplane::Twill.to_string(), "twill");
        assert_eq!(serde_json::to_string(&Dataplane::XdpCeiling).unwrap(), "\"xdp-ceiling\"");
        assert_eq!(Dataplane::XdpCeiling.to_string(), "xdp-ceiling");
    }

    #[test]
    fn random_hex_has_length() {
        let h = random_hex(8);
        assert_eq!(h.len(), 8);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
