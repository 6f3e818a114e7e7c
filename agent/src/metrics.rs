//! The agent's Prometheus metrics, served on `--listen` at `/metrics`:
//! weft's own (`weft_*`), and Kilo's names (`kilo_*`) for the same values,
//! so that dashboards and alerts made for Kilo keep working (see the
//! README's "Metrics").

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every metric the agent exports. Cheap to update; encoded on request.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: Counter,
    /// Errors by kind: `reconcile` (a reconcile failed: WireGuard, routes,
    /// eBPF, CNI...), `publish` (this node's annotations), `datapath` (the
    /// masquerade GC), `map_full` (a BPF map too small for the topology: left
    /// as it was), `node` and `peer` (values that do not parse),
    /// `backend` (unreadable objects), `topology` (input worked around).
    pub errors: Family<Labels, Counter>,
    pub nodes: Gauge,
    pub ready_nodes: Gauge,
    pub peers: Gauge,
    pub wireguard_peers: Gauge,
    pub is_leader: Gauge,
    /// Leaders of this node's location passed over because they were unhealthy.
    pub failed_over_leaders: Gauge,
    pub leader_failovers: Counter,
    /// 1 while the backend (API server) is unreachable and the last data stays in force.
    pub backend_stale: Gauge,
    pub wg_rx_bytes: Family<Labels, Gauge<u64, AtomicU64>>,
    pub wg_tx_bytes: Family<Labels, Gauge<u64, AtomicU64>>,
    pub wg_last_handshake: Family<Labels, Gauge<u64, AtomicU64>>,
    /// Datapath counters (packets and bytes) by action or reason.
    pub datapath_packets: Family<Labels, Gauge<u64, AtomicU64>>,
    pub datapath_bytes: Family<Labels, Gauge<u64, AtomicU64>>,
    /// BPF map entries written (inserted, updated or deleted) by the agent, by map.
    pub map_writes: Family<Labels, Counter>,
    /// Entries the agent wants in each of its maps, and what the map holds at most.
    pub map_entries: Family<Labels, Gauge>,
    pub map_capacity: Family<Labels, Gauge>,
    /// WireGuard peers added, removed, changed by the agent.
    pub peer_changes: Family<Labels, Counter>,
    /// Routes added and removed by the agent.
    pub route_changes: Family<Labels, Counter>,
    /// Live masquerade flows (after the last GC).
    pub nat_flows: Gauge,
    /// The flow limit above which new flows are refused.
    pub nat_max_flows: Gauge,
    /// Masquerade flows the GC removed, by reason (`expired`, `orphan`).
    pub nat_gc_removed: Family<Labels, Counter>,
    /// Nodes and peers left out of the mesh right now, by `kind` and `reason`.
    pub refused_objects: Family<Labels, Gauge>,
    /// Kilo's `kilo_errors_total{event}`: see [`kilo_event`].
    pub kilo_errors: Family<Labels, Counter>,
}

/// The events of `kilo_errors_total` weft counts.
pub const KILO_EVENTS: [&str; 3] = ["apply", "checkin", "run"];

/// The `event` of Kilo's `kilo_errors_total` an error of weft's `kind`
/// counts under: `apply` (a reconcile failed), `checkin` (publishing this
/// node's annotations failed), `run` (a background task failed). Bad input
/// (`node`, `peer`, `backend` files, `topology` warnings) is no error of
/// Kilo's: it left such objects out without counting them.
pub fn kilo_event(kind: &str) -> Option<&'static str> {
    match kind {
        "reconcile" | "wireguard" | "routes" | "cni" => Some("apply"),
        "publish" => Some("checkin"),
        "datapath" => Some("run"),
        _ => None,
    }
}

impl Metrics {
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&l(&[("kind", kind)])).inc();
        if let Some(event) = kilo_event(kind) {
            self.kilo_errors
                .get_or_create(&l(&[("event", event)]))
                .inc();
        }
    }

    /// Sets `weft_refused_objects` from `(kind, reason, count)` for every
    /// known kind and reason (zeros included, so every series exists).
    pub fn refused(&self, counts: &[(&str, &str, u64)]) {
        for (kind, reason, n) in counts {
            self.refused_objects
                .get_or_create(&l(&[("kind", kind), ("reason", reason)]))
                .set(*n as i64);
        }
    }

    pub fn map_writes(&self, map: &str, n: u64) {
        if n > 0 {
            self.map_writes.get_or_create(&l(&[("map", map)])).inc_by(n);
        }
    }

    /// How full one of the agent's maps is (`entries` of at most `capacity`).
    pub fn map_fill(&self, map: &str, entries: u64, capacity: u64) {
        let labels = l(&[("map", map)]);
        self.map_entries.get_or_create(&labels).set(entries as i64);
        self.map_capacity
            .get_or_create(&labels)
            .set(capacity as i64);
    }

    pub fn peer_change(&self, op: &str, n: u64) {
        if n > 0 {
            self.peer_changes.get_or_create(&l(&[("op", op)])).inc_by(n);
        }
    }

    pub fn route_change(&self, op: &str, n: u64) {
        if n > 0 {
            self.route_changes
                .get_or_create(&l(&[("op", op)]))
                .inc_by(n);
        }
    }

    pub fn wireguard_peer(&self, public_key: &str, rx: u64, tx: u64, last_handshake_unix: u64) {
        let k = l(&[("public_key", public_key)]);
        self.wg_rx_bytes.get_or_create(&k).set(rx);
        self.wg_tx_bytes.get_or_create(&k).set(tx);
        self.wg_last_handshake
            .get_or_create(&k)
            .set(last_handshake_unix);
    }

    pub fn nat_gc(&self, live: u64, expired: u64, orphans: u64) {
        self.nat_flows.set(live as i64);
        for (reason, n) in [("expired", expired), ("orphan", orphans)] {
            if n > 0 {
                self.nat_gc_removed
                    .get_or_create(&l(&[("reason", reason)]))
                    .inc_by(n);
            }
        }
    }

    pub fn datapath_counter(&self, name: &str, packets: u64, bytes: u64) {
        let k = l(&[("counter", name)]);
        self.datapath_packets.get_or_create(&k).set(packets);
        self.datapath_bytes.get_or_create(&k).set(bytes);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut root = Registry::default();
        self.register_kilo(root.sub_registry_with_prefix("kilo"));
        let r = root.sub_registry_with_prefix("weft");
        macro_rules! reg {
            ($name:expr, $help:expr, $m:expr) => {
                r.register($name, $help, $m.clone())
            };
        }
        reg!("reconciles", "Reconciliations run", self.reconciles);
        reg!("errors", "Errors by kind", self.errors);
        reg!(
            "nodes",
            "Nodes known (valid input, ready or not)",
            self.nodes
        );
        reg!(
            "ready_nodes",
            "Nodes ready (fresh last-seen, key, endpoint, pod CIDR)",
            self.ready_nodes
        );
        reg!(
            "peers",
            "External peers in the mesh (ready: valid, with allowed IPs)",
            self.peers
        );
        reg!(
            "refused_objects",
            "Nodes and peers left out of the mesh, by kind and reason (each is named once in the log)",
            self.refused_objects
        );
        reg!(
            "wireguard_peers",
            "WireGuard peers configured on this node",
            self.wireguard_peers
        );
        reg!(
            "is_leader",
            "1 if this node leads its segment",
            self.is_leader
        );
        reg!(
            "failed_over_leaders",
            "Unhealthy nodes passed over as leader in this node's segment",
            self.failed_over_leaders
        );
        reg!(
            "leader_failovers",
            "Nodes passed over as leaders anywhere in the mesh because their WireGuard was unhealthy (as this agent saw it happen)",
            self.leader_failovers
        );
        reg!(
            "nat_flows",
            "Live masquerade (SNAT) flows after the last garbage collection",
            self.nat_flows
        );
        reg!(
            "nat_max_flows",
            "Masquerade flows above which new flows are refused (table pressure = nat_flows / nat_max_flows)",
            self.nat_max_flows
        );
        reg!(
            "nat_gc_removed",
            "Masquerade flows removed by the garbage collector, by reason",
            self.nat_gc_removed
        );
        reg!(
            "backend_stale",
            "1 while the backend (API server) is unreachable and the agent runs on its last data",
            self.backend_stale
        );
        reg!(
            "wireguard_rx_bytes",
            "Bytes received from a WireGuard peer",
            self.wg_rx_bytes
        );
        reg!(
            "wireguard_tx_bytes",
            "Bytes sent to a WireGuard peer",
            self.wg_tx_bytes
        );
        reg!(
            "wireguard_last_handshake_seconds",
            "Unix time of the last handshake with a WireGuard peer",
            self.wg_last_handshake
        );
        reg!(
            "datapath_packets",
            "Packets counted by the eBPF datapath, by action",
            self.datapath_packets
        );
        reg!(
            "datapath_bytes",
            "Bytes counted by the eBPF datapath, by action",
            self.datapath_bytes
        );
        reg!(
            "bpf_map_writes",
            "BPF map entries written by the agent, by map",
            self.map_writes
        );
        reg!(
            "bpf_map_entries",
            "Entries the agent wants in its BPF map, by map",
            self.map_entries
        );
        reg!(
            "bpf_map_capacity",
            "Entries the BPF map holds at most, by map (a topology needing more is refused: weft_errors_total{kind=\"map_full\"})",
            self.map_capacity
        );
        reg!(
            "wireguard_peer_changes",
            "WireGuard peers added/removed/changed by the agent",
            self.peer_changes
        );
        reg!(
            "route_changes",
            "Routes added/removed by the agent",
            self.route_changes
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &root)
            .expect("writing to a String cannot fail");
        out
    }

    /// Kilo's metrics (`pkg/mesh`), names, types, labels and meaning kept:
    /// the same values as weft's counterparts.
    fn register_kilo(&self, r: &mut Registry) {
        // Every event from the start (at 0), so that `increase()` sees the first error.
        for event in KILO_EVENTS {
            drop(self.kilo_errors.get_or_create(&l(&[("event", event)])));
        }
        r.register(
            "errors",
            "Number of errors that occurred while administering the mesh (Kilo's name; by event: apply, checkin, run)",
            self.kilo_errors.clone(),
        );
        r.register(
            "leader",
            "Leadership status of the node (Kilo's name for weft_is_leader)",
            self.is_leader.clone(),
        );
        r.register(
            "nodes",
            "Number of nodes in the mesh (Kilo's name for weft_ready_nodes)",
            self.ready_nodes.clone(),
        );
        r.register(
            "peers",
            "Number of peers in the mesh (Kilo's name for weft_peers)",
            self.peers.clone(),
        );
        r.register(
            "reconciles",
            "Number of reconciliation attempts (Kilo's name for weft_reconciles_total)",
            self.reconciles.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labelled_metrics() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.error("node");
        m.error("node");
        m.map_writes("WEFT_ROUTES", 3);
        let text = m.encode();
        assert!(text.contains("weft_reconciles_total 1"), "{text}");
        assert!(
            text.contains("weft_errors_total{kind=\"node\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("weft_bpf_map_writes_total{map=\"WEFT_ROUTES\"} 3"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    /// The value of the sample `series` (name and labels) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn kilo_names_carry_the_same_values() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.reconciles.inc();
        m.ready_nodes.set(4);
        m.nodes.set(5);
        m.peers.set(1);
        m.is_leader.set(1);
        m.error("reconcile");
        m.error("publish");
        m.error("datapath");
        m.error("node"); // bad input: not one of Kilo's errors
        let text = m.encode();
        for (kilo, weft) in [
            ("kilo_reconciles_total", "weft_reconciles_total"),
            ("kilo_nodes", "weft_ready_nodes"),
            ("kilo_peers", "weft_peers"),
            ("kilo_leader", "weft_is_leader"),
        ] {
            assert!(sample(&text, kilo).is_some(), "{kilo} missing:\n{text}");
            assert_eq!(sample(&text, kilo), sample(&text, weft), "{kilo}");
        }
        assert_eq!(sample(&text, "kilo_nodes"), Some(4.0));
        assert!(text.contains("# TYPE kilo_errors counter"), "{text}");
        assert!(text.contains("# TYPE kilo_leader gauge"), "{text}");
        for event in ["apply", "checkin", "run"] {
            assert_eq!(
                sample(&text, &format!("kilo_errors_total{{event=\"{event}\"}}")),
                Some(1.0),
                "{event}: {text}"
            );
        }
        assert_eq!(text.matches("kilo_errors_total{").count(), 3, "{text}");
        let fresh = Metrics::default().encode();
        assert_eq!(
            sample(&fresh, "kilo_errors_total{event=\"apply\"}"),
            Some(0.0),
            "{fresh}"
        );
        assert_eq!(sample(&text, "weft_errors_total{kind=\"node\"}"), Some(1.0));
    }

    /// The README's "Metrics" lists every metric exported.
    #[test]
    fn every_metric_is_in_the_readme() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let m = Metrics::default();
        // Families show only once they have a series.
        m.error("reconcile");
        m.map_writes("WEFT_ROUTES", 1);
        m.peer_change("added", 1);
        m.route_change("added", 1);
        m.wireguard_peer("k", 1, 1, 1);
        m.nat_gc(1, 1, 1);
        m.datapath_counter("nat_snat", 1, 1);
        m.refused(&[("peer", "no_allowed_ips", 1)]);
        let text = m.encode();
        let mut names = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut w = line.split_whitespace().skip(2);
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            let exported = if kind == "counter" {
                format!("`{name}_total")
            } else {
                format!("`{name}`")
            };
            assert!(
                readme.contains(&exported),
                "{exported}` is not in the README's Metrics"
            );
            names += 1;
        }
        assert!(names >= 27, "{text}");
    }

    #[test]
    fn refused_objects_by_kind_and_reason() {
        let m = Metrics::default();
        m.refused(&[("peer", "no_allowed_ips", 2), ("node", "stale", 0)]);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "weft_refused_objects{kind=\"peer\",reason=\"no_allowed_ips\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "weft_refused_objects{kind=\"node\",reason=\"stale\"}"
            ),
            Some(0.0)
        );
    }
}
