//! The model shared by both backends: nodes, external peers and settings,
//! parsed at the boundary into real types. A bad value makes a typed
//! [`ModelError`] naming the object, the field and the value; callers drop
//! that one object and mesh the rest.
//!
//! Raw objects ([`NodeObject`], [`PeerObject`], [`SettingsFile`]) are what
//! backends read and write; [`Node`], [`Peer`] and [`Settings`] are what the
//! topology consumes.

mod endpoint;
mod key;
mod node;
mod peer;
mod refusal;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

pub use endpoint::{
    DnsName, Endpoint, EndpointError, Host, ResolveError, Resolver, SystemResolver, parse_port,
};
pub use key::{Key, KeyError, PublicKey};
pub use node::{Node, NodeObject, NotReady, READY_WINDOW_SECS};
pub use peer::{DnsOrIp, Peer, PeerEndpoint, PeerObject, PeerResource, PeerSpec};
pub use refusal::{
    NODE_REASONS, PEER_REASONS, Refusal, RefusalChanges, RefusalKey, RefusalKind, Refusals,
};
pub use settings::{
    DEFAULT_PORT, DEFAULT_SUBNET, DEFAULT_TOPOLOGY_LABEL, Encapsulate, Granularity, Settings,
    SettingsFile, parse_subnet,
};

/// Annotation key prefixes: weft's, and Kilo's for clusters switching over.
/// Where both are set, weft's wins.
pub const WEFT_PREFIX: &str = "weft.dev/";
pub const KILO_PREFIX: &str = "kilo.squat.ai/";

/// Annotation names (without prefix).
pub mod annotations {
    // Written by the agent on its own node.
    pub const KEY: &str = "key";
    pub const ENDPOINT: &str = "endpoint";
    pub const INTERNAL_IP: &str = "internal-ip";
    pub const WIREGUARD_IP: &str = "wireguard-ip";
    pub const LAST_SEEN: &str = "last-seen";
    pub const DISCOVERED_ENDPOINTS: &str = "discovered-endpoints";
    pub const GRANULARITY: &str = "granularity";
    /// Leader health: the last sign of life from another segment's leader.
    pub const WIREGUARD_ALIVE: &str = "wireguard-alive";
    // Set by the user.
    pub const LOCATION: &str = "location";
    pub const FORCE_ENDPOINT: &str = "force-endpoint";
    pub const FORCE_INTERNAL_IP: &str = "force-internal-ip";
    pub const LEADER: &str = "leader";
    pub const PERSISTENT_KEEPALIVE: &str = "persistent-keepalive";
    pub const ALLOWED_LOCATION_IPS: &str = "allowed-location-ips";

    /// The full key the agent writes: `weft.dev/<name>`.
    pub fn weft(name: &str) -> String {
        format!("{}{name}", super::WEFT_PREFIX)
    }
}

/// Formats `discovered-endpoints` as the agent writes it: a JSON object
/// from public key to `"ip:port"`.
pub fn format_discovered_endpoints(
    endpoints: &BTreeMap<PublicKey, std::net::SocketAddr>,
) -> String {
    let map: BTreeMap<String, String> = endpoints
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
}

/// Looks an annotation up under both prefixes, weft's first; returns the
/// full key found (for error messages) and the value.
pub fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(String, &'a str)> {
    [WEFT_PREFIX, KILO_PREFIX].iter().find_map(|prefix| {
        let key = format!("{prefix}{name}");
        annotations.get(&key).map(|v| (key, v.as_str()))
    })
}

/// The object a [`ModelError`] is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Object {
    Node(String),
    Peer(String),
    Settings,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Node(n) => write!(f, "node {n:?}"),
            Object::Peer(n) => write!(f, "peer {n:?}"),
            Object::Settings => f.write_str("settings"),
        }
    }
}

/// A value that does not parse, e.g. `node "b1": annotation weft.dev/key:
/// invalid WireGuard key "xyz": 3 characters long, a key has 44`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: invalid {what} {}: {reason}", shorten(.value))]
pub struct ModelError {
    pub object: Object,
    /// `annotation weft.dev/key`, `podCIDR`, `spec.allowedIPs`, ...
    pub field: String,
    /// What the value should have been: `WireGuard key`, `CIDR`, ...
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

/// Quotes a value for a one-line message, cutting very long ones.
fn shorten(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// Parses a CIDR (`10.1.0.1/24`, host bits kept) or a bare address (as a
/// host prefix).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if s.contains('/') {
        s.parse::<IpNet>().map_err(|e| e.to_string())
    } else {
        s.parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "not a CIDR nor an IP address".to_owned())
    }
}

/// Deserializes a map of strings whose YAML values may be written unquoted
/// (`persistent-keepalive: 25`, `leader:` with no value).
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        B(bool),
        I(i64),
        U(u64),
        F(f64),
        Null(()),
    }
    let raw = Option::<BTreeMap<String, Scalar>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::B(b) => b.to_string(),
                Scalar::I(i) => i.to_string(),
                Scalar::U(u) => u.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::Null(()) => String::new(),
            };
            (k, v)
        })
        .collect())
}

/// Parses raw nodes; those that fail are returned as errors, the rest as
/// nodes. Order is kept.
pub fn parse_nodes(objects: &[NodeObject], topology_label: &str) -> (Vec<Node>, Vec<ModelError>) {
    let mut nodes = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for o in objects {
        match Node::parse(o, topology_label) {
            Ok(n) => nodes.push(n),
            Err(e) => errors.push(e),
        }
    }
    (nodes, errors)
}

/// Parses raw peers; see [`parse_nodes`].
pub fn parse_peers(objects: &[PeerObject]) -> (Vec<Peer>, Vec<ModelError>) {
    let mut peers = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for o in objects {
        match Peer::parse(o) {
            Ok(p) => peers.push(p),
            Err(e) => errors.push(e),
        }
    }
    (peers, errors)
}

/// A WireGuard persistent keepalive interval: 1 to 65535 seconds (0 is "off",
/// which is `None` wherever a keepalive is optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keepalive(std::num::NonZeroU16);

impl Keepalive {
    /// `None` for 0.
    pub fn from_secs(secs: u16) -> Option<Self> {
        std::num::NonZeroU16::new(secs).map(Self)
    }
    pub fn secs(self) -> u16 {
        self.0.get()
    }

    /// Parses seconds as Kilo's annotation and CRD write them: "0" is off.
    pub fn parse_secs(s: &str) -> Result<Option<Self>, String> {
        let n: i64 = s.trim().parse().map_err(|_| "not an integer".to_owned())?;
        match u16::try_from(n) {
            Ok(n) => Ok(Self::from_secs(n)),
            Err(_) => Err("must be 0 to 65535 seconds".to_owned()),
        }
    }
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
