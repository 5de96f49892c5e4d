//! `twill`: the node agent and the command line (see ARCHITECTURE.md, "CLI contracts").

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use control::{
    agent::{Agent, AgentConfig, Datastore},
    cluster,
    policy_cli::{self, Engine, ExplainQuery},
    server,
};
use forwarder::{port::CopyMode, worker::IdleStrategy, xdp_hook::AttachMode};
use serde_json::json;

const DEFAULT_SOCKET: &str = "/run/twill/twill.sock";

#[derive(Parser)]
#[command(name = "twill", version, about = "twill: a Kubernetes pod network with an AF_XDP data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent and its data plane.
    Agent(AgentArgs),
    /// Print the data plane's counters.
    Stats {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List nodes, pods or routes as the agent sees them.
    Get {
        /// nodes | pods | routes | policies
        kind: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Explain and test network policy with the data plane's compiled classifier.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate manifests and write them to the datastore.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long, value_parser = parse_datastore)]
        datastore: Datastore,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// The verdict on a connection, and the policy and rule that decided it.
    Explain {
        /// A directory of manifests: Namespaces, Pods (labels, status.podIP, container
        /// ports), NetworkPolicies of both dialects.
        #[arg(long, conflicts_with = "datastore", required_unless_present = "datastore")]
        state: Option<PathBuf>,
        /// dir:PATH, as for the agent.
        #[arg(long, value_parser = parse_datastore)]
        datastore: Option<Datastore>,
        /// NAMESPACE/POD or an IP address (an IPv6 address on either side asks about IPv6,
        /// and a pod on the other side is taken at its IPv6 address).
        #[arg(long)]
        from: String,
        /// NAMESPACE/POD or an IP address.
        #[arg(long)]
        to: String,
        /// TCP | UDP | SCTP | ICMP | a protocol number.
        #[arg(long, value_parser = policy_cli::parse_protocol)]
        proto: u8,
        /// Destination port (for ICMP: the ICMP type; 8 = echo request).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Source port.
        #[arg(long, default_value_t = policy_cli::DEFAULT_SRC_PORT)]
        src_port: u16,
        /// ICMP code.
        #[arg(long, default_value_t = 0)]
        icmp_code: u8,
        #[arg(long)]
        json: bool,
    },
    /// Classify a ClassBench trace against one GlobalNetworkPolicy's ingress rules: one
    /// line per header, the 1-based index of the first matching rule or 0.
    Classify {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        /// compiled (the data plane's classifier) | reference (the slow evaluator)
        #[arg(long, default_value = "compiled", value_parser = parse_engine)]
        engine: Engine,
        /// Print only a summary: counts per action, compile time, lookups per second.
        #[arg(long)]
        json: bool,
    },
    /// Turn a ClassBench rule file into a GlobalNetworkPolicy (YAML on stdout).
    FromClassbench {
        /// The rule file (plain or .gz).
        file: PathBuf,
        #[arg(long, default_value = "classbench")]
        name: String,
    },
}

fn parse_engine(s: &str) -> Result<Engine, String> {
    match s {
        "compiled" => Ok(Engine::Compiled),
        "reference" => Ok(Engine::Reference),
        _ => Err(format!("{s:?}: accepted engines are compiled, reference")),
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// dir:PATH (a directory of Kubernetes manifests, watched)
    #[arg(long, value_parser = parse_datastore)]
    datastore: Datastore,
    /// This node's name (its Node manifest).
    #[arg(long)]
    node: String,
    /// The underlay interface.
    #[arg(long)]
    uplink: String,
    /// Cores for the workers, one worker each: "0", "0,1", "0-3".
    #[arg(long, value_parser = parse_cores)]
    cores: CoreList,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where IPAM state is kept.
    #[arg(long, default_value = "/var/lib/twill")]
    state_dir: PathBuf,
    /// vxlan-flannel | vxlan-flannel-direct-routing | vxlan-calico | ipip | direct |
    /// cross-subnet | ipip-cross-subnet: the VXLAN spoken, and how nodes no IP pool covers
    /// are reached (pools override it).
    #[arg(long, default_value = "vxlan-flannel", value_parser = control::pool::parse_encap)]
    encap: control::pool::DefaultEncap,
    /// Frames per RX batch (1..=256).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// spin | yield | adaptive[:SPIN[:NAP]] — adaptive workers spin SPIN microseconds
    /// without work (default 5), nap NAP microseconds between turns while frames came within
    /// the last millisecond (default 50; 0: never), then sleep in poll(2) for at most 1 ms;
    /// spin never sleeps; yield never sleeps but gives the core to any other runnable
    /// thread after an empty turn.
    #[arg(long, default_value = "adaptive", value_parser = parse_idle)]
    idle: IdleStrategy,
    /// native | generic XDP attach mode.
    #[arg(long, default_value = "native", value_parser = parse_attach)]
    xdp_mode: AttachMode,
    /// auto | copy | zero-copy AF_XDP binding.
    #[arg(long, default_value = "auto", value_parser = parse_copy)]
    copy_mode: CopyMode,
    /// UMEM frames (4 KB each) for the node: 65,536 (256 MiB) keeps full 8,192-frame fill
    /// rings on up to 5 uplink queues per worker; fewer frames shrink them.
    #[arg(long, default_value_t = 65536)]
    frames: u32,
    /// Connections the node's tracker holds at most (17 bytes each); new connections
    /// beyond it are dropped and counted (drop_conntrack_full).
    #[arg(long, default_value_t = 262_144)]
    conntrack_flows: usize,
    /// IPv6 connections the node's tracker holds at most (dual stack; 130 bytes each).
    #[arg(long, default_value_t = 65_536)]
    conntrack6_flows: usize,
    /// full | ceiling: the data plane, or (for the lab's xdp-ceiling measurement only)
    /// frames routed by destination with MACs rewritten and nothing else.
    #[arg(long, default_value = "full", value_parser = parse_pipeline)]
    pipeline: forwarder::pipeline::Mode,
    /// Networks outside the cluster, reached through the uplink's default gateway: a file
    /// of IPv4 CIDRs, one per line (# comments; .gz read as gzip; a full BGP table is fine).
    /// Pods send there with their own address, or the node's if their pool has natOutgoing.
    #[arg(long)]
    routes: Option<PathBuf>,
    /// idle | normal: the scheduling class of the control thread and the API — idle (the
    /// kernel's SCHED_IDLE: control work runs only on CPU time the workers leave, so a
    /// policy recompile never stalls a worker sharing its core) or the default class.
    #[arg(long, default_value = "idle", value_parser = ["idle", "normal"])]
    control_sched: String,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9641).
    #[arg(long)]
    metrics: Option<String>,
}

fn parse_datastore(s: &str) -> Result<Datastore, String> {
    s.parse()
}

/// The cores of `--cores`.
#[derive(Clone)]
struct CoreList(Vec<usize>);

fn parse_cores(s: &str) -> Result<CoreList, String> {
    let bad = || format!("{s:?} is not a core list; accepted: 0 | 0,1 | 0-3 | 0,2-3");
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    out.dedup();
    Ok(CoreList(out))
}

fn parse_idle(s: &str) -> Result<IdleStrategy, String> {
    let accepted = || {
        format!(
            "{s:?}: accepted idle strategies are spin, yield, adaptive, adaptive:SPIN, adaptive:SPIN:NAP \
             (microseconds, 0..=1000 each: spinning before a nap, napping while traffic flows)"
        )
    };
    let micros = |v: &str| match v.parse::<u64>() {
        Ok(us @ 0..=1000) => Ok(std::time::Duration::from_micros(us)),
        _ => Err(accepted()),
    };
    let mut parts = s.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("spin"), None, ..) => Ok(IdleStrategy::Spin),
        (Some("yield"), None, ..) => Ok(IdleStrategy::Yield),
        (Some("adaptive"), None, ..) => Ok(IdleStrategy::ADAPTIVE),
        (Some("adaptive"), Some(spin), None, _) => Ok(IdleStrategy::Adaptive { spin: micros(spin)?, nap: IdleStrategy::DEFAULT_NAP }),
        (Some("adaptive"), Some(spin), Some(nap), None) => Ok(IdleStrategy::Adaptive { spin: micros(spin)?, nap: micros(nap)? }),
        _ => Err(accepted()),
    }
}

fn parse_pipeline(s: &str) -> Result<forwarder::pipeline::Mode, String> {
    match s {
        "full" => Ok(forwarder::pipeline::Mode::Full),
        "ceiling" => Ok(forwarder::pipeline::Mode::Ceiling),
        _ => Err(format!("{s:?}: accepted pipelines are full, ceiling (the lab's I/O ceiling, no checks at all)")),
    }
}

fn parse_attach(s: &str) -> Result<AttachMode, String> {
    match s {
        "native" => Ok(AttachMode::Native),
        "generic" => Ok(AttachMode::Generic),
        _ => Err(format!("{s:?}: accepted XDP modes are native, generic")),
    }
}

fn parse_copy(s: &str) -> Result<CopyMode, String> {
    match s {
        "auto" => Ok(CopyMode::Auto),
        "copy" => Ok(CopyMode::Copy),
        "zero-copy" => Ok(CopyMode::ZeroCopy),
        _ => Err(format!("{s:?}: accepted copy modes are auto, copy, zero-copy")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Agent(args) => run_agent(args),
        Command::Stats { socket, json } => {
            let v = server::request(&socket, &json!({"op": "stats"}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(stats) = v["stats"].as_object() {
                for (k, val) in stats {
                    println!("{k:<28} {val}");
                }
            }
            Ok(())
        }
        Command::Get { kind, socket, json } => {
            let v = server::request(&socket, &json!({"op": "get", "kind": kind}))?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print_table(&kind, &items);
            }
            Ok(())
        }
        Command::Apply { file, datastore } => apply(&file, &datastore),
        Command::Policy { command } => policy(command),
    }
}

fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Explain { state, datastore, from, to, proto, port, src_port, icmp_code, json } => {
            let dir = match (state, datastore) {
                (Some(d), _) | (None, Some(Datastore::Dir(d))) => d,
                (None, None) => anyhow::bail!("give --state DIR or --datastore dir:PATH"),
            };
            let cluster = cluster::read_dir(&dir)?;
            let q = ExplainQuery { from, to, protocol: proto, port, src_port, icmp_code };
            let (d, v) = policy_cli::explain(&cluster, &q)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", policy_cli::explain_text(&d, &v));
            }
        }
        PolicyCommand::Classify { policy, trace, engine, json } => {
            let (answers, summary) = policy_cli::classify(&policy, &trace, engine)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for a in answers {
                    writeln!(out, "{a}")?;
                }
            }
        }
        PolicyCommand::FromClassbench { file, name } => print!("{}", policy_cli::from_classbench(&file, &name)?),
    }
    Ok(())
}

fn print_table(kind: &str, items: &[serde_json::Value]) {
    let cols: &[&str] = match kind {
        "nodes" => &["name", "pod_cidr", "pod_cidr6", "address", "address6", "vtep_mac", "vtep_mac_source", "next_hop_mac", "tunnel", "tunnel6"],
        "pods" => &["namespace", "pod", "ip", "ip6", "host_ifname", "mac", "port", "worker"],
        "policies" => &["kind", "namespace", "name", "order", "ingress_rules", "egress_rules"],
        _ => &["prefix", "via"],
    };
    println!("{}", cols.iter().map(|c| format!("{:<20}", c.to_uppercase())).collect::<String>());
    for it in items {
        let row: String = cols
            .iter()
            .map(|c| {
                let v = &it[*c];
                format!("{:<20}", v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() }))
            })
            .collect();
        println!("{row}");
    }
}

fn apply(file: &std::path::Path, ds: &Datastore) -> anyhow::Result<()> {
    let Datastore::Dir(dir) = ds;
    let files: Vec<PathBuf> = if file.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(file)?.filter_map(Result::ok).map(|e| e.path()).collect();
        v.sort();
        v
    } else {
        vec![file.to_path_buf()]
    };
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        cluster::read_documents(&text, &f.display().to_string(), &mut Default::default())?;
        let name = f.file_name().context("file name")?;
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, dir.join(name))?;
        println!("applied {}", f.display());
    }
    Ok(())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = AgentConfig {
        datastore: args.datastore,
        node: args.node,
        uplink: args.uplink,
        cores: args.cores.0,
        state_dir: args.state_dir,
        encap: args.encap,
        batch: args.batch,
        idle: args.idle,
        attach: args.xdp_mode,
        copy_mode: args.copy_mode,
        frames: args.frames,
        conntrack_flows: args.conntrack_flows,
        conntrack6_flows: args.conntrack6_flows,
        pipeline: args.pipeline,
        routes: args.routes,
    };
    tracing::info!(node = %cfg.node, uplink = %cfg.uplink, cores = ?cfg.cores, "starting agent");
    let agent = Arc::new(Mutex::new(Agent::start(cfg)?));
    // The workers are running: from here on this thread and those it starts are control.
    if args.control_sched == "idle" {
        forwarder::dataplane::yield_to_workers().context("--control-sched idle: sched_setscheduler(SCHED_IDLE)")?;
    }
    server::serve(&args.socket, Arc::clone(&agent))?;
    if let Some(addr) = args.metrics {
        let listener = TcpListener::bind(&addr).with_context(|| format!("binding --metrics {addr}"))?;
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let body = agent.lock().map(|a| a.metrics_text()).unwrap_or_default();
                let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    // SIGTERM/SIGINT end the control loop, so the agent detaches its XDP programs on the way out.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    tracing::info!(socket = %args.socket.display(), "agent ready");
    control::agent::control_loop(&agent, &stop);
    tracing::info!("stopping");
    agent.lock().map_err(|_| anyhow::anyhow!("agent state poisoned"))?.shutdown();
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_strategies_parse_and_a_bad_one_names_what_is_accepted() {
        assert_eq!(parse_idle("spin"), Ok(IdleStrategy::Spin));
        assert_eq!(parse_idle("yield"), Ok(IdleStrategy::Yield));
        let us = std::time::Duration::from_micros;
        assert_eq!(parse_idle("adaptive"), Ok(IdleStrategy::Adaptive { spin: us(5), nap: us(50) }));
        assert_eq!(parse_idle("adaptive:0"), Ok(IdleStrategy::Adaptive { spin: us(0), nap: IdleStrategy::DEFAULT_NAP }));
        assert_eq!(parse_idle("adaptive:200"), Ok(IdleStrategy::Adaptive { spin: us(200), nap: IdleStrategy::DEFAULT_NAP }));
        assert_eq!(parse_idle("adaptive:5:0"), Ok(IdleStrategy::Adaptive { spin: us(5), nap: us(0) }));
        assert_eq!(parse_idle("adaptive:0:100"), Ok(IdleStrategy::Adaptive { spin: us(0), nap: us(100) }));
        for bad in ["adaptive:", "adaptive:1001", "adaptive:-1", "adaptive:5:", "adaptive:5:2000", "adaptive:1:2:3", "spin:5", "yield:1", "busy"] {
            let e = parse_idle(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("spin, yield, adaptive, adaptive:SPIN, adaptive:SPIN:NAP"), "{e}");
        }
    }
}
