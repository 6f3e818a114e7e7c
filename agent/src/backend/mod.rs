//! Backends: where the raw nodes, peers and settings come from, and where a
//! node publishes its own annotations. The agent sees only [`Backend`]: it
//! never knows which one runs.
//!
//! - [`dir`]: a directory of YAML files, needing no cluster;
//! - [`kubernetes`]: Nodes and `Peer` objects (`weft.dev` and Kilo's
//!   `kilo.squat.ai`) of a Kubernetes API server, through kube-rs watchers.

pub mod dir;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use crate::model::{NodeObject, PeerObject, SettingsFile};

/// Everything a backend holds, raw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sorted by name.
    pub nodes: Vec<NodeObject>,
    /// Sorted by name.
    pub peers: Vec<PeerObject>,
    /// `None` when the backend has no settings of its own (Kubernetes: the
    /// agent's flags are the settings, as with Kilo).
    pub settings: Option<SettingsFile>,
    /// Objects skipped, one line each naming the object (a file that does
    /// not parse, a Peer that does not deserialize).
    pub errors: Vec<String>,
}

/// What changed. The agent re-reads the [`Backend::snapshot`] after a burst
/// of events; the event says what, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Node {
        name: String,
        change: Change,
    },
    Peer {
        name: String,
        change: Change,
    },
    /// The settings changed (the directory's `settings.yaml`).
    Settings,
    /// The backend's view is complete again (a first list, or a re-list
    /// after a watch error, `410 Gone` or an outage).
    Resynced,
    /// The source went away: the last data stays in force.
    Stale {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Applied,
    Deleted,
}

/// Whether the backend's data is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Since when, and why (the last error).
    Stale {
        since: SystemTime,
        reason: String,
    },
}

/// Annotation changes to this node's object: `Some` sets a key, `None`
/// removes it. Keys not named are never touched.
pub type AnnotationPatch = BTreeMap<String, Option<String>>;

/// One source of nodes and peers.
pub trait Backend: Send + Sync {
    /// For logs: `directory /srv/mesh`, `Kubernetes API https://…`.
    fn describe(&self) -> String;

    /// Everything known now. Cheap for a watching backend (its caches).
    fn snapshot(&self) -> impl Future<Output = anyhow::Result<Snapshot>> + Send;

    /// The next change; `None` when the backend stopped for good.
    /// Cancel-safe: a dropped call loses no event.
    fn next_event(&mut self) -> impl Future<Output = Option<Event>> + Send;

    /// Applies `patch` to this node's annotations only, and returns the
    /// object as it now stands. Fails when the node does not exist: a node
    /// removed by its owner is not brought back.
    fn patch_own_node(
        &self,
        name: &str,
        patch: &AnnotationPatch,
    ) -> impl Future<Output = anyhow::Result<NodeObject>> + Send;

    /// Whether the data is current.
    fn freshness(&self) -> Freshness;

    /// Whether the first complete list has arrived: before it, a snapshot
    /// is not the cluster (an empty one would look like every node gone).
    fn synced(&self) -> bool {
        true
    }
}

/// Applies an annotation patch to a map (the directory backend's way, and
/// the model of what a merge patch does on the API server).
pub fn apply_patch(annotations: &mut BTreeMap<String, String>, patch: &AnnotationPatch) {
    for (k, v) in patch {
        match v {
            Some(v) => {
                annotations.insert(k.clone(), v.clone());
            }
            None => {
                annotations.remove(k);
            }
        }
    }
}
