//! External WireGuard peers (a laptop, another cluster): Kilo's `Peer` CRD.

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    DnsName, Endpoint, Host, Keepalive, Key, ModelError, Object, PublicKey, parse_cidr, parse_port,
};

/// A peer as a backend holds it: `peers/<name>.yaml` in the directory
/// backend, or a `Peer` object (the field names are Kilo's CRD's).
///
/// A `peers/<name>.yaml` is either `{name, spec}` or a whole `Peer`
/// manifest (`apiVersion: weft.dev/v1alpha1` or `kilo.squat.ai/v1alpha1`,
/// `kind: Peer`, `metadata: {name}`, `spec`), as `weftctl showconf
/// --as-peer -o yaml` and `kgctl` print it; other metadata is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PeerFile")]
pub struct PeerObject {
    pub name: String,
    #[serde(default)]
    pub spec: PeerSpec,
}

/// The groups whose `Peer` manifests a peer file may hold.
pub const PEER_API_VERSIONS: [&str; 2] = ["weft.dev/v1alpha1", "kilo.squat.ai/v1alpha1"];

/// What a peer file may hold: see [`PeerObject`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<PeerMetadata>,
    #[serde(default)]
    spec: PeerSpec,
}

/// A manifest's metadata: only the name counts (labels, annotations,
/// `creationTimestamp: null` as kgctl prints it... are ignored).
#[derive(Deserialize)]
struct PeerMetadata {
    #[serde(default)]
    name: Option<String>,
}

impl TryFrom<PeerFile> for PeerObject {
    type Error = String;
    fn try_from(f: PeerFile) -> Result<Self, String> {
        let manifest = f.api_version.is_some() || f.kind.is_some() || f.metadata.is_some();
        if !manifest {
            let name = f.name.ok_or("missing field `name`")?;
            return Ok(PeerObject { name, spec: f.spec });
        }
        if f.name.is_some() {
            return Err("`name` is for {name, spec} files: a manifest has `metadata.name`".into());
        }
        match f.api_version.as_deref() {
            Some(v) if PEER_API_VERSIONS.contains(&v) => {}
            v => {
                return Err(format!(
                    "apiVersion {v:?} is not one of {}",
                    PEER_API_VERSIONS.join(", ")
                ));
            }
        }
        if f.kind.as_deref() != Some("Peer") {
            return Err(format!("kind {:?} is not Peer", f.kind));
        }
        let name = f
            .metadata
            .and_then(|m| m.name)
            .ok_or("missing field `metadata.name`")?;
        Ok(PeerObject { name, spec: f.spec })
    }
}

/// A WireGuard key in the CRD schema: 32 bytes of base64 (44 characters, the
/// last before `=` one of those whose low 4 bits are zero).
const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";
/// An IPv4 or IPv6 CIDR (or bare address) in the CRD schema; the model
/// parses it exactly, this only rejects what can never be one.
const CIDR_PATTERN: &str = r"^(([0-9]{1,3}\.){3}[0-9]{1,3}(/([0-9]|[12][0-9]|3[0-2]))?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?)$";

/// The spec of Kilo's `Peer` CRD, field for field; the same type is the
/// `spec` of a directory backend's `peers/<name>.yaml` and of the `Peer`
/// objects of groups `weft.dev` and `kilo.squat.ai`. The schema carries what
/// Kilo's admission webhook checks, so the API server refuses a bad Peer.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Peer",
    plural = "peers",
    singular = "peer",
    root = "PeerResource",
    doc = "An external WireGuard peer of the mesh (a laptop, another cluster), as Kilo's Peer.",
    printcolumn = r#"{"name":"Allowed IPs","type":"string","jsonPath":".spec.allowedIPs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(transform = require(&["allowedIPs", "publicKey"]))]
pub struct PeerSpec {
    /// The addresses the peer may send from and that are routed to it (CIDRs).
    #[serde(rename = "allowedIPs", default)]
    #[schemars(length(min = 1), inner(regex(pattern = CIDR_PATTERN)))]
    pub allowed_ips: Vec<String>,
    /// The peer's WireGuard public key (base64).
    #[serde(default)]
    #[schemars(regex(pattern = KEY_PATTERN))]
    pub public_key: String,
    /// Where the peer listens; none for a peer behind NAT (the mesh learns its address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<PeerEndpoint>,
    /// Seconds between keepalives from the mesh to the peer; 0 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub persistent_keepalive: Option<i64>,
    /// An optional preshared key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = KEY_PATTERN))]
    pub preshared_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = require(&["dnsOrIP", "port"]))]
pub struct PeerEndpoint {
    #[serde(rename = "dnsOrIP", default)]
    pub dns_or_ip: DnsOrIp,
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

/// A schema transform: `fields` are required and have no default. (The
/// model's serde defaults let the directory backend report a missing field
/// as a model error naming the peer; the API server must refuse it.)
fn require(fields: &'static [&'static str]) -> impl Fn(&mut schemars::Schema) {
    move |schema| {
        if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
            for f in fields {
                if let Some(p) = props.get_mut(*f).and_then(|p| p.as_object_mut()) {
                    p.remove("default");
                }
            }
        }
        schema.insert("required".into(), serde_json::Value::from(fields.to_vec()));
    }
}

/// One of a DNS name or an IP address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsOrIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2))]
    pub ip: Option<String>,
}

/// A parsed peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Network form, in the order given.
    pub allowed_ips: Vec<IpNet>,
    pub public_key: PublicKey,
    /// `None` for a peer behind NAT that the mesh learns the address of.
    pub endpoint: Option<Endpoint>,
    pub persistent_keepalive: Option<Keepalive>,
    pub preshared_key: Option<Key>,
}

impl Peer {
    /// Ready as Kilo means it: a public key (always, once parsed) and at
    /// least one allowed IP.
    pub fn is_ready(&self) -> bool {
        !self.allowed_ips.is_empty()
    }

    /// Parses a raw peer.
    pub fn parse(o: &PeerObject) -> Result<Peer, ModelError> {
        let bad = |field: &str, what: &'static str, value: &str, reason: String| ModelError {
            object: Object::Peer(o.name.clone()),
            field: field.to_owned(),
            what,
            value: value.to_owned(),
            reason,
        };
        if o.name.is_empty() || o.name.chars().any(char::is_control) {
            return Err(bad(
                "name",
                "peer name",
                &o.name,
                "must be non-empty, without control characters".into(),
            ));
        }
        let s = &o.spec;
        let public_key = s.public_key.trim().parse().map_err(|e: super::KeyError| {
            bad(
                "spec.publicKey",
                "WireGuard key",
                &s.public_key,
                e.to_string(),
            )
        })?;
        let mut allowed_ips = Vec::with_capacity(s.allowed_ips.len());
        for ip in &s.allowed_ips {
            allowed_ips.push(
                parse_cidr(ip)
                    .map_err(|e| bad("spec.allowedIPs", "CIDR", ip, e))?
                    .trunc(),
            );
        }
        let endpoint = match &s.endpoint {
            None => None,
            Some(e) => {
                let port = parse_port(&e.port.to_string()).map_err(|_| {
                    bad(
                        "spec.endpoint.port",
                        "port",
                        &e.port.to_string(),
                        "must be 1 to 65535".into(),
                    )
                })?;
                let dns = e
                    .dns_or_ip
                    .dns
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty());
                let ip = e
                    .dns_or_ip
                    .ip
                    .as_deref()
                    .map(str::trim)
                    .filter(|i| !i.is_empty());
                // Kilo prefers the name when both are given (kgctl writes both).
                let host = match (dns, ip) {
                    (Some(d), _) => Host::Dns(d.parse::<DnsName>().map_err(|err| {
                        bad("spec.endpoint.dnsOrIP.dns", "DNS name", d, err.to_string())
                    })?),
                    (None, Some(i)) => Host::Ip(i.parse().map_err(|_| {
                        bad(
                            "spec.endpoint.dnsOrIP.ip",
                            "IP address",
                            i,
                            "does not parse".into(),
                        )
                    })?),
                    (None, None) => {
                        return Err(bad(
                            "spec.endpoint.dnsOrIP",
                            "endpoint",
                            "",
                            "needs dns or ip".into(),
                        ));
                    }
                };
                Some(Endpoint::new(host, port))
            }
        };
        let persistent_keepalive = match s.persistent_keepalive {
            None => None,
            Some(k) => Keepalive::parse_secs(&k.to_string()).map_err(|e| {
                bad(
                    "spec.persistentKeepalive",
                    "persistent keepalive",
                    &k.to_string(),
                    e,
                )
            })?,
        };
        let preshared_key = match s
            .preshared_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            None => None,
            // The value is secret: never echoed in the error.
            Some(k) => Some(k.parse::<Key>().map_err(|e| {
                bad(
                    "spec.presharedKey",
                    "WireGuard key",
                    "<redacted>",
                    e.to_string(),
                )
            })?),
        };
        Ok(Peer {
            name: o.name.clone(),
            allowed_ips,
            public_key,
            endpoint,
            persistent_keepalive,
            preshared_key,
        })
    }

    /// The raw object for this peer (what `weftctl showconf --as-peer` and
    /// backends write).
    pub fn to_object(&self) -> PeerObject {
        PeerObject {
            name: self.name.clone(),
            spec: PeerSpec {
                allowed_ips: self.allowed_ips.iter().map(ToString::to_string).collect(),
                public_key: self.public_key.to_string(),
                endpoint: self.endpoint.as_ref().map(|e| PeerEndpoint {
                    dns_or_ip: match &e.host {
                        Host::Ip(ip) => DnsOrIp {
                            dns: None,
                            ip: Some(ip.to_string()),
                        },
                        Host::Dns(d) => DnsOrIp {
                            dns: Some(d.to_string()),
                            ip: None,
                        },
                    },
                    port: u32::from(e.port.get()),
                }),
                persistent_keepalive: self.persistent_keepalive.map(|k| i64::from(k.secs())),
                preshared_key: self.preshared_key.map(|k| k.to_string()),
            },
        }
    }
}
