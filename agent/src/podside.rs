//! The pod side of a node: the host ends of the pod veths, found as the
//! ports of the pod bridge (the CNI bridge plugin plugs every pod's veth
//! into it), and the pods' identities from their CNI records. The datapath
//! hooks each port, not the bridge: see `ebpf/weft-ebpf/src/pod.rs` for why.

use anyhow::{Context, Result};
use std::path::Path;

use crate::cni::pods::{PodRecord, PodStore, desired_entries};
use crate::datapath::maps::{Writes, sync_pods};

/// What one [`reconcile_pods`] did.
#[derive(Debug, Default)]
pub struct PodSync {
    pub writes: Writes,
    /// Records removed because their veth is gone (no CNI DEL came).
    pub stale: Vec<String>,
    /// Files in the record directory that are not records.
    pub unreadable: Vec<String>,
    pub pods: usize,
}

/// Whether `rec`'s veth still exists as it was at ADD (`ifindex` resolves
/// names in this namespace): a veth of the same name with another index is
/// another pod's.
pub fn is_live(rec: &PodRecord, ifindex: &dyn Fn(&str) -> Option<u32>) -> bool {
    ifindex(rec.host_veth.as_str()) == Some(rec.host_ifindex)
}

/// Makes `WEFT_PODS` the addresses of the pods recorded in `store` whose
/// veth still exists, and removes the records of the others.
pub fn reconcile_pods(
    store: &PodStore,
    map: &mut aya::maps::Map,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<PodSync> {
    let (records, unreadable) = store.list()?;
    let mut out = PodSync {
        unreadable,
        ..Default::default()
    };
    let mut live = Vec::new();
    for rec in records {
        if is_live(&rec, ifindex) {
            live.push(rec);
        } else {
            store
                .remove(&rec.container_id, &rec.ifname)
                .with_context(|| {
                    format!("removing the stale record of pod {}", rec.container_id)
                })?;
            out.stale
                .push(format!("{} ({} gone)", rec.container_id, rec.host_veth));
        }
    }
    out.pods = live.len();
    out.writes = sync_pods(map, &desired_entries(&live))?;
    Ok(out)
}

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
