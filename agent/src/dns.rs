//! DNS names of endpoints (a node's or a peer's `endpoint: vpn.example.com:51820`),
//! resolved off the runtime threads and refreshed on their own period, not
//! on every backend event: a cluster's `last-seen` refreshes would otherwise
//! look every name up several times a second, each lookup blocking a runtime
//! thread for as long as the resolver takes.
//!
//! The reconcile asks [`DnsCache::update`] for the names its topology uses,
//! then reads the answers through the [`Resolver`] trait, as the topology's
//! tests do with a fixed one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::model::{DnsName, Resolver};

/// How long one name's lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The last answer for each name in use.
pub struct DnsCache {
    refresh: Duration,
    answers: BTreeMap<DnsName, Answer>,
}

struct Answer {
    at: Instant,
    /// The addresses, or why there are none.
    result: Result<Vec<IpAddr>, String>,
}

impl DnsCache {
    /// A cache whose answers are looked up again after `refresh`.
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            answers: BTreeMap::new(),
        }
    }

    /// Looks up, concurrently and on the blocking pool, every name of
    /// `names` never looked up or last looked up over the refresh period
    /// ago, and forgets names no longer used; a changed answer is logged.
    pub async fn update(&mut self, names: &BTreeSet<DnsName>) {
        self.answers.retain(|n, _| names.contains(n));
        let now = Instant::now();
        let due: Vec<&DnsName> = names
            .iter()
            .filter(|n| {
                self.answers
                    .get(*n)
                    .is_none_or(|a| now.duration_since(a.at) >= self.refresh)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let lookups = due.iter().map(|n| async move { (*n, lookup(n).await) });
        for (name, result) in futures::future::join_all(lookups).await {
            let previous = self.answers.get(name).map(|a| &a.result);
            if previous != Some(&result) {
                match &result {
                    Ok(ips) => {
                        info!(name = %name.as_str(), addresses = ?ips, "endpoint name resolved")
                    }
                    Err(e) => warn!(name = %name.as_str(), "cannot resolve endpoint name: {e}"),
                }
            }
            self.answers.insert(
                name.clone(),
                Answer {
                    at: Instant::now(),
                    result,
                },
            );
        }
    }
}

/// One lookup through the system's resolver (getaddrinfo, on tokio's
/// blocking pool), with a timeout.
async fn lookup(name: &DnsName) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0))).await {
        Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) => {
            let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if ips.is_empty() {
                Err("no address".to_owned())
            } else {
                Ok(ips)
            }
        }
    }
}

impl Resolver for DnsCache {
    /// The cached answer; a name [`DnsCache::update`] was not given is an
    /// error rather than a lookup on the caller's thread.
    fn resolve(&self, name: &DnsName, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self.answers.get(name).map(|a| &a.result) {
            Some(Ok(ips)) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            Some(Err(e)) => Err(std::io::Error::other(e.clone())),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not looked up yet",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DnsName {
        format!("{s}:1")
            .parse::<crate::model::Endpoint>()
            .map(|e| match e.host {
                crate::model::Host::Dns(n) => n,
                crate::model::Host::Ip(_) => panic!("{s} is an IP"),
            })
            .unwrap()
    }

    #[tokio::test]
    async fn answers_are_cached_until_the_refresh_and_unused_names_forgotten() {
        // `localhost` resolves from /etc/hosts, without a network.
        let (local, gone) = (name("localhost"), name("no-such-host.invalid"));
        let mut c = DnsCache::new(Duration::from_secs(3600));
        assert!(c.resolve(&local, 51820).is_err(), "nothing before update");
        c.update(&[local.clone(), gone.clone()].into()).await;
        let addrs = c.resolve(&local, 51820).unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 51820 && a.ip().is_loopback())
                && !addrs.is_empty(),
            "{addrs:?}"
        );
        assert!(c.resolve(&gone, 51820).is_err());
        // Within the refresh period nothing is looked up again.
        let at = c.answers[&local].at;
        c.update(&[local.clone()].into()).await;
        assert_eq!(c.answers[&local].at, at);
        assert!(
            !c.answers.contains_key(&gone),
            "an unused name is forgotten"
        );
        // After it, the name is looked up again.
        c.refresh = Duration::ZERO;
        c.update(&[local.clone()].into()).await;
        assert!(c.answers[&local].at > at);
    }
}
