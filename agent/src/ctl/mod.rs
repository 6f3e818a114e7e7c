//! `weftctl`'s commands as library functions returning text, so that they
//! are tested without a process: [`graph`] (GraphViz DOT of the mesh) and
//! [`showconf`] (WireGuard configurations for nodes and peers, as Kilo's
//! `kgctl showconf`).

pub mod bpf;
pub mod cli;
pub mod connect;
pub mod graph;
pub mod showconf;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::path::Path;

use ipnet::IpNet;

use crate::backend::Snapshot;
use crate::backend::dir::DirBackend;
use crate::model::{Encapsulate, Granularity, Node, Settings, parse_nodes, parse_peers};
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
    // Like kgctl: without --mesh-granularity, the granularity the agents
    // publish (the agents' flags beat settings.yaml, so this is what the
    // cluster runs); settings.yaml's or the default only when none does.
    if overrides.granularity.is_none()
        && let Some(g) =
            published_granularity(&nodes, now).map_err(|e| anyhow::anyhow!("{source}: {e}"))?
    {
        settings.granularity = g;
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

/// The granularity the ready nodes publish (`weft.dev/granularity`, else
/// `kilo.squat.ai/granularity`): `None` when none publishes one (a node
/// without the annotation does not count, nor does a node that is not
/// ready: its agent may be gone with an old setting), an error naming the
/// nodes when they disagree.
pub fn published_granularity(nodes: &[Node], now: i64) -> anyhow::Result<Option<Granularity>> {
    let mut by_value: BTreeMap<Granularity, Vec<&str>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.is_ready(now)) {
        if let Some(g) = n.granularity {
            by_value.entry(g).or_default().push(&n.name);
        }
    }
    if by_value.len() > 1 {
        let groups: Vec<String> = by_value
            .iter()
            .map(|(g, names)| format!("{g} ({})", names.join(", ")))
            .collect();
        anyhow::bail!(
            "the nodes publish different mesh granularities: {}; give --mesh-granularity",
            groups.join(" vs ")
        );
    }
    Ok(by_value.into_keys().next())
}
