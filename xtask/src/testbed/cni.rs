//! Pods the way a container runtime makes them: the real CNI plugins
//! (Debian's `containernetworking-plugins` in `/usr/lib/cni`, and
//! `weft-cni` from the build) run with the conflist Weft writes, plugin by
//! plugin as libcni does (each later plugin gets `prevResult`; DEL in
//! reverse order with the ADD result), inside the node's namespace. The
//! conflist comes from `weft cni-config`, byte for byte what the agent
//! writes with `--cni`, so pods can exist before any agent has run.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::exec::Namespace;

/// Where Debian installs the reference plugins.
pub const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

/// A node's CNI set-up: its conflist and where the plugins are.
#[derive(Clone, Debug)]
pub struct CniConfig {
    /// The conflist, as `weft cni-config` printed it.
    pub conflist: String,
    parsed: Value,
    /// `CNI_PATH`: the Debian plugins, then the directory of `weft-cni`.
    path: Vec<PathBuf>,
}

/// What a pod's ADD gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    /// The host end of its veth (named by the bridge plugin).
    pub host_veth: String,
    /// Its `eth0`'s MAC.
    pub mac: String,
    /// The final result, kept for DEL.
    pub result: Value,
}

/// The weft binaries' directory: `WEFT_BIN_DIR`, else `target/debug`.
pub fn weft_bin_dir() -> PathBuf {
    std::env::var_os("WEFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(crate::check::bin_dir)
}

impl CniConfig {
    /// The conflist Weft writes for a node (pod CIDR, bridge, pods' MTU, the
    /// agent's `--state-dir`; the pin directory is the default, the node's
    /// own /sys/fs/bpf), from `weft cni-config`.
    pub fn from_weft(
        bin_dir: &Path,
        pod_cidr: ipnet::Ipv4Net,
        bridge: &str,
        mtu: u32,
        state_dir: &Path,
    ) -> Result<CniConfig> {
        let weft = bin_dir.join("weft");
        for bin in [weft.clone(), bin_dir.join("weft-cni")] {
            ensure!(
                bin.is_file(),
                "{} is missing: `cargo build -p weft --bins` (or set WEFT_BIN_DIR)",
                bin.display()
            );
        }
        ensure!(
            Path::new(DEBIAN_PLUGINS).join("bridge").is_file(),
            "the CNI plugins are missing from {DEBIAN_PLUGINS}: run `cargo xtask setup` (containernetworking-plugins)"
        );
        let out = Command::new(&weft)
            .args(["cni-config", "--pod-cidr", &pod_cidr.to_string()])
            .args(["--pod-bridge", bridge, "--mtu", &mtu.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .output()
            .with_context(|| format!("running {} cni-config", weft.display()))?;
        ensure!(
            out.status.success(),
            "weft cni-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conflist =
            String::from_utf8(out.stdout).context("weft cni-config printed non-UTF-8")?;
        let parsed: Value =
            serde_json::from_str(&conflist).context("weft cni-config printed no JSON")?;
        ensure!(
            parsed["plugins"].as_array().is_some_and(|p| !p.is_empty()),
            "the conflist has no plugins:\n{conflist}"
        );
        Ok(CniConfig {
            conflist,
            parsed,
            path: vec![PathBuf::from(DEBIAN_PLUGINS), bin_dir.to_path_buf()],
        })
    }

    fn version(&self) -> &str {
        self.parsed["cniVersion"].as_str().unwrap_or("0.4.0")
    }

    fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .with_context(|| format!("CNI plugin {plugin:?} not found in {:?}", self.path))
    }

    /// Runs one plugin in `node` with `conf` on stdin; its stdout as JSON
    /// (`Value::Null` when empty, as DEL prints).
    fn exec(
        &self,
        node: &Namespace,
        command: &str,
        conf: &Value,
        container_id: &str,
        netns: &str,
        ifname: &str,
    ) -> Result<Value> {
        let plugin = conf["type"].as_str().context("a plugin without a type")?;
        let bin = self.find(plugin)?;
        let cni_path = std::env::join_paths(&self.path).expect("plugin directories are valid");
        let mut cmd = node.cmd(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", Path::new("/run/netns").join(netns))
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!(
            "CNI {command} {plugin} for {container_id} in {}",
            node.label()
        );
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.to_string().as_bytes())
            .with_context(|| format!("{what}: writing the configuration"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("{what}: waiting"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("{what} printed no JSON: {stdout}"))
    }

    /// The network configuration libcni gives plugin `p` of the list.
    fn plugin_conf(&self, p: &Value, prev: Option<&Value>) -> Value {
        let mut conf = p.clone();
        conf["cniVersion"] = self.version().into();
        conf["name"] = self.parsed["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn loopback(&self) -> Value {
        json!({ "cniVersion": self.version(), "name": "cni-loopback", "type": "loopback" })
    }

    /// ADD of pod `container_id` in network namespace `netns`: `lo` by the
    /// loopback plugin, `eth0` by the conflist.
    pub fn add(&self, node: &Namespace, container_id: &str, netns: &str) -> Result<PodNet> {
        self.exec(node, "ADD", &self.loopback(), container_id, netns, "lo")?;
        let mut prev: Option<Value> = None;
        for p in self.parsed["plugins"].as_array().expect("checked") {
            let conf = self.plugin_conf(p, prev.as_ref());
            prev = Some(self.exec(node, "ADD", &conf, container_id, netns, "eth0")?);
        }
        let result = prev.expect("at least one plugin");
        pod_net(&result, self.bridge())
            .with_context(|| format!("reading the CNI result of {container_id}: {result}"))
    }

    /// DEL of pod `container_id`, plugins in reverse order, each with the ADD
    /// result; as the spec wants, it succeeds when things are already gone.
    pub fn del(
        &self,
        node: &Namespace,
        container_id: &str,
        netns: &str,
        result: Option<&Value>,
    ) -> Result<()> {
        let plugins = self.parsed["plugins"].as_array().expect("checked");
        for p in plugins.iter().rev() {
            let conf = self.plugin_conf(p, result);
            self.exec(node, "DEL", &conf, container_id, netns, "eth0")?;
        }
        self.exec(node, "DEL", &self.loopback(), container_id, netns, "lo")?;
        Ok(())
    }

    fn bridge(&self) -> &str {
        self.parsed["plugins"][0]["bridge"]
            .as_str()
            .unwrap_or("cni0")
    }
}

/// The pod's address, host veth and MAC from a CNI result.
fn pod_net(result: &Value, bridge: &str) -> Result<PodNet> {
    let ifs = result["interfaces"]
        .as_array()
        .context("no interfaces in the result")?;
    let in_pod = |i: &Value| i["sandbox"].as_str().is_some_and(|s| !s.is_empty());
    let pod_if = ifs
        .iter()
        .position(|i| in_pod(i) && i["name"] == "eth0")
        .context("no eth0 in the result")?;
    let host_veth = ifs
        .iter()
        .find(|i| !in_pod(i) && i["name"] != bridge)
        .and_then(|i| i["name"].as_str())
        .context("no host veth in the result")?
        .to_string();
    let mac = ifs[pod_if]["mac"]
        .as_str()
        .context("eth0 has no MAC in the result")?
        .to_string();
    let ip = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|a| a.parse::<ipnet::Ipv4Net>().ok())
        .context("no IPv4 address in the result")?
        .addr();
    Ok(PodNet {
        ip,
        host_veth,
        mac,
        result: result.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_net_of_a_bridge_result() {
        let r = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
                {"name": "veth0f1e2d3c", "mac": "aa:aa:aa:aa:aa:02"},
                {"name": "eth0", "mac": "0a:58:0a:2a:00:02", "sandbox": "/run/netns/p"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "10.42.0.2/24"}]
        });
        let n = pod_net(&r, "cni0").unwrap();
        assert_eq!(
            (n.ip, n.host_veth.as_str(), n.mac.as_str()),
            (
                Ipv4Addr::new(10, 42, 0, 2),
                "veth0f1e2d3c",
                "0a:58:0a:2a:00:02"
            )
        );
        let mut no_ip = r.clone();
        no_ip["ips"] = json!([]);
        assert!(pod_net(&no_ip, "cni0").is_err());
    }
}
