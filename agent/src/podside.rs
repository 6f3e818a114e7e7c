//! The pod side of a node: the host ends of the pod veths, found as the
//! ports of the pod bridge (the CNI bridge plugin plugs every pod's veth
//! into it). The datapath hooks each port, not the bridge: see
//! `ebpf/weft-ebpf/src/pod.rs` for why.

use anyhow::{Context, Result};
use std::path::Path;

/// Names of the interfaces enslaved to `bridge`, sorted; empty if the bridge
/// does not exist yet (no pod has started on this node).
pub fn bridge_ports(bridge: &str) -> Result<Vec<String>> {
    let dir = Path::new("/sys/class/net").join(bridge).join("brif");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing ports of bridge {bridge}")),
    };
    let mut ports = entries
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    ports.sort();
    Ok(ports)
}
