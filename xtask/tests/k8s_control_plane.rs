//! End-to-end tests of the real Kubernetes control plane on the namespace
//! test bed ([`xtask::k8s::ControlPlane`]). They need root (and, the first
//! time, 10–15 minutes to build kube-apiserver), so they are ignored by a
//! plain `cargo test`; run them with
//! `cargo test -p xtask --test k8s_control_plane -- --ignored --test-threads=1`.
//! Every test cleans up when an assertion fails: the `Cluster` tears down on
//! drop, which stops etcd and kube-apiserver with the other daemons.

use std::time::Instant;
use xtask::k8s::ControlPlane;
use xtask::testbed::{self, API_SERVER_IP, Cluster, ClusterSpec, LocationSpec};

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: n1
  labels:
    topology.kubernetes.io/region: aws
spec:
  podCIDR: 10.42.0.0/24
";

/// What the agent needs to read nodes, bound to ServiceAccount kube-system/weft.
const READ_NODES: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: weft-test-read-nodes
rules:
- apiGroups: [\"\"]
  resources: [nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: weft-test-read-nodes
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: weft-test-read-nodes
subjects:
- kind: ServiceAccount
  name: weft
  namespace: kube-system
";

fn cluster() -> Cluster {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let spec = ClusterSpec {
        locations: vec![LocationSpec::new("aws", ["n1"])],
        pods_per_node: 0,
        api_server: true,
        ..Default::default()
    };
    Cluster::create(&spec).expect("creating the test bed")
}

#[test]
#[ignore = "needs root and the kube-apiserver build; run with --ignored"]
fn control_plane_serves_nodes_with_tls_tokens_rbac_outage_and_compaction() {
    let cluster = cluster();
    let started = Instant::now();
    let cp = ControlPlane::start(&cluster).expect("starting the control plane");
    let n1 = cluster.node("n1");
    let k8s = cluster.api_server.as_ref().expect("api_server host");
    assert_eq!(k8s.ip, API_SERVER_IP);
    assert_eq!(k8s.netns, format!("{}-k8s", cluster.prefix));

    // The admin creates a Node through the API (no kubelet needed).
    cp.kubectl_stdin(&["apply", "-f", "-"], NODE)
        .expect("creating node n1");

    // RBAC is on: the agent, with no binding yet, may neither create nor read.
    let agent = cp.agent_kubeconfig();
    let as_agent =
        |args: &[&str], stdin: Option<&str>| cp.kubectl_in(n1.namespace(), &agent, args, stdin);
    let denied = as_agent(&["create", "-f", "-"], Some(&NODE.replace("n1", "n2")))
        .expect_err("the agent must not create nodes without RBAC");
    assert!(
        format!("{denied:#}").contains("forbidden"),
        "expected forbidden, got {denied:#}"
    );
    let denied = as_agent(&["get", "node", "n1"], None)
        .expect_err("the agent must not read nodes without RBAC");
    assert!(format!("{denied:#}").contains("forbidden"), "{denied:#}");

    // Bound to ServiceAccount kube-system/weft, the agent's token reads the
    // node from the node's namespace: over the internet segment, with TLS
    // verified against the CA in agent.kubeconfig.
    cp.kubectl_stdin(&["apply", "-f", "-"], READ_NODES)
        .expect("binding the read role");
    let cidr = as_agent(
        &["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"],
        None,
    )
    .expect("the agent reads n1 from node n1");
    assert_eq!(cidr, "10.42.0.0/24");
    let denied = as_agent(&["create", "-f", "-"], Some(&NODE.replace("n1", "n2")))
        .expect_err("reading does not allow creating");
    assert!(format!("{denied:#}").contains("forbidden"), "{denied:#}");

    // An outage: the API goes away, etcd and the data stay.
    cp.stop_apiserver().expect("stopping kube-apiserver");
    let down = as_agent(&["get", "node", "n1", "--request-timeout=3s"], None)
        .expect_err("the API is down");
    assert!(
        format!("{down:#}").contains("refused"),
        "expected connection refused, got {down:#}"
    );
    cp.start_apiserver().expect("restarting kube-apiserver");
    let labels = as_agent(
        &["get", "node", "n1", "-o", "jsonpath={.metadata.labels}"],
        None,
    )
    .expect("n1 survives the outage");
    assert!(labels.contains("topology.kubernetes.io/region"), "{labels}");

    // A watch resuming from an old resourceVersion after a compaction: 410.
    // The old version is a list's, as a client's reflector would hold.
    let list_rv = || -> String {
        let list: serde_json::Value = serde_json::from_str(
            &as_agent(&["get", "--raw", "/api/v1/nodes"], None).expect("listing nodes"),
        )
        .expect("a JSON list");
        list["metadata"]["resourceVersion"]
            .as_str()
            .expect("the list's resourceVersion")
            .to_owned()
    };
    let watch_from = |rv: &str| -> String {
        let path = format!("/api/v1/nodes?watch=1&resourceVersion={rv}&timeoutSeconds=1");
        match as_agent(&["get", "--raw", &path], None) {
            Ok(events) => events,
            Err(e) => format!("{e:#}"),
        }
    };
    let gone = |answer: &str| answer.contains("\"code\":410");
    let old = list_rv();
    for i in 0..3 {
        cp.kubectl(&["label", "node", "n1", "--overwrite", &format!("step={i}")])
            .expect("labelling n1");
    }
    let resumed = watch_from(&old);
    assert!(
        !gone(&resumed) && resumed.contains("\"step\":\"2\""),
        "resuming from {old} before any compaction replays the labels: {resumed}"
    );
    // Compacting etcd alone changes nothing: the apiserver's watch cache
    // still holds those events (which is why compact_etcd restarts it).
    let rev = cp.etcd_revision().expect("etcd's revision");
    cp.etcdctl(&["compact", &rev.to_string()])
        .expect("compacting etcd by hand");
    let resumed = watch_from(&old);
    assert!(
        !gone(&resumed),
        "the watch cache still serves {old} after compacting at {rev}: {resumed}"
    );
    let rev = cp.compact_etcd().expect("compacting etcd");
    assert!(rev > old.parse::<u64>().expect("numeric resourceVersion"));
    let resumed = watch_from(&old);
    assert!(
        gone(&resumed) && resumed.contains("too old resource version"),
        "expected 410 Gone for resourceVersion {old} after compacting at {rev}, got {resumed}"
    );
    // Relisting gives a version that watches again.
    let now = list_rv();
    let resumed = watch_from(&now);
    assert!(
        !gone(&resumed),
        "watching from the relisted {now}: {resumed}"
    );

    eprintln!(
        "control plane test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cluster.teardown().expect("tearing down");
}
