//! The pure peer diff: desired peers against the device's, peer by peer.
//!
//! An unchanged peer produces no operation at all, so its session, counters
//! and learned endpoint survive every resync. A changed peer is updated in
//! place (`update_only`), sending only the fields that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;

use super::state::{DesiredPeer, DeviceUpdate, PeerState, PeerUpdate};
use crate::keys::Key;

/// What differs in one existing peer. A field is `Some` when it must be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    /// The full new list (normalised) when the set differs.
    pub allowed_ips: Option<Vec<IpNet>>,
    /// `Some(0)` turns keepalive off.
    pub persistent_keepalive: Option<u16>,
    /// `Some(Key::ZERO)` clears it.
    pub preshared_key: Option<Key>,
}

impl PeerChange {
    /// Names of the fields that change, for logs.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.endpoint.is_some() {
            v.push("endpoint");
        }
        if self.allowed_ips.is_some() {
            v.push("allowed-ips");
        }
        if self.persistent_keepalive.is_some() {
            v.push("persistent-keepalive");
        }
        if self.preshared_key.is_some() {
            v.push("preshared-key");
        }
        v
    }
}

/// The difference between the device's peers and the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// Desired peers the device lacks (allowed IPs normalised).
    pub added: Vec<DesiredPeer>,
    /// Device peers no longer desired.
    pub removed: Vec<Key>,
    pub changed: Vec<PeerChange>,
    pub unchanged: Vec<Key>,
}

/// The desired list names the same public key twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer {0} is listed more than once in the desired peers")]
pub struct DuplicatePeer(pub Key);

/// Sorted, de-duplicated, host bits cleared: the form WireGuard reports.
pub fn normalize_allowed_ips(ips: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = ips.iter().map(IpNet::trunc).collect();
    set.into_iter().collect()
}

fn keepalive(k: Option<u16>) -> u16 {
    k.unwrap_or(0)
}

fn psk(k: Option<Key>) -> Key {
    k.unwrap_or(Key::ZERO)
}

/// Compares the device's peers with the desired ones.
pub fn diff_peers(
    current: &[PeerState],
    desired: &[DesiredPeer],
) -> Result<PeerDiff, DuplicatePeer> {
    let mut want: BTreeMap<Key, &DesiredPeer> = BTreeMap::new();
    for d in desired {
        if want.insert(d.public_key, d).is_some() {
            return Err(DuplicatePeer(d.public_key));
        }
    }
    let have: BTreeMap<Key, &PeerState> = current.iter().map(|p| (p.public_key, p)).collect();

    let mut diff = PeerDiff::default();
    for key in have.keys() {
        if !want.contains_key(key) {
            diff.removed.push(*key);
        }
    }
    for (key, d) in &want {
        let allowed = normalize_allowed_ips(&d.allowed_ips);
        let Some(cur) = have.get(key) else {
            diff.added.push(DesiredPeer {
                allowed_ips: allowed,
                ..(*d).clone()
            });
            continue;
        };
        let mut change = PeerChange {
            public_key: *key,
            endpoint: None,
            allowed_ips: None,
            persistent_keepalive: None,
            preshared_key: None,
        };
        // A desired endpoint of None keeps what the device has, including an
        // endpoint learned by roaming.
        if let Some(ep) = d.endpoint
            && cur.endpoint != Some(ep)
        {
            change.endpoint = Some(ep);
        }
        if normalize_allowed_ips(&cur.allowed_ips) != allowed {
            change.allowed_ips = Some(allowed);
        }
        if keepalive(cur.persistent_keepalive) != keepalive(d.persistent_keepalive) {
            change.persistent_keepalive = Some(keepalive(d.persistent_keepalive));
        }
        if psk(cur.preshared_key) != psk(d.preshared_key) {
            change.preshared_key = Some(psk(d.preshared_key));
        }
        if change.fields().is_empty() {
            diff.unchanged.push(*key);
        } else {
            diff.changed.push(change);
        }
    }
    Ok(diff)
}

impl PeerDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The device operations: removals first (freeing allowed IPs), then
    /// in-place changes, then additions.
    pub(crate) fn to_update(&self) -> DeviceUpdate {
        let mut peers = Vec::new();
        for key in &self.removed {
            let mut u = PeerUpdate::new(*key);
            u.remove = true;
            peers.push(u);
        }
        for c in &self.changed {
            let mut u = PeerUpdate::new(c.public_key);
            u.update_only = true;
            u.endpoint = c.endpoint;
            u.persistent_keepalive = c.persistent_keepalive;
            u.preshared_key = c.preshared_key;
            if let Some(ips) = &c.allowed_ips {
                u.replace_allowed_ips = true;
                u.allowed_ips = ips.clone();
            }
            peers.push(u);
        }
        for d in &self.added {
            peers.push(full_peer(d));
        }
        DeviceUpdate {
            peers,
            ..DeviceUpdate::default()
        }
    }
}

/// The operation creating `d` from scratch.
pub(crate) fn full_peer(d: &DesiredPeer) -> PeerUpdate {
    let mut u = PeerUpdate::new(d.public_key);
    u.endpoint = d.endpoint;
    u.persistent_keepalive = d.persistent_keepalive.filter(|&k| k != 0);
    u.preshared_key = d.preshared_key.filter(|k| !k.is_zero());
    u.replace_allowed_ips = true;
    u.allowed_ips = normalize_allowed_ips(&d.allowed_ips);
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn desired(n: u8, ips: &[&str]) -> DesiredPeer {
        DesiredPeer {
            public_key: key(n),
            endpoint: Some(format!("192.0.2.{n}:51820").parse().unwrap()),
            allowed_ips: ips.iter().map(|s| net(s)).collect(),
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    /// The device's view of a desired peer, with traffic counters.
    fn current(d: &DesiredPeer) -> PeerState {
        PeerState {
            public_key: d.public_key,
            endpoint: d.endpoint,
            allowed_ips: normalize_allowed_ips(&d.allowed_ips),
            persistent_keepalive: d.persistent_keepalive.filter(|&k| k != 0),
            preshared_key: d.preshared_key,
            rx_bytes: 1000,
            tx_bytes: 2000,
            last_handshake: Some(SystemTime::UNIX_EPOCH),
        }
    }

    use std::time::SystemTime;

    #[test]
    fn identical_peers_produce_no_operation() {
        let want = vec![
            desired(1, &["10.0.1.0/24", "10.4.0.1/32"]),
            desired(2, &["10.0.2.0/24"]),
        ];
        let have: Vec<_> = want.iter().map(current).collect();
        let diff = diff_peers(&have, &want).unwrap();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(diff.unchanged, vec![key(1), key(2)]);
        assert!(diff.to_update().is_empty());
    }

    #[test]
    fn allowed_ips_compare_as_sets_of_normalised_prefixes() {
        let want = vec![desired(1, &["10.4.0.1/32", "10.0.1.7/24", "10.0.1.0/24"])];
        let mut have = vec![current(&want[0])];
        have[0].allowed_ips = vec![net("10.0.1.0/24"), net("10.4.0.1/32")];
        assert!(diff_peers(&have, &want).unwrap().is_empty());
    }

    #[test]
    fn added_removed_and_changed_are_separated() {
        let one = desired(1, &["10.0.1.0/24"]);
        let two = desired(2, &["10.0.2.0/24"]);
        let three = desired(3, &["10.0.3.0/24"]);
        let have = vec![current(&one), current(&two)];
        let mut two_changed = two.clone();
        two_changed.allowed_ips.push(net("10.0.22.0/24"));
        let want = vec![one.clone(), two_changed, three.clone()];
        let diff = diff_peers(&have, &want).unwrap();
        assert_eq!(diff.unchanged, vec![key(1)]);
        assert_eq!(diff.removed, Vec::<Key>::new());
        assert_eq!(diff.added, vec![three.clone()]);
        assert_eq!(diff.changed.len(), 1);
        assert_eq!(diff.changed[0].public_key, key(2));
        assert_eq!(diff.changed[0].fields(), vec!["allowed-ips"]);
        assert_eq!(
            diff.changed[0].allowed_ips,
            Some(vec![net("10.0.2.0/24"), net("10.0.22.0/24")])
        );

        let diff = diff_peers(&have, std::slice::from_ref(&two)).unwrap();
        assert_eq!(diff.removed, vec![key(1)]);
        assert!(diff.added.is_empty() && diff.changed.is_empty());
    }

    #[test]
    fn a_roamed_endpoint_is_kept_when_none_is_desired() {
        let mut want = desired(1, &["10.0.1.0/24"]);
        let mut have = current(&want);
        have.endpoint = Some("198.51.100.9:40000".parse().unwrap());
        want.endpoint = None;
        assert!(
            diff_peers(&[have.clone()], &[want.clone()])
                .unwrap()
                .is_empty()
        );
        // But a desired endpoint that differs is set.
        want.endpoint = Some("192.0.2.1:51820".parse().unwrap());
        let diff = diff_peers(&[have], &[want]).unwrap();
        assert_eq!(diff.changed[0].fields(), vec!["endpoint"]);
        let update = diff.to_update();
        assert_eq!(update.peers.len(), 1);
        let u = &update.peers[0];
        assert!(u.update_only && !u.remove && !u.replace_allowed_ips);
        assert_eq!(u.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(u.persistent_keepalive, None);
    }

    #[test]
    fn keepalive_and_psk_treat_zero_as_unset() {
        let mut want = desired(1, &["10.0.1.0/24"]);
        want.persistent_keepalive = Some(0);
        want.preshared_key = Some(Key::ZERO);
        let mut have = current(&want);
        have.persistent_keepalive = None;
        have.preshared_key = None;
        assert!(
            diff_peers(&[have.clone()], &[want.clone()])
                .unwrap()
                .is_empty()
        );

        want.persistent_keepalive = Some(25);
        want.preshared_key = Some(key(9));
        let diff = diff_peers(&[have.clone()], &[want.clone()]).unwrap();
        assert_eq!(
            diff.changed[0].fields(),
            vec!["persistent-keepalive", "preshared-key"]
        );
        assert_eq!(diff.changed[0].persistent_keepalive, Some(25));
        assert_eq!(diff.changed[0].preshared_key, Some(key(9)));

        // Turning them off again sends explicit zeros.
        let have = current(&want);
        want.persistent_keepalive = None;
        want.preshared_key = None;
        let diff = diff_peers(&[have], &[want]).unwrap();
        assert_eq!(diff.changed[0].persistent_keepalive, Some(0));
        assert_eq!(diff.changed[0].preshared_key, Some(Key::ZERO));
    }

    #[test]
    fn update_orders_removals_before_changes_before_additions() {
        let one = desired(1, &["10.0.1.0/24"]);
        let two = desired(2, &["10.0.2.0/24"]);
        let mut two_moved = two.clone();
        two_moved.allowed_ips = vec![net("10.0.1.0/24")];
        let three = desired(3, &["10.0.2.0/24"]);
        // Peer 1 goes, its prefix moves to peer 2, peer 2's goes to new peer 3.
        let diff = diff_peers(&[current(&one), current(&two)], &[two_moved, three]).unwrap();
        let update = diff.to_update();
        let order: Vec<_> = update
            .peers
            .iter()
            .map(|u| (u.public_key, u.remove, u.update_only))
            .collect();
        assert_eq!(
            order,
            vec![
                (key(1), true, false),
                (key(2), false, true),
                (key(3), false, false)
            ]
        );
        let added = &update.peers[2];
        assert!(added.replace_allowed_ips);
        assert_eq!(added.allowed_ips, vec![net("10.0.2.0/24")]);
        assert_eq!(added.endpoint, three_endpoint());
    }

    fn three_endpoint() -> Option<SocketAddr> {
        Some("192.0.2.3:51820".parse().unwrap())
    }

    #[test]
    fn duplicate_desired_keys_are_an_error() {
        let d = desired(1, &["10.0.1.0/24"]);
        assert_eq!(diff_peers(&[], &[d.clone(), d]), Err(DuplicatePeer(key(1))));
    }
}
