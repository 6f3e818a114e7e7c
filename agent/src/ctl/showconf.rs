//! `weftctl showconf node|peer NAME`: Kilo's `kgctl showconf`.
//!
//! - `node NAME`: the WireGuard configuration of a leader node.
//! - `node NAME --as-peer`: its segment as a `[Peer]` for another WireGuard
//!   interface (allowed IPs extended by `--allowed-ips`).
//! - `peer NAME`: the configuration the external peer needs to join.
//! - `peer NAME --as-peer`: the peer itself as a `[Peer]`.
//!
//! `-o wireguard` is what `wg setconf` accepts; `-o json` and `-o yaml` are
//! `{"interface": {"listenPort"}, "peers": [{"publicKey", "endpoint",
//! "allowedIPs", "persistentKeepalive", "presharedKey"}]}`, absent values
//! being null.

use std::fmt::Write as _;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

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

/// `showconf node NAME`.
pub fn node(mesh: &Mesh, name: &str, opts: &Options) -> Result<String, TopologyError> {
    let conf = if opts.as_peer {
        as_peer(mesh.node_as_peer(name)?, &opts.allowed_ips)
    } else {
        mesh.node_conf(name)?
    };
    Ok(render(&conf, opts.format))
}

/// `showconf peer NAME`.
pub fn peer(mesh: &Mesh, name: &str, opts: &Options) -> Result<String, TopologyError> {
    let conf = if opts.as_peer {
        as_peer(mesh.peer_as_peer(name)?, &opts.allowed_ips)
    } else {
        mesh.peer_conf(name)?
    };
    Ok(render(&conf, opts.format))
}

fn as_peer(mut p: WgPeer, extra: &[IpNet]) -> WgConf {
    for c in extra {
        let c = c.trunc();
        if !p.allowed_ips.contains(&c) {
            p.allowed_ips.push(c);
        }
    }
    WgConf {
        listen_port: None,
        peers: vec![p],
    }
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
