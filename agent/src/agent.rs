//! The node agent's main loop: backend → model → topology → reconcilers.
//!
//! On every resync tick (and on every change of the directory) the agent
//! reads the nodes and peers, publishes its own node's annotations, computes
//! its topology, and brings the WireGuard device, the kernel routes, the eBPF
//! maps and attachments and the CNI config to it — each by difference, so an
//! unchanged resync touches nothing and drops no packet.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

use crate::args::parse_duration;
use crate::backend::dir::{DirBackend, DirWatch};
use crate::backend::kubernetes::KubeBackend;
use crate::backend::{AnnotationPatch, Backend, Event, Freshness};
use crate::datapath::{Datapath, Hook, maps};
use crate::keys::KeyPair;
use crate::model::annotations::{self as a, weft};
use crate::model::{
    Encapsulate, Granularity, Node, NodeObject, Peer, PublicKey, Refusal, RefusalKind, Refusals,
    Settings, parse_nodes, parse_peers,
};
use crate::routes::{DesiredRoute, LinkRef, RouteVia, Routes};
use crate::topology::{Mesh, PeerOrigin, RouteKind, Topology, Warning};
use crate::wireguard::{self, DesiredPeer, WireGuard};
use crate::{cni, detect, health, http};
use futures::FutureExt as _;

/// Weft node agent: keeps this node's part of the pod mesh true to the topology.
#[derive(Parser, Debug, Clone)]
#[command(name = "weft", version, args_conflicts_with_subcommands = true)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where nodes and peers come from. `kubernetes`: Node objects and `Peer` objects
    /// (weft.dev, and Kilo's kilo.squat.ai) of the cluster; `dir`: a directory of YAML files
    /// (nodes/<name>.yaml, peers/<name>.yaml, settings.yaml), the embedded default that needs
    /// no cluster.
    #[arg(long, default_value = "dir", value_enum)]
    pub backend: BackendKind,
    /// The directory of the `dir` backend (needed with it).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The kubeconfig of the `kubernetes` backend. Default: as kubectl resolves it
    /// ($KUBECONFIG, ~/.kube/config), else the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Name of this node: its Node object, or its file <dir>/nodes/<hostname>.yaml. Default:
    /// the system hostname.
    #[arg(long, env = "WEFT_HOSTNAME")]
    pub hostname: Option<String>,
    /// Name of the WireGuard interface.
    #[arg(long, default_value = "weft0")]
    pub interface: String,
    /// WireGuard listen port (overrides settings.yaml; default 51820).
    #[arg(long)]
    pub port: Option<std::num::NonZeroU16>,
    /// Subnet the segments' WireGuard addresses come from (overrides settings.yaml; default 10.4.0.0/16).
    #[arg(long)]
    pub subnet: Option<IpNet>,
    /// `location`: one WireGuard segment per location; `full`: every node its own segment (overrides settings.yaml).
    #[arg(long)]
    pub mesh_granularity: Option<Granularity>,
    /// IPIP between nodes of a location: `never`, `crosssubnet` (only across subnets) or `always` (overrides settings.yaml).
    #[arg(long)]
    pub encapsulate: Option<Encapsulate>,
    /// Node label giving its location when it has no `location` annotation (overrides settings.yaml).
    #[arg(long)]
    pub topology_label: Option<String>,
    /// MTU of the WireGuard device: a number, or `auto` (the smallest MTU of the routes to the
    /// other segments' leaders and the peers, i.e. of the device and path WireGuard's packets
    /// leave by, − 80; without any, the default route interface's MTU − 80).
    #[arg(long, default_value = "auto")]
    pub mtu: String,
    /// Service CIDR(s), never masqueraded (comma-separated or repeated; added to settings.yaml's).
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<IpNet>,
    /// Let an external peer claim `0.0.0.0/0` (an exit peer: pod traffic with no more specific
    /// route leaves through it, the node's own default route is kept). Refused otherwise, with
    /// a warning. Also `allowExitPeers` in settings.yaml.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_exit_peers: bool,
    /// Masquerade, in eBPF: pod traffic leaving the cluster (and external peers' traffic going
    /// out through this node) gets this node's address. `false`: it leaves with the pod's own
    /// address, for networks that route the pod CIDRs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Ports masquerade hands out when a flow cannot keep its own source port (`min-max`).
    #[arg(long, default_value = "1024-65535", value_parser = parse_port_range)]
    pub nat_port_range: (u16, u16),
    /// How often the masquerade table is swept of expired flows.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub nat_gc_interval: Duration,
    /// Only addresses inside these CIDRs count as the node's private IP (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub internal_cidr: Vec<IpNet>,
    /// How often to re-check everything and refresh `last-seen` (e.g. 30s, 2s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// How often DNS names in endpoints are looked up again (off the event path: a backend
    /// event uses the last answer).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub dns_refresh_period: Duration,
    /// On SIGTERM/SIGINT remove everything weft set up (WireGuard device, routes, eBPF programs,
    /// links and pins). With false, the device and the pinned datapath keep forwarding after exit
    /// and the next agent adopts them: what a DaemonSet wants, so that a rolling update drops no
    /// packet (`weft clean-up` removes them when weft leaves the node).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub clean_up: bool,
    /// Address of the HTTP server for /health, /metrics and /graph (`:1107` = every address).
    #[arg(long, default_value = ":1107")]
    pub listen: String,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// WireGuard implementation: `kernel`, `userspace` (wireguard-go), or `auto` (kernel where the module exists).
    #[arg(long, default_value = "auto")]
    pub wireguard: wireguard::Mode,
    /// Where the agent keeps its private key (mode 0600).
    #[arg(long, default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// The pod bridge: its ports (the host ends of the pod veths) get the pod-side eBPF program.
    #[arg(long, default_value = "kube-bridge")]
    pub pod_bridge: String,
    /// Directory on a bpffs where maps and links are pinned (bpftool reads them there).
    #[arg(long, default_value = crate::datapath::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// Write the CNI configuration (bridge plugin, host-local IPAM on the node's pod CIDR).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub cni: bool,
    /// Where the CNI configuration goes.
    #[arg(long, default_value = "/etc/cni/net.d/10-weft.conflist")]
    pub cni_path: PathBuf,
    /// The XDP filter that drops IPIP from outside the location at the NIC driver: `true`,
    /// `false`, or `auto` = physical NICs only. On a veth, native XDP turns off GSO on its peer
    /// and costs ~70% of TCP throughput (`cargo xtask bench`), while the NIC's tc program drops
    /// the same packets anyway.
    #[arg(long, default_value = "auto", value_parser = ["auto", "true", "false"])]
    pub xdp: String,
    /// How tc programs attach: `tcx` (pinned links, kernel ≥ 6.6), `netlink` (clsact filters),
    /// or `auto` (TCX where the kernel has it).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcx", "netlink"])]
    pub tc_attach: String,
    /// A leader that has heard nothing from any other segment's leader over WireGuard for this
    /// long, while others hear each other, is passed over (use the same value on every node).
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub leader_health_timeout: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Dir,
    Kubernetes,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Remove everything weft set up on this node (WireGuard device and wireguard-go, routes,
    /// eBPF programs, links and pins, the CNI configuration), as an uninstall does. Safe to run
    /// when some or all of it is already gone.
    CleanUp(CleanUpArgs),
    /// Print the CNI configuration the agent writes with `--cni` for this node (what a node
    /// image or a test bed can install before the agent first runs).
    CniConfig(CniConfigArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CniConfigArgs {
    /// The node's pod CIDR.
    #[arg(long)]
    pub pod_cidr: IpNet,
    /// The pods' MTU.
    #[arg(long, default_value_t = 1420)]
    pub mtu: u32,
    /// The agent's --pod-bridge.
    #[arg(long, default_value = "kube-bridge")]
    pub pod_bridge: String,
    /// The agent's --bpf-pin-dir.
    #[arg(long, default_value = crate::datapath::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// The agent's --state-dir (the pod records go to its `pods/`).
    #[arg(long, default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CleanUpArgs {
    /// The agent's WireGuard interface.
    #[arg(long, default_value = "weft0")]
    pub interface: String,
    /// The agent's --bpf-pin-dir.
    #[arg(long, default_value = crate::datapath::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// The agent's --cni-path (removed if it is there).
    #[arg(long, default_value = "/etc/cni/net.d/10-weft.conflist")]
    pub cni_path: PathBuf,
    /// Also remove the agent's --state-dir (its WireGuard private key).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Parses a port range `min-max` (inclusive, 1 ≤ min ≤ max).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port range {s:?}: use e.g. 1024-65535");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn public_key(k: &crate::keys::Key) -> PublicKey {
    PublicKey::from_bytes(*k.as_bytes())
}

fn wg_key(k: &PublicKey) -> crate::keys::Key {
    crate::keys::Key(*k.as_bytes())
}

/// Leader health as this node sees it.
#[derive(Default)]
struct Health {
    /// Published `wireguard-alive` (unix seconds) while leader.
    alive: Option<i64>,
    was_leader: bool,
    /// Bytes received per segment peer at the last look.
    rx: HashMap<PublicKey, u64>,
}

/// Everything the agent holds between reconciles.
struct Agent<B: Backend> {
    cfg: Config,
    /// The CNI records of this node's pods (`<state-dir>/pods`).
    pods: cni::pods::PodStore,
    /// Keeps the inotify watch on `pods` alive.
    _pod_watcher: notify::RecommendedWatcher,
    hostname: String,
    backend: B,
    keys: KeyPair,
    wg: WireGuard,
    wg_ifindex: u32,
    routes: Routes,
    datapath: Datapath,
    state: Arc<http::State>,
    health: Health,
    last: Option<Topology>,
    /// Problems reported so far, so each is logged once when it appears.
    reported: BTreeSet<String>,
    /// Nodes and peers left out of the mesh, each logged once when it appears.
    refusals: Refusals,
    demoted: BTreeSet<String>,
    /// `discovered-endpoints` as last read from WireGuard (JSON).
    discovered: String,
    outage: Outage,
    nat_timeouts: weft_common::nat::Timeouts,
    /// The device masquerade's FIB lookups are made from (0: the packet's own).
    fib_ifindex: u32,
    /// Endpoint names' addresses, looked up off the runtime threads.
    dns: crate::dns::DnsCache,
    /// What the mesh of the last reconcile that applied cleanly was computed from.
    applied: Option<MeshInputs>,
}

/// What [`Mesh::build`] computes from, with what every check-in changes
/// (`last-seen`, `wireguard-alive`) reduced to what the mesh uses of it:
/// whether the node is ready, and who is passed over as leader.
#[derive(PartialEq)]
struct MeshInputs {
    nodes: Vec<(Node, bool)>,
    peers: Vec<Peer>,
    settings: Settings,
    demoted: BTreeSet<String>,
}

impl MeshInputs {
    fn new(
        nodes: &[Node],
        peers: &[Peer],
        settings: &Settings,
        now: i64,
        demoted: &BTreeSet<String>,
    ) -> Self {
        let nodes = nodes
            .iter()
            .map(|n| {
                let ready = n.is_ready(now);
                let n = Node {
                    last_seen: None,
                    wireguard_alive: None,
                    ..n.clone()
                };
                (n, ready)
            })
            .collect();
        Self {
            nodes,
            peers: peers.to_vec(),
            settings: settings.clone(),
            demoted: demoted.clone(),
        }
    }
}

/// This node's devices as one reconcile found them.
struct LocalLinks {
    /// The interface holding the private IP.
    nic: Option<String>,
    private: Option<IpNet>,
    wg_ifindex: u32,
    /// Next hops towards this location's nodes behind a router.
    hops: BTreeMap<IpAddr, IpAddr>,
}

/// The metric of an exit peer's `/0` kernel route: after any default route
/// the node has (metric 0 unless set), so it only takes over without one.
const EXIT_PEER_METRIC: u32 = 0x7fff_0000;

/// Backend outages, so that the nodes' `last-seen` and `wireguard-alive`
/// are not held against them while they could not publish them (see
/// [`Outage::readiness_now`]).
/// After an outage, how long the nodes' new annotations may take to reach
/// this agent: their next publish, and this agent's watch resuming after
/// its backoff (at most 30 s).
const CATCH_UP_SECS: i64 = 30;

#[derive(Default)]
struct Outage {
    /// The current outage's start, while the backend is stale.
    since: Option<i64>,
    /// Seconds of outage the readiness clock runs behind by, until
    /// `credit_until` (unix seconds).
    credit: i64,
    credit_until: i64,
}

impl Outage {
    fn update(&mut self, freshness: &Freshness, now: i64) {
        match (freshness, self.since) {
            (Freshness::Stale { since, .. }, None) => self.since = Some(unix(*since).min(now)),
            (Freshness::Fresh, Some(start)) => {
                // Outages close together add up: the nodes may not have
                // published between them.
                let carried = self.carried(start);
                self.credit = carried + (now - start) + CATCH_UP_SECS;
                self.credit_until = now + CATCH_UP_SECS + crate::model::READY_WINDOW_SECS;
                self.since = None;
            }
            _ => {}
        }
    }

    fn carried(&self, at: i64) -> i64 {
        if at < self.credit_until {
            self.credit
        } else {
            0
        }
    }

    /// The time readiness is judged at. While the backend is away, no node
    /// can refresh what it publishes: judging it at the real time would drop
    /// every node from the mesh (and pass every leader over) after a minute
    /// of API server outage. So the clock stops at the outage's start, stays
    /// there for [`CATCH_UP_SECS`] after it, then runs behind by the outage's
    /// length and that catch-up until every node has had a full readiness
    /// window to check in again.
    fn readiness_now(&self, now: i64) -> i64 {
        match self.since {
            Some(start) => start.min(now) - self.carried(start),
            None => now - self.carried(now),
        }
    }
}

/// Runs the agent (or its `clean-up` command) until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    match &cfg.command {
        Some(Command::CleanUp(args)) => return clean_up(args, cfg.wireguard).await,
        Some(Command::CniConfig(a)) => {
            let paths = cni::PluginPaths::for_agent(&a.bpf_pin_dir, &a.state_dir);
            print!(
                "{}",
                cni::conflist(&a.pod_cidr.trunc(), &a.pod_bridge, a.mtu, &paths)
            );
            return Ok(());
        }
        None => {}
    }
    match cfg.backend {
        BackendKind::Dir => {
            let dir = cfg
                .dir
                .clone()
                .context("--backend dir needs --dir (the directory holding nodes/, peers/)")?;
            let backend = DirWatch::new(DirBackend::new(dir))?;
            run_with(cfg, backend).await
        }
        BackendKind::Kubernetes => {
            let (client, server) =
                crate::backend::kubernetes::client(cfg.kubeconfig.as_deref()).await?;
            let backend = KubeBackend::start(client, server);
            run_with(cfg, backend).await
        }
    }
}

async fn run_with<B: Backend>(cfg: Config, backend: B) -> Result<()> {
    let hostname = match &cfg.hostname {
        Some(h) => h.clone(),
        None => nix_hostname()?,
    };
    let state = Arc::new(http::State::default());
    let listen = http::parse_listen(&cfg.listen)?;
    let server = tokio::spawn(http::serve(listen, state.clone()));

    let (keys, new) = crate::keys::load_or_generate(&cfg.state_dir)
        .with_context(|| format!("WireGuard key in {}", cfg.state_dir.display()))?;
    info!(public_key = %keys.public_key(), new, "WireGuard key {}", if new { "generated" } else { "loaded" });
    let wg = WireGuard::open(wireguard::Options::new(&cfg.interface, cfg.wireguard))
        .await
        .with_context(|| format!("opening WireGuard device {}", cfg.interface))?;
    info!(interface = %cfg.interface, implementation = ?wg.implementation(), adopted = wg.adopted(), "WireGuard device ready");
    let wg_ifindex = wg.ifindex().await?;
    let tc_mode = match cfg.tc_attach.as_str() {
        "tcx" => crate::datapath::TcMode::Tcx,
        "netlink" => crate::datapath::TcMode::Netlink,
        _ => crate::datapath::TcMode::detect(),
    };
    let debug = cfg.log_level.contains("debug") || cfg.log_level.contains("trace");
    let datapath = Datapath::load(&cfg.bpf_pin_dir, debug, tc_mode)?;
    let pods = cni::pods::PodStore::new(cni::pods::state_dir(&cfg.state_dir));
    let (pod_watcher, mut pod_events) = watch_pods(&pods)?;
    let routes = Routes::new(crate::routes::MAIN_TABLE, crate::routes::RTPROT_WEFT)
        .context("netlink socket")?;
    let dns = crate::dns::DnsCache::new(cfg.dns_refresh_period);

    let mut agent = Agent {
        cfg,
        hostname,
        backend,
        keys,
        wg,
        wg_ifindex,
        routes,
        datapath,
        state,
        health: Health::default(),
        last: None,
        reported: BTreeSet::new(),
        refusals: Refusals::default(),
        demoted: BTreeSet::new(),
        discovered: "{}".to_string(),
        outage: Outage::default(),
        nat_timeouts: weft_common::nat::Timeouts::default(),
        fib_ifindex: 0,
        dns,
        applied: None,
        pods,
        _pod_watcher: pod_watcher,
    };
    // Pods recorded before this agent (or its map) existed get their
    // entries and programs now, before any topology is known.
    if let Err(e) = agent.sync_pod_side() {
        agent.state.metrics.error("datapath");
        warn!("pod identities: {e:#}");
    }
    let mut restarts = agent.wg.restarts();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut tick = tokio::time::interval(agent.cfg.resync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gc_tick = tokio::time::interval(agent.cfg.nat_gc_interval);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(hostname = %agent.hostname, backend = %agent.backend.describe(), "weft started");
    let mut last_error: Option<String> = None;
    loop {
        let full = tokio::select! {
            _ = tick.tick() => true,
            _ = gc_tick.tick() => {
                if let Err(e) = agent.nat_gc() {
                    agent.state.metrics.error("datapath");
                    warn!("masquerade GC failed: {e:#}");
                }
                continue;
            }
            Some(ev) = agent.backend.next_event() => {
                // Coalesce a burst of events into one reconcile.
                let mut full = agent.note_event(&ev);
                tokio::time::sleep(Duration::from_millis(100)).await;
                while let Some(Some(ev)) = agent.backend.next_event().now_or_never() {
                    full |= agent.note_event(&ev);
                }
                full
            }
            Some(()) = pod_events.recv() => {
                // A CNI ADD or DEL: new veths get their program now, not at the next resync.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(()) = pod_events.try_recv() {}
                if let Err(e) = agent.sync_pod_side() {
                    agent.state.metrics.error("datapath");
                    warn!("pod identities: {e:#}");
                }
                continue;
            }
            Ok(()) = restarts.changed() => {
                warn!("wireguard-go was restarted: re-applying routes and eBPF attachments");
                true
            }
            _ = hup.recv() => {
                info!("SIGHUP: forced resync");
                true
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        agent.state.metrics.reconciles.inc();
        match agent.reconcile(full).await {
            Ok(()) => {
                agent.state.healthy.store(true, Ordering::Relaxed);
                if last_error.take().is_some() {
                    info!("reconcile succeeded again");
                }
            }
            Err(e) => {
                agent.state.healthy.store(false, Ordering::Relaxed);
                agent.state.metrics.error("reconcile");
                // The same failure on every event is said once.
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!("reconcile failed: {msg}");
                } else {
                    debug!("reconcile failed again: {msg}");
                }
                last_error = Some(msg);
            }
        }
    }
    server.abort();
    agent.shut_down().await
}

/// The DNS names among the endpoints of `topo`'s other segments and peers.
fn endpoint_names(topo: &Topology) -> BTreeSet<crate::model::DnsName> {
    let dns = |e: &crate::model::Endpoint| match &e.host {
        crate::model::Host::Dns(n) => Some(n.clone()),
        crate::model::Host::Ip(_) => None,
    };
    topo.segments
        .iter()
        .filter(|s| s.id != topo.segment)
        .filter_map(|s| dns(&s.endpoint))
        .chain(
            topo.peers
                .iter()
                .filter_map(|p| p.endpoint.as_ref().and_then(dns)),
        )
        .collect()
}

fn nix_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(h.trim().to_string())
}

/// `weft clean-up`: removes what an agent with these settings set up, with
/// no agent running. Each part is tried; the errors are reported together.
async fn clean_up(args: &CleanUpArgs, mode: wireguard::Mode) -> Result<()> {
    let mut errors = Vec::new();
    let mut removed = Vec::new();
    if args.bpf_pin_dir.exists() {
        // Loading adopts the pins; clean_up then detaches every link and removes them.
        match Datapath::load(&args.bpf_pin_dir, false, crate::datapath::TcMode::detect())
            .and_then(Datapath::clean_up)
        {
            Ok(()) => removed.push(format!("eBPF datapath ({})", args.bpf_pin_dir.display())),
            Err(e) => errors.push(format!("eBPF datapath: {e:#}")),
        }
    }
    match Routes::new(crate::routes::MAIN_TABLE, crate::routes::RTPROT_WEFT) {
        Ok(r) => match r.clean_up().await {
            Ok(n) => removed.push(format!("{n} routes")),
            Err(e) => errors.push(format!("routes: {e}")),
        },
        Err(e) => errors.push(format!("routes: netlink socket: {e}")),
    }
    if ifindex(&args.interface).is_some() || wireguard::uapi::socket_path(&args.interface).exists()
    {
        match WireGuard::open(wireguard::Options::new(&args.interface, mode)).await {
            Ok(wg) => match wg.clean_up().await {
                Ok(()) => removed.push(format!("WireGuard device {}", args.interface)),
                Err(e) => errors.push(format!("WireGuard device {}: {e}", args.interface)),
            },
            Err(e) => errors.push(format!("WireGuard device {}: {e}", args.interface)),
        }
    }
    match std::fs::remove_file(&args.cni_path) {
        Ok(()) => removed.push(format!("CNI configuration {}", args.cni_path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!(
            "CNI configuration {}: {e}",
            args.cni_path.display()
        )),
    }
    if let Some(dir) = &args.state_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => removed.push(format!("state directory {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("state directory {}: {e}", dir.display())),
        }
    }
    if removed.is_empty() && errors.is_empty() {
        info!("clean-up: nothing of weft was left on this node");
    } else if !removed.is_empty() {
        info!("clean-up removed: {}", removed.join(", "));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("clean-up incomplete: {}", errors.join("; "))
    }
}

impl<B: Backend> Agent<B> {
    /// Logs a problem once, when it first appears, and counts it.
    fn report(&mut self, seen: &mut BTreeSet<String>, kind: &str, msg: String) {
        if !self.reported.contains(&msg) {
            warn!(kind, "{msg}");
            self.state.metrics.error(kind);
        }
        seen.insert(msg);
    }

    /// Logs each node or peer left out of the mesh once, when it is first
    /// left out (naming it, the field and why), and once when it is back;
    /// sets `weft_refused_objects`. Values that do not parse also count in
    /// `weft_errors_total{kind="node"|"peer"}`.
    fn report_refusals(&mut self, refused: Vec<Refusal>, present: &BTreeSet<(RefusalKind, &str)>) {
        let changes = self.refusals.update(refused);
        for r in &changes.new {
            let (kind, reason) = (r.kind.as_str(), r.reason);
            if r.is_invalid() {
                self.state.metrics.error(kind);
            }
            // The message names the object and the field (not repeated as
            // fields: one line, one mention).
            if r.is_pending() {
                info!(kind, reason, "{r}");
            } else {
                warn!(kind, reason, "{r}");
            }
        }
        for r in &changes.cleared {
            if present.contains(&(r.kind, r.name.as_str())) {
                info!(
                    kind = r.kind.as_str(),
                    "{} {:?} is no longer left out of the mesh (it was for {}: {})",
                    r.kind,
                    r.name,
                    r.field,
                    r.detail
                );
            } else {
                debug!(
                    kind = r.kind.as_str(),
                    "{} {:?} was removed while left out", r.kind, r.name
                );
            }
        }
        let counts: Vec<(&str, &str, u64)> = self
            .refusals
            .counts()
            .into_iter()
            .map(|(k, reason, n)| (k.as_str(), reason, n))
            .collect();
        self.state.metrics.refused(&counts);
    }

    fn settings(&self, file: Option<&crate::model::SettingsFile>) -> Result<Settings> {
        let mut s = match file {
            Some(f) => f
                .parse()
                .with_context(|| format!("{}: settings.yaml", self.backend.describe()))?,
            None => Settings::default(),
        };
        let o = crate::ctl::Overrides {
            granularity: self.cfg.mesh_granularity,
            subnet: self.cfg.subnet,
            port: self.cfg.port,
            topology_label: self.cfg.topology_label.clone(),
            encapsulate: self.cfg.encapsulate,
        };
        s = o.apply(s);
        s.allow_exit_peers |= self.cfg.allow_exit_peers;
        for c in &self.cfg.service_cidr {
            if !s.service_cidrs.contains(&c.trunc()) {
                s.service_cidrs.push(c.trunc());
            }
        }
        Ok(s)
    }

    /// Logs a backend event; true when it calls for a full resync.
    fn note_event(&mut self, ev: &Event) -> bool {
        match ev {
            Event::Node { name, change } => debug!(node = %name, ?change, "node changed"),
            Event::Peer { name, change } => debug!(peer = %name, ?change, "peer changed"),
            Event::Settings => info!("settings changed"),
            Event::Resynced => {
                debug!("backend re-listed");
                return true;
            }
            Event::Stale { reason } => {
                warn!("backend unreachable, keeping the last topology in force: {reason}");
            }
        }
        false
    }

    /// Records whether the backend is current, for `/health` and readiness.
    fn note_freshness(&mut self, now: i64) {
        let f = self.backend.freshness();
        self.outage.update(&f, now);
        let stale = match &f {
            Freshness::Fresh => None,
            Freshness::Stale { since, reason } => Some(format!(
                "running on stale data: {} unreachable for {} s ({reason})",
                self.backend.describe(),
                now - unix(*since)
            )),
        };
        self.state
            .metrics
            .backend_stale
            .set(i64::from(stale.is_some()));
        *self.state.stale.write().expect("not poisoned") = stale;
    }

    async fn reconcile(&mut self, full: bool) -> Result<()> {
        let now = unix_now();
        self.note_freshness(now);
        let ready_now = self.outage.readiness_now(now);
        if !self.backend.synced() {
            bail!(
                "waiting for the first list of nodes from {} (the datapath keeps what it had)",
                self.backend.describe()
            );
        }
        let snap = self.backend.snapshot().await?;
        let settings = self.settings(snap.settings.as_ref())?;
        let mut seen = BTreeSet::new();
        for e in &snap.errors {
            self.report(&mut seen, "backend", e.clone());
        }
        let Some(own) = snap.nodes.iter().find(|n| n.name == self.hostname).cloned() else {
            bail!(
                "{} has no node {:?}: give this node a Node object (Kubernetes) or a file nodes/{}.yaml (directory) with its podCIDR",
                self.backend.describe(),
                self.hostname,
                self.hostname,
            );
        };

        // Publish this node's annotations: every tick (last-seen), else only on change.
        let own = self.publish(own, &settings, now, full).await?;
        let mut objects = snap.nodes.clone();
        if let Some(o) = objects.iter_mut().find(|n| n.name == self.hostname) {
            *o = own;
        }
        let (nodes, node_errors) = parse_nodes(&objects, &settings.topology_label);
        let (peers, peer_errors) = parse_peers(&snap.peers);
        let mut refused = Vec::new();
        for e in node_errors.iter().chain(&peer_errors) {
            match Refusal::from_error(e) {
                Some(r) => refused.push(r),
                None => self.report(&mut seen, "backend", e.to_string()),
            }
        }

        let demoted = health::demoted(
            &nodes,
            ready_now,
            self.cfg.leader_health_timeout.as_secs() as i64,
        );
        if demoted != self.demoted {
            for d in demoted.difference(&self.demoted) {
                warn!(node = %d, "leader failover: {d} hears no other segment over WireGuard; passing it over");
                self.state.metrics.leader_failovers.inc();
            }
            for d in self.demoted.difference(&demoted) {
                info!(node = %d, "{d} is no longer passed over as leader");
            }
            self.demoted = demoted.clone();
        }
        // A check-in (`last-seen`, `wireguard-alive`) that changes nothing the
        // mesh is computed from costs this comparison, not a recomputation:
        // the kernel already holds what the last clean apply wrote. Resyncs
        // (`full`) recompute and re-check everything all the same.
        let inputs = MeshInputs::new(&nodes, &peers, &settings, ready_now, &demoted);
        if !full && self.applied.as_ref() == Some(&inputs) {
            debug!("no change the topology depends on");
            return Ok(());
        }
        self.applied = None;
        let mesh = Mesh::build(&nodes, &peers, &settings, ready_now, &demoted)?;
        // A node left out for its pod CIDR is said once, as a refusal.
        let node_refusals: Vec<&Warning> = mesh.nodes_refused.values().collect();
        for w in &mesh.warnings {
            match w {
                _ if node_refusals.contains(&w) => {}
                Warning::DuplicateNode(n) => {
                    refused.push(Refusal::duplicate_name(RefusalKind::Node, n))
                }
                Warning::DuplicatePeer(n) => {
                    refused.push(Refusal::duplicate_name(RefusalKind::Peer, n))
                }
                _ => self.report(&mut seen, "topology", w.to_string()),
            }
        }
        refused.extend(
            mesh.not_ready
                .iter()
                .map(|(name, why)| Refusal::not_ready(name, why)),
        );
        refused.extend(
            mesh.peers_not_ready
                .iter()
                .map(|name| Refusal::peer_without_allowed_ips(name)),
        );
        refused.extend(
            mesh.nodes_refused
                .iter()
                .map(|(name, why)| Refusal::range_taken(RefusalKind::Node, name, why.to_string())),
        );
        refused.extend(mesh.peers_refused.iter().map(|name| {
            Refusal::range_taken(
                RefusalKind::Peer,
                name,
                "every allowed IP it claims is another's (see the warnings naming it)".to_owned(),
            )
        }));
        let present: BTreeSet<(RefusalKind, &str)> = objects
            .iter()
            .map(|n| (RefusalKind::Node, n.name.as_str()))
            .chain(
                snap.peers
                    .iter()
                    .map(|p| (RefusalKind::Peer, p.name.as_str())),
            )
            .collect();
        self.report_refusals(refused, &present);
        self.reported = seen;
        *self.state.graph.write().expect("not poisoned") = crate::ctl::graph::dot(&mesh);
        let topo = mesh
            .topology(&self.hostname)
            .context("computing this node's topology")?;

        let own_node = nodes.iter().find(|n| n.name == self.hostname).cloned();
        // A reconciler that failed leaves the others applied: health,
        // metrics and the log of what changed are kept up all the same.
        self.dns.update(&endpoint_names(&topo)).await;
        let applied = self.apply(&topo, own_node.as_ref()).await;
        self.update_health(&topo, now).await;
        self.update_metrics(&mesh, &topo, &nodes, ready_now, &demoted);
        if let Some(last) = &self.last {
            let d = crate::topology::diff(last, &topo);
            if !d.is_empty() {
                info!(
                    leader = ?d.leader,
                    wireguard_ip = ?d.wireguard_ip,
                    peers_added = d.peers_added.len(),
                    peers_removed = d.peers_removed.len(),
                    peers_changed = d.peers_changed.len(),
                    routes_added = ?d.routes_added.iter().map(|r| r.dst.to_string()).collect::<Vec<_>>(),
                    routes_removed = ?d.routes_removed.iter().map(|r| r.dst.to_string()).collect::<Vec<_>>(),
                    routes_changed = d.routes_changed.len(),
                    "topology changed"
                );
            }
        } else {
            info!(leader = topo.leader, segment = %topo.segment, peers = topo.peers.len(), routes = topo.routes.len(), "topology computed");
        }
        self.last = Some(topo);
        if applied.is_ok() {
            self.applied = Some(inputs);
        }
        applied
    }

    /// Publishes this node's agent annotations if they changed (or, on a
    /// full resync, to refresh `last-seen`), touching no other key. Returns
    /// the object as it now stands. While the backend cannot be written
    /// (API server away), the mesh goes on with what this node would have
    /// published: a failed publish is logged, never fatal.
    async fn publish(
        &mut self,
        mut own: NodeObject,
        settings: &Settings,
        now: i64,
        full: bool,
    ) -> Result<NodeObject> {
        let addrs = detect::addresses()?;
        let default_if = detect::default_route_interface()?;
        let mut exclude = vec![self.cfg.pod_bridge.clone(), self.cfg.interface.clone()];
        exclude.extend(crate::podside::bridge_ports(&self.cfg.pod_bridge)?);
        let found = detect::choose(
            &addrs,
            default_if.as_deref(),
            &exclude,
            &self.cfg.internal_cidr,
        );
        let port = settings.port.get();
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        want.insert(weft(a::KEY), self.keys.public_key().to_string());
        let endpoint_ip = found.public.or(found.internal.map(|n| n.addr()));
        want.insert(
            weft(a::ENDPOINT),
            endpoint_ip
                .map(|ip| format!("{ip}:{port}"))
                .unwrap_or_default(),
        );
        want.insert(
            weft(a::INTERNAL_IP),
            found.internal.map(|n| n.to_string()).unwrap_or_default(),
        );
        let segment_ip = self.last.as_ref().and_then(|t| {
            t.segments
                .iter()
                .find(|s| s.id == t.segment)
                .map(|s| s.wireguard_ip)
        });
        if let Some(ip) = segment_ip {
            // Published by every node of the segment, so that a new leader keeps the address.
            // With the subnet's prefix, as Kilo writes it.
            want.insert(
                weft(a::WIREGUARD_IP),
                format!("{ip}/{}", settings.subnet.prefix_len()),
            );
        } else if let Some(v) = own.annotations.get(&weft(a::WIREGUARD_IP)) {
            want.insert(weft(a::WIREGUARD_IP), v.clone());
        }
        want.insert(
            weft(a::GRANULARITY),
            settings.granularity.as_str().to_string(),
        );
        want.insert(weft(a::DISCOVERED_ENDPOINTS), self.discovered.clone());
        let mut withdraw_alive = false;
        if let Some(alive) = self.health.alive {
            want.insert(weft(a::WIREGUARD_ALIVE), alive.to_string());
        } else if let Some(v) = own.annotations.get(&weft(a::WIREGUARD_ALIVE)) {
            if self.last.is_none() || self.demoted.contains(&self.hostname) {
                // Passed over (or not known yet, just started): keep what we
                // last published, so that the demotion sticks.
                want.insert(weft(a::WIREGUARD_ALIVE), v.clone());
            } else {
                // No longer leader for another reason (e.g. it led only until
                // the preferred leader came up): a value left to go stale
                // would get this healthy node passed over later.
                withdraw_alive = true;
            }
        }
        let changed = withdraw_alive || want.iter().any(|(k, v)| own.annotations.get(k) != Some(v));
        let no_last_seen = !own.annotations.contains_key(&weft(a::LAST_SEEN));
        if !(changed || full || no_last_seen) {
            return Ok(own);
        }
        for (k, v) in &want {
            if own.annotations.get(k) != Some(v) && k != &weft(a::DISCOVERED_ENDPOINTS) {
                info!(annotation = %k, value = %v, "publishing");
            }
        }
        let mut patch: AnnotationPatch = want.into_iter().map(|(k, v)| (k, Some(v))).collect();
        if withdraw_alive {
            info!(
                annotation = %weft(a::WIREGUARD_ALIVE),
                "withdrawing: no longer leader, and not passed over"
            );
            patch.insert(weft(a::WIREGUARD_ALIVE), None);
        }
        patch.insert(weft(a::LAST_SEEN), Some(now.to_string()));
        match self.backend.patch_own_node(&self.hostname, &patch).await {
            Ok(current) => {
                if self.state.publish_failing.swap(false, Ordering::Relaxed) {
                    info!("publishing this node's annotations works again");
                }
                Ok(current)
            }
            Err(e) => {
                self.state.metrics.error("publish");
                if !self.state.publish_failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "cannot publish this node's annotations, going on with them locally: {e:#}"
                    );
                } else {
                    debug!("publishing failed again: {e:#}");
                }
                crate::backend::apply_patch(&mut own.annotations, &patch);
                Ok(own)
            }
        }
    }

    /// Applies `topo` to this node, one reconciler after the other. Each
    /// has its own error policy: one that fails (a route someone else
    /// holds, a full map, a device gone) is logged, counted in
    /// `weft_errors_total{kind}` and retried at the next reconcile, and the
    /// others are applied all the same; the call fails if any did. Only
    /// what the later ones cannot do without (this node's NIC and the
    /// WireGuard device's index) skips those that need it.
    async fn apply(&mut self, topo: &Topology, own: Option<&Node>) -> Result<()> {
        let state = self.state.clone();
        let mut failed: Vec<String> = Vec::new();
        let mut settle = |kind: &'static str, r: Result<()>| {
            if let Err(e) = r {
                state.metrics.error(kind);
                failed.push(format!("{kind}: {e:#}"));
            }
        };
        let mtu = match self.apply_wireguard(topo).await {
            Ok(mtu) => Some(mtu),
            Err(e) => {
                settle("wireguard", Err(e));
                None
            }
        };
        match self.local_links(topo, own).await {
            Ok(links) => {
                settle("routes", self.apply_routes(topo, &links).await);
                settle("datapath", self.apply_maps(topo, &links));
                settle("datapath", self.apply_masquerade(topo));
                settle("datapath", self.apply_hooks(topo, &links));
            }
            Err(e) => settle("datapath", Err(e)),
        }
        if self.cfg.cni {
            let r = match mtu {
                Some(mtu) => self.apply_cni(topo, mtu),
                None => Err(anyhow::anyhow!(
                    "not written: the WireGuard MTU is unknown (see the WireGuard error)"
                )),
            };
            settle("cni", r);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("{}", failed.join("; "))
        }
    }

    /// WireGuard: the device always exists; leaders carry the address and
    /// peers. Returns the device's MTU.
    async fn apply_wireguard(&mut self, topo: &Topology) -> Result<u32> {
        let m = &self.state.metrics;
        self.wg
            .set_interface(self.keys.private_key(), topo.interface.listen_port)
            .await?;
        let mtu = self.mtu(topo).await?;
        self.wg.set_mtu(mtu).await?;
        self.wg.up().await?;
        let addrs: Vec<IpNet> = topo.wireguard_ip.into_iter().collect();
        self.wg.set_addresses(&addrs).await?;
        let peers = self.desired_peers(topo);
        let s = self.wg.apply_peers(&peers).await?;
        m.peer_change("added", s.added as u64);
        m.peer_change("removed", s.removed as u64);
        m.peer_change("changed", s.changed as u64);
        if s.touched() {
            info!(
                added = s.added,
                removed = s.removed,
                changed = s.changed,
                unchanged = s.unchanged,
                "WireGuard peers updated"
            );
        }

        Ok(mtu)
    }

    /// What the reconcilers after WireGuard's need to know of this node's
    /// devices.
    async fn local_links(&mut self, topo: &Topology, own: Option<&Node>) -> Result<LocalLinks> {
        // The NIC: the interface holding the private IP.
        let private = own.and_then(|n| n.internal_ip);
        let nic = match private {
            Some(p) => detect::addresses()?
                .into_iter()
                .find(|a| IpAddr::V4(a.net.addr()) == p.addr())
                .map(|a| a.ifname),
            None => None,
        };
        let wg_ifindex = self.wg.ifindex().await?;
        if wg_ifindex != self.wg_ifindex {
            // wireguard-go was restarted: its new TUN needs the program again.
            self.datapath.detach(Hook::WgIngress, &self.cfg.interface)?;
            self.wg_ifindex = wg_ifindex;
        }

        let hops = self.node_next_hops(topo, nic.as_deref()).await?;
        Ok(LocalLinks {
            nic,
            private,
            wg_ifindex,
            hops,
        })
    }

    /// Kernel routes, by difference; a route that cannot be installed is
    /// reported and the others are installed all the same.
    async fn apply_routes(&mut self, topo: &Topology, links: &LocalLinks) -> Result<()> {
        let m = &self.state.metrics;
        let (nic, hops) = (&links.nic, &links.hops);
        // Kernel routes: for traffic the host itself originates, and for pod
        // traffic the datapath hands to the stack because it does not fit the
        // IPIP path: the route's MTU leaves room for the outer header, so the
        // stack fragments such packets, or answers DF ones with
        // "fragmentation needed", instead of sending them over-size.
        let nic_ref = nic.clone().map(LinkRef::Name);
        let ipip_mtu = nic
            .as_deref()
            .and_then(crate::detect::link_mtu)
            .and_then(|m| m.checked_sub(weft_common::ipip::ENCAP_LEN as u32));
        let mut desired = Vec::new();
        for r in &topo.routes {
            let mtu = match &r.kind {
                RouteKind::Node {
                    encapsulate: true, ..
                } => ipip_mtu,
                _ => None,
            };
            let via = match &r.kind {
                RouteKind::Local => continue,
                RouteKind::WireGuard { gateway: Some(gw) } => RouteVia::Gateway {
                    gw: *gw,
                    dev: LinkRef::Name(self.cfg.interface.clone()),
                    onlink: true,
                },
                RouteKind::WireGuard { gateway: None } => {
                    RouteVia::Device(LinkRef::Name(self.cfg.interface.clone()))
                }
                // Out of the NIC, through the node itself or the router
                // before it; IPIP is added on the NIC's egress (no ipip module).
                RouteKind::Node { gateway, .. } => match &nic_ref {
                    Some(dev) => RouteVia::Gateway {
                        gw: hops.get(gateway).copied().unwrap_or(*gateway),
                        dev: dev.clone(),
                        onlink: true,
                    },
                    None => continue,
                },
            };
            // An exit peer's /0 (allowExitPeers) backs the node's own default
            // route up rather than replacing it: host traffic keeps its uplink.
            let metric = (r.dst.prefix_len() == 0).then_some(EXIT_PEER_METRIC);
            desired.push(DesiredRoute {
                dst: r.dst,
                via,
                src: None,
                metric,
                mtu,
            });
        }
        let rs = self.routes.reconcile(&desired).await?;
        m.route_change("added", (rs.added + rs.replaced) as u64);
        m.route_change("removed", rs.removed as u64);
        if rs.added + rs.replaced + rs.removed > 0 {
            info!(
                added = rs.added,
                replaced = rs.replaced,
                removed = rs.removed,
                unchanged = rs.unchanged,
                "routes updated"
            );
        }

        if !rs.failed.is_empty() {
            let why: Vec<String> = rs.failed.iter().map(ToString::to_string).collect();
            bail!(
                "{} of {} routes not applied: {}",
                why.len(),
                desired.len(),
                why.join("; ")
            );
        }
        Ok(())
    }

    /// The datapath's maps, by difference.
    fn apply_maps(&mut self, topo: &Topology, links: &LocalLinks) -> Result<()> {
        let m = &self.state.metrics;
        let (nic, private, wg_ifindex, hops) =
            (&links.nic, links.private, links.wg_ifindex, &links.hops);
        let bridge_ifindex = ifindex(&self.cfg.pod_bridge);
        let nic_ifindex = nic.as_deref().and_then(ifindex);
        let my_private = private.and_then(|p| match p.addr() {
            IpAddr::V4(v) => Some(v),
            IpAddr::V6(_) => None,
        });
        let mut want = BTreeMap::new();
        for r in &topo.routes {
            let IpNet::V4(dst) = r.dst else { continue };
            let route = match &r.kind {
                RouteKind::Local => match bridge_ifindex {
                    Some(b) => weft_common::maps::Route::local(b),
                    None => continue,
                },
                RouteKind::WireGuard { .. } => weft_common::maps::Route::wireguard(wg_ifindex),
                RouteKind::Node {
                    gateway: IpAddr::V4(gw),
                    encapsulate,
                } => match (nic_ifindex, my_private) {
                    (Some(nic), Some(src)) if *encapsulate => {
                        weft_common::maps::Route::node_ipip(nic, gw.octets(), src.octets())
                    }
                    (Some(nic), _) => {
                        let hop = match hops.get(&IpAddr::V4(*gw)) {
                            Some(IpAddr::V4(h)) => *h,
                            _ => *gw,
                        };
                        weft_common::maps::Route::node(nic, hop.octets())
                    }
                    _ => continue,
                },
                RouteKind::Node { .. } => continue,
            };
            want.insert(maps::route_key(&dst), route);
        }
        // Pods answer what nodes originate without kernel forwarding.
        let other_wireguard_ips: Vec<Ipv4Addr> = topo
            .segments
            .iter()
            .filter(|s| topo.leader && s.id != topo.segment)
            .filter_map(|s| match s.wireguard_ip {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            })
            .collect();
        maps::add_host_routes(&mut want, &other_wireguard_ips, wg_ifindex);
        // Who may send what into this node without WireGuard.
        let src = maps::source_maps(
            &topo.senders,
            &topo.cluster_sources,
            nic_ifindex,
            my_private,
        );
        use weft_common::maps::{IPIP_SENDERS, NIC_SOURCES, ROUTES, SENDER_SOURCES};
        // Each map on its own: one that fails (full, say) leaves the others synced.
        let dp = &mut self.datapath;
        let synced = [
            (
                ROUTES,
                want.len(),
                dp.map_mut(ROUTES)
                    .and_then(|map| maps::sync_routes(map, &want)),
            ),
            (
                IPIP_SENDERS,
                src.senders.len(),
                dp.map_mut(IPIP_SENDERS)
                    .and_then(|map| maps::sync_hash(map, IPIP_SENDERS, &src.senders)),
            ),
            (
                SENDER_SOURCES,
                src.sender_sources.len(),
                dp.map_mut(SENDER_SOURCES)
                    .and_then(|map| maps::sync_lpm(map, SENDER_SOURCES, &src.sender_sources)),
            ),
            (
                NIC_SOURCES,
                src.nic_sources.len(),
                dp.map_mut(NIC_SOURCES)
                    .and_then(|map| maps::sync_lpm(map, NIC_SOURCES, &src.nic_sources)),
            ),
        ];
        let mut errors = Vec::new();
        let mut changed = Vec::new();
        for (name, entries, r) in synced {
            if let Ok(cap) = dp.map_mut(name).and_then(|map| maps::capacity(map)) {
                m.map_fill(name, entries as u64, u64::from(cap));
            }
            match r {
                Ok(w) => {
                    m.map_writes(name, w.total());
                    if w.total() > 0 {
                        changed.push(format!(
                            "{name} +{} ~{} -{}",
                            w.inserted, w.updated, w.removed
                        ));
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<maps::MapFull>().is_some() {
                        m.error("map_full");
                    }
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !changed.is_empty() {
            info!(maps = %changed.join(", "), "eBPF maps updated");
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// The programs on their devices (pod veths, NIC, uplinks, WireGuard).
    fn apply_hooks(&mut self, topo: &Topology, links: &LocalLinks) -> Result<()> {
        let nic = links.nic.clone();
        let ports = self.sync_pod_side()?;
        let nics: Vec<String> = nic.into_iter().collect();
        self.datapath.reconcile_hook(Hook::NicIngress, &nics)?;
        // Only where the location may encapsulate: an LPM lookup per packet
        // the host sends is not worth paying for nothing.
        let egress_nics = if topo.encapsulate == Encapsulate::Never {
            &[][..]
        } else {
            nics.as_slice()
        };
        self.datapath.reconcile_hook(Hook::NicEgress, egress_nics)?;
        // Replies to masqueraded flows come back by the device they left
        // by: any other device with an address gets the reverse translation.
        let uplinks: Vec<String> = if self.cfg.masquerade {
            let mut u: Vec<String> = detect::addresses()?
                .into_iter()
                .map(|a| a.ifname)
                .filter(|n| {
                    n != "lo"
                        && !nics.contains(n)
                        && n != &self.cfg.pod_bridge
                        && n != &self.cfg.interface
                        && !ports.contains(n)
                })
                .collect();
            u.sort();
            u.dedup();
            u
        } else {
            Vec::new()
        };
        self.datapath
            .reconcile_hook(Hook::UplinkIngress, &uplinks)?;
        let xdp = match self.cfg.xdp.as_str() {
            "true" => true,
            "false" => false,
            // A physical NIC has a device behind it; veth, bridges and tunnels do not.
            _ => nics.iter().all(|n| {
                std::path::Path::new("/sys/class/net")
                    .join(n)
                    .join("device")
                    .exists()
            }),
        };
        let xdp_nics = if xdp { nics.as_slice() } else { &[] };
        self.datapath.reconcile_hook(Hook::NicXdp, xdp_nics)?;
        self.datapath
            .reconcile_hook(Hook::WgIngress, std::slice::from_ref(&self.cfg.interface))?;

        Ok(())
    }

    /// The CNI configuration, for pods' MTU `mtu` less what encapsulation needs.
    fn apply_cni(&self, topo: &Topology, mtu: u32) -> Result<()> {
        // Pods leave room for IPIP when the location may encapsulate.
        let pod_mtu = if topo.encapsulate == Encapsulate::Never {
            mtu
        } else {
            mtu - 20
        };
        let paths = cni::PluginPaths::for_agent(&self.cfg.bpf_pin_dir, &self.cfg.state_dir);
        let conf = cni::conflist(&topo.pod_cidr, &self.cfg.pod_bridge, pod_mtu, &paths);
        if cni::write_if_changed(&self.cfg.cni_path, &conf)? {
            info!(path = %self.cfg.cni_path.display(), pod_cidr = %topo.pod_cidr, "CNI configuration written");
        }
        Ok(())
    }

    /// The next hop towards each node of this location that is not on a
    /// link of `nic` (a subnet behind a router): the kernel's gateway to it.
    /// Nodes on the NIC's own subnets are their own next hop (not listed).
    async fn node_next_hops(
        &self,
        topo: &Topology,
        nic: Option<&str>,
    ) -> Result<BTreeMap<IpAddr, IpAddr>> {
        let mut hops = BTreeMap::new();
        let Some(nic) = nic else { return Ok(hops) };
        let subnets: Vec<ipnet::Ipv4Net> = detect::addresses()?
            .into_iter()
            .filter(|a| a.ifname == nic)
            .map(|a| a.net.trunc())
            .collect();
        for r in &topo.routes {
            let RouteKind::Node {
                gateway: IpAddr::V4(gw),
                ..
            } = r.kind
            else {
                continue;
            };
            if hops.contains_key(&IpAddr::V4(gw)) || subnets.iter().any(|s| s.contains(&gw)) {
                continue;
            }
            if let Some(hop) = self
                .routes
                .gateway_towards(gw)
                .await
                .with_context(|| format!("finding the next hop towards node {gw}"))?
            {
                hops.insert(IpAddr::V4(gw), hop);
            }
        }
        Ok(hops)
    }

    /// The pod side: `WEFT_PODS` from the CNI records (stale ones removed),
    /// then the pod program on every bridge port. Returns the ports.
    fn sync_pod_side(&mut self) -> Result<Vec<String>> {
        let map = self.datapath.map_mut(weft_common::maps::PODS)?;
        let s = crate::podside::reconcile_pods(&self.pods, map, &ifindex)?;
        self.state
            .metrics
            .map_writes(weft_common::maps::PODS, s.writes.total());
        for st in &s.stale {
            info!(pod = %st, "pod record removed: its veth is gone");
        }
        for bad in &s.unreadable {
            warn!("ignoring pod record {bad}");
        }
        if s.writes.total() > 0 {
            info!(pods = s.pods, writes = ?s.writes, "pod identities updated");
        }
        let ports = crate::podside::bridge_ports(&self.cfg.pod_bridge)?;
        self.datapath.reconcile_hook(Hook::PodIngress, &ports)?;
        Ok(ports)
    }

    /// Masquerade's maps: the topology's sources and exemptions (by
    /// difference) and the settings; and the service CIDRs.
    fn apply_masquerade(&mut self, topo: &Topology) -> Result<()> {
        use weft_common::nat::{MASQ_EXEMPT, MASQ_SOURCES, NAT_CONFIG, NAT_DEFAULT_MAX_FLOWS};
        use weft_common::svc::SERVICE_CIDRS;
        let v4 = |nets: &[IpNet]| -> Vec<ipnet::Ipv4Net> {
            nets.iter()
                .filter_map(|n| match n {
                    IpNet::V4(v) => Some(*v),
                    IpNet::V6(_) => None,
                })
                .collect()
        };
        let sources = if self.cfg.masquerade {
            v4(&topo.masquerade.sources)
        } else {
            Vec::new()
        };
        if self.cfg.masquerade {
            if self.datapath.ensure_lo_forwarding()? {
                info!(
                    "net.ipv4.conf.lo.forwarding turned on: masquerade's FIB lookups are made from lo (ip_forward stays as it is)"
                );
            }
            self.fib_ifindex = crate::datapath::LOOPBACK_IFINDEX;
        } else {
            self.datapath.restore_lo_forwarding()?;
            self.fib_ifindex = 0;
        }
        let exempt = v4(&topo.masquerade.exempt);
        let m = &self.state.metrics;
        let ws = crate::datapath::nat::sync_prefixes(
            self.datapath.map_mut(MASQ_SOURCES)?,
            MASQ_SOURCES,
            &sources,
        )?;
        m.map_writes(MASQ_SOURCES, ws.total());
        let we = crate::datapath::nat::sync_prefixes(
            self.datapath.map_mut(MASQ_EXEMPT)?,
            MASQ_EXEMPT,
            &exempt,
        )?;
        m.map_writes(MASQ_EXEMPT, we.total());
        // Independent of --masquerade: Service replies go through the kernel either way.
        let wsvc = crate::datapath::nat::sync_prefixes(
            self.datapath.map_mut(SERVICE_CIDRS)?,
            SERVICE_CIDRS,
            &v4(&topo.service_cidrs),
        )?;
        m.map_writes(SERVICE_CIDRS, wsvc.total());
        if wsvc.total() > 0 {
            info!(service_cidrs = ?wsvc, "service CIDRs updated");
        }
        let settings = crate::datapath::nat::Settings {
            enabled: self.cfg.masquerade,
            port_min: self.cfg.nat_port_range.0,
            port_max: self.cfg.nat_port_range.1,
            max_flows: NAT_DEFAULT_MAX_FLOWS,
            fib_ifindex: self.fib_ifindex,
        };
        m.nat_max_flows.set(settings.max_flows as i64);
        let changed =
            crate::datapath::nat::write_settings(self.datapath.map_mut(NAT_CONFIG)?, &settings)?;
        if ws.total() + we.total() > 0 || changed {
            info!(sources = ?ws, exempt = ?we, enabled = settings.enabled, ports = ?self.cfg.nat_port_range, "masquerade updated");
        }
        Ok(())
    }

    /// One pass of the masquerade garbage collector.
    fn nat_gc(&mut self) -> Result<()> {
        use weft_common::nat::{NAT_CONFIG, NAT_EGRESS, NAT_INGRESS};
        let now = crate::datapath::nat::monotonic_ns();
        let [eg, ing, cfg] = self
            .datapath
            .maps_mut([NAT_EGRESS, NAT_INGRESS, NAT_CONFIG])?;
        let st = crate::datapath::nat::gc(eg, ing, cfg, &self.nat_timeouts, now)?;
        self.state.metrics.nat_gc(st.live, st.expired, st.orphans);
        if st.expired + st.orphans > 0 {
            debug!(
                live = st.live,
                expired = st.expired,
                orphans = st.orphans,
                "masquerade GC"
            );
        }
        Ok(())
    }

    /// The WireGuard MTU: `--mtu`, or with `auto` what fits the paths to the
    /// other segments' leaders and the peers (see [`wireguard::auto_mtu_towards`]).
    async fn mtu(&self, topo: &Topology) -> Result<u32> {
        if self.cfg.mtu == "auto" {
            let mut endpoints: Vec<std::net::SocketAddr> = topo
                .segments
                .iter()
                .filter(|s| s.id != topo.segment)
                .filter_map(|s| s.endpoint.resolve(&self.dns).ok())
                .collect();
            endpoints.extend(
                topo.peers
                    .iter()
                    .filter_map(|p| p.resolve_endpoint(&self.dns).ok().flatten()),
            );
            return Ok(wireguard::auto_mtu_towards(&endpoints).await?);
        }
        self.cfg
            .mtu
            .parse()
            .with_context(|| format!("--mtu {:?}: expected a number or auto", self.cfg.mtu))
    }

    /// The topology's peers in WireGuard's terms; leaders keep a keepalive
    /// towards other segments' leaders so that their health is observable.
    fn desired_peers(&self, topo: &Topology) -> Vec<DesiredPeer> {
        let health_keepalive = (self.cfg.leader_health_timeout.as_secs() / 4).clamp(1, 25) as u16;
        topo.peers
            .iter()
            .map(|p| {
                let endpoint = match p.resolve_endpoint(&self.dns) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(peer = %p.public_key, "cannot resolve endpoint: {e}");
                        None
                    }
                };
                let keepalive = p.persistent_keepalive.map(|k| k.secs()).or(match p.origin {
                    PeerOrigin::Segment(_) => Some(health_keepalive),
                    PeerOrigin::External(_) => None,
                });
                DesiredPeer {
                    public_key: wg_key(&p.public_key),
                    endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    persistent_keepalive: keepalive,
                    preshared_key: p.preshared_key.map(|k| crate::keys::Key(*k.as_bytes())),
                }
            })
            .collect()
    }

    /// Updates `wireguard-alive` from the segment peers' handshakes and
    /// received bytes, and the discovered endpoints.
    async fn update_health(&mut self, topo: &Topology, now: i64) {
        let stats = match self.wg.peer_stats().await {
            Ok(s) => s,
            Err(e) => {
                warn!("reading WireGuard peer statistics: {e}");
                return;
            }
        };
        let segment_keys: BTreeSet<PublicKey> = topo
            .peers
            .iter()
            .filter(|p| matches!(p.origin, PeerOrigin::Segment(_)))
            .map(|p| p.public_key)
            .collect();
        if !topo.leader {
            self.health.was_leader = false;
            self.health.alive = None;
            self.health.rx.clear();
        } else {
            if !self.health.was_leader {
                // Grace period from the moment we lead.
                self.health.alive = Some(now);
                self.health.was_leader = true;
            }
            for s in &stats {
                let k = public_key(&s.public_key);
                if !segment_keys.contains(&k) {
                    continue;
                }
                let grew = self
                    .health
                    .rx
                    .insert(k, s.rx_bytes)
                    .is_some_and(|old| s.rx_bytes > old);
                let handshake = s.last_handshake.map(unix);
                let mut alive = self.health.alive.unwrap_or(now);
                if grew {
                    alive = alive.max(now);
                }
                if let Some(h) = handshake {
                    alive = alive.max(h);
                }
                self.health.alive = Some(alive);
            }
        }
        // Only endpoints WireGuard heard from (as Kilo): the configured endpoint of a
        // peer never reached is no discovery, and publishing it would pin a stale
        // endpoint over the node's new one once it has a keepalive.
        let discovered: BTreeMap<PublicKey, SocketAddr> = stats
            .iter()
            .filter(|s| s.last_handshake.is_some())
            .filter_map(|s| s.endpoint.map(|e| (public_key(&s.public_key), e)))
            .collect();
        self.discovered = crate::model::format_discovered_endpoints(&discovered);
        let m = &self.state.metrics;
        for s in &stats {
            m.wireguard_peer(
                &s.public_key.to_string(),
                s.rx_bytes,
                s.tx_bytes,
                s.last_handshake.map(unix).unwrap_or(0) as u64,
            );
        }
    }

    fn update_metrics(
        &self,
        mesh: &Mesh,
        topo: &Topology,
        nodes: &[Node],
        now: i64,
        demoted: &BTreeSet<String>,
    ) {
        let m = &self.state.metrics;
        m.nodes.set(nodes.len() as i64);
        m.ready_nodes
            .set(nodes.iter().filter(|n| n.is_ready(now)).count() as i64);
        m.peers.set(mesh.peers.len() as i64);
        m.wireguard_peers.set(topo.peers.len() as i64);
        m.is_leader.set(topo.leader as i64);
        let mine = mesh
            .segments
            .iter()
            .find(|s| s.id == topo.segment)
            .map(|s| s.nodes.iter().filter(|n| demoted.contains(&n.name)).count())
            .unwrap_or(0);
        m.failed_over_leaders.set(mine as i64);
        match crate::datapath::counters::read_pinned(self.datapath.pin_dir()) {
            Ok(counters) => {
                for (c, v) in counters {
                    m.datapath_counter(c.name(), v.packets, v.bytes);
                }
            }
            Err(e) => debug!("reading datapath counters: {e:#}"),
        }
    }

    async fn shut_down(self) -> Result<()> {
        if !self.cfg.clean_up {
            info!("exiting without clean-up: WireGuard and the pinned datapath keep forwarding");
            return Ok(());
        }
        info!("cleaning up");
        let mut errors = Vec::new();
        if let Err(e) = self.datapath.clean_up() {
            errors.push(format!("eBPF datapath: {e:#}"));
        }
        match self.routes.clean_up().await {
            Ok(n) => info!(removed = n, "routes removed"),
            Err(e) => errors.push(format!("routes: {e}")),
        }
        if let Err(e) = self.wg.clean_up().await {
            errors.push(format!("WireGuard device: {e}"));
        }
        if self.cfg.cni {
            match std::fs::remove_file(&self.cfg.cni_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("CNI configuration: {e}")),
            }
        }
        if errors.is_empty() {
            info!("clean-up complete");
            Ok(())
        } else {
            bail!("clean-up incomplete: {}", errors.join("; "))
        }
    }
}

/// Wakes the loop on every change of the pod record directory (CNI ADD/DEL).
fn watch_pods(
    store: &cni::pods::PodStore,
) -> Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher as _;
    let dir = store.dir().to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            // Full: a wake-up is already pending, which is all this says.
            let _ = tx.try_send(());
        }
    })
    .context("creating an inotify watcher for the pod records")?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((watcher, rx))
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_in_is_no_input_change_but_readiness_is() {
        const NOW: i64 = 1_000_000;
        let node = |name: &str, seen: i64, alive: Option<i64>| Node {
            pod_cidr: Some("10.42.0.0/24".parse().unwrap()),
            key: Some(PublicKey::from_bytes([name.len() as u8; 32])),
            endpoint: Some("198.18.0.1:51820".parse().unwrap()),
            last_seen: Some(seen),
            wireguard_alive: alive,
            ..Node::named(name)
        };
        let settings = Settings::default();
        let none = BTreeSet::new();
        let inputs = |nodes: &[Node], now: i64, demoted: &BTreeSet<String>| {
            MeshInputs::new(nodes, &[], &settings, now, demoted)
        };
        let base = inputs(&[node("a", NOW - 5, Some(NOW - 3))], NOW, &none);
        // A check-in: newer last-seen and wireguard-alive, still ready.
        assert!(base == inputs(&[node("a", NOW, Some(NOW))], NOW + 2, &none));
        // The same node gone stale, passed over, or with another endpoint: a change.
        assert!(base != inputs(&[node("a", NOW - 5, Some(NOW - 3))], NOW + 60, &none));
        assert!(base != inputs(&[node("a", NOW, None)], NOW, &["a".to_owned()].into()));
        let mut moved = node("a", NOW, None);
        moved.endpoint = Some("198.18.0.2:51820".parse().unwrap());
        assert!(base != inputs(&[moved], NOW, &none));
    }

    #[test]
    fn readiness_clock_stops_during_an_outage() {
        let stale = |since: i64| Freshness::Stale {
            since: UNIX_EPOCH + Duration::from_secs(since as u64),
            reason: "down".into(),
        };
        let mut o = Outage::default();
        assert_eq!(o.readiness_now(1000), 1000);
        o.update(&stale(1000), 1001);
        // Stopped at the outage's start however long it lasts.
        assert_eq!(o.readiness_now(1100), 1000);
        o.update(&stale(1000), 1100);
        o.update(&Freshness::Fresh, 1120);
        // Behind by the 120 s outage and the 30 s catch-up for the catch-up
        // and one readiness window, then real time.
        assert_eq!(o.readiness_now(1130), 980);
        assert_eq!(o.readiness_now(1150), 1000);
        assert_eq!(o.readiness_now(1209), 1059);
        assert_eq!(o.readiness_now(1210), 1210);
        // A second outage soon after the first: the two add up.
        o.update(&stale(1125), 1126);
        assert_eq!(o.readiness_now(1150), 975);
        o.update(&Freshness::Fresh, 1135);
        assert_eq!(o.readiness_now(1140), 1140 - 190);
        assert_eq!(o.readiness_now(1224), 1224 - 190);
        assert_eq!(o.readiness_now(1225), 1225);
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "weft",
            "--dir",
            "/d",
            "--hostname",
            "a",
            "--encapsulate",
            "always",
            "--service-cidr",
            "10.43.0.0/16,10.44.0.0/16",
        ])
        .unwrap();
        assert_eq!(c.encapsulate, Some(Encapsulate::Always));
        assert_eq!(c.service_cidr.len(), 2);
        assert!(c.clean_up);
        let k = Config::try_parse_from(["weft", "--backend", "kubernetes", "--kubeconfig", "/k"])
            .unwrap();
        assert_eq!(k.backend, BackendKind::Kubernetes);
        assert!(Config::try_parse_from(["weft", "--backend", "etcd"]).is_err());
        let c = Config::try_parse_from(["weft", "clean-up", "--interface", "wg9"]).unwrap();
        assert!(matches!(c.command, Some(Command::CleanUp(a)) if a.interface == "wg9"));
        assert!(
            Config::try_parse_from(["weft", "--dir", "/d", "--mesh-granularity", "bogus"]).is_err()
        );
    }
}
