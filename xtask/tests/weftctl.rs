//! `weftctl` as kgctl's drop-in on the demo test bed (three locations, the
//! agents running): Kilo's multi-cluster recipe, which loops `showconf node
//! $n --as-peer` over every node (non-leaders print nothing and succeed),
//! builds a second cluster's peers; and the granularity comes from what the
//! agents publish.
//!
//! Needs root and the API server of `cargo xtask setup` (Kilo's recipe
//! applies the Peers with kubectl).
//!
//! ```text
//! cargo xtask build-ebpf && cargo build -p weft --bins
//! cargo test -p xtask --test weftctl -- --ignored --test-threads=1
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::bin_dir;
use xtask::k8s::ControlPlane;
use xtask::mesh::{Mesh, MeshOptions, annotation_value};
use xtask::testbed::Cluster;

/// Kilo's recipe, with `weftctl` for `kgctl` and a directory for the second
/// cluster's API server: every node's `--as-peer` YAML that is not empty
/// becomes `peers/<node>.yaml` there. stderr goes to `$ERR`. (Without the
/// recipe's `--allowed-ips $SERVICECIDR1`: with three locations it would
/// give one range to three peers, which the second cluster refuses but for
/// the first, with a warning.)
const RECIPE: &str = r#"set -u
for n in $(ls "$DIR/nodes" | sed 's/\.yaml$//'); do
    out=$("$WEFTCTL" --dir "$DIR" showconf node "$n" --as-peer -o yaml 2>>"$ERR") \
        || { echo "weftctl showconf node $n failed: $?" >&2; exit 1; }
    if [ -n "$out" ]; then
        printf '%s\n' "$out" > "$DIR2/peers/$n.yaml"
    fi
done
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// `weftctl ARGS`: (success, stdout, stderr).
fn weftctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_dir().join("weftctl"))
        .args(args)
        .output()
        .expect("weftctl runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("UTF-8"),
        String::from_utf8(out.stderr).expect("UTF-8"),
    )
}

/// `weftctl ARGS`, which must succeed without a word on stderr.
fn weftctl_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = weftctl(args);
    assert!(ok && stderr.is_empty(), "weftctl {args:?}: {stderr}");
    stdout
}

/// The `[Peer]` sections of a `wg setconf` file: public key → allowed IPs.
fn wg_peers(conf: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut key = None;
    for line in conf.lines() {
        if let Some(k) = line.strip_prefix("PublicKey = ") {
            key = Some(k.to_string());
            out.insert(k.to_string(), BTreeSet::new());
        } else if let (Some(ips), Some(k)) = (line.strip_prefix("AllowedIPs = "), &key) {
            out.get_mut(k)
                .expect("inserted")
                .extend(ips.split(", ").map(str::to_string));
        }
    }
    out
}

fn dir_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn showconf_as_peer_loop_builds_a_second_clusters_peers() {
    let mut spec = xtask::mesh::demo_spec();
    // The second cluster, the second time: a real API server.
    spec.api_server = true;
    let cluster = Cluster::create(&spec).expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let _dump = common::DumpOnPanic(&mesh);
    let dir = mesh.dir.clone();
    let d = dir_str(&dir);

    // Who leads, by the agents' own account.
    let leaders: BTreeSet<String> = cluster
        .nodes
        .iter()
        .filter(|n| mesh.metric(&n.name, "weft_is_leader ") == Some(1.0))
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(leaders.len(), 3, "one leader per location: {leaders:?}");

    // Kilo's loop.
    let tmp = tempfile::tempdir().unwrap();
    let dir2 = tmp.path().join("cluster2");
    fs::create_dir_all(dir2.join("peers")).unwrap();
    let err = tmp.path().join("stderr");
    let status = Command::new("bash")
        .args(["-c", RECIPE])
        .env("WEFTCTL", bin_dir().join("weftctl"))
        .env("DIR", &dir)
        .env("DIR2", &dir2)
        .env("ERR", &err)
        .status()
        .unwrap();
    let notes = fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "the loop failed: {notes}");
    // The non-leaders said so, one line each, and printed nothing.
    let non_leaders: BTreeSet<String> = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| !leaders.contains(n))
        .collect();
    assert_eq!(notes.lines().count(), non_leaders.len(), "{notes}");
    for n in &non_leaders {
        assert!(
            notes.contains(&format!("weftctl: node {n:?} is not a leader node")),
            "{n}: {notes}"
        );
    }
    let files: BTreeSet<String> = fs::read_dir(dir2.join("peers"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .strip_suffix(".yaml")
                .expect("a .yaml")
                .to_string()
        })
        .collect();
    assert_eq!(files, leaders, "a peer per leader, none for the others");
    let locations: BTreeSet<&str> = files
        .iter()
        .map(|n| cluster.node(n).location.as_str())
        .collect();
    assert_eq!(
        locations,
        BTreeSet::from(["aws", "gcp", "onprem"]),
        "exactly one Peer per location"
    );
    for n in &files {
        let yaml = fs::read_to_string(dir2.join(format!("peers/{n}.yaml"))).unwrap();
        assert!(
            yaml.starts_with("apiVersion: weft.dev/v1alpha1\nkind: Peer\nmetadata:\n  name: "),
            "{n}: {yaml}"
        );
    }

    // The second cluster: one node of its own (its subnet and pod CIDR
    // apart from the first's), which peers with the three locations.
    let key =
        xtask::util::output(Command::new("bash").args(["-c", "wg genkey | wg pubkey"])).unwrap();
    fs::create_dir_all(dir2.join("nodes")).unwrap();
    fs::write(dir2.join("settings.yaml"), "subnet: 10.44.0.0/16\n").unwrap();
    fs::write(
        dir2.join("nodes/c2-1.yaml"),
        format!(
            "name: c2-1\npodCIDR: 10.142.1.0/24\nlabels:\n  topology.kubernetes.io/region: c2\nannotations:\n  \
             weft.dev/key: {}\n  weft.dev/endpoint: \"198.51.100.9:51820\"\n  weft.dev/last-seen: \"{}\"\n",
            key.trim(),
            now()
        ),
    )
    .unwrap();
    let d2 = dir_str(&dir2);
    let c2_node = fs::read_to_string(dir2.join("nodes/c2-1.yaml")).unwrap();
    // Every file is accepted as it is: loading it again prints it again.
    for n in &files {
        let yaml = fs::read_to_string(dir2.join(format!("peers/{n}.yaml"))).unwrap();
        let again = weftctl_ok(&[
            "--dir",
            d2,
            "showconf",
            "peer",
            n,
            "--as-peer",
            "-o",
            "yaml",
        ]);
        assert_eq!(again.trim_end(), yaml.trim_end(), "{n}");
    }
    let conf = weftctl_ok(&["--dir", d2, "showconf", "node", "c2-1"]);
    let peers = wg_peers(&conf);
    assert_eq!(peers.len(), 3, "{conf}");
    for leader in &leaders {
        let node_file = fs::read_to_string(mesh.node_file(leader)).unwrap();
        let key = annotation_value(&node_file, "weft.dev/key").expect("a published key");
        let allowed = peers
            .get(&key)
            .unwrap_or_else(|| panic!("no peer for {leader} in {conf}"));
        let location = &cluster.node(leader).location;
        for n in cluster.nodes.iter().filter(|n| &n.location == location) {
            assert!(
                allowed.contains(&n.pod_cidr.to_string()),
                "{leader}: {allowed:?} lacks {}'s pods",
                n.name
            );
        }
    }

    // The recipe as it is, `kubectl apply -f -` into a real API server (the
    // CRD's schema and kubectl's validation): the same peers, the same view
    // from the second cluster's node.
    let cp = ControlPlane::start(&cluster).unwrap();
    cp.install_peer_crd("weft.dev").unwrap();
    for n in &files {
        let yaml = fs::read_to_string(dir2.join(format!("peers/{n}.yaml"))).unwrap();
        cp.kubectl_stdin(&["apply", "-f", "-"], &yaml)
            .unwrap_or_else(|e| panic!("kubectl apply of {n}'s Peer: {e:#}"));
    }
    let mut node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: c2-1\n  labels:\n    topology.kubernetes.io/region: c2\n  annotations:\n".to_string();
    for k in ["weft.dev/key", "weft.dev/endpoint", "weft.dev/last-seen"] {
        let v = annotation_value(&c2_node, k).expect("written above");
        node.push_str(&format!("    {k}: {v:?}\n"));
    }
    node.push_str("spec:\n  podCIDR: 10.142.1.0/24\n");
    cp.kubectl_stdin(&["apply", "-f", "-"], &node).unwrap();
    let from_kube = |args: &[&str]| {
        let out = cp
            .host
            .cmd(bin_dir().join("weftctl"))
            .arg("--kubeconfig")
            .arg(cp.admin_kubeconfig())
            .args(["--subnet", "10.44.0.0/16"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.is_empty(), "{args:?}: {err}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(from_kube(&["showconf", "node", "c2-1"]), conf);
    for n in &files {
        assert_eq!(
            from_kube(&["showconf", "peer", n, "--as-peer", "-o", "yaml"]),
            weftctl_ok(&[
                "--dir",
                d2,
                "showconf",
                "peer",
                n,
                "--as-peer",
                "-o",
                "yaml"
            ]),
            "{n}"
        );
    }

    // The granularity is what the agents publish (location), even where
    // settings.yaml says otherwise, with the flags before or after the
    // subcommand.
    let graph = weftctl_ok(&["--dir", d, "graph"]);
    assert_eq!(
        graph,
        weftctl_ok(&["graph", "--dir", d, "--mesh-granularity", "location"])
    );
    assert_ne!(
        graph,
        weftctl_ok(&["graph", "--dir", d, "--mesh-granularity", "full"])
    );
    let copy = tmp.path().join("copy");
    fs::create_dir_all(copy.join("nodes")).unwrap();
    for n in &cluster.nodes {
        fs::copy(
            mesh.node_file(&n.name),
            copy.join(format!("nodes/{}.yaml", n.name)),
        )
        .unwrap();
    }
    fs::create_dir_all(copy.join("peers")).unwrap();
    fs::write(copy.join("settings.yaml"), "granularity: full\n").unwrap();
    assert_eq!(
        weftctl_ok(&["graph", "--dir", dir_str(&copy)]),
        graph.replace(d, dir_str(&copy))
    );
    mesh.check_running().unwrap();
}
