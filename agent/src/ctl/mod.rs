//! `weftctl`'s commands as library functions returning text, so that they
//! are tested without a process: [`graph`] (GraphViz DOT of the mesh) and
//! [`showconf`] (WireGuard configurations for nodes and peers, as Kilo's
//! `kgctl showconf`).

pub mod bpf;
pub mod graph;
pub mod showconf;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::num::NonZeroU16;
use std::path::Path;

use ipnet::IpNet;

use crate::backend::Snapshot;
use crate::backend::dir::DirBackend;
use crate::model::{Encapsulate, Granularity, Settings, parse_nodes, parse_peers};
use crate::topology::Mesh;

/// Settings given on the command line; they override `settings.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub granularity: Option<Granularity>,
    pub subnet: Option<IpNet>,
    pub port: Option<NonZeroU16>,
    pub topology_label: Option<String>,
    pub encapsulate: Option<Encapsulate>,
}

impl Overrides {
    pub fn apply(&self, mut s: Settings) -> Settings {
        if let Some(g) = self.granularity {
            s.granularity = g;
        }
        if let Some(n) = self.subnet {
            s.subnet = n.trunc();
        }
        if let Some(p) = self.port {
            s.port = p;
        }
        if let Some(l) = &self.topology_label {
            s.topology_label = l.clone();
        }
        if let Some(e) = self.encapsulate {
            s.encapsulate = e;
        }
        s
    }
}

/// The mesh of a directory, and what was skipped on the way (bad files,
/// bad nodes or peers, topology warnings), one line each.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub mesh: Mesh,
    pub skipped: Vec<String>,
}

/// Loads a directory and builds its mesh as of `now` (unix seconds); see [`build`].
pub fn load(
    dir: &Path,
    overrides: &Overrides,
    now: i64,
    leader_health_timeout: std::time::Duration,
) -> anyhow::Result<Loaded> {
    let snap: Snapshot = DirBackend::new(dir).load()?.into();
    build(
        snap,
        &dir.display().to_string(),
        overrides,
        now,
        leader_health_timeout,
    )
}

/// Builds the mesh of a backend's snapshot (`source` names it in errors) as
/// of `now` (unix seconds). Leaders are elected as the agents elect them:
/// with the nodes whose WireGuard health is stale for
/// `leader_health_timeout` passed over.
pub fn build(
    snap: Snapshot,
    source: &str,
    overrides: &Overrides,
    now: i64,
    leader_health_timeout: std::time::Duration,
) -> anyhow::Result<Loaded> {
    let settings = match &snap.settings {
        Some(f) => f.parse().map_err(|e| {
            anyhow::anyhow!("{source}: {}: {e}", crate::backend::dir::SETTINGS_FILE)
        })?,
        None => Settings::default(),
    };
    let mut settings = overrides.apply(settings);
    let (nodes, node_errors) = parse_nodes(&snap.nodes, &settings.topology_label);
    // Like kgctl: without a granularity given, take the one the agents
    // publish, when they agree.
    if overrides.granularity.is_none()
        && snap
            .settings
            .as_ref()
            .is_none_or(|f| f.granularity.is_none())
    {
        let published: BTreeSet<Granularity> = nodes.iter().filter_map(|n| n.granularity).collect();
        if let [only] = published.into_iter().collect::<Vec<_>>()[..] {
            settings.granularity = only;
        }
    }
    let (peers, peer_errors) = parse_peers(&snap.peers);
    let demoted = crate::health::demoted(&nodes, now, leader_health_timeout.as_secs() as i64);
    let mesh = Mesh::build(&nodes, &peers, &settings, now, &demoted)?;
    let mut skipped: Vec<String> = snap.errors;
    skipped.extend(
        node_errors
            .iter()
            .chain(&peer_errors)
            .map(ToString::to_string),
    );
    skipped.extend(mesh.warnings.iter().map(ToString::to_string));
    Ok(Loaded { mesh, skipped })
}
