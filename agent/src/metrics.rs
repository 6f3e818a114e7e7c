//! The agent's Prometheus metrics, served on `--listen` at `/metrics`.

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
    /// Errors by kind: `backend`, `node` (bad node input), `peer` (bad peer input), `wireguard`, `routes`, `datapath`, `publish`, `cni`.
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
}

impl Metrics {
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&l(&[("kind", kind)])).inc();
    }

    pub fn map_writes(&self, map: &str, n: u64) {
        if n > 0 {
            self.map_writes.get_or_create(&l(&[("map", map)])).inc_by(n);
        }
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
        let mut r = Registry::with_prefix("weft");
        macro_rules! reg {
            ($name:expr, $help:expr, $m:expr) => {
                r.register($name, $help, $m.clone())
            };
        }
        reg!("reconciles", "Reconciliations run", self.reconciles);
        reg!("errors", "Errors by kind", self.errors);
        reg!("nodes", "Nodes known (valid input)", self.nodes);
        reg!(
            "ready_nodes",
            "Nodes ready (fresh last-seen, key, endpoint, pod CIDR)",
            self.ready_nodes
        );
        reg!("peers", "External peers known", self.peers);
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
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
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
    }
}
