//! Cluster-wide settings: the flags every node must agree on for the mesh to
//! be computed alike everywhere (granularity, WireGuard subnet and port,
//! topology label, encapsulation, service CIDRs, exit peers).

use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ModelError, Object, parse_cidr};

/// How nodes are grouped into segments that share one WireGuard leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Granularity {
    /// One segment per location (mixed meshes give some nodes their own location).
    #[default]
    Location,
    /// Every node is its own segment.
    Full,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Location => "location",
            Granularity::Full => "full",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "location" => Ok(Granularity::Location),
            "full" => Ok(Granularity::Full),
            _ => Err(format!(
                "unknown granularity {s:?}: expected location or full"
            )),
        }
    }
}

/// When traffic between nodes of one location is IPIP-encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Encapsulate {
    Never,
    /// Only towards nodes outside this node's own private subnet.
    CrossSubnet,
    /// Kilo's default.
    #[default]
    Always,
}

impl Encapsulate {
    pub fn as_str(self) -> &'static str {
        match self {
            Encapsulate::Never => "never",
            Encapsulate::CrossSubnet => "crosssubnet",
            Encapsulate::Always => "always",
        }
    }
}

impl fmt::Display for Encapsulate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encapsulate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Encapsulate::Never),
            "crosssubnet" => Ok(Encapsulate::CrossSubnet),
            "always" => Ok(Encapsulate::Always),
            _ => Err(format!(
                "unknown encapsulation {s:?}: expected never, crosssubnet or always"
            )),
        }
    }
}

pub const DEFAULT_SUBNET: &str = "10.4.0.0/16";
pub const DEFAULT_PORT: u16 = 51820;
pub const DEFAULT_TOPOLOGY_LABEL: &str = "topology.kubernetes.io/region";

/// The parsed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub granularity: Granularity,
    /// Where segments' WireGuard addresses come from (network form).
    pub subnet: IpNet,
    /// The WireGuard listen port.
    pub port: NonZeroU16,
    /// The node label that gives a node's location when it has no `location` annotation.
    pub topology_label: String,
    pub encapsulate: Encapsulate,
    /// Never masqueraded (network form).
    pub service_cidrs: Vec<IpNet>,
    /// Whether an external peer may claim a `/0` (`0.0.0.0/0`, `::/0`): an
    /// exit peer, which all traffic without a more specific owner is routed
    /// to. Off by default: such a claim is refused with a warning (see
    /// [`crate::topology::ownership`]).
    pub allow_exit_peers: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            granularity: Granularity::default(),
            subnet: DEFAULT_SUBNET.parse().expect("valid constant"),
            port: NonZeroU16::new(DEFAULT_PORT).expect("non-zero constant"),
            topology_label: DEFAULT_TOPOLOGY_LABEL.to_owned(),
            encapsulate: Encapsulate::default(),
            service_cidrs: Vec::new(),
            allow_exit_peers: false,
        }
    }
}

/// `settings.yaml` as written: every field optional, defaults otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SettingsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulate: Option<String>,
    #[serde(
        default,
        rename = "serviceCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_exit_peers: Option<bool>,
}

impl SettingsFile {
    /// Validates every field; the first bad one is the error.
    pub fn parse(&self) -> Result<Settings, ModelError> {
        let bad = |field: &str, value: &str, reason: String| ModelError {
            object: Object::Settings,
            field: field.to_owned(),
            what: "value",
            value: value.to_owned(),
            reason,
        };
        let mut s = Settings::default();
        if let Some(g) = &self.granularity {
            s.granularity = g.parse().map_err(|e| bad("granularity", g, e))?;
        }
        if let Some(v) = &self.subnet {
            s.subnet = parse_subnet(v).map_err(|e| bad("subnet", v, e))?;
        }
        if let Some(p) = self.port {
            s.port = u16::try_from(p)
                .ok()
                .and_then(NonZeroU16::new)
                .ok_or_else(|| bad("port", &p.to_string(), "must be 1 to 65535".into()))?;
        }
        if let Some(l) = &self.topology_label {
            if l.is_empty() {
                return Err(bad("topologyLabel", l, "must not be empty".into()));
            }
            s.topology_label = l.clone();
        }
        if let Some(e) = &self.encapsulate {
            s.encapsulate = e.parse().map_err(|err| bad("encapsulate", e, err))?;
        }
        if let Some(a) = self.allow_exit_peers {
            s.allow_exit_peers = a;
        }
        for c in &self.service_cidrs {
            s.service_cidrs.push(
                parse_cidr(c)
                    .map_err(|e| bad("serviceCIDRs", c, e))?
                    .trunc(),
            );
        }
        Ok(s)
    }
}

/// Parses the WireGuard subnet: a CIDR with room for at least one address
/// besides the network address.
pub fn parse_subnet(s: &str) -> Result<IpNet, String> {
    let net = parse_cidr(s)?.trunc();
    if net.prefix_len() >= net.max_prefix_len() {
        return Err(
            "too small: it must hold at least one address besides the network address".into(),
        );
    }
    Ok(net)
}
