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

use crate::testbed::{Cluster, Daemon, Host, Node, Pod};

/// The laptop's address inside the mesh (its peer's allowed IP).
pub const LAPTOP_MESH_IP: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);

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
            agent_flags: Vec::new(),
            resync: "2s".into(),
            leader_health_timeout: "15s".into(),
        }
    }
}

/// The agents of a test bed and their shared directory.
pub struct Mesh<'a> {
    pub cluster: &'a Cluster,
    /// The directory backend: `nodes/`, `peers/`, `settings.yaml`.
    pub dir: PathBuf,
    pub opts: MeshOptions,
    bin: PathBuf,
    agents: BTreeMap<String, Daemon>,
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
        let dir = cluster.dir.join("mesh");
        std::fs::create_dir_all(dir.join("nodes"))?;
        std::fs::create_dir_all(dir.join("peers"))?;
        let mut settings = opts.settings.join("\n");
        settings.push('\n');
        std::fs::write(dir.join("settings.yaml"), settings)?;
        for node in &cluster.nodes {
            std::fs::write(
                dir.join("nodes").join(format!("{}.yaml", node.name)),
                node_yaml(node, &[]),
            )?;
        }
        Ok(Mesh {
            cluster,
            dir,
            opts,
            bin: bin.to_path_buf(),
            agents: BTreeMap::new(),
        })
    }

    pub fn node_file(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{name}.yaml"))
    }

    /// The agent command for `node`, with the mesh's flags.
    pub fn agent_cmd(&self, node: &Node) -> Command {
        let mut cmd = node.cmd(self.bin.join("weft"));
        cmd.arg("--dir")
            .arg(&self.dir)
            .args([
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

    pub fn start_all(&mut self) -> Result<()> {
        for n in &self.cluster.nodes {
            self.start(&n.name.clone())?;
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
        let script = "exec 3<>/dev/tcp/127.0.0.1/1107 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
        crate::util::output(self.cluster.node(name).cmd("bash").args(["-c", script]))
    }

    /// `weftctl --dir <dir> ARGS` on the host.
    pub fn weftctl(&self, args: &[&str]) -> Result<String> {
        crate::util::output(
            Command::new(self.bin.join("weftctl"))
                .arg("--dir")
                .arg(&self.dir)
                .args(args),
        )
    }

    /// Waits until every pod reaches every other pod, showing progress.
    pub fn wait_full_connectivity(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let pods: Vec<&Pod> = self.cluster.pods().collect();
        let mut last = usize::MAX;
        loop {
            self.check_running()?;
            let missing = unreachable_pairs(&pods);
            if missing.is_empty() {
                eprintln!(
                    "    all {} pod pairs connected after {:.1} s",
                    pods.len() * (pods.len() - 1),
                    start.elapsed().as_secs_f64()
                );
                return Ok(start.elapsed());
            }
            if missing.len() != last {
                eprintln!(
                    "    {} of {} pod pairs still unreachable ({:.0} s)",
                    missing.len(),
                    pods.len() * (pods.len() - 1),
                    start.elapsed().as_secs_f64()
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
            std::thread::sleep(Duration::from_millis(500));
        }
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
        std::fs::write(
            self.dir.join("peers/laptop.yaml"),
            format!(
                "name: laptop\nspec:\n  allowedIPs: [\"{LAPTOP_MESH_IP}/32\"]\n  publicKey: {public}\n  persistentKeepalive: 10\n"
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
        let file = laptop.dir.clone().context("laptop dir")?.join("wg0.conf");
        std::fs::write(&file, &conf)?;
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

/// Every (from, to) pod pair that does not answer one ping.
pub fn unreachable_pairs(pods: &[&Pod]) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|from| {
                s.spawn(move || {
                    pods.iter()
                        .filter(|to| to.name != from.name)
                        .filter(|to| !ping_once(from, to.ip))
                        .map(|to| (from.name.clone(), to.name.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// One ping with a one-second deadline, retried once.
pub fn ping_once(from: &Pod, ip: Ipv4Addr) -> bool {
    (0..2).any(|_| {
        from.cmd("ping")
            .args(["-n", "-q", "-c", "1", "-W", "1"])
            .arg(ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
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

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pings `ip` from a host with a one-second deadline.
pub fn host_reaches(host: &Host, ip: Ipv4Addr) -> bool {
    host.cmd("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(ip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
