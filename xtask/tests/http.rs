//! The agent's HTTP endpoints as Kilo's users know them: `/graph` rendered
//! by GraphViz (SVG by default, `?format=`, `?layout=`, 400 for what is
//! not accepted, DOT still there), `/health`, `/metrics` with Kilo's metric
//! names; and objects left out of the mesh named in the log and counted.

mod common;

use common::{bin_dir, wait_for};
use std::time::Duration;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec};

/// A valid WireGuard public key nobody holds.
const SOME_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

/// A response of [`Mesh::http_get`]: status code, headers (lowercased
/// names), body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

fn get(mesh: &Mesh, node: &str, path: &str) -> Reply {
    let raw = mesh.http_get(node, path).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {raw:?}"));
    Reply {
        status,
        headers: head.to_lowercase(),
        body: body.to_string(),
    }
}

impl Reply {
    fn content_type(&self) -> &str {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or("")
    }
}

/// The lines of `node`'s log that name `what` (`peer "empty"`), however
/// the log quotes it.
fn log_lines(mesh: &Mesh, node: &str, kind: &str, name: &str) -> Vec<String> {
    let plain = format!("{kind} \"{name}\"");
    let escaped = format!("{kind} \\\"{name}\\\"");
    mesh.agent(node)
        .read_log()
        .lines()
        .filter(|l| l.contains(&plain) || l.contains(&escaped))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn graph_health_kilo_metrics_and_refused_peers() {
    let cluster = Cluster::create(&ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1"]),
        LocationSpec::new("gcp", ["gcp-1"]),
    ]))
    .expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    let _dump = common::DumpOnPanic(&mesh);
    // Both agents up and seeing both nodes ready, under Kilo's name.
    for n in ["aws-1", "gcp-1"] {
        wait_for(
            &format!("{n}: kilo_nodes 2"),
            Duration::from_secs(30),
            || {
                mesh.check_running().unwrap();
                (mesh.metric(n, "kilo_nodes ") == Some(2.0)).then_some(())
            },
        );
    }

    // /health and /metrics as before.
    let health = get(&mesh, "aws-1", "/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let metrics = get(&mesh, "aws-1", "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type()
            .starts_with("application/openmetrics-text"),
        "{}",
        metrics.headers
    );
    // Kilo's names, with the values of weft's own.
    assert_eq!(mesh.metric("aws-1", "kilo_leader "), Some(1.0));
    assert_eq!(mesh.metric("aws-1", "kilo_peers "), Some(0.0));
    assert_eq!(mesh.metric("aws-1", "weft_ready_nodes "), Some(2.0));
    assert!(
        mesh.metric("aws-1", "kilo_reconciles_total ") >= Some(1.0),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("# TYPE kilo_errors counter"));
    assert_eq!(
        mesh.metric("aws-1", "kilo_errors_total{event=\"apply\"} "),
        Some(0.0)
    );

    // /graph: SVG by default (circo, as Kilo's), and as asked.
    for path in [
        "/graph",
        "/graph?format=svg",
        "/graph?layout=circo",
        "/graph?format=svg&layout=circo",
        "/graph?format=svg&layout=dot",
    ] {
        let r = get(&mesh, "aws-1", path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.content_type(), "image/svg+xml", "{path}");
        assert!(r.body.contains("<svg"), "{path}: {}", r.body);
        // GraphViz writes `-` as `&#45;` in SVG.
        let svg = r.body.replace("&#45;", "-");
        for node in ["node/aws-1", "node/gcp-1"] {
            assert!(svg.contains(node), "{path}: no {node} in {svg}");
        }
    }
    let png = get(&mesh, "aws-1", "/graph?format=png");
    assert_eq!((png.status, png.content_type()), (200, "image/png"));
    assert!(png.body.contains("PNG"));
    let dot = get(&mesh, "aws-1", "/graph?format=dot");
    assert_eq!(dot.status, 200);
    assert!(dot.content_type().starts_with("text/vnd.graphviz"));
    assert!(dot.body.starts_with("digraph \"weft\" {"), "{}", dot.body);
    for (path, accepted) in [
        ("/graph?format=bogus", "svg, png"),
        ("/graph?layout=bogus", "circo, dot"),
    ] {
        let r = get(&mesh, "aws-1", path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(
            r.body.contains("\"bogus\"") && r.body.contains(accepted),
            "{path}: {}",
            r.body
        );
    }

    // A peer with no allowed IPs, and one with a bad key: each named once
    // in the log, with the field and why, and counted.
    mesh.apply_peer(
        "empty",
        &format!("  allowedIPs: []\n  publicKey: {SOME_KEY}\n"),
    )
    .unwrap();
    mesh.apply_peer(
        "bad-key",
        "  allowedIPs: [\"10.5.0.9/32\"]\n  publicKey: not-a-key\n",
    )
    .unwrap();
    let refused = |reason: &str| {
        mesh.metric(
            "aws-1",
            &format!("weft_refused_objects{{kind=\"peer\",reason=\"{reason}\"}} "),
        )
    };
    wait_for(
        "aws-1 to count both refused peers",
        Duration::from_secs(20),
        || {
            (refused("no_allowed_ips") == Some(1.0) && refused("invalid_key") == Some(1.0))
                .then_some(())
        },
    );
    let empty = log_lines(&mesh, "aws-1", "peer", "empty");
    assert_eq!(empty.len(), 1, "{empty:#?}");
    assert!(
        empty[0].contains("spec.allowedIPs") && empty[0].contains("empty: a peer needs"),
        "{}",
        empty[0]
    );
    let bad = log_lines(&mesh, "aws-1", "peer", "bad-key");
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0].contains("spec.publicKey"), "{}", bad[0]);
    eprintln!("    {}\n    {}", empty[0], bad[0]);
    assert_eq!(mesh.metric("aws-1", "kilo_peers "), Some(0.0));
    // Once, not on every resync (every 2 s here).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(log_lines(&mesh, "aws-1", "peer", "empty").len(), 1);
    assert_eq!(log_lines(&mesh, "aws-1", "peer", "bad-key").len(), 1);
    assert_eq!(refused("no_allowed_ips"), Some(1.0));

    // Given an allowed IP, the peer joins: said once, uncounted.
    mesh.apply_peer(
        "empty",
        &format!("  allowedIPs: [\"10.5.0.8/32\"]\n  publicKey: {SOME_KEY}\n"),
    )
    .unwrap();
    wait_for(
        "aws-1 to take the fixed peer",
        Duration::from_secs(20),
        || {
            (mesh.metric("aws-1", "kilo_peers ") == Some(1.0)
                && refused("no_allowed_ips") == Some(0.0))
            .then_some(())
        },
    );
    let empty = log_lines(&mesh, "aws-1", "peer", "empty");
    assert_eq!(empty.len(), 2, "{empty:#?}");
    assert!(empty[1].contains("no longer left out"), "{}", empty[1]);
    assert_eq!(refused("invalid_key"), Some(1.0));
    mesh.check_running().unwrap();
}
