//! CNI: the configuration Weft writes (`--cni`), its own chained plugin
//! `weft-cni` ([`plugin`]), and the pod records they share ([`pods`]).
//!
//! The conflist is the bridge plugin with host-local IPAM on the node's pod
//! CIDR, as Kilo's `10-kilo.conflist`, then `weft-cni` (which makes the pod's
//! identity known to the datapath, see [`plugin`]), then portmap. Written
//! atomically (temp file + rename) and only when it changes, so the kubelet
//! never reads a half-written file and an unchanged resync is silent.

pub mod plugin;
pub mod pods;

use anyhow::{Context, Result};
use ipnet::IpNet;
use std::path::{Path, PathBuf};

/// The plugin type (binary name in the CNI bin directory) of Weft's plugin.
pub const PLUGIN_TYPE: &str = "weft-cni";

/// Where `weft-cni` finds what it writes: the agent's pin directory (for
/// `WEFT_PODS`) and the pod records (read back by the agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginPaths {
    pub bpf_pin_dir: PathBuf,
    pub pod_state_dir: PathBuf,
}

impl PluginPaths {
    /// The paths of an agent with `--bpf-pin-dir` and `--state-dir`.
    pub fn for_agent(bpf_pin_dir: &Path, state_dir: &Path) -> PluginPaths {
        PluginPaths {
            bpf_pin_dir: bpf_pin_dir.to_path_buf(),
            pod_state_dir: pods::state_dir(state_dir),
        }
    }
}

/// The conflist for `pod_cidr` on `bridge`, pods' MTU `mtu`.
pub fn conflist(pod_cidr: &IpNet, bridge: &str, mtu: u32, paths: &PluginPaths) -> String {
    let v = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "weft",
        "plugins": [
            {
                "name": "kubernetes",
                "type": "bridge",
                "bridge": bridge,
                "isDefaultGateway": true,
                "forceAddress": true,
                "mtu": mtu,
                "ipam": { "type": "host-local", "ranges": [[{ "subnet": pod_cidr.trunc().to_string() }]] }
            },
            {
                "type": PLUGIN_TYPE,
                "bridge": bridge,
                "bpfPinDir": paths.bpf_pin_dir,
                "podStateDir": paths.pod_state_dir,
            },
            { "type": "portmap", "snat": true, "capabilities": { "portMappings": true } }
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value serialises");
    s.push('\n');
    s
}

/// Writes `content` to `path` if it differs; true if it wrote.
pub fn write_if_changed(path: &Path, content: &str) -> Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let dir = path.parent().context("CNI config path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weft.conflist")
    ));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_the_pod_cidr_and_is_written_once() {
        let paths =
            PluginPaths::for_agent(Path::new("/sys/fs/bpf/weft"), Path::new("/var/lib/weft"));
        let c = conflist(
            &"10.42.3.0/24".parse().unwrap(),
            "kube-bridge",
            1420,
            &paths,
        );
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
        assert_eq!(v["plugins"][0]["bridge"], "kube-bridge");
        assert_eq!(v["plugins"][0]["mtu"], 1420);
        // weft-cni right after the bridge, before portmap, with the agent's paths.
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "weft-cni", "portmap"]);
        assert_eq!(v["plugins"][1]["bpfPinDir"], "/sys/fs/bpf/weft");
        assert_eq!(v["plugins"][1]["podStateDir"], "/var/lib/weft/pods");
        assert_eq!(v["plugins"][1]["bridge"], "kube-bridge");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("net.d/10-weft.conflist");
        assert!(write_if_changed(&p, &c).unwrap());
        assert!(!write_if_changed(&p, &c).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), c);
        let c2 = conflist(
            &"10.42.4.0/24".parse().unwrap(),
            "kube-bridge",
            1420,
            &paths,
        );
        assert!(write_if_changed(&p, &c2).unwrap());
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
