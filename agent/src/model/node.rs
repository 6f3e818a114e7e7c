//! Nodes: the raw object a backend holds, and the parsed node.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Endpoint, Granularity, Keepalive, ModelError, Object, PublicKey, annotation, annotations as a,
    parse_cidr,
};

/// A node is ready only if it checked in less than this long ago (Kilo: twice
/// its 30 s check-in period).
pub const READY_WINDOW_SECS: i64 = 60;

/// A node as a backend holds it: `nodes/<name>.yaml` in the directory
/// backend, or the relevant part of a Kubernetes Node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeObject {
    pub name: String,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(default, deserialize_with = "super::string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "super::string_map")]
    pub annotations: BTreeMap<String, String>,
    /// When the object was created (RFC 3339): a Kubernetes Node's
    /// `metadata.creationTimestamp`, which the API server sets and no client
    /// can choose. Decides who keeps a pod CIDR two nodes claim.
    #[serde(
        rename = "creationTimestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_timestamp: Option<String>,
}

/// A parsed node. Optional fields are those a node may not have published
/// yet; [`Node::readiness`] says whether it can take part in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Network form.
    pub pod_cidr: Option<IpNet>,
    /// From the `location` annotation, else the topology label, else "".
    pub location: String,
    pub key: Option<PublicKey>,
    /// `force-endpoint` when set, else `endpoint`.
    pub endpoint: Option<Endpoint>,
    /// The private address with its prefix (`force-internal-ip` when set,
    /// else `internal-ip`); `None` when absent or disabled by
    /// `force-internal-ip: ""` or `"-"`.
    pub internal_ip: Option<IpNet>,
    /// The address this node published as its segment's WireGuard address.
    pub wireguard_ip: Option<IpNet>,
    /// Unix seconds.
    pub last_seen: Option<i64>,
    pub leader: bool,
    pub persistent_keepalive: Option<Keepalive>,
    /// Network form.
    pub allowed_location_ips: Vec<IpNet>,
    /// Endpoints WireGuard learned from the peers' packets (NAT traversal).
    pub discovered_endpoints: BTreeMap<PublicKey, SocketAddr>,
    pub granularity: Option<Granularity>,
    /// Unix seconds of the last sign of life this node, as a leader, had
    /// from another segment's leader over WireGuard (leader health).
    pub wireguard_alive: Option<i64>,
    /// Unix seconds of the object's creation ([`NodeObject::creation_timestamp`]).
    pub created: Option<i64>,
}

/// Why a node is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("no WireGuard key")]
    NoKey,
    #[error("no endpoint")]
    NoEndpoint,
    #[error("no pod CIDR")]
    NoPodCidr,
    #[error("never checked in (no last-seen)")]
    NeverSeen,
    #[error("last seen {0} s ago")]
    Stale(i64),
}

impl Node {
    /// A node with just a name, for building nodes in code.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pod_cidr: None,
            location: String::new(),
            key: None,
            endpoint: None,
            internal_ip: None,
            wireguard_ip: None,
            last_seen: None,
            leader: false,
            persistent_keepalive: None,
            allowed_location_ips: Vec::new(),
            discovered_endpoints: BTreeMap::new(),
            granularity: None,
            wireguard_alive: None,
            created: None,
        }
    }

    /// Ready as Kilo means it: key, endpoint and pod CIDR present, and seen
    /// less than [`READY_WINDOW_SECS`] before `now` (unix seconds).
    pub fn readiness(&self, now: i64) -> Result<(), NotReady> {
        if self.key.is_none() {
            return Err(NotReady::NoKey);
        }
        if self.endpoint.is_none() {
            return Err(NotReady::NoEndpoint);
        }
        if self.pod_cidr.is_none() {
            return Err(NotReady::NoPodCidr);
        }
        let seen = self.last_seen.ok_or(NotReady::NeverSeen)?;
        let age = now.saturating_sub(seen);
        if age >= READY_WINDOW_SECS {
            return Err(NotReady::Stale(age));
        }
        Ok(())
    }

    pub fn is_ready(&self, now: i64) -> bool {
        self.readiness(now).is_ok()
    }

    /// Parses a raw node; `topology_label` is the label that gives the
    /// location when there is no `location` annotation.
    pub fn parse(o: &NodeObject, topology_label: &str) -> Result<Node, ModelError> {
        let obj = || Object::Node(o.name.clone());
        if o.name.is_empty() || o.name.chars().any(char::is_control) {
            return Err(ModelError {
                object: obj(),
                field: "name".into(),
                what: "node name",
                value: o.name.clone(),
                reason: "must be non-empty, without control characters".into(),
            });
        }
        let ann = |name: &str| annotation(&o.annotations, name);
        let bad = |key: String, what: &'static str, value: &str, reason: String| ModelError {
            object: obj(),
            field: format!("annotation {key}"),
            what,
            value: value.to_owned(),
            reason,
        };
        // Agent-written annotations may be present but empty (Kilo writes ""
        // for "none"): empty means absent.
        let present = |name: &str| ann(name).filter(|(_, v)| !v.trim().is_empty());

        let mut n = Node::named(o.name.clone());
        if let Some(c) = o.pod_cidr.as_deref().filter(|c| !c.trim().is_empty()) {
            n.pod_cidr = Some(
                parse_cidr(c)
                    .map_err(|reason| ModelError {
                        object: obj(),
                        field: "podCIDR".into(),
                        what: "CIDR",
                        value: c.to_owned(),
                        reason,
                    })?
                    .trunc(),
            );
        }
        if let Some(t) = o.creation_timestamp.as_deref() {
            let ts: jiff::Timestamp = t.trim().parse().map_err(|e: jiff::Error| ModelError {
                object: obj(),
                field: "creationTimestamp".into(),
                what: "RFC 3339 time",
                value: t.to_owned(),
                reason: e.to_string(),
            })?;
            n.created = Some(ts.as_second());
        }
        n.location = match present(a::LOCATION) {
            Some((_, v)) => v.to_owned(),
            None => o.labels.get(topology_label).cloned().unwrap_or_default(),
        };
        if let Some((k, v)) = present(a::KEY) {
            n.key = Some(
                v.trim()
                    .parse()
                    .map_err(|e: super::KeyError| bad(k, "WireGuard key", v, e.to_string()))?,
            );
        }
        // force-endpoint wins; a bad one is an error, not a silent fallback.
        if let Some((k, v)) = present(a::FORCE_ENDPOINT).or_else(|| present(a::ENDPOINT)) {
            n.endpoint = Some(
                v.trim()
                    .parse()
                    .map_err(|e: super::EndpointError| bad(k, "endpoint", v, e.to_string()))?,
            );
        }
        n.internal_ip = match ann(a::FORCE_INTERNAL_IP) {
            Some((_, v)) if v.trim().is_empty() || v.trim() == "-" => None,
            Some((k, v)) => Some(parse_cidr(v).map_err(|e| bad(k, "CIDR", v, e))?),
            None => match present(a::INTERNAL_IP) {
                Some((k, v)) => Some(parse_cidr(v).map_err(|e| bad(k, "CIDR", v, e))?),
                None => None,
            },
        };
        if let Some((k, v)) = present(a::WIREGUARD_IP) {
            n.wireguard_ip = Some(parse_cidr(v).map_err(|e| bad(k, "CIDR", v, e))?);
        }
        if let Some((k, v)) = present(a::LAST_SEEN) {
            n.last_seen =
                Some(v.trim().parse().map_err(|_| {
                    bad(k, "unix time", v, "not an integer number of seconds".into())
                })?);
        }
        // Kilo: the annotation's presence makes a leader, whatever its value;
        // an explicit "false" is taken at its word.
        n.leader = ann(a::LEADER).is_some_and(|(_, v)| v.trim() != "false");
        if let Some((k, v)) = present(a::PERSISTENT_KEEPALIVE) {
            n.persistent_keepalive =
                Keepalive::parse_secs(v).map_err(|e| bad(k, "persistent keepalive", v, e))?;
        }
        if let Some((k, v)) = present(a::ALLOWED_LOCATION_IPS) {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let net = parse_cidr(item)
                    .map_err(|e| bad(k.clone(), "CIDR list", v, format!("{item:?}: {e}")))?;
                n.allowed_location_ips.push(net.trunc());
            }
        }
        if let Some((k, v)) = present(a::DISCOVERED_ENDPOINTS) {
            n.discovered_endpoints =
                parse_discovered(v).map_err(|e| bad(k, "discovered endpoints", v, e))?;
        }
        if let Some((k, v)) = present(a::WIREGUARD_ALIVE) {
            n.wireguard_alive =
                Some(v.trim().parse().map_err(|_| {
                    bad(k, "unix time", v, "not an integer number of seconds".into())
                })?);
        }
        if let Some((k, v)) = present(a::GRANULARITY) {
            n.granularity = Some(v.trim().parse().map_err(|e| bad(k, "granularity", v, e))?);
        }
        Ok(n)
    }
}

/// Parses `discovered-endpoints`: a JSON object from public key to either
/// `"ip:port"` (weft) or `{"IP": "...", "Port": N, "Zone": ""}` (Kilo's
/// marshalled UDP addresses).
fn parse_discovered(s: &str) -> Result<BTreeMap<PublicKey, SocketAddr>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addr {
        Text(String),
        Kilo {
            #[serde(rename = "IP")]
            ip: String,
            #[serde(rename = "Port")]
            port: u16,
        },
    }
    let map: Option<BTreeMap<String, Option<Addr>>> =
        serde_json::from_str(s).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (k, v) in map.unwrap_or_default() {
        let key: PublicKey = k.parse().map_err(|e| format!("key {k:?}: {e}"))?;
        let addr = match v {
            None => continue,
            Some(Addr::Text(t)) => t.parse::<SocketAddr>().map_err(|e| format!("{t:?}: {e}"))?,
            Some(Addr::Kilo { ip, port }) => {
                SocketAddr::new(ip.parse().map_err(|e| format!("{ip:?}: {e}"))?, port)
            }
        };
        if addr.port() == 0 {
            return Err(format!("{addr}: port 0"));
        }
        out.insert(key, addr);
    }
    Ok(out)
}
