//! Objects left out of the mesh, and why: a node or peer whose values do
//! not parse ([`ModelError`]), a node that is not ready ([`NotReady`]), a
//! peer without allowed IPs, two objects of one name. Each refusal names
//! the object, the field and the reason, so that it can be logged once when
//! it appears ([`Refusals::update`]) and counted by reason
//! (`weft_refused_objects{kind, reason}`).

use std::collections::BTreeMap;
use std::fmt;

use super::{ModelError, NotReady, Object, READY_WINDOW_SECS};

/// What kind of object was refused: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalKind {
    Node,
    Peer,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Node => "node",
            RefusalKind::Peer => "peer",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every reason a node can be refused for: the `reason` label values.
pub const NODE_REASONS: &[&str] = &[
    "invalid_name",
    "invalid_key",
    "invalid_endpoint",
    "invalid_cidr",
    "invalid_value",
    "no_key",
    "no_endpoint",
    "no_pod_cidr",
    "never_seen",
    "stale",
    "duplicate_name",
    "range_taken",
];

/// Every reason a peer can be refused for.
pub const PEER_REASONS: &[&str] = &[
    "invalid_name",
    "invalid_key",
    "invalid_endpoint",
    "invalid_cidr",
    "invalid_value",
    "no_allowed_ips",
    "duplicate_name",
    "range_taken",
];

/// One object left out of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub name: String,
    /// `annotation weft.dev/key`, `podCIDR`, `spec.allowedIPs`, ...
    pub field: String,
    /// A short, stable code (one of [`NODE_REASONS`] or [`PEER_REASONS`]).
    pub reason: &'static str,
    /// What is wrong; stable as long as the object does not change.
    pub detail: String,
    /// What changes by itself while the object stays refused (a stale
    /// node's age): said in the log, not part of the refusal's identity.
    pub note: Option<String>,
}

/// What makes two refusals the same: everything but the note.
pub type RefusalKey = (RefusalKind, String, String, &'static str, String);

impl Refusal {
    pub fn key(&self) -> RefusalKey {
        (
            self.kind,
            self.name.clone(),
            self.field.clone(),
            self.reason,
            self.detail.clone(),
        )
    }

    /// A value that does not parse; `None` for the settings, which are no
    /// object of the mesh.
    pub fn from_error(e: &ModelError) -> Option<Refusal> {
        let (kind, name) = match &e.object {
            Object::Node(n) => (RefusalKind::Node, n.clone()),
            Object::Peer(n) => (RefusalKind::Peer, n.clone()),
            Object::Settings => return None,
        };
        let reason = match e.what {
            "node name" | "peer name" => "invalid_name",
            "WireGuard key" => "invalid_key",
            "endpoint" | "port" | "DNS name" | "IP address" => "invalid_endpoint",
            "CIDR" | "CIDR list" => "invalid_cidr",
            _ => "invalid_value",
        };
        // The error's own text without its "object: field: " head.
        let full = e.to_string();
        let head = format!("{}: {}: ", e.object, e.field);
        let detail = full.strip_prefix(&head).unwrap_or(&full).to_owned();
        Some(Refusal {
            kind,
            name,
            field: e.field.clone(),
            reason,
            detail,
            note: None,
        })
    }

    /// A node that is not ready.
    pub fn not_ready(name: &str, why: &NotReady) -> Refusal {
        let (field, reason, detail, note) = match why {
            NotReady::NoKey => (
                "annotation weft.dev/key",
                "no_key",
                "missing: the node's agent has not published its WireGuard key".to_owned(),
                None,
            ),
            NotReady::NoEndpoint => (
                "annotation weft.dev/endpoint",
                "no_endpoint",
                "missing, and no force-endpoint: the node has no address to be reached at"
                    .to_owned(),
                None,
            ),
            NotReady::NoPodCidr => (
                "podCIDR",
                "no_pod_cidr",
                "missing: the node has no pod CIDR".to_owned(),
                None,
            ),
            NotReady::NeverSeen => (
                "annotation weft.dev/last-seen",
                "never_seen",
                "missing: the node's agent never checked in".to_owned(),
                None,
            ),
            NotReady::Stale(age) => (
                "annotation weft.dev/last-seen",
                "stale",
                format!("older than {READY_WINDOW_SECS} s: the node's agent stopped checking in"),
                Some(format!("last seen {age} s ago")),
            ),
        };
        Refusal {
            kind: RefusalKind::Node,
            name: name.to_owned(),
            field: field.to_owned(),
            reason,
            detail,
            note,
        }
    }

    /// A peer with an empty `allowedIPs`.
    pub fn peer_without_allowed_ips(name: &str) -> Refusal {
        Refusal {
            kind: RefusalKind::Peer,
            name: name.to_owned(),
            field: "spec.allowedIPs".to_owned(),
            reason: "no_allowed_ips",
            detail: "empty: a peer needs at least one allowed IP".to_owned(),
            note: None,
        }
    }

    /// A node whose pod CIDR, or a peer all of whose allowed IPs, another
    /// object or the settings own (`detail`: the ownership warning, which
    /// names both sides and the range).
    pub fn range_taken(kind: RefusalKind, name: &str, detail: String) -> Refusal {
        let field = match kind {
            RefusalKind::Node => "podCIDR",
            RefusalKind::Peer => "spec.allowedIPs",
        };
        Refusal {
            kind,
            name: name.to_owned(),
            field: field.to_owned(),
            reason: "range_taken",
            detail,
            note: None,
        }
    }

    /// Several objects of one kind share this name (all are left out).
    pub fn duplicate_name(kind: RefusalKind, name: &str) -> Refusal {
        Refusal {
            kind,
            name: name.to_owned(),
            field: "name".to_owned(),
            reason: "duplicate_name",
            detail: format!("several {kind}s have this name: all are left out"),
            note: None,
        }
    }

    /// True for a node whose agent has simply not published yet (it has
    /// not started, or is starting): worth saying, not worth a warning.
    pub fn is_pending(&self) -> bool {
        matches!(self.reason, "no_key" | "never_seen")
    }

    /// True when the object's own values are wrong (it does not parse).
    pub fn is_invalid(&self) -> bool {
        self.reason.starts_with("invalid_")
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} left out of the mesh: {}: {}",
            self.kind, self.name, self.field, self.detail
        )?;
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// The refusals in force, so that each is told once when it appears and
/// once when it goes.
#[derive(Debug, Default)]
pub struct Refusals {
    current: BTreeMap<RefusalKey, Refusal>,
}

/// What [`Refusals::update`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefusalChanges {
    /// Refusals that were not in force before.
    pub new: Vec<Refusal>,
    /// Objects that were refused and are no longer refused for any reason.
    pub cleared: Vec<Refusal>,
}

impl Refusals {
    /// Replaces the refusals in force with `now` (all of them, as of one
    /// reconcile) and says what changed. A refusal that only changed its
    /// note (a stale node getting older) is no change.
    pub fn update(&mut self, now: Vec<Refusal>) -> RefusalChanges {
        let mut next = BTreeMap::new();
        for r in now {
            next.insert(r.key(), r);
        }
        let new = next
            .iter()
            .filter(|(k, _)| !self.current.contains_key(*k))
            .map(|(_, r)| r.clone())
            .collect();
        let still: std::collections::BTreeSet<(RefusalKind, &str)> =
            next.values().map(|r| (r.kind, r.name.as_str())).collect();
        let mut cleared: Vec<Refusal> = Vec::new();
        for (k, r) in &self.current {
            if next.contains_key(k) || still.contains(&(r.kind, r.name.as_str())) {
                continue;
            }
            if !cleared.iter().any(|c| c.kind == r.kind && c.name == r.name) {
                cleared.push(r.clone());
            }
        }
        self.current = next;
        RefusalChanges { new, cleared }
    }

    /// The refusals in force.
    pub fn current(&self) -> impl Iterator<Item = &Refusal> {
        self.current.values()
    }

    /// How many objects are refused, by kind and reason: every known
    /// reason, zero where none.
    pub fn counts(&self) -> Vec<(RefusalKind, &'static str, u64)> {
        let mut out = Vec::new();
        for (kind, reasons) in [
            (RefusalKind::Node, NODE_REASONS),
            (RefusalKind::Peer, PEER_REASONS),
        ] {
            for reason in reasons {
                let n = self
                    .current
                    .values()
                    .filter(|r| r.kind == kind && r.reason == *reason)
                    .count();
                out.push((kind, *reason, n as u64));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeObject, PeerObject, parse_nodes, parse_peers};

    fn peer(name: &str, spec: &str) -> PeerObject {
        serde_norway::from_str(&format!("name: {name}\nspec:\n{spec}")).unwrap()
    }

    #[test]
    fn parse_errors_name_the_object_the_field_and_the_reason() {
        let nodes: Vec<NodeObject> = serde_norway::from_str(
            "- name: bad-cidr\n  podCIDR: 10.42.300.0/24\n- name: bad-key\n  annotations:\n    weft.dev/key: nope\n",
        )
        .unwrap();
        let (_, errors) = parse_nodes(&nodes, "topology.kubernetes.io/region");
        let r: Vec<Refusal> = errors.iter().filter_map(Refusal::from_error).collect();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (
                r[0].kind,
                r[0].name.as_str(),
                r[0].field.as_str(),
                r[0].reason
            ),
            (RefusalKind::Node, "bad-cidr", "podCIDR", "invalid_cidr")
        );
        assert_eq!(r[1].field, "annotation weft.dev/key");
        assert_eq!(r[1].reason, "invalid_key");
        let text = r[1].to_string();
        assert!(
            text.starts_with(
                "node \"bad-key\" left out of the mesh: annotation weft.dev/key: invalid WireGuard key \"nope\""
            ),
            "{text}"
        );

        let peers = [
            peer(
                "bad-endpoint",
                "  allowedIPs: [10.5.0.1/32]\n  publicKey: yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n  endpoint: {dnsOrIP: {ip: 1.2.3}, port: 51820}\n",
            ),
            peer(
                "bad-key",
                "  allowedIPs: [10.5.0.2/32]\n  publicKey: short\n",
            ),
        ];
        let (ok, errors) = parse_peers(&peers);
        assert!(ok.is_empty());
        let r: Vec<Refusal> = errors.iter().filter_map(Refusal::from_error).collect();
        assert_eq!(r[0].reason, "invalid_endpoint");
        assert_eq!(r[0].field, "spec.endpoint.dnsOrIP.ip");
        assert_eq!(r[1].reason, "invalid_key");
        assert_eq!(r[1].field, "spec.publicKey");
        assert!(r.iter().all(Refusal::is_invalid));
    }

    #[test]
    fn not_ready_nodes_and_empty_peers() {
        let r = Refusal::not_ready("b", &NotReady::NoEndpoint);
        assert_eq!(r.reason, "no_endpoint");
        assert!(!r.is_pending());
        assert!(Refusal::not_ready("b", &NotReady::NoKey).is_pending());
        let stale = Refusal::not_ready("b", &NotReady::Stale(75));
        assert!(
            stale.to_string().ends_with("(last seen 75 s ago)"),
            "{stale}"
        );
        let p = Refusal::peer_without_allowed_ips("laptop");
        assert_eq!(
            p.to_string(),
            "peer \"laptop\" left out of the mesh: spec.allowedIPs: empty: a peer needs at least one allowed IP"
        );
        for (kind, reasons) in [
            (RefusalKind::Node, NODE_REASONS),
            (RefusalKind::Peer, PEER_REASONS),
        ] {
            assert!(reasons.contains(&"duplicate_name"), "{kind}");
        }
        assert!(NODE_REASONS.contains(&stale.reason));
        assert!(PEER_REASONS.contains(&p.reason));
    }

    #[test]
    fn every_reason_is_in_the_readme() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        for reason in NODE_REASONS.iter().chain(PEER_REASONS) {
            assert!(readme.contains(&format!("| `{reason}` |")), "{reason}");
        }
    }

    #[test]
    fn each_refusal_is_new_once_and_cleared_once() {
        let mut t = Refusals::default();
        let empty = Refusal::peer_without_allowed_ips("laptop");
        let stale = |age| Refusal::not_ready("b", &NotReady::Stale(age));
        let c = t.update(vec![empty.clone(), stale(61)]);
        assert_eq!(c.new.len(), 2);
        assert!(c.cleared.is_empty());
        // Every resync: nothing new, even though the stale node aged.
        let c = t.update(vec![empty.clone(), stale(90)]);
        assert_eq!(c, RefusalChanges::default());
        let counts = t.counts();
        assert!(counts.contains(&(RefusalKind::Peer, "no_allowed_ips", 1)));
        assert!(counts.contains(&(RefusalKind::Node, "stale", 1)));
        assert!(counts.contains(&(RefusalKind::Node, "no_key", 0)));
        assert_eq!(counts.len(), NODE_REASONS.len() + PEER_REASONS.len());
        // A node refused for another reason is new, not cleared.
        let c = t.update(vec![
            empty.clone(),
            Refusal::not_ready("b", &NotReady::NoKey),
        ]);
        assert_eq!(c.new.len(), 1);
        assert!(c.cleared.is_empty());
        // Fixed: cleared once.
        let c = t.update(vec![empty]);
        assert!(c.new.is_empty());
        assert_eq!(c.cleared.len(), 1);
        assert_eq!(c.cleared[0].name, "b");
        let c = t.update(vec![]);
        assert_eq!(c.cleared[0].name, "laptop");
        assert!(t.counts().iter().all(|(_, _, n)| *n == 0));
    }
}
