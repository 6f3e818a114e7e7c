//! Leader health, beyond Kilo: a leader whose agent still writes `last-seen`
//! (so Kilo would keep it) but whose WireGuard hears nothing from the other
//! segments' leaders is passed over.
//!
//! Every leader publishes `wireguard-alive`: the last time it had a sign of
//! life (a handshake, or received bytes) from another segment's leader, set
//! to the moment it became leader to give it a grace period. Every node then
//! computes the same demoted set from the published annotations, so the
//! election stays a pure, shared function:
//!
//! a ready node is demoted when its `wireguard-alive` is older than the
//! timeout while some other node's is fresh. The second half keeps a
//! partition of everything (or a two-segment mesh, where each side looks as
//! dead as the other) from demoting every leader at once. A demoted node
//! stops refreshing `wireguard-alive` (it is not a leader any more), so the
//! demotion sticks until the election falls back to it because every other
//! candidate is gone; it then restarts its grace period.

use std::collections::BTreeSet;

use crate::model::Node;

/// The nodes to pass over in leader elections, as of `now`.
pub fn demoted(nodes: &[Node], now: i64, timeout_secs: i64) -> BTreeSet<String> {
    let fresh = |n: &Node| n.wireguard_alive.is_some_and(|t| now - t <= timeout_secs);
    let stale =
        |n: &Node| n.wireguard_alive.is_some_and(|t| now - t > timeout_secs) && n.is_ready(now);
    let demoted: BTreeSet<String> = nodes
        .iter()
        .filter(|n| stale(n))
        .map(|n| n.name.clone())
        .collect();
    if demoted.is_empty() || !nodes.iter().any(|n| n.is_ready(now) && fresh(n)) {
        return BTreeSet::new();
    }
    demoted
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn node(name: &str, alive_ago: Option<i64>, seen_ago: i64) -> Node {
        Node {
            pod_cidr: Some("10.42.0.0/24".parse().unwrap()),
            key: Some(crate::model::PublicKey::from_bytes([name.len() as u8; 32])),
            endpoint: Some("198.18.0.1:51820".parse().unwrap()),
            last_seen: Some(NOW - seen_ago),
            wireguard_alive: alive_ago.map(|a| NOW - a),
            ..Node::named(name)
        }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            nodes: Vec<Node>,
            want: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "all healthy",
                nodes: vec![
                    node("a", Some(5), 1),
                    node("b", Some(5), 1),
                    node("c", None, 1),
                ],
                want: vec![],
            },
            Case {
                name: "one leader deaf while others hear each other",
                nodes: vec![
                    node("a", Some(500), 1),
                    node("b", Some(5), 1),
                    node("c", Some(5), 1),
                ],
                want: vec!["a"],
            },
            Case {
                name: "everyone deaf: a partition demotes nobody",
                nodes: vec![node("a", Some(500), 1), node("b", Some(400), 1)],
                want: vec![],
            },
            Case {
                name: "the only fresh node is not ready: nobody demoted",
                nodes: vec![node("a", Some(500), 1), node("b", Some(5), 600)],
                want: vec![],
            },
            Case {
                name: "a stale node that is not ready is left to readiness",
                nodes: vec![node("a", Some(500), 600), node("b", Some(5), 1)],
                want: vec![],
            },
            Case {
                name: "never a leader: never demoted",
                nodes: vec![node("a", None, 1), node("b", Some(5), 1)],
                want: vec![],
            },
        ];
        for c in cases {
            let got: Vec<String> = demoted(&c.nodes, NOW, 180).into_iter().collect();
            assert_eq!(got, c.want, "{}", c.name);
        }
    }
}
