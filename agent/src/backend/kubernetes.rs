//! The Kubernetes backend: Nodes, and `Peer` objects of `weft.dev/v1alpha1`
//! and of Kilo's `kilo.squat.ai/v1alpha1` (a cluster switching from Kilo
//! keeps its peers), each watched by a kube-rs `watcher` into a `reflector`
//! store. The agent patches only its own Node and only the annotation keys
//! it names (a JSON merge patch under the field manager `weft`), so a key a
//! user set is never touched.
//!
//! Watch errors, `410 Gone` (re-list) and an unreachable API server are
//! retried with backoff by the watchers; meanwhile the stores keep the last
//! objects and [`Backend::freshness`] says the data is stale.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{AnnotationPatch, Backend, Change, Event, Freshness, Snapshot};
use crate::model::{NodeObject, PeerObject, PeerResource, PeerSpec};

/// The field manager of the agent's patches (`managedFields`).
pub const FIELD_MANAGER: &str = "weft";
/// Kilo's API group for `Peer`.
pub const KILO_GROUP: &str = "kilo.squat.ai";
/// How long one API call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The Node watcher's name in failure records and logs.
const NODE_WATCHER: &str = "nodes";
/// The watchers' retry delays after a failure: doubling from the first to
/// the last, each drawn between half and all of it so that a cluster's
/// agents do not all retry at once. Shorter than kube-rs' default (30 s,
/// not reset for 120 s after an error): after an outage, what a node
/// judges its peers' `last-seen` and `wireguard-alive` by is only current
/// again once its Node watcher is back, and the data stay marked stale
/// until then.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(500);
const WATCH_RETRY_LAST: Duration = Duration::from_secs(8);
/// How often a missing Peer CRD is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(30);

/// A client as kubectl resolves its configuration: `--kubeconfig`, else
/// `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account.
/// Returns the client and the server's URL.
pub async fn client(kubeconfig: Option<&Path>) -> Result<(Client, String)> {
    install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: give --kubeconfig, set $KUBECONFIG, write ~/.kube/config or run in a pod",
        )?,
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, server))
}

/// rustls needs one process-wide crypto provider; without it the client
/// panics at its first connection.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The API resource of `Peer` in `group` (both groups share the schema).
pub fn peer_resource(group: &str) -> ApiResource {
    let mut ar = ApiResource::erase::<PeerResource>(&());
    if group != ar.group {
        ar.api_version = format!("{group}/{}", ar.version);
        ar.group = group.to_owned();
    }
    ar
}

/// A Node as the model sees it: name, pod CIDR, labels, annotations.
pub fn node_object(n: &Node) -> NodeObject {
    let spec = n.spec.as_ref();
    let pod_cidr = spec
        .and_then(|s| s.pod_cidr.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidrs.as_ref()?.first().cloned()));
    NodeObject {
        name: n.name_any(),
        pod_cidr,
        labels: n.labels().clone().into_iter().collect(),
        annotations: n.annotations().clone().into_iter().collect(),
        creation_timestamp: n
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
    }
}

/// A `Peer` object of either group as the model sees it; an object whose
/// spec does not deserialize is an error naming it.
pub fn peer_object(o: &DynamicObject, group: &str) -> Result<PeerObject, String> {
    let name = o.name_any();
    let spec = o.data.get("spec").cloned().unwrap_or_default();
    let spec: PeerSpec =
        serde_json::from_value(spec).map_err(|e| format!("peer {name:?} ({group}): spec: {e}"))?;
    Ok(PeerObject { name, spec })
}

/// One list of Nodes and of the Peers of both groups (a group whose CRD is
/// not installed has none): what `weftctl` reads.
pub async fn list(client: &Client) -> Result<Snapshot> {
    let lp = kube::api::ListParams::default();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut nodes: Vec<NodeObject> = nodes
        .list(&lp)
        .await
        .context("listing Nodes")?
        .items
        .iter()
        .map(node_object)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups = Vec::new();
    for group in ["weft.dev", KILO_GROUP] {
        let ar = peer_resource(group);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list(&lp).await {
            Ok(l) => groups.push((group, l.items)),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("listing {}", ar.api_version)),
        }
    }
    Ok(merge_peers(nodes, &groups))
}

/// The snapshot of Nodes and the Peers of each group: weft.dev's first, so
/// that where both groups have a peer of one name, weft's wins.
fn merge_peers(nodes: Vec<NodeObject>, groups: &[(&str, Vec<DynamicObject>)]) -> Snapshot {
    let mut errors = Vec::new();
    let mut by_name: BTreeMap<String, PeerObject> = BTreeMap::new();
    let mut ordered: Vec<&(&str, Vec<DynamicObject>)> = groups.iter().collect();
    ordered.sort_by_key(|(g, _)| *g == KILO_GROUP);
    for (group, objects) in ordered {
        for o in objects {
            match peer_object(o, group) {
                Ok(p) if by_name.contains_key(&p.name) => errors.push(format!(
                    "peer {:?} ({group}): a weft.dev Peer of the same name wins",
                    p.name
                )),
                Ok(p) => {
                    by_name.insert(p.name.clone(), p);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Snapshot {
        nodes,
        peers: by_name.into_values().collect(),
        settings: None,
        errors,
    }
}

/// The Peer stores by group; a group's store appears once its CRD is found.
type PeerStores = Arc<Mutex<Vec<(&'static str, Store<DynamicObject>)>>>;

/// Per watcher: since when and why it fails, if it does.
type Failures = Arc<Mutex<BTreeMap<&'static str, (SystemTime, String)>>>;

/// Nodes and peers of one API server.
pub struct KubeBackend {
    client: Client,
    server: String,
    nodes: Store<Node>,
    /// `(group, store)`; a group's store appears once its CRD is found.
    peers: PeerStores,
    events: mpsc::Receiver<Event>,
    failures: Failures,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeBackend {
    /// Starts the watchers. Returns at once: the first [`Event::Resynced`]
    /// says the Node list is complete.
    pub fn start(client: Client, server: String) -> Self {
        let (tx, events) = mpsc::channel(1024);
        let failures: Failures = Arc::default();
        let peers: PeerStores = Arc::default();
        let mut tasks = Vec::new();

        let writer = reflector::store::Writer::<Node>::default();
        let nodes = writer.as_reader();
        let api: Api<Node> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default())
            .backoff(WatchBackoff::default())
            .reflect(writer);
        tasks.push(tokio::spawn(forward(
            NODE_WATCHER,
            stream,
            tx.clone(),
            failures.clone(),
            |n: &Node, change| Event::Node {
                name: n.name_any(),
                change,
            },
        )));
        for group in ["weft.dev", KILO_GROUP] {
            tasks.push(tokio::spawn(watch_peers(
                client.clone(),
                group,
                peers.clone(),
                tx.clone(),
                failures.clone(),
            )));
        }
        Self {
            client,
            server,
            nodes,
            peers,
            events,
            failures,
            tasks,
        }
    }
}

/// Watches `Peer` objects of `group` once its CRD exists (looked for again
/// every [`CRD_RECHECK`]: a CRD installed later is picked up).
async fn watch_peers(
    client: Client,
    group: &'static str,
    stores: PeerStores,
    tx: mpsc::Sender<Event>,
    failures: Failures,
) {
    let ar = peer_resource(group);
    let mut said_missing = false;
    loop {
        match client.list_api_group_resources(&ar.api_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == ar.plural) => break,
            Ok(_) | Err(kube::Error::Api(_)) => {
                if !said_missing {
                    info!(
                        group,
                        "no Peer CRD of {group} installed: no peers from it until there is"
                    );
                    said_missing = true;
                }
            }
            // Not reachable: the Node watcher reports that.
            Err(e) => debug!(group, "looking for the Peer CRD: {e}"),
        }
        tokio::time::sleep(CRD_RECHECK).await;
    }
    info!(group, "watching Peer objects of {}", ar.api_version);
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    stores
        .lock()
        .expect("not poisoned")
        .push((group, writer.as_reader()));
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let stream = watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .reflect(writer);
    let what: &'static str = if group == KILO_GROUP {
        "peers.kilo.squat.ai"
    } else {
        "peers.weft.dev"
    };
    forward(what, stream, tx, failures, |o: &DynamicObject, change| {
        Event::Peer {
            name: o.name_any(),
            change,
        }
    })
    .await;
}

/// The watchers' retry delays (see [`WATCH_RETRY_FIRST`]); reset by the
/// first event after a failure.
struct WatchBackoff {
    next: Duration,
    /// xorshift state for the jitter.
    seed: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self {
            next: WATCH_RETRY_FIRST,
            seed: (t ^ u64::from(std::process::id()) << 32) | 1,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (d * 2).min(WATCH_RETRY_LAST);
        // Between half and all of d.
        let half = d / 2;
        Some(half + half.mul_f64((self.seed % 1000) as f64 / 1000.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_FIRST;
    }
}

/// Turns a reflected watch stream into [`Event`]s and failure records.
async fn forward<K, S>(
    what: &'static str,
    stream: S,
    tx: mpsc::Sender<Event>,
    failures: Failures,
    event: impl Fn(&K, Change) -> Event,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(ev) => {
                let recovered = failures.lock().expect("not poisoned").remove(what);
                if let Some((since, _)) = recovered {
                    let secs = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                    info!(watcher = what, "API server reachable again after {secs} s");
                }
                match ev {
                    watcher::Event::Apply(o) => Some(event(&o, Change::Applied)),
                    watcher::Event::Delete(o) => Some(event(&o, Change::Deleted)),
                    watcher::Event::InitDone => Some(Event::Resynced),
                    watcher::Event::Init | watcher::Event::InitApply(_) => None,
                }
            }
            Err(e) => {
                let reason = format!("{what}: {e}");
                let mut f = failures.lock().expect("not poisoned");
                let first = !f.contains_key(what);
                f.entry(what)
                    .or_insert_with(|| (SystemTime::now(), String::new()))
                    .1 = reason.clone();
                drop(f);
                if first {
                    warn!(
                        watcher = what,
                        "watch failed, retrying with backoff (the last data stays in force): {e}"
                    );
                    Some(Event::Stale { reason })
                } else {
                    debug!(watcher = what, "watch failed again: {e}");
                    None
                }
            }
        };
        if let Some(ev) = ev {
            // A full queue already holds a change: the next snapshot sees this one too.
            let _ = tx.try_send(ev);
        }
    }
}

impl Backend for KubeBackend {
    fn describe(&self) -> String {
        format!("Kubernetes API {}", self.server)
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let mut nodes: Vec<NodeObject> =
            self.nodes.state().iter().map(|n| node_object(n)).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let groups: Vec<(&str, Vec<DynamicObject>)> = self
            .peers
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(g, store)| (*g, store.state().iter().map(|o| (**o).clone()).collect()))
            .collect();
        Ok(merge_peers(nodes, &groups))
    }

    async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    async fn patch_own_node(&self, name: &str, patch: &AnnotationPatch) -> Result<NodeObject> {
        let api: Api<Node> = Api::all(self.client.clone());
        let body = serde_json::json!({ "metadata": { "annotations": patch } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let node = tokio::time::timeout(CALL_TIMEOUT, api.patch(name, &params, &Patch::Merge(&body)))
            .await
            .map_err(|_| anyhow::anyhow!("patching Node {name}: no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
                    "Node {name} does not exist: this node is not part of the mesh (is --hostname the Node's name?)"
                ),
                e => anyhow::anyhow!("patching Node {name}: {e}"),
            })?;
        // The API server answers. The Peer watchers, resumed silently from
        // their resource version after their backoff, count as current again
        // (a watch with nothing to report sends no event that could say so;
        // one that still fails reports its next error and marks the data
        // stale again). Not the Node watcher: it may still be waiting out
        // its backoff (up to 30 s after a long outage), and other nodes'
        // `last-seen` and `wireguard-alive` judged from a store it does not
        // update look older than they are, which fails leaders over for
        // nothing. It is current once it delivers an event, and this patch
        // of our own Node is one.
        let mut failures = self.failures.lock().expect("not poisoned");
        let recovered: Vec<_> = failures
            .iter()
            .filter(|(what, _)| **what != NODE_WATCHER)
            .map(|(what, (since, _))| (*what, *since))
            .collect();
        for (what, since) in recovered {
            failures.remove(what);
            let secs = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            info!(
                watcher = what,
                "{} reachable again after {secs} s", self.server
            );
        }
        drop(failures);
        Ok(node_object(&node))
    }

    fn synced(&self) -> bool {
        // The reflector's store is ready once the first list is complete.
        self.nodes
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
    }

    fn freshness(&self) -> Freshness {
        let f = self.failures.lock().expect("not poisoned");
        match f.values().min_by_key(|(since, _)| *since) {
            None => Freshness::Fresh,
            Some((since, reason)) => Freshness::Stale {
                since: *since,
                reason: reason.clone(),
            },
        }
    }
}

/// The CustomResourceDefinitions of `Peer`: weft's, and with `group` Kilo's
/// (for tests and for clusters that want Kilo's group served by weft's schema).
pub fn peer_crd(
    group: &str,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = PeerResource::crd();
    if group != "weft.dev" {
        crd.spec.group = group.to_owned();
        crd.metadata.name = Some(format!("{}.{group}", crd.spec.names.plural));
    }
    crd
}

/// `manifests/crds.yaml`: what `cargo xtask codegen` writes.
pub fn crds_yaml() -> String {
    let crd = serde_norway::to_string(&peer_crd("weft.dev")).expect("a CRD serializes");
    format!(
        "# Generated from agent/src/model/peer.rs by `cargo xtask codegen`: do not edit.\n---\n{crd}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_double_up_to_the_last_with_jitter_and_reset() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        let nominal = [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(*d >= n / 2 && *d <= n, "{d:?} for {n:?}");
        }
        b.reset();
        assert!(b.next().unwrap() <= WATCH_RETRY_FIRST);
    }

    #[test]
    fn a_nodes_creation_time_is_the_api_servers() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "creationTimestamp": "2026-12-02T04:00:00Z"},
            "spec": {"podCIDR": "10.42.0.0/24"}
        }))
        .unwrap();
        let o = node_object(&n);
        assert_eq!(
            o.creation_timestamp.as_deref(),
            Some("2026-12-02T04:00:00Z")
        );
        let parsed = crate::model::Node::parse(&o, "").unwrap();
        assert_eq!(parsed.created, Some(1_796_184_000));
    }

    #[test]
    fn the_committed_crds_are_the_generated_ones() {
        let committed = include_str!("../../../manifests/crds.yaml");
        assert!(
            committed == crds_yaml(),
            "manifests/crds.yaml differs from the Rust type: run `cargo xtask codegen`"
        );
    }

    #[test]
    fn crd_schema_carries_kilos_validation() {
        let crd = serde_json::to_value(peer_crd("weft.dev")).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            required.contains(&"publicKey") && required.contains(&"allowedIPs"),
            "{spec}"
        );
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let port = &spec["properties"]["endpoint"]["properties"]["port"];
        assert_eq!(num(&spec["properties"]["allowedIPs"]["minItems"]), 1.0);
        assert_eq!(num(&port["minimum"]), 1.0);
        assert_eq!(num(&port["maximum"]), 65535.0);
        assert_eq!(
            num(&spec["properties"]["persistentKeepalive"]["minimum"]),
            0.0
        );
        // Required fields carry no default that would fill them in.
        assert!(spec["properties"]["publicKey"].get("default").is_none());
        let key = regex_of(&spec["properties"]["publicKey"]);
        for (k, ok) in [
            ("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", true),
            ("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBm=", false),
            ("not a key", false),
        ] {
            assert_eq!(key_matches(&key, k), ok, "{k}");
        }
        let kilo = peer_crd(KILO_GROUP);
        assert_eq!(kilo.metadata.name.as_deref(), Some("peers.kilo.squat.ai"));
        assert_eq!(kilo.spec.group, KILO_GROUP);
    }

    fn regex_of(v: &serde_json::Value) -> String {
        v["pattern"].as_str().unwrap().to_owned()
    }

    /// The key pattern, checked by hand (no regex crate): 42 base64
    /// characters, one of the 16 whose low bits are zero, then `=`.
    fn key_matches(pattern: &str, k: &str) -> bool {
        assert_eq!(pattern, "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$");
        let b = k.as_bytes();
        b.len() == 44
            && b[..42]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
            && b"AEIMQUYcgkosw048".contains(&b[42])
            && b[43] == b'='
    }

    #[test]
    fn objects_convert() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}, "annotations": {"kilo.squat.ai/location": "x"}},
            "spec": {"podCIDRs": ["10.42.0.0/24"]}
        }))
        .unwrap();
        let o = node_object(&node);
        assert_eq!(o.pod_cidr.as_deref(), Some("10.42.0.0/24"));
        assert_eq!(o.annotations["kilo.squat.ai/location"], "x");
        let peer: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
            "metadata": {"name": "laptop"},
            "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", "persistentKeepalive": 10}
        }))
        .unwrap();
        let p = peer_object(&peer, KILO_GROUP).unwrap();
        assert_eq!(p.spec.allowed_ips, vec!["10.5.0.1/32"]);
        let bad: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "Peer",
            "metadata": {"name": "odd"}, "spec": {"allowedIPs": "nope"}
        }))
        .unwrap();
        let e = peer_object(&bad, "weft.dev").unwrap_err();
        assert!(e.contains("\"odd\"") && e.contains("spec"), "{e}");
    }
}
