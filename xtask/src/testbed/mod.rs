//! The namespace test bed: a multi-location cluster made of network
//! namespaces on one machine, for the end-to-end tests, `cargo xtask demo`
//! and the benchmarks. Needs root.
//!
//! ```text
//!                       internet  198.18.0.0/24   ns <prefix>-inet, bridge br0 (.1)
//!          ┌───────────────┬──────────┴───────┬──────────────┬─────────────┐
//!     eth1 198.18.0.10  eth1 .11          eth1 .12     external host   laptop
//!     node a1          node a2            node g1      .200 (-ext)     .201 (-laptop)
//!     eth0 192.168.1.10 eth0 .11          eth0 192.168.2.10
//!          └── LAN aws ───┘               └── LAN gcp       ns <prefix>-lan-<loc>, bridge br0
//!     cni0 10.42.0.1/24 ── veth… ─ pod eth0 10.42.0.2, veth… ─ pod 10.42.0.3, ...
//! ```
//!
//! - Location `l` (0-based) is LAN 192.168.(l+1).0/24; its node `i` has the
//!   private address .(10+i) on `eth0`. A LAN is reachable only from its nodes.
//! - Node `g` (0-based over all locations) has the public address
//!   198.18.0.(10+g) on `eth1` (default route via 198.18.0.1, which does not
//!   forward), pod CIDR 10.42.g.0/24 on the bridge `cni0` (gateway .1), and
//!   pods .2, .3, ... each in its own namespace (`eth0`, default via the
//!   gateway). Pods are made as a container runtime makes them: the real CNI
//!   plugins (`bridge` + `host-local`, `weft-cni`, `portmap`; `loopback`
//!   for `lo`) run with the conflist Weft writes, see [`cni`]; the host end
//!   of a pod's veth is named by the bridge plugin ([`Pod::host_veth`]).
//!   host-local's state (`/var/lib/cni`) is private per node. So locations reach each other only through
//!   public addresses, and nothing reaches a pod of another node until the
//!   agent makes it so.
//! - The external host (198.18.0.200) has no route to any pod CIDR; the laptop
//!   (198.18.0.201) is the external WireGuard peer.
//! - With `api_server`, the host `k8s` (198.18.0.250) is where
//!   [`crate::k8s::ControlPlane`] runs etcd and kube-apiserver, like a control
//!   plane with a public address.
//!
//! Every name carries the run's prefix (`wt` + 4 hex digits): namespaces
//! `<prefix>-inet`, `-ext`, `-laptop`, `-k8s`, `-lan-<location>`, `-node-<node>`,
//! `-pod-<node>-<j>`; directories `/run/weft-testbed/<prefix>/nodes/<node>/`
//! (`state/`, `cni/`, `log/`, `run-wireguard/` on the node's /run/wireguard,
//! `bpffs/` a bpffs on its /sys/fs/bpf, `var-lib-cni/` on its /var/lib/cni,
//! `cni-results/` the pods' ADD results for their DEL), `hosts/laptop/` and `hosts/k8s/`. Devices are
//! created inside the namespaces, never in the host's.
//!
//! Teardown (on `teardown()`, on drop, on panic, on SIGINT/SIGTERM/SIGHUP)
//! runs CNI DEL for every pod (not from a signal or panic hook: what DEL
//! would remove lives in the namespaces and directories removed anyway), stops every process in the namespaces, deletes them, unmounts and removes
//! the directory. A run killed with -9 is cleaned by [`sweep_stale`] from
//! its journal `/run/weft-testbed/<prefix>/owner.json`.
//!
//! ```no_run
//! use xtask::testbed::{Cluster, ClusterSpec, LocationSpec};
//! xtask::testbed::sweep_stale()?;
//! let spec = ClusterSpec {
//!     locations: vec![LocationSpec::new("aws", ["a1", "a2"]), LocationSpec::new("gcp", ["g1"])],
//!     pods_per_node: 2,
//!     external_peer: true,
//!     ..Default::default()
//! };
//! let cluster = Cluster::create(&spec)?;
//! let a1 = cluster.node("a1");
//! // A daemon inside a1, with a1's own /sys/fs/bpf and /run/wireguard.
//! let agent = a1.spawn_logged(
//!     a1.cmd("weft").arg("--hostname").arg(&a1.name).arg("--dir").arg(&a1.state_dir),
//!     "weft",
//! )?;
//! a1.pods[0].ping(cluster.node("g1").pods[0].ip, 3)?;
//! println!("{}", agent.read_log());
//! # Ok::<(), anyhow::Error>(())
//! ```

mod cleanup;
pub mod cni;
mod exec;
mod hold;
mod kube_proxy;

pub use cleanup::{BASE_DIR, ENV_MARKER, sweep_stale};
pub use exec::{Daemon, Namespace};
pub use hold::hold;
pub use ipnet::Ipv4Net;
pub use kube_proxy::Service;

use anyhow::{Context, Result, ensure};
use cleanup::Shared;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use crate::util::{output, step};

/// The node's NIC on its location's LAN.
pub const PRIVATE_NIC: &str = "eth0";
/// The node's NIC on the internet segment.
pub const PUBLIC_NIC: &str = "eth1";
/// The node's pod bridge.
pub const POD_BRIDGE: &str = "cni0";
/// host-local's state directory (bound per node).
const VAR_LIB_CNI: &str = "/var/lib/cni";
/// A pod's NIC, and the external host's and the laptop's.
pub const POD_NIC: &str = "eth0";
/// The internet namespace's address (the nodes' default gateway).
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The external host, which has no route to any pod.
pub const EXTERNAL_HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The laptop, the external WireGuard peer.
pub const LAPTOP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);
/// The API server's host, when `ClusterSpec::api_server` is set.
pub const API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

/// The internet segment, 198.18.0.0/24.
pub fn public_net() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24).expect("valid")
}

/// All pod CIDRs, 10.42.0.0/16 (node `g` has 10.42.g.0/24).
pub fn cluster_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).expect("valid")
}

/// One location ("cloud", region, data centre): a LAN and its nodes.
#[derive(Clone, Debug)]
pub struct LocationSpec {
    /// Lowercase letters, digits and inner dashes.
    pub name: String,
    /// Node names, unique in the cluster, same alphabet.
    pub nodes: Vec<String>,
}

impl LocationSpec {
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        nodes: impl IntoIterator<Item = S>,
    ) -> Self {
        LocationSpec {
            name: name.into(),
            nodes: nodes.into_iter().map(Into::into).collect(),
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub locations: Vec<LocationSpec>,
    pub pods_per_node: usize,
    /// Add the laptop (198.18.0.201), with its own /run/wireguard.
    pub external_peer: bool,
    /// `net.ipv4.ip_forward` in node namespaces (default true).
    pub forwarding: bool,
    /// `iptables -P FORWARD DROP` in node namespaces (default false). New
    /// namespaces have `bridge-nf-call-iptables=1`, so this also stops two
    /// pods of one node from talking.
    pub forward_drop: bool,
    /// MTU of every link of the internet segment (default: 1500).
    pub public_mtu: Option<u32>,
    /// MTU of the pods' veths, both ends (default: 1500). A mesh wants room
    /// for WireGuard (80) and IPIP (20), as the CNI config gives real pods.
    pub pod_mtu: Option<u32>,
    /// Add the host `k8s` (198.18.0.250) for a Kubernetes control plane; see
    /// [`crate::k8s::ControlPlane::start`] (default false).
    pub api_server: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            locations: Vec::new(),
            pods_per_node: 1,
            external_peer: false,
            forwarding: true,
            forward_drop: false,
            public_mtu: None,
            pod_mtu: None,
            api_server: false,
        }
    }
}

impl ClusterSpec {
    pub fn new(locations: Vec<LocationSpec>) -> Self {
        ClusterSpec {
            locations,
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 40
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        ensure!(
            !self.locations.is_empty(),
            "a cluster needs at least one location"
        );
        ensure!(self.locations.len() <= 250, "at most 250 locations");
        ensure!(self.pods_per_node <= 250, "at most 250 pods per node");
        let mut names = std::collections::HashSet::new();
        let mut total = 0;
        for l in &self.locations {
            ensure!(
                valid(&l.name),
                "bad location name {:?} (a-z, 0-9, inner dashes)",
                l.name
            );
            ensure!(
                names.insert(format!("loc {}", l.name)),
                "location {:?} appears twice",
                l.name
            );
            ensure!(!l.nodes.is_empty(), "location {:?} has no node", l.name);
            ensure!(l.nodes.len() <= 240, "at most 240 nodes per location");
            for n in &l.nodes {
                ensure!(valid(n), "bad node name {n:?} (a-z, 0-9, inner dashes)");
                ensure!(
                    names.insert(format!("node {n}")),
                    "node {n:?} appears twice"
                );
                total += 1;
            }
        }
        ensure!(
            total <= 180,
            "at most 180 nodes (public addresses 198.18.0.10-189)"
        );
        Ok(())
    }
}

/// A running test bed. Dropping it tears it down.
pub struct Cluster {
    /// `wt` + 4 hex digits; starts every namespace name.
    pub prefix: String,
    /// `/run/weft-testbed/<prefix>`.
    pub dir: PathBuf,
    pub spec: ClusterSpec,
    pub locations: Vec<Location>,
    /// All nodes, location by location.
    pub nodes: Vec<Node>,
    /// The internet namespace (198.18.0.1, bridge `br0`).
    pub internet: Host,
    /// 198.18.0.200, no route to any pod.
    pub external_host: Host,
    /// 198.18.0.201, when `external_peer` is set.
    pub laptop: Option<Host>,
    /// 198.18.0.250, when `api_server` is set.
    pub api_server: Option<Host>,
    shared: Arc<Shared>,
}

/// A location's LAN namespace (bridge `br0`, no address).
#[derive(Clone, Debug)]
pub struct Location {
    pub name: String,
    pub netns: String,
    /// 192.168.(index+1).0/24.
    pub subnet: Ipv4Net,
    pub nodes: Vec<String>,
    ns: Namespace,
}

/// A node: private NIC `eth0`, public NIC `eth1`, pod bridge `cni0`.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub location: String,
    /// Position over all locations (public address 198.18.0.(10+index)).
    pub index: usize,
    pub netns: String,
    pub private_ip: Ipv4Addr,
    /// Its location's LAN, 192.168.x.0/24.
    pub private_net: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The first address of the pod CIDR, on `cni0`.
    pub gateway: Ipv4Addr,
    pub pods: Vec<Pod>,
    /// `/run/weft-testbed/<prefix>/nodes/<name>`.
    pub dir: PathBuf,
    /// `<dir>/state`: for the agent's state (keys, ...).
    pub state_dir: PathBuf,
    /// `<dir>/run-wireguard`: the node's /run/wireguard.
    pub run_wireguard_dir: PathBuf,
    /// `<dir>/cni`: for the CNI configuration.
    pub cni_dir: PathBuf,
    /// `<dir>/bpffs`: a bpffs, the node's /sys/fs/bpf.
    pub bpffs_dir: PathBuf,
    /// `<dir>/log`: logs of `spawn_logged` daemons.
    pub log_dir: PathBuf,
    /// The conflist Weft writes for this node and where the plugins are.
    pub cni: cni::CniConfig,
    /// `<dir>/cni-results`: each pod's ADD result, for its DEL.
    cni_results_dir: PathBuf,
    /// `ClusterSpec::forwarding`, restored after the bridge plugin turns it on.
    forwarding: bool,
    ns: Namespace,
}

/// A pod: `eth0` with `ip`, default route via its node's gateway, made by
/// CNI ADD.
#[derive(Clone, Debug)]
pub struct Pod {
    /// `<node>-pod<j>`.
    pub name: String,
    pub node: String,
    pub netns: String,
    /// `CNI_CONTAINERID`: `<prefix>-<node>-<j>`.
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The node-side end of its veth, as the bridge plugin named it.
    pub host_veth: String,
    /// Its `eth0`'s MAC (`aa:bb:..`).
    pub mac: String,
    ns: Namespace,
}

/// A namespace on the internet segment: the internet itself, the external
/// host, the laptop or the API server's host.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The laptop's own /run/wireguard (None for the others).
    pub run_wireguard_dir: Option<PathBuf>,
    /// The host's directory (`/run/weft-testbed/<prefix>/hosts/<name>`; None
    /// for the internet).
    pub dir: Option<PathBuf>,
    ns: Namespace,
}

macro_rules! in_namespace {
    ($($t:ty),*) => {$(
        impl $t {
            /// A command running `program` inside this namespace, with its
            /// private mounts; see [`Namespace::cmd`].
            pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
                self.ns.cmd(program)
            }
            /// Starts a tracked daemon from a command made by `self.cmd(..)`;
            /// see [`Namespace::spawn`].
            pub fn spawn(&self, cmd: &mut Command) -> Result<Daemon> {
                self.ns.spawn(cmd)
            }
            /// Like `spawn`, output to `<name>.log`; see [`Namespace::spawn_logged`].
            pub fn spawn_logged(&self, cmd: &mut Command, name: &str) -> Result<Daemon> {
                self.ns.spawn_logged(cmd, name)
            }
            /// `sh -c script` here; its stdout.
            pub fn sh(&self, script: &str) -> Result<String> {
                self.ns.sh(script)
            }
            /// Ok once `count` pings to `ip` were answered; see [`Namespace::ping`].
            pub fn ping(&self, ip: impl Into<IpAddr>, count: u32) -> Result<()> {
                self.ns.ping(ip, count)
            }
            /// Ok if `ip` does not answer; see [`Namespace::expect_unreachable`].
            pub fn expect_unreachable(&self, ip: impl Into<IpAddr>) -> Result<()> {
                self.ns.expect_unreachable(ip)
            }
            /// The namespace, to pass around generically.
            pub fn namespace(&self) -> &Namespace {
                &self.ns
            }
        }
    )*};
}
in_namespace!(Node, Pod, Host, Location);

impl Cluster {
    /// Builds the test bed described by `spec` (as root). On failure what was
    /// built is removed again.
    pub fn create(spec: &ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        ensure!(nix::unistd::geteuid().is_root(), "the test bed needs root");
        for tool in ["ip", "ping", "sysctl"]
            .into_iter()
            .chain(spec.forward_drop.then_some("iptables"))
        {
            ensure!(
                crate::util::have(tool),
                "`{tool}` is missing: run `cargo xtask setup`"
            );
        }
        let started = Instant::now();
        let shared = Shared::create()?;
        match (Builder {
            shared: &shared,
            spec,
        })
        .build()
        {
            Ok(c) => {
                step(format!(
                    "test bed {} ready: {} nodes, {} pods in {:.1} s",
                    c.prefix,
                    c.nodes.len(),
                    c.nodes.iter().map(|n| n.pods.len()).sum::<usize>(),
                    started.elapsed().as_secs_f64()
                ));
                Ok(c)
            }
            Err(e) => {
                if let Err(t) = shared.teardown() {
                    eprintln!("==> {t:#}");
                }
                Err(e.context(format!("creating test bed {}", shared.prefix)))
            }
        }
    }

    /// The node called `name`. Panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("test bed has no node {name:?}"))
    }

    /// The location called `name`. Panics if there is none.
    pub fn location(&self, name: &str) -> &Location {
        self.locations
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("test bed has no location {name:?}"))
    }

    /// Every pod of every node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Removes everything (CNI DEL of every pod, then processes,
    /// namespaces, mounts, directory); idempotent, also done on drop.
    pub fn teardown(&self) -> Result<()> {
        let mut errors = Vec::new();
        for n in &self.nodes {
            if let Err(e) = n.delete_all_pods() {
                errors.push(format!("{e:#}"));
            }
        }
        self.shared.teardown()?;
        ensure!(errors.is_empty(), "CNI DEL: {}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("==> {e:#}");
        }
    }
}

/// What a pod's DEL needs, saved at ADD.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPod {
    netns: String,
    result: serde_json::Value,
}

impl Node {
    /// Creates pod `j` as a container runtime does: a network namespace
    /// `<prefix>-pod-<node>-<j>`, then CNI ADD with the node's conflist
    /// (host-local hands out addresses from .2 in order). Any number not
    /// used yet on this node.
    pub fn add_pod(&self, j: usize) -> Result<Pod> {
        let shared = self.ns.shared();
        let pod_ns = format!("{}-pod-{}-{j}", shared.prefix, self.name);
        let container_id = format!("{}-{}-{j}", shared.prefix, self.name);
        let n = pod_ns.clone();
        shared.step(
            |jr| jr.netns.push(n),
            || output(Command::new("ip").args(["netns", "add", &pod_ns])).map(drop),
        )?;
        let net = shared
            .step(|_| {}, || self.cni.add(&self.ns, &container_id, &pod_ns))
            .with_context(|| format!("CNI ADD of pod {j} on {}", self.name))?;
        let saved = SavedPod {
            netns: pod_ns.clone(),
            result: net.result.clone(),
        };
        let path = self.cni_results_dir.join(format!("{container_id}.json"));
        std::fs::write(&path, serde_json::to_vec(&saved)?)
            .with_context(|| format!("writing {}", path.display()))?;
        if !self.forwarding {
            // The bridge plugin (isGateway) turns forwarding on; the spec says off.
            output(
                self.ns
                    .cmd("sysctl")
                    .args(["-q", "-w", "net.ipv4.ip_forward=0"]),
            )?;
        }
        let pod_name = format!("{}-pod{j}", self.name);
        Ok(Pod {
            ns: Namespace::new(
                shared,
                &pod_ns,
                &format!("pod {pod_name}"),
                self.log_dir.join(&pod_name),
                &[],
            ),
            name: pod_name,
            node: self.name.clone(),
            netns: pod_ns,
            container_id,
            ip: net.ip,
            gateway: self.gateway,
            host_veth: net.host_veth,
            mac: net.mac,
        })
    }

    /// CNI DEL of `pod`, then its namespace goes, as a runtime removes a pod.
    pub fn delete_pod(&self, pod: &Pod) -> Result<()> {
        self.delete_saved(&pod.container_id)
    }

    fn delete_saved(&self, container_id: &str) -> Result<()> {
        let path = self.cni_results_dir.join(format!("{container_id}.json"));
        let saved: SavedPod = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        self.cni
            .del(&self.ns, container_id, &saved.netns, Some(&saved.result))
            .with_context(|| format!("CNI DEL of {container_id} on {}", self.name))?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        output(Command::new("ip").args(["netns", "del", &saved.netns]))?;
        Ok(())
    }

    /// CNI DEL of every pod still there (teardown).
    fn delete_all_pods(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.cni_results_dir) {
            Ok(e) => e,
            // Torn down already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).context("listing the pods' CNI results"),
        };
        let mut errors = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Err(e) = self.delete_saved(id)
            {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }
}

struct Builder<'a> {
    shared: &'a Arc<Shared>,
    spec: &'a ClusterSpec,
}

impl Builder<'_> {
    fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.shared.prefix)
    }

    /// Runs `ip ARGS` (a creation step, under the journal's lock).
    fn ip(&self, args: &[&str]) -> Result<()> {
        self.shared
            .step(|_| {}, || output(Command::new("ip").args(args)).map(drop))
    }

    fn ip_in(&self, netns: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", netns];
        all.extend_from_slice(args);
        self.ip(&all)
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.shared.step(
            |j| j.netns.push(n),
            || output(Command::new("ip").args(["netns", "add", name])).map(drop),
        )?;
        self.ip_in(name, &["link", "set", "lo", "up"])
    }

    /// Under the lock, so that nothing is made below the test bed's
    /// directory once teardown has removed it.
    fn mkdirs(&self, dirs: &[&Path]) -> Result<()> {
        self.shared.step(
            |_| {},
            || {
                for d in dirs {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("creating {}", d.display()))?;
                }
                Ok(())
            },
        )
    }

    fn sysctl(&self, ns: &Namespace, key: &str, value: &str) -> Result<()> {
        let setting = format!("{key}={value}");
        self.shared.step(
            |_| {},
            || output(ns.cmd("sysctl").args(["-q", "-w", &setting])).map(drop),
        )
    }

    /// A veth from `netns` (named `name`) to a bridge `br0` in `bridge_ns`
    /// (port `port`), both up.
    fn veth_to_bridge(
        &self,
        netns: &str,
        name: &str,
        bridge_ns: &str,
        port: &str,
        mtu: Option<u32>,
    ) -> Result<()> {
        self.ip_in(
            netns,
            &[
                "link", "add", name, "type", "veth", "peer", "name", port, "netns", bridge_ns,
            ],
        )?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            self.ip_in(netns, &["link", "set", name, "mtu", &mtu])?;
            self.ip_in(bridge_ns, &["link", "set", port, "mtu", &mtu])?;
        }
        self.ip_in(bridge_ns, &["link", "set", port, "master", "br0", "up"])?;
        self.ip_in(netns, &["link", "set", name, "up"])
    }

    fn bridge(&self, netns: &str, name: &str, addr: Option<&str>) -> Result<()> {
        self.ip_in(netns, &["link", "add", name, "type", "bridge"])?;
        if let Some(a) = addr {
            self.ip_in(netns, &["addr", "add", a, "dev", name])?;
        }
        self.ip_in(netns, &["link", "set", name, "up"])
    }

    fn build(self) -> Result<Cluster> {
        let p = &self.shared.prefix;
        let root = self.shared.root.clone();
        let spec = self.spec;
        let mtu = spec.public_mtu;
        let nodes_total: usize = spec.locations.iter().map(|l| l.nodes.len()).sum();
        step(format!(
            "creating test bed {p} in {}: {} locations, {nodes_total} nodes, {} pods per node{}{}",
            root.display(),
            spec.locations.len(),
            spec.pods_per_node,
            if spec.external_peer { ", laptop" } else { "" },
            if spec.api_server {
                ", API server host"
            } else {
                ""
            }
        ));
        // Mount points of the per-node binds; wireguard-go creates the first
        // anyway, host-local the second.
        std::fs::create_dir_all("/run/wireguard").context("creating /run/wireguard")?;
        std::fs::create_dir_all(VAR_LIB_CNI).context("creating /var/lib/cni")?;

        step("creating the internet 198.18.0.0/24, the external host .200");
        let inet = self.ns_name("inet");
        self.add_netns(&inet)?;
        self.bridge(&inet, "br0", Some(&format!("{INTERNET_IP}/24")))?;
        if let Some(m) = mtu {
            self.ip_in(&inet, &["link", "set", "br0", "mtu", &m.to_string()])?;
        }
        let internet = Host {
            name: "internet".into(),
            netns: inet.clone(),
            ip: INTERNET_IP,
            run_wireguard_dir: None,
            dir: None,
            ns: Namespace::new(
                self.shared,
                &inet,
                "the internet",
                root.join("hosts/internet/log"),
                &[],
            ),
        };
        let external_host = self.host("ext", "external host", EXTERNAL_HOST_IP, &inet, false)?;
        let laptop = if spec.external_peer {
            step("creating the laptop 198.18.0.201");
            Some(self.host("laptop", "laptop", LAPTOP_IP, &inet, true)?)
        } else {
            None
        };
        let api_server = if spec.api_server {
            step(format!("creating the API server's host {API_SERVER_IP}"));
            Some(self.host("k8s", "API server", API_SERVER_IP, &inet, false)?)
        } else {
            None
        };

        let mut locations = Vec::new();
        let mut nodes = Vec::new();
        for (li, l) in spec.locations.iter().enumerate() {
            let subnet = Ipv4Net::new(Ipv4Addr::new(192, 168, li as u8 + 1, 0), 24)?;
            step(format!(
                "creating location {}: LAN {subnet}, nodes {}",
                l.name,
                l.nodes.join(" ")
            ));
            let lan = self.ns_name(&format!("lan-{}", l.name));
            self.add_netns(&lan)?;
            self.bridge(&lan, "br0", None)?;
            for (i, name) in l.nodes.iter().enumerate() {
                let node = self.node(name, &l.name, subnet, i, nodes.len(), &lan, &inet)?;
                nodes.push(node);
            }
            locations.push(Location {
                name: l.name.clone(),
                netns: lan.clone(),
                subnet,
                nodes: l.nodes.clone(),
                ns: Namespace::new(
                    self.shared,
                    &lan,
                    &format!("LAN {}", l.name),
                    root.join(format!("hosts/lan-{}/log", l.name)),
                    &[],
                ),
            });
        }

        Ok(Cluster {
            prefix: p.clone(),
            dir: root,
            spec: spec.clone(),
            locations,
            nodes,
            internet,
            external_host,
            laptop,
            api_server,
            shared: self.shared.clone(),
        })
    }

    fn host(
        &self,
        name: &str,
        label: &str,
        ip: Ipv4Addr,
        inet: &str,
        wireguard: bool,
    ) -> Result<Host> {
        let netns = self.ns_name(name);
        let dir = self.shared.root.join("hosts").join(name);
        let run_wg = dir.join("run-wireguard");
        self.mkdirs(&[&dir])?;
        if wireguard {
            self.mkdirs(&[&run_wg])?;
        }
        self.add_netns(&netns)?;
        self.veth_to_bridge(&netns, POD_NIC, inet, name, self.spec.public_mtu)?;
        self.ip_in(
            &netns,
            &["addr", "add", &format!("{ip}/24"), "dev", POD_NIC],
        )?;
        let binds: Vec<(&Path, &Path)> = if wireguard {
            vec![(run_wg.as_path(), Path::new("/run/wireguard"))]
        } else {
            Vec::new()
        };
        let ns = Namespace::new(self.shared, &netns, label, dir.join("log"), &binds);
        Ok(Host {
            name: name.into(),
            netns,
            ip,
            run_wireguard_dir: wireguard.then_some(run_wg),
            dir: Some(dir),
            ns,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &self,
        name: &str,
        location: &str,
        lan_net: Ipv4Net,
        i: usize,
        g: usize,
        lan: &str,
        inet: &str,
    ) -> Result<Node> {
        let o = lan_net.network().octets();
        let private_ip = Ipv4Addr::new(o[0], o[1], o[2], 10 + i as u8);
        let public_ip = Ipv4Addr::new(198, 18, 0, 10 + g as u8);
        let pod_cidr = Ipv4Net::new(Ipv4Addr::new(10, 42, g as u8, 0), 24)?;
        let gateway = Ipv4Addr::new(10, 42, g as u8, 1);
        step(format!(
            "creating node {name} ({location}): private {private_ip}, public {public_ip}, pods {pod_cidr} x{}",
            self.spec.pods_per_node
        ));

        let dir = self.shared.root.join("nodes").join(name);
        let (state_dir, run_wireguard_dir, cni_dir, bpffs_dir, log_dir) = (
            dir.join("state"),
            dir.join("run-wireguard"),
            dir.join("cni"),
            dir.join("bpffs"),
            dir.join("log"),
        );
        let (var_lib_cni, cni_results_dir) = (dir.join("var-lib-cni"), dir.join("cni-results"));
        self.mkdirs(&[
            &state_dir,
            &run_wireguard_dir,
            &cni_dir,
            &bpffs_dir,
            &log_dir,
            &var_lib_cni,
            &cni_results_dir,
        ])?;
        let b = bpffs_dir.clone();
        self.shared.step(
            |j| j.mounts.push(b),
            || {
                nix::mount::mount(
                    Some("bpf"),
                    &bpffs_dir,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .with_context(|| format!("mounting a bpffs on {}", bpffs_dir.display()))
            },
        )?;

        let netns = self.ns_name(&format!("node-{name}"));
        self.add_netns(&netns)?;
        let ns = Namespace::new(
            self.shared,
            &netns,
            &format!("node {name}"),
            log_dir.clone(),
            &[
                (&bpffs_dir, Path::new("/sys/fs/bpf")),
                (&run_wireguard_dir, Path::new("/run/wireguard")),
                // host-local's leases: per node, so each allocates from .2.
                (&var_lib_cni, Path::new(VAR_LIB_CNI)),
            ],
        );
        self.sysctl(
            &ns,
            "net.ipv4.ip_forward",
            if self.spec.forwarding { "1" } else { "0" },
        )?;

        let port = format!("n{g}");
        self.veth_to_bridge(&netns, PRIVATE_NIC, lan, &port, None)?;
        self.ip_in(
            &netns,
            &[
                "addr",
                "add",
                &format!("{private_ip}/24"),
                "dev",
                PRIVATE_NIC,
            ],
        )?;
        self.veth_to_bridge(&netns, PUBLIC_NIC, inet, &port, self.spec.public_mtu)?;
        self.ip_in(
            &netns,
            &["addr", "add", &format!("{public_ip}/24"), "dev", PUBLIC_NIC],
        )?;
        self.ip_in(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &INTERNET_IP.to_string(),
                "dev",
                PUBLIC_NIC,
            ],
        )?;
        self.bridge(&netns, POD_BRIDGE, Some(&format!("{gateway}/24")))?;

        if self.spec.forward_drop {
            self.shared.step(
                |_| {},
                || output(ns.cmd("iptables").args(["-P", "FORWARD", "DROP"])).map(drop),
            )?;
        }

        let cni = cni::CniConfig::from_weft(
            &cni::weft_bin_dir(),
            pod_cidr,
            POD_BRIDGE,
            self.spec.pod_mtu.unwrap_or(1500),
            &state_dir,
        )?;
        let mut node = Node {
            name: name.to_owned(),
            location: location.to_owned(),
            index: g,
            netns,
            private_ip,
            private_net: lan_net,
            public_ip,
            pod_cidr,
            gateway,
            pods: Vec::new(),
            dir,
            state_dir,
            run_wireguard_dir,
            cni_dir,
            bpffs_dir,
            log_dir,
            cni,
            cni_results_dir,
            forwarding: self.spec.forwarding,
            ns,
        };
        for j in 0..self.spec.pods_per_node {
            let pod = node.add_pod(j)?;
            let want = Ipv4Addr::new(10, 42, g as u8, 2 + j as u8);
            ensure!(
                pod.ip == want,
                "host-local gave pod {j} of {name} {}, not {want}",
                pod.ip
            );
            node.pods.push(pod);
        }
        Ok(node)
    }
}
