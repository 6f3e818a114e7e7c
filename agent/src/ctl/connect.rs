//! `weftctl connect NAME --allowed-ip CIDR[,…]`: Kilo's `kgctl connect`.
//!
//! Joins this machine (a laptop, a CI runner: anything outside the cluster)
//! to the mesh as the external peer `NAME`, and keeps it joined while it
//! runs:
//!
//! 1. a WireGuard interface (`--interface`, kernel or wireguard-go as
//!    `--wireguard` says, like the agent) with this machine's key
//!    (`--private-key FILE`, else a new one for this run) and the first
//!    allowed IP as its address, listening on the mesh's port (weftctl's
//!    `--port`, else `settings.yaml`'s, as kgctl's);
//! 2. the peer registered in the backend: `peers/NAME.yaml` in the
//!    directory backend, a `weft.dev` `Peer` with Kubernetes (allowed IPs,
//!    public key, `--persistent-keepalive`), so that the leaders add it;
//! 3. on every change of the backend (a node added or gone, a new leader,
//!    a new endpoint) and every `--resync-period`, the configuration
//!    `weftctl showconf peer NAME` prints ([`Mesh::peer_conf`]) applied to
//!    the interface peer by peer ([`WireGuard::apply_peers`]), and a route
//!    into the interface for every allowed IP of those peers (pod CIDRs,
//!    private and WireGuard IPs, allowed location IPs, other peers) and for
//!    `--allowed-ips` and the service CIDRs, which go to the segment of the
//!    first node by name as with kgctl ([`Routes::reconcile`], by
//!    difference);
//! 4. on SIGTERM/SIGINT, unless `--clean-up=false`: the peer it registered
//!    is removed, then its routes and the interface (and wireguard-go).
//!
//! A peer `NAME` that already exists with this machine's key (given with
//! `--private-key`) is taken over and left in place on exit; one with
//! another key is someone else's: connect refuses to run.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::FutureExt as _;
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::Overrides;
use crate::backend::Backend;
use crate::backend::dir::{DirBackend, DirWatch};
use crate::backend::kubernetes::KubeBackend;
use crate::keys::KeyPair;
use crate::model::{Keepalive, PeerObject, PeerSpec, SystemResolver};
use crate::routes::{DesiredRoute, LinkRef, MAIN_TABLE, RouteVia, Routes};
use crate::topology::{Mesh, PeerOrigin, TopologyError, WgPeer};
use crate::wireguard::{self, DesiredPeer, WireGuard};

/// The routing protocol of `weftctl connect`'s routes (`ip route show proto
/// 88`): not the agent's, so that a machine that is a node of one mesh can
/// connect to another.
pub const RTPROT_WEFT_CONNECT: u8 = 0x58;

/// `weftctl connect`'s flags (kgctl connect's, plus `--wireguard`).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The peer's name: `peers/NAME.yaml` in the directory, the `Peer` NAME in the cluster.
    pub name: String,
    /// This machine's addresses in the mesh, the peer's allowed IPs (comma-separated CIDRs or
    /// addresses). The first one's address is given to the interface and is the source of this
    /// machine's traffic into the mesh.
    #[arg(short = 'a', long = "allowed-ip", required = true, value_delimiter = ',', value_parser = parse_address)]
    pub allowed_ip: Vec<IpNet>,
    /// More CIDRs of the cluster to route into the mesh, e.g. the service CIDR
    /// (comma-separated); they go to the segment of the first node by name, as with kgctl.
    /// The mesh's own service CIDRs (settings.yaml) are always added.
    #[arg(long, value_delimiter = ',', value_parser = parse_network)]
    pub allowed_ips: Vec<IpNet>,
    /// The WireGuard interface; created if it does not exist.
    #[arg(short = 'i', long, default_value = "weft0")]
    pub interface: String,
    /// Seconds between keepalives, both ways (written into the peer for the leaders); 0 is off.
    /// Behind NAT the leaders can only answer after this machine spoke first.
    #[arg(long, default_value_t = 10)]
    pub persistent_keepalive: u16,
    /// How often to re-read the mesh and re-check everything, besides every backend change.
    #[arg(long, default_value = "30s", value_parser = crate::args::parse_duration)]
    pub resync_period: Duration,
    /// A file holding this machine's WireGuard private key (base64, as `wg genkey` writes it;
    /// mode 0600). Default: a new key for this run.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// On exit remove the peer (if connect created it), the routes and the interface.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub clean_up: bool,
    /// MTU of the interface: a number, or `auto` (the default route interface's MTU − 80).
    #[arg(long, default_value = "1420")]
    pub mtu: String,
    /// WireGuard implementation: `kernel`, `userspace` (wireguard-go), or `auto` (kernel where the
    /// module exists).
    #[arg(long, default_value = "auto")]
    pub wireguard: wireguard::Mode,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// A CIDR or a bare address, as given (host bits kept: they are the
/// interface's address).
fn parse_address(s: &str) -> Result<IpNet, String> {
    crate::model::parse_cidr(s)
}

fn parse_network(s: &str) -> Result<IpNet, String> {
    crate::model::parse_cidr(s).map(|n| n.trunc())
}

/// The interface's address: the first allowed IP's, as a host address.
pub fn interface_address(allowed_ip: &[IpNet]) -> Option<IpNet> {
    allowed_ip.first().map(|n| IpNet::from(n.addr()))
}

/// The peer object `connect` registers.
pub fn peer_object(name: &str, args: &Args, keys: &KeyPair) -> PeerObject {
    let mut allowed: Vec<String> = Vec::new();
    for c in &args.allowed_ip {
        let c = c.trunc().to_string();
        if !allowed.contains(&c) {
            allowed.push(c);
        }
    }
    PeerObject {
        name: name.to_owned(),
        spec: PeerSpec {
            allowed_ips: allowed,
            public_key: keys.public_key().to_base64(),
            endpoint: None,
            persistent_keepalive: Keepalive::from_secs(args.persistent_keepalive)
                .map(|k| i64::from(k.secs())),
            preshared_key: None,
        },
    }
}

/// What the connecting machine configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `showconf peer NAME`'s peers, the extra CIDRs added to the first
    /// node's segment.
    pub peers: Vec<WgPeer>,
    /// Extra CIDRs left out (already another peer's, or no node to carry them).
    pub warnings: Vec<String>,
}

/// The WireGuard peers of external peer `name`: the configuration
/// `weftctl showconf peer NAME` prints, with `extra` (`--allowed-ips`, the
/// service CIDRs) added to the segment of the first ready node by name, as
/// kgctl does.
pub fn plan(mesh: &Mesh, name: &str, extra: &[IpNet]) -> Result<Plan, TopologyError> {
    let mut peers = mesh.peer_conf(name)?.peers;
    let mut warnings = Vec::new();
    let mut taken: BTreeSet<IpNet> = peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    if let Some(me) = mesh.peer(name) {
        taken.extend(me.allowed_ips.iter().copied());
    }
    let first = mesh
        .segments
        .iter()
        .flat_map(|s| s.nodes.iter().map(move |n| (n.name.as_str(), s)))
        .min_by_key(|(n, _)| *n)
        .map(|(_, s)| s);
    let carrier = first.and_then(|s| {
        peers
            .iter()
            .position(|p| p.origin == PeerOrigin::Segment(s.id.clone()))
    });
    for c in extra.iter().map(IpNet::trunc) {
        if taken.contains(&c) {
            continue;
        }
        match carrier {
            Some(i) => {
                peers[i].allowed_ips.push(c);
                taken.insert(c);
            }
            None => warnings.push(format!("{c}: no ready node in the mesh to route it to")),
        }
    }
    Ok(Plan { peers, warnings })
}

/// The peers in WireGuard's terms (DNS endpoints resolved; one that does
/// not resolve is left to what the device has).
pub fn desired_peers(peers: &[WgPeer]) -> Vec<DesiredPeer> {
    peers
        .iter()
        .map(|p| {
            let endpoint = match p.resolve_endpoint(&SystemResolver) {
                Ok(e) => e,
                Err(e) => {
                    warn!(peer = %p.public_key, "cannot resolve endpoint: {e}");
                    None
                }
            };
            DesiredPeer {
                public_key: crate::keys::Key(*p.public_key.as_bytes()),
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive.map(|k| k.secs()),
                preshared_key: p.preshared_key.map(|k| crate::keys::Key(*k.as_bytes())),
            }
        })
        .collect()
}

/// The destinations routed into the interface: every allowed IP of every
/// peer, sorted, less those holding a peer's endpoint (WireGuard's own
/// packets to it must not go into the tunnel), which are returned second.
pub fn route_destinations(peers: &[DesiredPeer]) -> (Vec<IpNet>, Vec<IpNet>) {
    let endpoints: Vec<IpAddr> = peers
        .iter()
        .filter_map(|p| p.endpoint.map(|e| e.ip()))
        .collect();
    let all: BTreeSet<IpNet> = peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().map(IpNet::trunc))
        .collect();
    all.into_iter()
        .partition(|c| !endpoints.iter().any(|e| c.contains(e)))
}

/// Where the peer is registered.
enum Registry {
    Dir(DirBackend),
    Kube(kube::Client),
}

impl Registry {
    fn describe(&self, name: &str) -> String {
        match self {
            Registry::Dir(d) => d.peer_path(name).display().to_string(),
            Registry::Kube(_) => format!("Peer {name} (weft.dev)"),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<PeerSpec>> {
        match self {
            Registry::Dir(d) => d
                .read_peer(name)
                .map(|o| o.map(|o| o.spec))
                .map_err(|e| anyhow::anyhow!("{e}")),
            Registry::Kube(c) => {
                let api: kube::Api<crate::model::PeerResource> = kube::Api::all(c.clone());
                Ok(api
                    .get_opt(name)
                    .await
                    .with_context(|| format!("reading Peer {name}"))?
                    .map(|p| p.spec))
            }
        }
    }

    async fn put(&self, peer: &PeerObject, exists: bool) -> Result<()> {
        match self {
            Registry::Dir(d) => {
                d.write_peer(peer)?;
            }
            Registry::Kube(c) => {
                let api: kube::Api<crate::model::PeerResource> = kube::Api::all(c.clone());
                let pp = kube::api::PostParams {
                    field_manager: Some("weftctl".into()),
                    ..Default::default()
                };
                if exists {
                    let mut cur = api
                        .get(&peer.name)
                        .await
                        .with_context(|| format!("reading Peer {}", peer.name))?;
                    cur.spec = peer.spec.clone();
                    api.replace(&peer.name, &pp, &cur)
                        .await
                        .with_context(|| format!("updating Peer {}", peer.name))?;
                } else {
                    let obj = crate::model::PeerResource::new(&peer.name, peer.spec.clone());
                    api.create(&pp, &obj)
                        .await
                        .with_context(|| format!("creating Peer {}", peer.name))?;
                }
            }
        }
        Ok(())
    }

    /// Whether it was there.
    async fn delete(&self, name: &str) -> Result<bool> {
        match self {
            Registry::Dir(d) => Ok(d.remove_peer(name)?),
            Registry::Kube(c) => {
                let api: kube::Api<crate::model::PeerResource> = kube::Api::all(c.clone());
                match api.delete(name, &kube::api::DeleteParams::default()).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
                    Err(e) => Err(e).with_context(|| format!("deleting Peer {name}")),
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `weftctl connect` until SIGTERM/SIGINT: `dir` is the directory
/// backend, else the cluster of `kubeconfig` (as kubectl resolves it).
pub fn run(
    args: &Args,
    dir: Option<&Path>,
    kubeconfig: Option<&Path>,
    overrides: &Overrides,
    leader_health_timeout: Duration,
) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).context("--log-level")?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    crate::backend::kubernetes::install_crypto_provider();
    if !crate::backend::dir::valid_name(&args.name) {
        bail!("invalid peer name {:?}", args.name);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let opts = Opts {
            args: args.clone(),
            overrides: overrides.clone(),
            leader_health_timeout,
        };
        match dir {
            Some(d) => {
                let backend = DirWatch::new(DirBackend::new(d))?;
                connect(opts, backend, Registry::Dir(DirBackend::new(d))).await
            }
            None => {
                let (client, server) = crate::backend::kubernetes::client(kubeconfig)
                    .await
                    .context("no --dir given, so connecting to the Kubernetes cluster")?;
                let backend = KubeBackend::start(client.clone(), server);
                connect(opts, backend, Registry::Kube(client)).await
            }
        }
    })
}

struct Opts {
    args: Args,
    overrides: Overrides,
    leader_health_timeout: Duration,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn connect<B: Backend>(opts: Opts, mut backend: B, registry: Registry) -> Result<()> {
    let mut signals = Signals::new()?;
    let args = &opts.args;
    let name = args.name.clone();
    let keys = match &args.private_key {
        Some(path) => {
            crate::keys::load(path).with_context(|| format!("--private-key {}", path.display()))?
        }
        None => KeyPair::generate(),
    };
    let address = interface_address(&args.allowed_ip).context("--allowed-ip is required")?;
    info!(peer = %name, public_key = %keys.public_key(), address = %address, backend = %backend.describe(), "weftctl connect starting");

    // The first complete view of the mesh.
    let mut said = false;
    while !backend.synced() {
        if !said {
            info!("waiting for the first list of nodes and peers");
            said = true;
        }
        tokio::select! {
            _ = backend.next_event() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = signals.stop() => return Ok(()),
        }
    }

    // Someone else's peer of this name is not taken over.
    let own = peer_object(&name, args, &keys);
    let existing = registry.get(&name).await?;
    if let Some(spec) = &existing
        && spec.public_key.trim() != own.spec.public_key
    {
        bail!(
            "{} exists with another public key ({}): it is another machine's peer, or one left by \
             a connect that was killed (with a key of its own). Choose another name, give that \
             machine's key with --private-key, or remove it",
            registry.describe(&name),
            spec.public_key
        );
    }

    let wg = WireGuard::open(wireguard::Options::new(&args.interface, args.wireguard))
        .await
        .with_context(|| format!("opening WireGuard interface {}", args.interface))?;
    if wg.adopted() {
        let dev = wg.device().await?;
        if dev
            .private_key
            .as_ref()
            .is_some_and(|k| k != keys.private_key())
        {
            // Dropping it leaves the device as it was.
            bail!(
                "interface {} exists with another key (a weft agent's, or left by connect \
                 --clean-up=false): choose another with --interface, or remove it",
                args.interface
            );
        }
        info!(interface = %args.interface, "adopting the existing interface");
    }
    let routes = match Routes::new(MAIN_TABLE, RTPROT_WEFT_CONNECT) {
        Ok(r) => r,
        Err(e) => {
            let _ = wg.clean_up().await;
            return Err(e).context("netlink socket");
        }
    };
    let mut c = Connector {
        opts,
        source: backend.describe(),
        backend,
        registry,
        keys,
        own,
        address,
        wg,
        routes,
        created: false,
        reported: BTreeSet::new(),
        last: None,
    };
    let r = c.setup(existing.as_ref()).await;
    if let Err(e) = r {
        let _ = c.shut_down().await;
        return Err(e);
    }
    c.serve(&mut signals).await;
    c.shut_down().await
}

struct Connector<B> {
    opts: Opts,
    source: String,
    backend: B,
    registry: Registry,
    keys: KeyPair,
    own: PeerObject,
    address: IpNet,
    wg: WireGuard,
    routes: Routes,
    /// Whether connect created the peer (and so removes it on exit).
    created: bool,
    /// Problems already logged (each is said once).
    reported: BTreeSet<String>,
    /// The last configuration, for the log.
    last: Option<String>,
}

impl<B: Backend> Connector<B> {
    /// The interface first (so that the leaders find it ready when they
    /// add the peer), then the peer.
    async fn setup(&mut self, existing: Option<&PeerSpec>) -> Result<()> {
        let args = &self.opts.args;
        let mtu = match args.mtu.as_str() {
            "auto" => wireguard::auto_mtu().await?,
            m => m
                .parse()
                .with_context(|| format!("--mtu {m:?}: expected a number or auto"))?,
        };
        self.wg.set_mtu(mtu).await?;
        self.wg.set_addresses(&[self.address]).await?;
        self.wg.up().await?;
        let what = self.registry.describe(&self.own.name);
        match existing {
            None => {
                self.registry.put(&self.own, false).await?;
                self.created = true;
                info!(peer = %self.own.name, "registered {what}");
            }
            Some(spec) if *spec == self.own.spec => {
                info!(peer = %self.own.name, "{what} exists with this key: using it (left in place on exit)");
            }
            Some(_) => {
                self.registry.put(&self.own, true).await?;
                info!(peer = %self.own.name, "{what} exists with this key: updated it (left in place on exit)");
            }
        }
        Ok(())
    }

    /// Reconciles on every backend change, resync tick, SIGHUP and
    /// wireguard-go restart, until SIGTERM/SIGINT.
    async fn serve(&mut self, signals: &mut Signals) {
        let mut tick = tokio::time::interval(self.opts.args.resync_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut restarts = self.wg.restarts();
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(_) = self.backend.next_event() => {
                    // Coalesce a burst of events into one reconcile.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while let Some(Some(_)) = self.backend.next_event().now_or_never() {}
                }
                Ok(()) = restarts.changed() => {
                    warn!("wireguard-go was restarted: re-applying the routes");
                }
                _ = signals.hup.recv() => info!("SIGHUP: forced resync"),
                _ = signals.term.recv() => return,
                _ = signals.int.recv() => return,
            }
            match self.reconcile().await {
                Ok(()) => {
                    if last_error.take().is_some() {
                        info!("reconcile succeeded again");
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!("reconcile failed (retried on the next change or resync): {msg}");
                    } else {
                        debug!("reconcile failed again: {msg}");
                    }
                    last_error = Some(msg);
                }
            }
        }
    }

    fn report(&mut self, seen: &mut BTreeSet<String>, msg: String) {
        if !self.reported.contains(&msg) {
            warn!("{msg}");
        }
        seen.insert(msg);
    }

    async fn reconcile(&mut self) -> Result<()> {
        let mut snap = self.backend.snapshot().await?;
        let name = self.own.name.clone();
        let mut seen = BTreeSet::new();
        if !snap.peers.iter().any(|p| p.name == name) {
            // Configured all the same: the mesh answers once it is back.
            self.report(
                &mut seen,
                format!(
                    "peer {name} is not in {} (removed by someone?): the leaders will not answer",
                    self.source
                ),
            );
            snap.peers.push(self.own.clone());
            snap.peers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let loaded = super::build(
            snap,
            &self.source,
            &self.opts.overrides,
            unix_now(),
            self.opts.leader_health_timeout,
        )?;
        for s in &loaded.skipped {
            self.report(&mut seen, s.clone());
        }
        let mesh = &loaded.mesh;
        let mut extra = self.opts.args.allowed_ips.clone();
        extra.extend(mesh.settings.service_cidrs.iter().copied());
        let plan = plan(mesh, &name, &extra)?;
        for w in &plan.warnings {
            self.report(&mut seen, format!("--allowed-ips {w}"));
        }
        // As kgctl: the mesh's port (settings.yaml, or weftctl's --port).
        let port = mesh.settings.port.get();
        self.wg.set_interface(self.keys.private_key(), port).await?;
        // After a wireguard-go restart these are restored by the device
        // itself; here they are checked again, by difference.
        self.wg.set_addresses(&[self.address]).await?;
        self.wg.up().await?;
        let peers = desired_peers(&plan.peers);
        let ps = self.wg.apply_peers(&peers).await?;

        let (dsts, skipped) = route_destinations(&peers);
        for c in &skipped {
            self.report(
                &mut seen,
                format!("{c} holds a leader's endpoint: not routed into the tunnel"),
            );
        }
        let iface = LinkRef::Name(self.opts.args.interface.clone());
        let src = self.address.addr();
        let desired: Vec<DesiredRoute> = dsts
            .iter()
            .map(|d| DesiredRoute {
                dst: *d,
                via: RouteVia::Device(iface.clone()),
                src: (d.addr().is_ipv4() == src.is_ipv4()).then_some(src),
                metric: None,
                mtu: None,
            })
            .collect();
        let rs = self.routes.reconcile(&desired).await?;
        for e in &rs.failed {
            warn!("{e}");
        }
        self.reported = seen;

        let summary = describe(mesh, &plan.peers);
        if ps.touched() || rs.added + rs.replaced + rs.removed > 0 {
            info!(
                peers_added = ps.added,
                peers_removed = ps.removed,
                peers_changed = ps.changed,
                routes_added = rs.added,
                routes_replaced = rs.replaced,
                routes_removed = rs.removed,
                routes = dsts.len(),
                "configuration updated"
            );
        }
        if self.last.as_ref() != Some(&summary) {
            info!("connected to {summary}");
            self.last = Some(summary);
        }
        Ok(())
    }

    /// Removes what connect set up, unless `--clean-up=false`: the peer
    /// (first, so that the leaders drop it), the interface, its routes.
    async fn shut_down(self) -> Result<()> {
        if !self.opts.args.clean_up {
            info!("exiting without clean-up: the peer, the interface and its routes stay");
            return Ok(());
        }
        let mut errors = Vec::new();
        let what = self.registry.describe(&self.own.name);
        if self.created {
            match self.registry.delete(&self.own.name).await {
                Ok(_) => info!("removed {what}"),
                Err(e) => errors.push(format!("{what}: {e:#}")),
            }
        } else {
            info!("{what} was there before: left in place");
        }
        // The interface first: its routes go with it at once, so that
        // nothing meant for the mesh leaves by the default route meanwhile.
        let iface = self.wg.name().to_owned();
        match self.wg.clean_up().await {
            Ok(()) => info!(interface = %iface, "removed the interface"),
            Err(e) => errors.push(format!("interface {iface}: {e}")),
        }
        if let Err(e) = self.routes.reconcile(&[]).await {
            errors.push(format!("routes: {e}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("clean-up incomplete: {}", errors.join("; "))
        }
    }
}

/// `location:aws via aws-1 (198.18.0.10:51820), …, peer other`, for the log.
fn describe(mesh: &Mesh, peers: &[WgPeer]) -> String {
    let parts: Vec<String> = peers
        .iter()
        .map(|p| {
            let endpoint = p
                .endpoint
                .as_ref()
                .map_or_else(|| "no endpoint".to_owned(), ToString::to_string);
            match &p.origin {
                PeerOrigin::Segment(id) => {
                    let leader = mesh
                        .segments
                        .iter()
                        .find(|s| &s.id == id)
                        .map(|s| s.leader_node().name.as_str())
                        .unwrap_or("?");
                    format!("{id} via {leader} ({endpoint})")
                }
                PeerOrigin::External(n) => format!("peer {n} ({endpoint})"),
            }
        })
        .collect();
    if parts.is_empty() {
        "nothing yet (no ready node)".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Node, Peer, PublicKey, Settings};
    use clap::Parser as _;

    const NOW: i64 = 1_700_000_000;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        let mut all = vec!["connect"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).unwrap().args
    }

    fn node(name: &str, location: &str, public: &str, private: &str, pod: &str, k: u8) -> Node {
        Node {
            pod_cidr: Some(pod.parse().unwrap()),
            location: location.into(),
            key: Some(PublicKey::from_bytes([k; 32])),
            endpoint: Some(format!("{public}:51820").parse::<Endpoint>().unwrap()),
            internal_ip: Some(private.parse().unwrap()),
            last_seen: Some(NOW),
            ..Node::named(name)
        }
    }

    fn laptop() -> Peer {
        Peer {
            name: "laptop".into(),
            allowed_ips: vec!["10.5.0.1/32".parse().unwrap()],
            public_key: PublicKey::from_bytes([9; 32]),
            endpoint: None,
            persistent_keepalive: Keepalive::from_secs(10),
            preshared_key: None,
        }
    }

    fn mesh(settings: &Settings) -> Mesh {
        let nodes = vec![
            node(
                "b1",
                "gcp",
                "198.18.0.12",
                "192.168.2.10/24",
                "10.42.2.0/24",
                3,
            ),
            node(
                "a1",
                "aws",
                "198.18.0.10",
                "192.168.1.10/24",
                "10.42.0.0/24",
                1,
            ),
            node(
                "a2",
                "aws",
                "198.18.0.11",
                "192.168.1.11/24",
                "10.42.1.0/24",
                2,
            ),
        ];
        Mesh::build(&nodes, &[laptop()], settings, NOW, &BTreeSet::new()).unwrap()
    }

    #[test]
    fn flags_are_kgctls() {
        let a = args(&["laptop", "--allowed-ip", "10.5.0.1/24,10.6.0.0/24"]);
        assert_eq!(a.name, "laptop");
        assert_eq!(a.allowed_ip.len(), 2);
        assert_eq!(a.interface, "weft0");
        assert_eq!(a.persistent_keepalive, 10);
        assert_eq!(a.resync_period, Duration::from_secs(30));
        assert!(a.clean_up && a.private_key.is_none());
        // The address keeps its host bits; the peer's allowed IPs do not.
        assert_eq!(
            interface_address(&a.allowed_ip),
            Some("10.5.0.1/32".parse().unwrap())
        );
        let keys = KeyPair::generate();
        let o = peer_object("laptop", &a, &keys);
        assert_eq!(o.spec.allowed_ips, vec!["10.5.0.0/24", "10.6.0.0/24"]);
        assert_eq!(o.spec.public_key, keys.public_key().to_base64());
        assert_eq!(o.spec.persistent_keepalive, Some(10));
        let a = args(&[
            "laptop",
            "-a",
            "10.5.0.1",
            "--allowed-ips",
            "10.96.0.1/12",
            "-i",
            "wg7",
            "--persistent-keepalive",
            "0",
            "--resync-period",
            "2s",
            "--clean-up",
            "false",
            "--wireguard",
            "userspace",
        ]);
        assert_eq!(
            a.allowed_ips,
            vec!["10.96.0.0/12".parse::<IpNet>().unwrap()]
        );
        assert_eq!(a.interface, "wg7");
        assert!(!a.clean_up);
        assert_eq!(a.wireguard, wireguard::Mode::Userspace);
        assert_eq!(peer_object("x", &a, &keys).spec.persistent_keepalive, None);
        assert_eq!(
            peer_object("x", &a, &keys).spec.allowed_ips,
            vec!["10.5.0.1/32"]
        );
        // An allowed IP is required.
        assert!(Cli::try_parse_from(["connect", "laptop"]).is_err());
    }

    #[test]
    fn weftctl_connect_takes_the_global_flags() {
        use crate::ctl::cli::{Cli, Command};
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "weftctl",
            "connect",
            "laptop",
            "-a",
            "10.5.0.1",
            "--dir",
            "/srv/mesh",
            "--port",
            "51821",
        ])
        .unwrap();
        assert_eq!(cli.port.map(|p| p.get()), Some(51821));
        assert_eq!(cli.dir.as_deref(), Some(Path::new("/srv/mesh")));
        let Command::Connect(a) = cli.command else {
            panic!("not connect")
        };
        assert_eq!(a.name, "laptop");
    }

    #[test]
    fn the_plan_is_showconf_peer_plus_the_extra_cidrs_on_the_first_nodes_segment() {
        let settings = Settings::default();
        let m = mesh(&settings);
        let conf = m.peer_conf("laptop").unwrap().peers;
        let extra: Vec<IpNet> = vec![
            "10.96.0.0/12".parse().unwrap(),
            // Already the mesh's: not added twice.
            "10.42.2.0/24".parse().unwrap(),
            // Its own: never routed away.
            "10.5.0.1/32".parse().unwrap(),
        ];
        let p = plan(&m, "laptop", &extra).unwrap();
        assert!(p.warnings.is_empty());
        assert_eq!(p.peers.len(), 2);
        // a1, the first node by name, is in aws: aws's peer carries the service CIDR.
        let aws = &p.peers[0];
        assert_eq!(
            aws.origin,
            PeerOrigin::Segment(m.segment_of("a1").unwrap().id.clone())
        );
        assert_eq!(aws.allowed_ips.last(), Some(&extra[0]));
        assert_eq!(aws.allowed_ips.len(), conf[0].allowed_ips.len() + 1);
        assert_eq!(p.peers[1], conf[1]);
        // The peer's own keepalive, towards the leaders' public endpoints.
        assert_eq!(aws.persistent_keepalive, Keepalive::from_secs(10));
        assert_eq!(
            aws.endpoint.as_ref().unwrap().to_string(),
            "198.18.0.10:51820"
        );

        let desired = desired_peers(&p.peers);
        let (routes, skipped) = route_destinations(&desired);
        assert!(skipped.is_empty());
        for want in [
            "10.42.0.0/24",
            "10.42.1.0/24",
            "10.42.2.0/24",
            "192.168.1.11/32",
            "10.96.0.0/12",
        ] {
            assert!(
                routes.contains(&want.parse().unwrap()),
                "{want}: {routes:?}"
            );
        }
        assert!(!routes.contains(&"10.5.0.1/32".parse().unwrap()));

        // No ready node: nothing to carry them.
        let empty = Mesh::build(&[], &[laptop()], &settings, NOW, &BTreeSet::new()).unwrap();
        let p = plan(&empty, "laptop", &extra[..1]).unwrap();
        assert!(p.peers.is_empty());
        assert_eq!(p.warnings.len(), 1);
        assert!(matches!(
            plan(&m, "nobody", &[]),
            Err(TopologyError::UnknownPeer(_))
        ));
    }

    #[test]
    fn an_endpoint_is_never_routed_into_the_tunnel() {
        let peers = vec![DesiredPeer {
            public_key: crate::keys::Key([1; 32]),
            endpoint: Some("198.18.0.10:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.42.0.0/24".parse().unwrap(),
                "198.18.0.10/32".parse().unwrap(),
            ],
            persistent_keepalive: Some(10),
            preshared_key: None,
        }];
        let (routes, skipped) = route_destinations(&peers);
        assert_eq!(routes, vec!["10.42.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(skipped, vec!["198.18.0.10/32".parse::<IpNet>().unwrap()]);
    }
}
