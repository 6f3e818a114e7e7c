//! The WireGuard device: its lifecycle (kernel module or a supervised
//! wireguard-go), its configuration by difference, peer by peer, and its
//! link settings (addresses, MTU, state) over rtnetlink.
//!
//! ```text
//! open(Options)            kernel link, or adopt/spawn wireguard-go
//!   set_interface(key, port)      only when the device differs
//!   apply_peers(&[DesiredPeer])   per-peer diff; unchanged peers untouched
//!   set_addresses / set_mtu / up  by difference
//!   peer_stats()                  rx/tx, last handshake, current endpoint
//! clean_up()               stop wireguard-go, delete the link and socket
//! ```
//!
//! Dropping a [`WireGuard`] without [`WireGuard::clean_up`] leaves the
//! device and its wireguard-go running (as a `kill -9` of the agent does);
//! the next [`WireGuard::open`] adopts them, so a restart drops no packet.
//!
//! wireguard-go is started, restarted and watched from tokio tasks: it
//! inherits the network namespace of the runtime's threads.

pub mod diff;
mod kernel;
pub mod link;
mod process;
mod state;
pub mod uapi;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkWireguard};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;

pub use diff::{DuplicatePeer, PeerChange, PeerDiff, diff_peers, normalize_allowed_ips};
pub use kernel::KernelError;
pub use link::{AddressSummary, AutoMtuError, WIREGUARD_OVERHEAD};
pub use process::ProcessError;
pub use state::{DesiredPeer, DeviceState, PeerState, PeerStats, PeerSummary};
pub use uapi::UapiError;

use crate::keys::PrivateKey;
use kernel::KernelWg;
use process::Process;
use state::DeviceUpdate;
use uapi::Uapi;

/// How long wireguard-go gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `--wireguard auto|kernel|userspace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The kernel module where it exists, else wireguard-go.
    #[default]
    Auto,
    /// The kernel module, or fail.
    Kernel,
    /// wireguard-go.
    Userspace,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "kernel" => Ok(Mode::Kernel),
            "userspace" => Ok(Mode::Userspace),
            _ => Err(format!(
                "unknown WireGuard mode {s:?} (expected auto, kernel or userspace)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Kernel => "kernel",
            Mode::Userspace => "userspace",
        })
    }
}

/// Which implementation runs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Kernel,
    Userspace,
}

/// How to open the device.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interface name (`--interface`, default `weft0`).
    pub name: String,
    pub mode: Mode,
    /// The wireguard-go binary (default: `wireguard-go` from `PATH`).
    pub wireguard_go: PathBuf,
    /// Where wireguard-go's output goes (default:
    /// `/var/run/wireguard/<name>.log`, next to its socket).
    pub log_path: Option<PathBuf>,
}

impl Options {
    pub fn new(name: impl Into<String>, mode: Mode) -> Options {
        Options {
            name: name.into(),
            mode,
            wireguard_go: PathBuf::from("wireguard-go"),
            log_path: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error(
        "kernel WireGuard is not available (creating a `wireguard` link {name} failed: {reason}); \
         use --wireguard auto or userspace to run wireguard-go"
    )]
    KernelUnavailable { name: String, reason: String },
    #[error("interface {name} exists and is a {kind} link, not WireGuard; refusing to touch it")]
    NotWireGuard { name: String, kind: String },
    #[error("interface {name} is {found} WireGuard, but --wireguard {mode} was asked")]
    ModeConflict {
        name: String,
        found: &'static str,
        mode: Mode,
    },
    #[error(
        "{socket} is served by a wireguard-go (pid {pid:?}) but this network namespace has no \
         interface {name}: another namespace uses the same interface name and socket directory \
         (give each node a private /run/wireguard)"
    )]
    ForeignSocket {
        name: String,
        socket: PathBuf,
        pid: Option<u32>,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Uapi(#[from] UapiError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    DuplicatePeer(#[from] DuplicatePeer),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> WgError {
    let context = context.into();
    move |source| WgError::Netlink { context, source }
}

/// The MTU for WireGuard when `--mtu auto`: the smallest path MTU towards
/// `endpoints` (where WireGuard's packets really go, by whichever device and
/// route) minus [`WIREGUARD_OVERHEAD`]; without any endpoint whose path the
/// kernel knows, or with a path too narrow for WireGuard, the default
/// route's interface MTU minus the overhead.
pub async fn auto_mtu_towards(endpoints: &[std::net::SocketAddr]) -> Result<u32, AutoMtuError> {
    let paths: Vec<(std::net::SocketAddr, u32)> = endpoints
        .iter()
        .filter_map(|e| match link::path_mtu(*e) {
            Ok(m) => Some((*e, m)),
            Err(err) => {
                tracing::debug!(endpoint = %e, "no path MTU: {err}");
                None
            }
        })
        .collect();
    match link::mtu_for_paths(&paths) {
        Some(Ok(m)) => Ok(m),
        // A path too narrow for WireGuard (a learned path MTU, say) must not
        // stop the agent: what it did before, with a warning.
        Some(Err(e)) => {
            tracing::warn!("{e}: taking the default route's interface MTU instead");
            auto_mtu().await
        }
        None => auto_mtu().await,
    }
}

/// The default route's interface MTU minus [`WIREGUARD_OVERHEAD`].
pub async fn auto_mtu() -> Result<u32, AutoMtuError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(AutoMtuError::Socket)?;
    let task = tokio::spawn(conn);
    let r = link::auto_mtu(&h).await;
    task.abort();
    r
}

enum Backend {
    Kernel(KernelWg),
    Userspace(Uapi),
}

impl Backend {
    async fn get(&self) -> Result<DeviceState, WgError> {
        Ok(match self {
            Backend::Kernel(k) => k.get().await?,
            Backend::Userspace(u) => u.get().await?,
        })
    }

    async fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        match self {
            Backend::Kernel(k) => k.set(update).await?,
            Backend::Userspace(u) => u.set(update).await?,
        }
        Ok(())
    }
}

/// Everything last asked for, re-applied to a restarted wireguard-go.
#[derive(Default)]
struct Desired {
    interface: Option<(PrivateKey, u16)>,
    peers: Option<Vec<DesiredPeer>>,
    addresses: Option<Vec<IpNet>>,
    mtu: Option<u32>,
    up: bool,
}

struct Inner {
    name: String,
    backend: Backend,
    rt: Handle,
    /// Serialises configuration calls with the supervisor's re-apply.
    desired: Mutex<Desired>,
    restarts: watch::Sender<u64>,
    pid: AtomicU32,
    wireguard_go: PathBuf,
    log_path: PathBuf,
}

/// An open WireGuard device.
pub struct WireGuard {
    inner: Arc<Inner>,
    implementation: Implementation,
    adopted: bool,
    stop: Option<oneshot::Sender<()>>,
    supervisor: Option<JoinHandle<()>>,
}

impl fmt::Debug for WireGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuard")
            .field("name", &self.inner.name)
            .field("implementation", &self.implementation)
            .field("adopted", &self.adopted)
            .field("pid", &self.wireguard_go_pid())
            .finish()
    }
}

impl WireGuard {
    /// Opens the device `opts.name`: adopts one already running (kernel, or
    /// wireguard-go answering on its socket), else creates a kernel link
    /// (unless `Userspace`), else (unless `Kernel`) starts wireguard-go and
    /// supervises it.
    pub async fn open(opts: Options) -> Result<WireGuard, WgError> {
        let name = opts.name.clone();
        let (conn, rt, _) = rtnetlink::new_connection().map_err(|source| WgError::Io {
            context: "opening a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        let uapi = Uapi::new(uapi::socket_path(&name));
        let log_path = opts
            .log_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(uapi::SOCKET_DIR).join(format!("{name}.log")));

        let existing = link::link_by_name(&rt, &name)
            .await
            .map_err(nl(format!("looking up interface {name}")))?;
        let kind = existing.as_ref().and_then(link::link_kind).cloned();
        let socket_live = uapi.get().await.is_ok();

        let mut adopted = false;
        let mut process = None;
        let backend = match (&existing, kind, socket_live) {
            (Some(_), Some(InfoKind::Wireguard), _) => {
                if opts.mode == Mode::Userspace {
                    return Err(WgError::ModeConflict {
                        name,
                        found: "a kernel",
                        mode: opts.mode,
                    });
                }
                tracing::info!(interface = %name, "adopting existing kernel WireGuard device");
                adopted = true;
                Backend::Kernel(KernelWg::new(&name)?)
            }
            (Some(_), _, true) => {
                if opts.mode == Mode::Kernel {
                    return Err(WgError::ModeConflict {
                        name,
                        found: "a userspace (wireguard-go)",
                        mode: opts.mode,
                    });
                }
                let pid = uapi.server_pid().await?.ok_or_else(|| WgError::Io {
                    context: format!(
                        "adopting the wireguard-go serving {}: its pid is not visible \
                         (another pid namespace)",
                        uapi.path().display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?;
                let p = Process::adopt(pid)?;
                tracing::info!(interface = %name, pid, "adopting running wireguard-go");
                adopted = true;
                process = Some(p);
                Backend::Userspace(uapi.clone())
            }
            (None, _, true) => {
                return Err(WgError::ForeignSocket {
                    pid: uapi.server_pid().await.ok().flatten(),
                    socket: uapi.path().to_owned(),
                    name,
                });
            }
            (Some(link), kind, false) => {
                if kind != Some(InfoKind::Tun) {
                    return Err(WgError::NotWireGuard {
                        name,
                        kind: kind.map_or_else(|| "kind-less".to_owned(), |k| k.to_string()),
                    });
                }
                tracing::warn!(interface = %name, "deleting a TUN interface left by a dead wireguard-go");
                link::delete_link(&rt, link.header.index)
                    .await
                    .map_err(nl(format!("deleting stale interface {name}")))?;
                create(&opts, &rt, &uapi, &log_path, &mut process).await?
            }
            (None, _, false) => create(&opts, &rt, &uapi, &log_path, &mut process).await?,
        };

        let implementation = match backend {
            Backend::Kernel(_) => Implementation::Kernel,
            Backend::Userspace(_) => Implementation::Userspace,
        };
        let inner = Arc::new(Inner {
            name,
            backend,
            rt,
            desired: Mutex::new(Desired::default()),
            restarts: watch::Sender::new(0),
            pid: AtomicU32::new(process.as_ref().map_or(0, Process::pid)),
            wireguard_go: opts.wireguard_go.clone(),
            log_path,
        });
        let (stop, supervisor) = match process {
            Some(p) => {
                let (tx, rx) = oneshot::channel();
                (
                    Some(tx),
                    Some(tokio::spawn(supervise(inner.clone(), p, rx))),
                )
            }
            None => (None, None),
        };
        Ok(WireGuard {
            inner,
            implementation,
            adopted,
            stop,
            supervisor,
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn implementation(&self) -> Implementation {
        self.implementation
    }

    /// Whether `open` found the device already running.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pid of the wireguard-go serving the device, if userspace and up.
    pub fn wireguard_go_pid(&self) -> Option<u32> {
        Some(self.inner.pid.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// Counts wireguard-go restarts by the supervisor. After one, the
    /// interface, its routes and anything attached to it (tc programs) are
    /// new: the device configuration, addresses, MTU and link state are
    /// re-applied here, routes and BPF attachments are the caller's.
    pub fn restarts(&self) -> watch::Receiver<u64> {
        self.inner.restarts.subscribe()
    }

    /// The interface index (it changes when wireguard-go is restarted).
    pub async fn ifindex(&self) -> Result<u32, WgError> {
        self.inner.ifindex().await
    }

    /// The device's configuration and statistics.
    pub async fn device(&self) -> Result<DeviceState, WgError> {
        self.inner.backend.get().await
    }

    /// Sets the private key and listen port where they differ. A
    /// `listen_port` of 0 leaves the port to WireGuard. Returns whether
    /// anything changed.
    pub async fn set_interface(&self, key: &PrivateKey, listen_port: u16) -> Result<bool, WgError> {
        let mut d = self.inner.desired.lock().await;
        d.interface = Some((key.clone(), listen_port));
        let dev = self.inner.backend.get().await?;
        let mut update = DeviceUpdate::default();
        if dev.private_key.as_ref() != Some(key) {
            update.private_key = Some(key.clone());
        }
        if listen_port != 0 && dev.listen_port != listen_port {
            update.listen_port = Some(listen_port);
        }
        if update.is_empty() {
            return Ok(false);
        }
        self.inner.backend.set(&update).await?;
        tracing::info!(
            interface = %self.inner.name,
            public_key = %key.public_key(),
            key_changed = update.private_key.is_some(),
            listen_port,
            "configured WireGuard interface"
        );
        Ok(true)
    }

    /// Makes the device's peers `desired`, touching only the peers that
    /// differ (see [`diff_peers`]).
    pub async fn apply_peers(&self, desired: &[DesiredPeer]) -> Result<PeerSummary, WgError> {
        let mut d = self.inner.desired.lock().await;
        let dev = self.inner.backend.get().await?;
        let diff = diff_peers(&dev.peers, desired)?;
        d.peers = Some(desired.to_vec());
        if !diff.is_empty() {
            self.inner.backend.set(&diff.to_update()).await?;
        }
        log_diff(&self.inner.name, &diff);
        Ok(PeerSummary {
            added: diff.added.len(),
            removed: diff.removed.len(),
            changed: diff.changed.len(),
            unchanged: diff.unchanged.len(),
        })
    }

    /// Per-peer traffic, last handshake and current endpoint.
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, WgError> {
        let dev = self.inner.backend.get().await?;
        Ok(dev.peers.iter().map(PeerStats::from).collect())
    }

    /// Makes the interface's addresses exactly `addresses` (IPv6 link-local
    /// ones excepted), by difference.
    pub async fn set_addresses(&self, addresses: &[IpNet]) -> Result<AddressSummary, WgError> {
        let mut d = self.inner.desired.lock().await;
        d.addresses = Some(addresses.to_vec());
        self.inner.set_addresses(addresses).await
    }

    /// Sets the MTU if it differs.
    pub async fn set_mtu(&self, mtu: u32) -> Result<bool, WgError> {
        let mut d = self.inner.desired.lock().await;
        d.mtu = Some(mtu);
        self.inner.set_mtu(mtu).await
    }

    /// Sets the link up if it is not.
    pub async fn up(&self) -> Result<bool, WgError> {
        let mut d = self.inner.desired.lock().await;
        d.up = true;
        self.inner.set_up().await
    }

    /// Stops supervising and wireguard-go (SIGTERM, then SIGKILL), deletes
    /// the interface and removes the socket and log.
    pub async fn clean_up(mut self) -> Result<(), WgError> {
        let name = self.inner.name.clone();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
        self.inner.pid.store(0, Ordering::SeqCst);
        if let Some(l) = link::link_by_name(&self.inner.rt, &name)
            .await
            .map_err(nl(format!("looking up interface {name}")))?
        {
            link::delete_link(&self.inner.rt, l.header.index)
                .await
                .map_err(nl(format!("deleting interface {name}")))?;
        }
        if let Backend::Userspace(u) = &self.inner.backend {
            for path in [u.path(), self.inner.log_path.as_path()] {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(WgError::Io {
                            context: format!("removing {}", path.display()),
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        tracing::info!(interface = %name, "removed WireGuard device");
        Ok(())
    }
}

/// Creates a new device: kernel first (unless `Userspace`), else
/// wireguard-go (unless `Kernel`).
async fn create(
    opts: &Options,
    rt: &Handle,
    uapi: &Uapi,
    log_path: &std::path::Path,
    process: &mut Option<Process>,
) -> Result<Backend, WgError> {
    let name = &opts.name;
    if opts.mode != Mode::Userspace {
        match rt
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
        {
            Ok(()) => {
                tracing::info!(interface = %name, "created kernel WireGuard device");
                return Ok(Backend::Kernel(KernelWg::new(name)?));
            }
            Err(e) => {
                // "Unknown device type": no wireguard module to load.
                let unsupported = link::errno(&e) == Some(libc::EOPNOTSUPP);
                if opts.mode == Mode::Kernel || !unsupported {
                    if unsupported {
                        return Err(WgError::KernelUnavailable {
                            name: name.clone(),
                            reason: e.to_string(),
                        });
                    }
                    return Err(nl(format!("creating WireGuard interface {name}"))(e));
                }
                tracing::info!(interface = %name, error = %e, "kernel WireGuard unavailable; using wireguard-go");
            }
        }
    }
    // A socket nobody answers on is left by a dead wireguard-go.
    if uapi.path().exists() {
        tracing::warn!(socket = %uapi.path().display(), "removing stale WireGuard socket");
        std::fs::remove_file(uapi.path()).map_err(|source| WgError::Io {
            context: format!("removing stale socket {}", uapi.path().display()),
            source,
        })?;
    }
    *process = Some(process::spawn(&opts.wireguard_go, name, log_path, uapi).await?);
    Ok(Backend::Userspace(uapi.clone()))
}

fn log_diff(name: &str, diff: &PeerDiff) {
    for key in &diff.removed {
        tracing::info!(interface = name, public_key = %key, "removed WireGuard peer");
    }
    for c in &diff.changed {
        tracing::info!(
            interface = name,
            public_key = %c.public_key,
            changed = ?c.fields(),
            endpoint = ?c.endpoint,
            allowed_ips = ?c.allowed_ips,
            "updated WireGuard peer"
        );
    }
    for p in &diff.added {
        tracing::info!(
            interface = name,
            public_key = %p.public_key,
            endpoint = ?p.endpoint,
            allowed_ips = ?p.allowed_ips,
            persistent_keepalive = ?p.persistent_keepalive,
            "added WireGuard peer"
        );
    }
    if diff.is_empty() {
        tracing::debug!(
            interface = name,
            unchanged = diff.unchanged.len(),
            "WireGuard peers up to date"
        );
    }
}

impl Inner {
    async fn ifindex(&self) -> Result<u32, WgError> {
        link::link_by_name(&self.rt, &self.name)
            .await
            .map_err(nl(format!("looking up interface {}", self.name)))?
            .map(|l| l.header.index)
            .ok_or_else(|| WgError::NoInterface(self.name.clone()))
    }

    async fn set_addresses(&self, addresses: &[IpNet]) -> Result<AddressSummary, WgError> {
        let index = self.ifindex().await?;
        let s = link::set_addresses(&self.rt, index, addresses)
            .await
            .map_err(nl(format!("setting the addresses of {}", self.name)))?;
        if !s.added.is_empty() || !s.removed.is_empty() {
            tracing::info!(interface = %self.name, added = ?s.added, removed = ?s.removed, "updated addresses");
        }
        Ok(s)
    }

    async fn set_mtu(&self, mtu: u32) -> Result<bool, WgError> {
        let index = self.ifindex().await?;
        let changed = link::set_mtu(&self.rt, index, mtu)
            .await
            .map_err(nl(format!("setting the MTU of {} to {mtu}", self.name)))?;
        if changed {
            tracing::info!(interface = %self.name, mtu, "set MTU");
        }
        Ok(changed)
    }

    async fn set_up(&self) -> Result<bool, WgError> {
        let index = self.ifindex().await?;
        let changed = link::set_up(&self.rt, index)
            .await
            .map_err(nl(format!("setting {} up", self.name)))?;
        if changed {
            tracing::info!(interface = %self.name, "set link up");
        }
        Ok(changed)
    }

    /// Re-applies everything asked for so far to a fresh device.
    async fn reapply(&self, d: &Desired) -> Result<(), WgError> {
        let mut update = DeviceUpdate::default();
        if let Some((key, port)) = &d.interface {
            update.private_key = Some(key.clone());
            update.listen_port = (*port != 0).then_some(*port);
        }
        if let Some(peers) = &d.peers {
            update.peers = peers.iter().map(diff::full_peer).collect();
        }
        if !update.is_empty() {
            self.backend.set(&update).await?;
        }
        if let Some(a) = &d.addresses {
            self.set_addresses(a).await?;
        }
        if let Some(mtu) = d.mtu {
            self.set_mtu(mtu).await?;
        }
        if d.up {
            self.set_up().await?;
        }
        Ok(())
    }

    /// Starts a new wireguard-go after the previous one died, and restores
    /// its configuration.
    async fn restart(&self) -> Result<Process, WgError> {
        let Backend::Userspace(uapi) = &self.backend else {
            unreachable!("only wireguard-go is supervised");
        };
        let d = self.desired.lock().await;
        if let Some(l) = link::link_by_name(&self.rt, &self.name)
            .await
            .map_err(nl(format!("looking up interface {}", self.name)))?
        {
            link::delete_link(&self.rt, l.header.index)
                .await
                .map_err(nl(format!("deleting stale interface {}", self.name)))?;
        }
        let _ = std::fs::remove_file(uapi.path());
        let p = process::spawn(&self.wireguard_go, &self.name, &self.log_path, uapi).await?;
        self.pid.store(p.pid(), Ordering::SeqCst);
        match self.reapply(&d).await {
            Ok(()) => {
                tracing::info!(interface = %self.name, pid = p.pid(), "restarted wireguard-go and restored its configuration")
            }
            Err(e) => {
                tracing::error!(interface = %self.name, error = %e, "restarted wireguard-go but restoring its configuration failed; the next resync retries")
            }
        }
        self.restarts.send_modify(|n| *n += 1);
        Ok(p)
    }
}

/// Watches wireguard-go and restarts it when it dies. A stop message
/// terminates it; the sender being dropped (the agent exiting without
/// clean-up) leaves it running.
async fn supervise(inner: Arc<Inner>, mut proc: Process, mut stop: oneshot::Receiver<()>) {
    loop {
        let how = tokio::select! {
            how = proc.exited() => how,
            r = &mut stop => {
                if r.is_ok() {
                    proc.terminate(STOP_GRACE).await;
                    tracing::info!(interface = %inner.name, pid = proc.pid(), "stopped wireguard-go");
                }
                return;
            }
        };
        inner.pid.store(0, Ordering::SeqCst);
        tracing::warn!(
            interface = %inner.name,
            pid = proc.pid(),
            log = %process::log_tail(&inner.log_path),
            "wireguard-go {how}; restarting it"
        );
        let mut delay = Duration::ZERO;
        proc = loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stop => return,
            }
            match inner.restart().await {
                Ok(p) => break p,
                Err(e) => {
                    delay = (delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                    tracing::error!(interface = %inner.name, error = %e, retry_in = ?delay, "restarting wireguard-go failed");
                }
            }
        };
    }
}
