//! A weft mesh on a test bed: the directory backend filled from the test
//! bed's nodes, an agent per node, the laptop configured from `weftctl
//! showconf`, and connectivity checks. Shared by the end-to-end tests, the
//! demo and the benchmarks.

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::k8s::ControlPlane;
use crate::testbed::{Cluster, ClusterSpec, Daemon, Host, LocationSpec, Node, Pod};

/// The laptop's address inside the mesh (its peer's allowed IP).
pub const LAPTOP_MESH_IP: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);

/// The demo's shape, shared by the demo and the end-to-end tests: two
/// locations of two nodes (`aws`, `gcp`), one node alone (`onprem`), two
/// pods per node, the laptop, pod MTU 1400 (room for WireGuard's 80 bytes
/// and IPIP's 20 below the NICs' 1500).
pub fn demo_spec() -> ClusterSpec {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1", "gcp-2"]),
        LocationSpec::new("onprem", ["onprem-1"]),
    ]);
    spec.pods_per_node = 2;
    spec.external_peer = true;
    spec.pod_mtu = Some(1400);
    spec
}

/// How the agents run.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// `settings.yaml` lines (e.g. `granularity: full`, `encapsulate: always`).
    pub settings: Vec<String>,
    /// Extra flags for every agent.
    pub agent_flags: Vec<String>,
    pub resync: String,
    pub leader_health_timeout: String,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            settings: Vec::new(),
            // The test bed's veth NICs stand in for physical ones: keep the
            // XDP filter on (`--xdp auto` leaves it off on veth).
            agent_flags: vec!["--xdp".into(), "true".into()],
            resync: "2s".into(),
            leader_health_timeout: "15s".into(),
        }
    }
}

/// The agents of a test bed and their backend: a shared directory, or the
/// test bed's Kubernetes API server.
pub struct Mesh<'a> {
    pub cluster: &'a Cluster,
    /// The directory backend: `nodes/`, `peers/`, `settings.yaml` (unused
    /// with Kubernetes).
    pub dir: PathBuf,
    /// With the `kubernetes` backend: the API server the agents watch.
    pub kube: Option<&'a ControlPlane>,
    pub opts: MeshOptions,
    bin: PathBuf,
    agents: BTreeMap<String, Daemon>,
    /// The nodes of this mesh ([`Mesh::start_all`] starts these).
    members: Vec<String>,
}

/// A Node object as a cluster would hold it: pod CIDR, the location as the
/// topology label (no kubelet: created through the API).
pub fn node_manifest(node: &Node, annotations: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    topology.kubernetes.io/region: {}\n",
        node.name, node.location
    );
    if !annotations.is_empty() {
        s.push_str("  annotations:\n");
        for (k, v) in annotations {
            s.push_str(&format!("    {k}: {v:?}\n"));
        }
    }
    s.push_str(&format!("spec:\n  podCIDR: {}\n", node.pod_cidr));
    s
}

/// A `Peer` object of `group` (`weft.dev` or Kilo's `kilo.squat.ai`) with
/// `spec` (YAML, indented by two).
pub fn peer_manifest(group: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: {group}/v1alpha1\nkind: Peer\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// The agent flags that stand for `settings.yaml` lines with Kubernetes,
/// where the agents' flags are the settings (as with Kilo).
fn settings_flags(settings: &[String]) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for line in settings.iter().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("settings line {line:?}"))?;
        let flag = match k.trim() {
            "granularity" => "--mesh-granularity",
            "encapsulate" => "--encapsulate",
            "subnet" => "--subnet",
            "port" => "--port",
            other => bail!("no agent flag for the setting {other:?}"),
        };
        flags.push(flag.to_string());
        flags.push(v.trim().to_string());
    }
    Ok(flags)
}

/// The YAML of a node file: pod CIDR, the location as the topology label.
pub fn node_yaml(node: &Node, annotations: &[(&str, &str)]) -> String {
    let mut s = format!(
        "name: {}\npodCIDR: {}\nlabels:\n  topology.kubernetes.io/region: {}\nannotations:\n",
        node.name, node.pod_cidr, node.location
    );
    if annotations.is_empty() {
        s = s.replace("annotations:\n", "annotations: {}\n");
    }
    for (k, v) in annotations {
        s.push_str(&format!("  {k}: {v:?}\n"));
    }
    s
}

impl<'a> Mesh<'a> {
    /// Writes the directory backend for `cluster` (agents not started yet).
    pub fn new(cluster: &'a Cluster, bin: &Path, opts: MeshOptions) -> Result<Mesh<'a>> {
        let all: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        Mesh::new_of(cluster, bin, opts, "mesh", &all)
    }

    /// A mesh of only the nodes `members` of `cluster`, with its own
    /// directory backend `<cluster.dir>/<name>`: two such meshes on one test
    /// bed are two clusters on one internet (Kilo's multi-cluster guide).
    pub fn new_of(
        cluster: &'a Cluster,
        bin: &Path,
        opts: MeshOptions,
        name: &str,
        members: &[&str],
    ) -> Result<Mesh<'a>> {
        let dir = cluster.dir.join(name);
        std::fs::create_dir_all(dir.join("nodes"))?;
        std::fs::create_dir_all(dir.join("peers"))?;
        let mut settings = opts.settings.join("\n");
        settings.push('\n');
        std::fs::write(dir.join("settings.yaml"), settings)?;
        for m in members {
            let node = cluster.node(m);
            std::fs::write(
                dir.join("nodes").join(format!("{}.yaml", node.name)),
                node_yaml(node, &[]),
            )?;
        }
        Ok(Mesh {
            cluster,
            dir,
            kube: None,
            opts,
            bin: bin.to_path_buf(),
            agents: BTreeMap::new(),
            members: members.iter().map(|m| m.to_string()).collect(),
        })
    }

    /// The same mesh with the `kubernetes` backend: installs the CRD and the
    /// RBAC of `manifests/weft-kubeadm.yaml` (the agents use the
    /// ServiceAccount's token, so least privilege is what they get) and
    /// creates a Node object per node of the cluster except `unregistered`.
    pub fn new_kubernetes(
        cluster: &'a Cluster,
        bin: &Path,
        opts: MeshOptions,
        cp: &'a ControlPlane,
        unregistered: &[&str],
    ) -> Result<Mesh<'a>> {
        settings_flags(&opts.settings)?;
        cp.install_peer_crd("weft.dev")?;
        let rbac = crate::util::workspace_root().join("manifests/weft-kubeadm.yaml");
        let yaml = std::fs::read_to_string(&rbac)
            .with_context(|| format!("reading {}", rbac.display()))?;
        cp.kubectl_stdin(&["apply", "-f", "-"], &yaml)
            .context("applying manifests/weft-kubeadm.yaml")?;
        let mut mesh = Mesh::new(cluster, bin, opts)?;
        mesh.kube = Some(cp);
        for node in cluster
            .nodes
            .iter()
            .filter(|n| !unregistered.contains(&n.name.as_str()))
        {
            mesh.register(node, &[])?;
        }
        Ok(mesh)
    }

    /// With Kubernetes: creates (or updates) `node`'s Node object.
    pub fn register(&self, node: &Node, annotations: &[(&str, &str)]) -> Result<()> {
        let cp = self
            .kube
            .context("register is for the kubernetes backend")?;
        cp.kubectl_stdin(&["apply", "-f", "-"], &node_manifest(node, annotations))
            .with_context(|| format!("creating Node {}", node.name))?;
        Ok(())
    }

    /// Adds or replaces the external peer `name` with `spec` (YAML indented
    /// by two): `peers/<name>.yaml`, or a weft.dev `Peer` object.
    pub fn apply_peer(&self, name: &str, spec: &str) -> Result<()> {
        match self.kube {
            Some(cp) => {
                cp.kubectl_stdin(
                    &["apply", "-f", "-"],
                    &peer_manifest("weft.dev", name, spec),
                )?;
            }
            None => std::fs::write(
                self.dir.join("peers").join(format!("{name}.yaml")),
                format!("name: {name}\nspec:\n{spec}"),
            )?,
        }
        Ok(())
    }

    pub fn node_file(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{name}.yaml"))
    }

    /// The agent command for `node`, with the mesh's flags.
    pub fn agent_cmd(&self, node: &Node) -> Command {
        let mut cmd = node.cmd(self.bin.join("weft"));
        match self.kube {
            Some(cp) => {
                cmd.args(["--backend", "kubernetes", "--kubeconfig"])
                    .arg(cp.agent_kubeconfig())
                    .args(settings_flags(&self.opts.settings).expect("checked in new_kubernetes"));
            }
            None => {
                cmd.arg("--dir").arg(&self.dir);
            }
        }
        cmd.args([
            "--hostname",
            &node.name,
            "--pod-bridge",
            "cni0",
            "--wireguard",
            "userspace",
        ])
        .arg("--state-dir")
        .arg(&node.state_dir)
        .args([
            "--listen",
            "127.0.0.1:1107",
            "--resync-period",
            &self.opts.resync,
        ])
        .args(["--leader-health-timeout", &self.opts.leader_health_timeout])
        .args(&self.opts.agent_flags);
        cmd
    }

    /// Starts (or restarts) the agent of `name`.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let node = self.cluster.node(name);
        let d = node.spawn_logged(&mut self.agent_cmd(node), "weft")?;
        self.agents.insert(name.to_string(), d);
        Ok(())
    }

    /// Starts the agent of every node of the mesh.
    pub fn start_all(&mut self) -> Result<()> {
        for n in self.members.clone() {
            self.start(&n)?;
        }
        Ok(())
    }

    pub fn agent(&self, name: &str) -> &Daemon {
        self.agents
            .get(name)
            .unwrap_or_else(|| panic!("no agent started on {name}"))
    }

    /// Fails with the agent's log if it exited.
    pub fn check_running(&self) -> Result<()> {
        for (name, d) in &self.agents {
            if !d.is_running() {
                bail!(
                    "weft on {name} exited ({:?}):\n{}",
                    d.exit_status(),
                    tail(&d.read_log(), 40)
                );
            }
        }
        Ok(())
    }

    /// `/metrics` of `name`'s agent.
    pub fn metrics(&self, name: &str) -> Result<String> {
        self.http_get(name, "/metrics")
    }

    /// The response (status line, headers, body) of `GET path` on `name`'s
    /// agent (`--listen 127.0.0.1:1107` inside the node).
    pub fn http_get(&self, name: &str, path: &str) -> Result<String> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/1107 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        crate::util::output(self.cluster.node(name).cmd("bash").args(["-c", &script]))
    }

    /// `weftctl --dir <dir> ARGS` on the host, or with Kubernetes `weftctl
    /// --kubeconfig <admin> ARGS` on the API server's host.
    pub fn weftctl(&self, args: &[&str]) -> Result<String> {
        let weftctl = self.bin.join("weftctl");
        let mut cmd = match self.kube {
            Some(cp) => {
                let mut c = cp.host.cmd(&weftctl);
                c.arg("--kubeconfig").arg(cp.admin_kubeconfig());
                c
            }
            None => {
                let mut c = Command::new(&weftctl);
                c.arg("--dir").arg(&self.dir);
                c
            }
        };
        crate::util::output(
            cmd.args(["--leader-health-timeout", &self.opts.leader_health_timeout])
                .args(args),
        )
    }

    /// Waits until every pod reaches every other pod, showing progress.
    pub fn wait_full_connectivity(&self, timeout: Duration) -> Result<Duration> {
        let pods: Vec<&Pod> = self.cluster.pods().collect();
        self.wait_connectivity(&pods, timeout)
    }

    /// Configures the laptop as an external peer: generates its key, adds
    /// `peers/laptop.yaml`, then sets up its WireGuard only from what
    /// `weftctl showconf peer laptop` prints. Returns the wireguard-go daemon.
    pub fn add_laptop(&self) -> Result<Daemon> {
        let laptop = self
            .cluster
            .laptop
            .as_ref()
            .context("the test bed has no laptop")?;
        let key = laptop.sh("wg genkey")?.trim().to_string();
        let dir = laptop.dir.clone().context("laptop has a directory")?;
        std::fs::create_dir_all(&dir)?;
        let key_file = dir.join("private.key");
        std::fs::write(&key_file, format!("{key}\n"))?;
        let public = laptop
            .sh(&format!("wg pubkey < {}", key_file.display()))?
            .trim()
            .to_string();
        self.apply_peer(
            "laptop",
            &format!(
                "  allowedIPs: [\"{LAPTOP_MESH_IP}/32\"]\n  publicKey: {public}\n  persistentKeepalive: 10\n"
            ),
        )?;
        let wg = laptop.spawn_logged(
            laptop.cmd("wireguard-go").args(["-f", "wg0"]),
            "wireguard-go",
        )?;
        wait(Duration::from_secs(10), "the laptop's wireguard-go", || {
            laptop
                .sh("wg show wg0 >/dev/null 2>&1 && echo ok")
                .map(|o| o.contains("ok"))
                .unwrap_or(false)
        })?;
        laptop.sh(&format!("wg set wg0 private-key {}", key_file.display()))?;
        laptop.sh(&format!(
            "ip addr add {LAPTOP_MESH_IP}/32 dev wg0 && ip link set wg0 mtu 1420 up"
        ))?;
        Ok(wg)
    }

    /// (Re)applies `weftctl showconf peer laptop -o wireguard` on the laptop
    /// with the real `wg`, and routes its allowed IPs into the tunnel.
    pub fn configure_laptop(&self) -> Result<String> {
        let laptop = self.cluster.laptop.as_ref().context("no laptop")?;
        let conf = self.weftctl(&["showconf", "peer", "laptop", "-o", "wireguard"])?;
        let dir = laptop.dir.clone().context("laptop dir")?;
        // `wg setconf`/`syncconf` replace the whole device: a file without
        // a private key clears it (Kilo's guide sets it again afterwards).
        // The laptop adds its own key, and a fixed port so that a re-sync
        // changes nothing, to the peers showconf printed.
        let key = std::fs::read_to_string(dir.join("private.key"))?;
        let own = format!("PrivateKey = {}\nListenPort = 51820\n", key.trim());
        let full = match conf.find("[Interface]\n") {
            Some(i) => {
                let at = i + "[Interface]\n".len();
                format!("{}{own}{}", &conf[..at], &conf[at..])
            }
            None => format!("[Interface]\n{own}\n{conf}"),
        };
        let file = dir.join("wg0.conf");
        std::fs::write(&file, &full)?;
        laptop.sh(&format!("wg syncconf wg0 {}", file.display()))?;
        for line in conf.lines() {
            if let Some(ips) = line.strip_prefix("AllowedIPs = ") {
                for ip in ips.split(',').map(str::trim) {
                    laptop.sh(&format!("ip route replace {ip} dev wg0"))?;
                }
            }
        }
        Ok(conf)
    }
}

/// True if one ping from `ping` (a command made by a namespace's `cmd`) to
/// `ip` is answered within a second.
fn answers(mut ping: Command, ip: Ipv4Addr) -> bool {
    ping.args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(ip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One ping with a one-second deadline, retried once.
pub fn ping_once(from: &Pod, ip: Ipv4Addr) -> bool {
    (0..2).any(|_| answers(from.cmd("ping"), ip))
}

/// Polls `f` every 200 ms until true, or fails naming `what`.
pub fn wait(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The pids of the processes left in network namespace `netns`, as
/// `ip netns pids` lists them (run from the host, not from inside).
pub fn processes_in(netns: &str) -> Result<String> {
    Ok(
        crate::util::output(Command::new("ip").args(["netns", "pids", netns]))?
            .trim()
            .to_string(),
    )
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pings `ip` from a host with a one-second deadline.
pub fn host_reaches(host: &Host, ip: Ipv4Addr) -> bool {
    answers(host.cmd("ping"), ip)
}

/// Changes to a mesh while it runs: node files edited, added and removed,
/// agents killed and forgotten, connectivity among some pods.
impl Mesh<'_> {
    /// Writes `nodes/<name>.yaml` atomically (a temporary dot-file, then a
    /// rename), so that no agent ever reads half of it.
    pub fn write_node_file(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self.node_file(name);
        let tmp = self
            .dir
            .join("nodes")
            .join(format!(".{name}.yaml.test.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Removes `nodes/<name>.yaml`.
    pub fn remove_node_file(&self, name: &str) -> Result<()> {
        let path = self.node_file(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// Sets (`Some`) or removes (`None`) annotations in `name`'s node file,
    /// keeping everything else (the agent's own annotations included). If
    /// `name`'s agent runs, waits until it has rewritten its file at least
    /// once with the change in (an agent that read the file just before the
    /// edit may write its older copy back: the edit is then made again).
    pub fn set_annotations(&self, name: &str, changes: &[(&str, Option<&str>)]) -> Result<()> {
        let path = self.node_file(name);
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let before = annotation_value(&text, "weft.dev/last-seen");
            self.write_node_file(name, &edit_annotations(&text, changes))?;
            let Some(agent) = self.agents.get(name).filter(|d| d.is_running()) else {
                return Ok(());
            };
            // Wait for the agent's next write (a new last-seen), then check.
            let rewritten = Instant::now();
            loop {
                let now = std::fs::read_to_string(&path).unwrap_or_default();
                let seen = annotation_value(&now, "weft.dev/last-seen");
                if seen.is_some() && seen != before {
                    if changes
                        .iter()
                        .all(|(k, v)| annotation_value(&now, k).as_deref() == *v)
                    {
                        return Ok(());
                    }
                    break;
                }
                ensure!(
                    agent.is_running(),
                    "weft on {name} exited:\n{}",
                    tail(&agent.read_log(), 40)
                );
                ensure!(
                    rewritten.elapsed() < Duration::from_secs(60),
                    "weft on {name} did not rewrite its node file within 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the edit of {} does not stick",
                path.display()
            );
            eprintln!("    {name}'s agent wrote an older copy of its file back: editing again");
        }
    }

    /// `name`'s agent, if it was started and not forgotten.
    pub fn try_agent(&self, name: &str) -> Option<&Daemon> {
        self.agents.get(name)
    }

    /// Whether `name`'s agent was started and still runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.agents.get(name).is_some_and(|d| d.is_running())
    }

    /// Kills `name`'s agent with SIGKILL (no clean-up: WireGuard, routes
    /// and the pinned datapath stay) and waits for it to exit.
    pub fn kill(&self, name: &str) -> Result<()> {
        let d = self.agent(name);
        d.signal(nix::sys::signal::Signal::SIGKILL)?;
        d.wait_timeout(Duration::from_secs(30))?;
        Ok(())
    }

    /// Stops watching `name`'s agent (after it was killed or stopped on
    /// purpose), so that [`Mesh::check_running`] no longer fails for it.
    pub fn forget(&mut self, name: &str) -> Option<Daemon> {
        self.agents.remove(name)
    }

    /// The pids of the processes called `comm` (e.g. `wireguard-go`) in
    /// `name`'s network namespace.
    pub fn pids_named(&self, name: &str, comm: &str) -> Result<Vec<u32>> {
        let node = self.cluster.node(name);
        let out = crate::util::output(Command::new("ip").args(["netns", "pids", &node.netns]))?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect())
    }

    /// A metric of `name`'s agent: the value of the first sample whose line
    /// starts with `series` (e.g. `weft_is_leader ` or
    /// `weft_errors_total{kind="node"}`), `None` when absent or unreachable.
    pub fn metric(&self, name: &str, series: &str) -> Option<f64> {
        let text = self.metrics(name).ok()?;
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l[series.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until each of `pods` reaches every other one, showing progress.
    pub fn wait_connectivity(&self, pods: &[&Pod], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let total = pods.len() * pods.len().saturating_sub(1);
        let mut last = usize::MAX;
        loop {
            self.check_running()?;
            let missing = unreachable_pairs(pods);
            if missing.is_empty() {
                eprintln!(
                    "    all {total} pod pairs connected after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(start.elapsed());
            }
            if missing.len() != last {
                let sample: Vec<String> = missing
                    .iter()
                    .take(4)
                    .map(|(a, b)| format!("{a} -> {b}"))
                    .collect();
                eprintln!(
                    "    {} of {total} pod pairs still unreachable ({:.1} s), e.g. {}",
                    missing.len(),
                    start.elapsed().as_secs_f64(),
                    sample.join(", ")
                );
                last = missing.len();
            }
            if start.elapsed() > timeout {
                let sample: Vec<String> = missing
                    .iter()
                    .take(8)
                    .map(|(a, b)| format!("{a} -> {b}"))
                    .collect();
                bail!(
                    "no full connectivity after {timeout:?}: {} pairs fail, e.g. {}",
                    missing.len(),
                    sample.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Every (from, to) pod pair that does not answer one ping, all pinged at
/// once: a round takes about two seconds however many pairs fail.
pub fn unreachable_pairs(pods: &[&Pod]) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|from| pods.iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.name != to.name)
            .map(|(from, to)| {
                s.spawn(move || {
                    (!ping_once(from, to.ip)).then(|| (from.name.clone(), to.name.clone()))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// The value of annotation `key` in a node file as the agent writes it
/// (one `  key: value` line per annotation, values plain or quoted).
pub fn annotation_value(yaml: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            inside = line.trim_end() == "annotations:";
            continue;
        }
        if !inside {
            continue;
        }
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        if unquote(k.trim()) == key {
            return Some(unquote(v.trim()));
        }
    }
    None
}

fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        serde_json::from_str(s).unwrap_or_else(|_| s[1..s.len() - 1].to_string())
    } else {
        s.to_string()
    }
}

/// A node file with `changes` applied to its annotations (set when `Some`,
/// removed when `None`), every other line kept.
pub fn edit_annotations(yaml: &str, changes: &[(&str, Option<&str>)]) -> String {
    let mut head = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    let mut tail = Vec::new();
    let mut section = 0; // 0 before annotations, 1 inside, 2 after
    for line in yaml.lines() {
        match section {
            0 if line.trim_end() == "annotations:" || line.trim_end() == "annotations: {}" => {
                section = 1
            }
            0 => head.push(line),
            1 if line.starts_with(' ') => {
                let key = line.trim().split_once(':').map(|(k, _)| unquote(k.trim()));
                if !changes.iter().any(|(k, _)| Some(k.to_string()) == key) {
                    entries.push(line.to_string());
                }
            }
            1 => {
                section = 2;
                tail.push(line);
            }
            _ => tail.push(line),
        }
    }
    for (k, v) in changes {
        if let Some(v) = v {
            entries.push(format!("  {k}: {v:?}"));
        }
    }
    let mut out = head.join("\n");
    out.push('\n');
    if entries.is_empty() {
        out.push_str("annotations: {}\n");
    } else {
        out.push_str("annotations:\n");
        for e in entries {
            out.push_str(&e);
            out.push('\n');
        }
    }
    for l in tail {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// A WireGuard public key made of `seed` (any 32 bytes are a key to
/// WireGuard), for nodes and peers that have no agent behind them.
pub fn fake_key(seed: u32) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0x5au8; 32];
    bytes[..4].copy_from_slice(&seed.to_be_bytes());
    bytes[4..8].copy_from_slice(b"weft");
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

/// Seconds since the epoch, as `last-seen` holds them.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A node file for a node without an agent: key, endpoint, pod CIDR, fresh
/// last-seen, in `location`, with extra `weft.dev/` annotations.
pub fn fake_node_yaml(
    name: &str,
    location: &str,
    key: &str,
    endpoint: &str,
    pod_cidr: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut s = format!(
        "name: {name}\npodCIDR: {pod_cidr}\nlabels:\n  topology.kubernetes.io/region: {location}\n\
         annotations:\n  weft.dev/key: \"{key}\"\n  weft.dev/endpoint: \"{endpoint}\"\n  \
         weft.dev/last-seen: \"{}\"\n",
        unix_now()
    );
    for (k, v) in extra {
        s.push_str(&format!("  weft.dev/{k}: {v:?}\n"));
    }
    s
}

/// The spec of a peer file or `Peer` (indented by two, for [`Mesh::apply_peer`]).
pub fn peer_spec(key: &str, allowed: &[&str]) -> String {
    let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "  allowedIPs: [{}]\n  publicKey: \"{key}\"\n",
        allowed.join(", ")
    )
}

#[cfg(test)]
mod fake_tests {
    use super::*;

    #[test]
    fn fake_keys_are_32_bytes_of_base64() {
        let k = fake_key(4999);
        assert_eq!(k.len(), 44);
        assert!(k.ends_with('='));
        assert_ne!(fake_key(1), fake_key(2));
    }
}
