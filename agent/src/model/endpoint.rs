//! WireGuard endpoints: `host:port` where the host is an IP address or a DNS
//! name. Names are kept as names in the model and the topology (so that the
//! topology stays a pure function); [`Resolver`] turns them into addresses
//! where a socket address is needed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::str::FromStr;

/// Why a string is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("missing \":port\"")]
    MissingPort,
    #[error("invalid port {0:?}: must be 1 to 65535")]
    Port(String),
    #[error("invalid host {0:?}: neither an IP address nor a DNS name")]
    Host(String),
}

/// A DNS name as RFC 1123 allows it (letters, digits, hyphens; dot-separated
/// labels of 1 to 63 characters; at most 253 characters), lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

impl DnsName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DnsName {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let name = s.strip_suffix('.').unwrap_or(s);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // An all-numeric last label would be a mistyped IPv4 address.
        let last_numeric = name
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) || last_numeric {
            return Err(EndpointError::Host(s.to_owned()));
        }
        Ok(Self(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Ip(IpAddr),
    Dns(DnsName),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => write!(f, "{name}"),
        }
    }
}

/// Parses a host alone: an IP address (IPv6 with or without brackets) or a DNS name.
impl FromStr for Host {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        s.parse().map(Host::Dns)
    }
}

/// A WireGuard endpoint: host and a non-zero UDP port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub host: Host,
    pub port: NonZeroU16,
}

impl Endpoint {
    pub fn new(host: Host, port: NonZeroU16) -> Self {
        Self { host, port }
    }

    /// The endpoint of a socket address; `None` for port 0.
    pub fn from_socket_addr(addr: SocketAddr) -> Option<Self> {
        Some(Self {
            host: Host::Ip(addr.ip()),
            port: NonZeroU16::new(addr.port())?,
        })
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Dns(_) => None,
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port.get()))
    }

    /// Resolves a DNS host (an IP host is returned as it is). IPv4 answers
    /// are preferred, then the first answer, so that every caller picks alike.
    pub fn resolve(&self, resolver: &dyn Resolver) -> Result<SocketAddr, ResolveError> {
        match &self.host {
            Host::Ip(ip) => Ok(SocketAddr::new(*ip, self.port.get())),
            Host::Dns(name) => {
                let addrs = resolver.resolve(name, self.port.get()).map_err(|source| {
                    ResolveError::Lookup {
                        endpoint: self.to_string(),
                        source: std::sync::Arc::new(source),
                    }
                })?;
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| addrs.first())
                    .copied()
                    .ok_or_else(|| ResolveError::NoAddress(self.to_string()))
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses `host:port`, `[v6]:port`; a DNS name is accepted as host.
impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let (host, port) = s.rsplit_once(':').ok_or(EndpointError::MissingPort)?;
        // An unbracketed IPv6 address has colons of its own.
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(EndpointError::Host(host.to_owned()));
        }
        let port = parse_port(port)?;
        Ok(Self {
            host: host.parse()?,
            port,
        })
    }
}

/// Parses a UDP port, 1 to 65535.
pub fn parse_port(s: &str) -> Result<NonZeroU16, EndpointError> {
    s.parse::<NonZeroU16>()
        .map_err(|_| EndpointError::Port(s.to_owned()))
}

/// Turns a DNS name into addresses. A trait so that the topology and its
/// tests never touch the network; [`SystemResolver`] is the real one.
pub trait Resolver {
    fn resolve(&self, name: &DnsName, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver (getaddrinfo through the standard library).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &DnsName, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs as _;
        Ok((name.as_str(), port).to_socket_addrs()?.collect())
    }
}

/// Why an endpoint could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {endpoint}: {source}")]
    Lookup {
        endpoint: String,
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("resolving {0}: no address")]
    NoAddress(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_dns_and_v6() {
        let e: Endpoint = "10.0.0.1:51820".parse().unwrap();
        assert_eq!(e.socket_addr(), Some("10.0.0.1:51820".parse().unwrap()));
        let e: Endpoint = "[fd00::1]:51820".parse().unwrap();
        assert_eq!(e.to_string(), "[fd00::1]:51820");
        let e: Endpoint = "VPN.Example.com:443".parse().unwrap();
        assert_eq!(e.to_string(), "vpn.example.com:443");
        assert_eq!(e.ip(), None);
    }

    #[test]
    fn rejects_bad_endpoints() {
        assert_eq!(
            "10.0.0.1".parse::<Endpoint>(),
            Err(EndpointError::MissingPort)
        );
        assert_eq!(
            "10.0.0.1:0".parse::<Endpoint>(),
            Err(EndpointError::Port("0".into()))
        );
        assert_eq!(
            "10.0.0.1:70000".parse::<Endpoint>(),
            Err(EndpointError::Port("70000".into()))
        );
        assert!("fd00::1:51820".parse::<Endpoint>().is_err());
        assert!("bad_host:1".parse::<Endpoint>().is_err());
        assert!(":1".parse::<Endpoint>().is_err());
        assert!("10.0.0.256:1".parse::<Endpoint>().is_err());
        assert!("-a.b:1".parse::<Endpoint>().is_err());
    }

    struct Fixed(Vec<SocketAddr>);
    impl Resolver for Fixed {
        fn resolve(&self, _: &DnsName, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn resolves_preferring_ipv4() {
        let e: Endpoint = "vpn.example.com:51820".parse().unwrap();
        let r = Fixed(vec![
            "[fd00::1]:51820".parse().unwrap(),
            "192.0.2.1:51820".parse().unwrap(),
        ]);
        assert_eq!(e.resolve(&r).unwrap(), "192.0.2.1:51820".parse().unwrap());
        assert!(matches!(
            e.resolve(&Fixed(vec![])),
            Err(ResolveError::NoAddress(_))
        ));
    }
}
