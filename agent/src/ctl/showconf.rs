//! `weftctl showconf node|peer NAME`: Kilo's `kgctl showconf`.
//!
//! - `node NAME`: the WireGuard configuration of a leader node.
//! - `node NAME --as-peer`: its segment as a `[Peer]` for another WireGuard
//!   interface (allowed IPs extended by `--allowed-ips`).
//! - `peer NAME`: the configuration the external peer needs to join.
//! - `peer NAME --as-peer`: the peer itself as a `[Peer]`.
//!
//! `-o wireguard` is what `wg setconf` accepts. With `--as-peer`, `-o json`
//! and `-o yaml` print a `Peer` manifest (`apiVersion: weft.dev/v1alpha1`,
//! `kind: Peer`, `metadata.name` the node's or peer's name, `spec` as Kilo's
//! CRD), as kgctl does: what `kubectl apply -f -` takes in another cluster,
//! and what the directory backend takes as `peers/<name>.yaml`. Without it
//! they are `{"interface": {"listenPort"}, "peers": [{"publicKey",
//! "endpoint", "allowedIPs", "persistentKeepalive", "presharedKey"}]}`,
//! absent values being null (kgctl prints the WireGuard format there).
//!
//! A node that is not its segment's leader has no configuration: as kgctl,
//! [`node`] gives [`Shown::NotLeader`], which weftctl reports on stderr,
//! printing nothing and exiting 0 (scripts loop over every node).

use std::fmt::Write as _;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Peer, PeerResource};
use crate::topology::{Mesh, TopologyError, WgConf, WgPeer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Wireguard,
    Json,
    Yaml,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wireguard" => Ok(Format::Wireguard),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            _ => Err(format!(
                "unknown output format {s:?}: expected wireguard, json or yaml"
            )),
        }
    }
}

/// What to show, beyond the name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    pub as_peer: bool,
    /// Added to the allowed IPs when shown `as_peer`.
    pub allowed_ips: Vec<IpNet>,
}

/// What `showconf node NAME` has to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// The text for stdout.
    Conf(String),
    /// The node is not its segment's leader: nothing for stdout, this note
    /// for stderr, and success (kgctl's `Node "X" is not a leader node`).
    NotLeader(String),
}

/// `showconf node NAME`.
pub fn node(mesh: &Mesh, name: &str, opts: &Options) -> Result<Shown, TopologyError> {
    let shown = if opts.as_peer {
        mesh.node_as_peer(name)
            .map(|p| render_peer(name, with_extra(p, &opts.allowed_ips), opts.format))
    } else {
        mesh.node_conf(name).map(|c| render(&c, opts.format))
    };
    match shown {
        Ok(text) => Ok(Shown::Conf(text)),
        Err(TopologyError::NotLeader {
            name,
            segment,
            leader,
        }) => Ok(Shown::NotLeader(format!(
            "node {name:?} is not a leader node (the leader of {segment} is {leader:?}): nothing to show"
        ))),
        Err(e) => Err(e),
    }
}

/// `showconf peer NAME`.
pub fn peer(mesh: &Mesh, name: &str, opts: &Options) -> Result<String, TopologyError> {
    Ok(if opts.as_peer {
        render_peer(
            name,
            with_extra(mesh.peer_as_peer(name)?, &opts.allowed_ips),
            opts.format,
        )
    } else {
        render(&mesh.peer_conf(name)?, opts.format)
    })
}

/// `p` with the allowed IPs of `--allowed-ips` added (once each).
fn with_extra(mut p: WgPeer, extra: &[IpNet]) -> WgPeer {
    for c in extra {
        let c = c.trunc();
        if !p.allowed_ips.contains(&c) {
            p.allowed_ips.push(c);
        }
    }
    p
}

/// `--as-peer`: a `[Peer]` section, or a `Peer` manifest named `name`.
fn render_peer(name: &str, p: WgPeer, format: Format) -> String {
    match format {
        Format::Wireguard => wireguard(&WgConf {
            listen_port: None,
            peers: vec![p],
        }),
        Format::Json | Format::Yaml => {
            let m = manifest(name, &p);
            if format == Format::Json {
                let mut s = serde_json::to_string_pretty(&m).unwrap_or_default();
                s.push('\n');
                s
            } else {
                serde_norway::to_string(&m).unwrap_or_default()
            }
        }
    }
}

/// The `Peer` object (group weft.dev) that stands for `p` under `name`.
pub fn manifest(name: &str, p: &WgPeer) -> PeerResource {
    let spec = Peer {
        name: name.to_owned(),
        allowed_ips: p.allowed_ips.clone(),
        public_key: p.public_key,
        endpoint: p.endpoint.clone(),
        persistent_keepalive: p.persistent_keepalive,
        preshared_key: p.preshared_key,
    }
    .to_object()
    .spec;
    PeerResource::new(name, spec)
}

pub fn render(conf: &WgConf, format: Format) -> String {
    match format {
        Format::Wireguard => wireguard(conf),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&Doc::from(conf)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Yaml => serde_norway::to_string(&Doc::from(conf)).unwrap_or_default(),
    }
}

/// The `wg setconf` format: no wg-quick keys (Address, DNS...), which `wg` refuses.
pub fn wireguard(conf: &WgConf) -> String {
    let mut s = String::new();
    if let Some(port) = conf.listen_port {
        let _ = writeln!(s, "[Interface]\nListenPort = {port}\n");
    }
    for p in &conf.peers {
        let _ = writeln!(s, "[Peer]\nPublicKey = {}", p.public_key);
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(s, "PresharedKey = {k}");
        }
        if let Some(e) = &p.endpoint {
            let _ = writeln!(s, "Endpoint = {e}");
        }
        if !p.allowed_ips.is_empty() {
            let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(s, "PersistentKeepalive = {k}");
        }
        s.push('\n');
    }
    s
}

#[derive(Serialize)]
struct Doc {
    interface: DocInterface,
    peers: Vec<DocPeer>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DocInterface {
    listen_port: Option<u16>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DocPeer {
    public_key: String,
    endpoint: Option<String>,
    #[serde(rename = "allowedIPs")]
    allowed_ips: Vec<String>,
    persistent_keepalive: Option<u16>,
    preshared_key: Option<String>,
}

impl From<&WgConf> for Doc {
    fn from(c: &WgConf) -> Self {
        Doc {
            interface: DocInterface {
                listen_port: c.listen_port,
            },
            peers: c
                .peers
                .iter()
                .map(|p| DocPeer {
                    public_key: p.public_key.to_string(),
                    endpoint: p.endpoint.as_ref().map(ToString::to_string),
                    allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                    persistent_keepalive: p.persistent_keepalive.map(|k| k.secs()),
                    preshared_key: p.preshared_key.map(|k| k.to_string()),
                })
                .collect(),
        }
    }
}
