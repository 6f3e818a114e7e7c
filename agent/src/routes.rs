//! Kernel routes for traffic the host itself originates (the eBPF datapath
//! forwards pod traffic), reconciled by difference over rtnetlink.
//!
//! Every route Weft installs carries its own routing protocol number,
//! [`RTPROT_WEFT`] (`proto 87` in `ip route`), so that after a restart the
//! agent finds exactly its routes again, and `clean_up` removes them all
//! without touching anyone else's.
//!
//! Table choice: the main table. The routes exist for the host's own
//! traffic to other segments' pod CIDRs, WireGuard IPs and allowed IPs, which
//! the main table serves with no further setup. A dedicated table would need
//! an `ip rule` to be consulted at all, whose priority has to be chosen
//! against other software's rules (kube-proxy, other CNIs, VPN clients) and
//! which then also has to be reconciled and cleaned up; the protocol number
//! already gives Weft's routes the identity a separate table would give. The
//! table stays a parameter ([`Routes::new`]) for a node that wants another.
//! No `ip rule` is added.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::netlink::{errno, link_by_name};

/// Weft's routing protocol number: 0x57, 'W' (`ip route show proto 87`).
pub const RTPROT_WEFT: u8 = 0x57;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// The kernel's default metric of IPv6 routes added without one.
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// An interface, by name (resolved at each reconcile: wireguard-go's TUN
/// changes index when restarted) or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRef {
    Name(String),
    Index(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVia {
    /// Directly out of the device (scope link), e.g. into WireGuard.
    Device(LinkRef),
    /// Through a gateway on `dev`; `onlink` when the gateway is not inside
    /// a subnet of `dev` (e.g. another node's WireGuard IP).
    Gateway {
        gw: IpAddr,
        dev: LinkRef,
        onlink: bool,
    },
}

/// A route as the topology wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRoute {
    pub dst: IpNet,
    pub via: RouteVia,
    /// Preferred source address of host traffic using the route.
    pub src: Option<IpAddr>,
    /// `None`: the kernel's default (0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
}

/// A route in normalised form, resolved to interface indexes: what the diff
/// compares. The identity of a route is `(dst, metric)` within the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub metric: u32,
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    pub onlink: bool,
    pub src: Option<IpAddr>,
    pub mtu: Option<u32>,
}

impl RouteSpec {
    fn key(&self) -> (IpNet, u32) {
        (self.dst, self.metric)
    }
}

/// What differs between the table and the desired routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub add: Vec<RouteSpec>,
    /// (current, desired): same identity, other attributes.
    pub replace: Vec<(RouteSpec, RouteSpec)>,
    pub remove: Vec<RouteSpec>,
    pub unchanged: usize,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.replace.is_empty() && self.remove.is_empty()
    }
}

/// What [`Routes::reconcile`] did.
#[derive(Debug, Default)]
pub struct RouteSummary {
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Routes that could not be resolved, added, replaced or removed, with
    /// why; every other route was still reconciled.
    pub failed: Vec<RouteError>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {dst} is desired twice with metric {metric}")]
    Duplicate { dst: IpNet, metric: u32 },
    #[error("route {dst}: {reason}")]
    Invalid { dst: IpNet, reason: String },
    #[error("route {dst}: interface {link} does not exist")]
    NoSuchLink { dst: IpNet, link: String },
    #[error(
        "route {dst}: a route with the same destination and metric but another owner \
         (protocol {protocol}) is in table {table}; refusing to replace it"
    )]
    Conflict {
        dst: IpNet,
        table: u32,
        protocol: u8,
    },
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    let context = context.into();
    move |source| RouteError::Netlink { context, source }
}

/// The pure diff. Current routes with the same identity beyond the first
/// are removed (Weft never installs two).
pub fn diff_routes(current: &[RouteSpec], desired: &[RouteSpec]) -> Result<RouteDiff, RouteError> {
    let mut want: BTreeMap<(IpNet, u32), &RouteSpec> = BTreeMap::new();
    for d in desired {
        if want.insert(d.key(), d).is_some() {
            return Err(RouteError::Duplicate {
                dst: d.dst,
                metric: d.metric,
            });
        }
    }
    let mut diff = RouteDiff::default();
    let mut seen: BTreeMap<(IpNet, u32), ()> = BTreeMap::new();
    for c in current {
        if seen.insert(c.key(), ()).is_some() {
            diff.remove.push(c.clone());
            continue;
        }
        match want.remove(&c.key()) {
            None => diff.remove.push(c.clone()),
            Some(d) if d == c => diff.unchanged += 1,
            Some(d) => diff.replace.push((c.clone(), d.clone())),
        }
    }
    diff.add = want.into_values().cloned().collect();
    Ok(diff)
}

fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => IPV6_DEFAULT_METRIC,
    }
}

fn same_family(a: &IpNet, b: &IpAddr) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The routing table of a dumped route (the attribute wins over the 8-bit header field).
pub(crate) fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table as u32)
}

/// Reads a dumped route into a [`RouteSpec`] (`None` for what Weft never
/// installs: multipath, non-IP).
pub fn spec_of(m: &RouteMessage) -> Option<RouteSpec> {
    let mut dst_addr = None;
    let mut spec = RouteSpec {
        dst: IpNet::default(),
        metric: 0,
        oif: 0,
        gateway: None,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        src: None,
        mtu: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_addr = route_addr(d),
            RouteAttribute::Priority(p) => spec.metric = *p,
            RouteAttribute::Oif(i) => spec.oif = *i,
            RouteAttribute::Gateway(g) => spec.gateway = route_addr(g),
            RouteAttribute::PrefSource(s) => spec.src = route_addr(s),
            RouteAttribute::Metrics(ms) => {
                spec.mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(x) => Some(*x),
                    _ => None,
                });
            }
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let unspecified = match m.header.address_family {
        rtnetlink::packet_route::AddressFamily::Inet => IpAddr::from([0u8; 4]),
        rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    spec.dst = IpNet::new(
        dst_addr.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    Some(spec)
}

/// The netlink message adding `s` to `table` with `protocol`.
fn route_message(s: &RouteSpec, table: u32, protocol: u8) -> Result<RouteMessage, RouteError> {
    let invalid = |e: &dyn std::fmt::Display| RouteError::Invalid {
        dst: s.dst,
        reason: e.to_string(),
    };
    let scope = match (s.dst, s.gateway) {
        (IpNet::V4(_), None) => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(s.dst.addr(), s.dst.prefix_len())
        .map_err(|e| invalid(&e))?
        .output_interface(s.oif)
        .table_id(table)
        .protocol(RouteProtocol::from(protocol))
        .scope(scope)
        .priority(s.metric);
    if let Some(gw) = s.gateway {
        b = b.gateway(gw).map_err(|e| invalid(&e))?;
    }
    if s.onlink {
        b = b.onlink();
    }
    if let Some(src) = s.src {
        b = b.pref_source(src).map_err(|e| invalid(&e))?;
    }
    if let Some(mtu) = s.mtu {
        b.get_mut()
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    Ok(b.build())
}

/// The routes reconciler for one table and protocol.
#[derive(Clone)]
pub struct Routes {
    handle: Handle,
    table: u32,
    protocol: u8,
}

impl Routes {
    /// Opens its own netlink connection (its event loop runs as a tokio
    /// task) in the caller's network namespace.
    pub fn new(table: u32, protocol: u8) -> std::io::Result<Routes> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Routes::with_handle(handle, table, protocol))
    }

    pub fn with_handle(handle: Handle, table: u32, protocol: u8) -> Routes {
        Routes {
            handle,
            table,
            protocol,
        }
    }

    /// All routes of both families.
    async fn dump(&self) -> Result<Vec<RouteMessage>, RouteError> {
        let mut all = Vec::new();
        for msg in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            all.extend(routes);
        }
        Ok(all)
    }

    /// The gateway the kernel would send a packet for `dst` through
    /// (`ip route get`), or `None` when `dst` is on a link of this host.
    pub async fn gateway_towards(
        &self,
        dst: std::net::Ipv4Addr,
    ) -> Result<Option<IpAddr>, RouteError> {
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let found: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("looking up the route to {dst}")))?;
        Ok(found
            .iter()
            .flat_map(|m| &m.attributes)
            .find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                _ => None,
            }))
    }

    fn ours(&self, m: &RouteMessage) -> bool {
        u8::from(m.header.protocol) == self.protocol
    }

    /// Weft's routes currently in the table.
    pub async fn current(&self) -> Result<Vec<RouteSpec>, RouteError> {
        Ok(self
            .dump()
            .await?
            .iter()
            .filter(|m| self.ours(m) && table_of(m) == self.table)
            .filter_map(spec_of)
            .collect())
    }

    async fn resolve_link(&self, dst: IpNet, l: &LinkRef) -> Result<u32, RouteError> {
        match l {
            LinkRef::Index(i) => Ok(*i),
            LinkRef::Name(n) => link_by_name(&self.handle, n)
                .await
                .map_err(nl(format!("looking up interface {n}")))?
                .map(|m| m.header.index)
                .ok_or_else(|| RouteError::NoSuchLink {
                    dst,
                    link: n.clone(),
                }),
        }
    }

    /// Resolves and normalises a desired route.
    pub async fn resolve(&self, d: &DesiredRoute) -> Result<RouteSpec, RouteError> {
        let dst = d.dst.trunc();
        let invalid = |reason: &str| RouteError::Invalid {
            dst,
            reason: reason.to_owned(),
        };
        if let Some(src) = d.src
            && !same_family(&dst, &src)
        {
            return Err(invalid("source address of another family"));
        }
        let (oif, gateway, onlink) = match &d.via {
            RouteVia::Device(l) => (self.resolve_link(dst, l).await?, None, false),
            RouteVia::Gateway { gw, dev, onlink } => {
                if !same_family(&dst, gw) {
                    return Err(invalid("gateway of another family"));
                }
                (self.resolve_link(dst, dev).await?, Some(*gw), *onlink)
            }
        };
        Ok(RouteSpec {
            dst,
            metric: d.metric.unwrap_or_else(|| default_metric(&dst)),
            oif,
            gateway,
            onlink,
            src: d.src,
            mtu: d.mtu,
        })
    }

    fn message(&self, s: &RouteSpec) -> Result<RouteMessage, RouteError> {
        route_message(s, self.table, self.protocol)
    }

    /// Makes Weft's routes in the table exactly `desired`: adds what is
    /// missing, replaces what differs, deletes what is no longer desired;
    /// an unchanged route is not touched. One route that fails (someone
    /// else's route in its place, a device gone) is listed in
    /// [`RouteSummary::failed`] and the others are reconciled all the same;
    /// a desired route that cannot be resolved keeps what is installed for
    /// its destination. Only listing the table or a duplicate in `desired`
    /// fails the whole call.
    pub async fn reconcile(&self, desired: &[DesiredRoute]) -> Result<RouteSummary, RouteError> {
        let mut failed = Vec::new();
        let mut want = Vec::with_capacity(desired.len());
        let mut unresolved = Vec::new();
        for d in desired {
            match self.resolve(d).await {
                Ok(spec) => want.push(spec),
                Err(e) => {
                    unresolved.push(d.dst);
                    failed.push(e);
                }
            }
        }
        let all = self.dump().await?;
        let ours: Vec<&RouteMessage> = all
            .iter()
            .filter(|m| self.ours(m) && table_of(m) == self.table)
            .collect();
        let current: Vec<RouteSpec> = ours
            .iter()
            .filter_map(|m| spec_of(m))
            .filter(|s| !unresolved.contains(&s.dst))
            .collect();
        let diff = diff_routes(&current, &want)?;

        let mut done = RouteSummary {
            unchanged: diff.unchanged,
            ..RouteSummary::default()
        };
        for old in &diff.remove {
            let msg = ours
                .iter()
                .find(|m| spec_of(m).as_ref() == Some(old))
                .expect("removed routes come from the dump");
            match self.handle.route().del((*msg).clone()).execute().await {
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => {
                    failed.push(nl(format!("deleting route {}", old.dst))(e));
                    continue;
                }
                Ok(()) => {}
            }
            done.removed += 1;
            tracing::info!(dst = %old.dst, oif = old.oif, gateway = ?old.gateway, "removed route");
        }
        for (old, new) in &diff.replace {
            let r = match self.message(new) {
                Ok(msg) => self
                    .handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("replacing route {}", new.dst))),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                failed.push(e);
                continue;
            }
            done.replaced += 1;
            tracing::info!(dst = %new.dst, old = ?old, new = ?new, "replaced route");
        }
        for new in &diff.add {
            let msg = match self.message(new) {
                Ok(msg) => msg,
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            };
            match self.handle.route().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {
                    // Someone else's route holds the same place.
                    let owner = all
                        .iter()
                        .find(|m| {
                            table_of(m) == self.table
                                && spec_of(m)
                                    .is_some_and(|s| s.dst == new.dst && s.metric == new.metric)
                        })
                        .map(|m| u8::from(m.header.protocol))
                        .unwrap_or(0);
                    failed.push(RouteError::Conflict {
                        dst: new.dst,
                        table: self.table,
                        protocol: owner,
                    });
                    continue;
                }
                Err(e) => {
                    failed.push(nl(format!("adding route {}", new.dst))(e));
                    continue;
                }
            }
            done.added += 1;
            tracing::info!(dst = %new.dst, oif = new.oif, gateway = ?new.gateway, "added route");
        }
        done.failed = failed;
        Ok(done)
    }

    /// Removes every route with Weft's protocol, in every table. Returns
    /// how many.
    pub async fn clean_up(&self) -> Result<usize, RouteError> {
        let mut n = 0;
        for m in self.dump().await?.into_iter().filter(|m| self.ours(m)) {
            let dst = spec_of(&m).map(|s| s.dst.to_string()).unwrap_or_default();
            match self.handle.route().del(m).execute().await {
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                r => r.map_err(nl(format!("deleting route {dst}")))?,
            }
            n += 1;
        }
        if n > 0 {
            tracing::info!(
                routes = n,
                protocol = self.protocol,
                "removed all Weft routes"
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dst: &str, oif: u32, gw: Option<&str>) -> RouteSpec {
        let dst: IpNet = dst.parse().unwrap();
        RouteSpec {
            dst,
            metric: default_metric(&dst),
            oif,
            gateway: gw.map(|g| g.parse().unwrap()),
            onlink: gw.is_some(),
            src: None,
            mtu: None,
        }
    }

    #[test]
    fn identical_tables_need_nothing() {
        let routes = vec![
            spec("10.0.1.0/24", 5, None),
            spec("fd00:1::/64", 5, Some("fd00::2")),
        ];
        let diff = diff_routes(&routes, &routes).unwrap();
        assert!(diff.is_empty());
        assert_eq!(diff.unchanged, 2);
    }

    #[test]
    fn separates_additions_replacements_and_removals() {
        let keep = spec("10.0.1.0/24", 5, None);
        let old_gw = spec("10.0.2.0/24", 5, Some("10.4.0.2"));
        let gone = spec("10.0.3.0/24", 5, None);
        let new = spec("10.0.4.0/24", 5, None);
        let mut new_gw = old_gw.clone();
        new_gw.gateway = Some("10.4.0.3".parse().unwrap());
        let diff = diff_routes(
            &[keep.clone(), old_gw.clone(), gone.clone()],
            &[keep.clone(), new_gw.clone(), new.clone()],
        )
        .unwrap();
        assert_eq!(diff.unchanged, 1);
        assert_eq!(diff.add, vec![new]);
        assert_eq!(diff.remove, vec![gone]);
        assert_eq!(diff.replace, vec![(old_gw, new_gw)]);
    }

    #[test]
    fn every_attribute_counts_and_metric_is_identity() {
        let base = spec("10.0.1.0/24", 5, Some("10.4.0.2"));
        for change in [
            |s: &mut RouteSpec| s.oif = 6,
            |s: &mut RouteSpec| s.onlink = false,
            |s: &mut RouteSpec| s.src = Some("10.4.0.1".parse().unwrap()),
            |s: &mut RouteSpec| s.mtu = Some(1420),
        ] {
            let mut d = base.clone();
            change(&mut d);
            let diff = diff_routes(std::slice::from_ref(&base), &[d]).unwrap();
            assert_eq!(diff.replace.len(), 1, "{diff:?}");
        }
        // Another metric is another route: one added, one removed.
        let mut d = base.clone();
        d.metric = 10;
        let diff = diff_routes(std::slice::from_ref(&base), &[d]).unwrap();
        assert_eq!(
            (diff.add.len(), diff.remove.len(), diff.replace.len()),
            (1, 1, 0)
        );
    }

    #[test]
    fn duplicates_are_refused_or_cleaned() {
        let a = spec("10.0.1.0/24", 5, None);
        assert!(matches!(
            diff_routes(&[], &[a.clone(), a.clone()]),
            Err(RouteError::Duplicate { .. })
        ));
        let mut b = a.clone();
        b.oif = 7;
        let diff = diff_routes(&[a.clone(), b.clone()], std::slice::from_ref(&a)).unwrap();
        assert_eq!(diff.remove, vec![b]);
        assert_eq!(diff.unchanged, 1);
    }

    #[test]
    fn default_metrics_match_the_kernel() {
        assert_eq!(default_metric(&"10.0.0.0/8".parse().unwrap()), 0);
        assert_eq!(default_metric(&"fd00::/8".parse().unwrap()), 1024);
    }

    #[test]
    fn built_messages_read_back_as_the_same_spec() {
        let mut s = spec("10.0.2.0/24", 5, Some("10.4.0.2"));
        s.src = Some("10.4.0.1".parse().unwrap());
        s.mtu = Some(1420);
        let m = route_message(&s, MAIN_TABLE, RTPROT_WEFT).unwrap();
        assert_eq!(spec_of(&m), Some(s.clone()));
        assert_eq!(u8::from(m.header.protocol), RTPROT_WEFT);
        assert_eq!(table_of(&m), MAIN_TABLE);
        let d = spec("fd00:2::/64", 5, None);
        let m = route_message(&d, MAIN_TABLE, RTPROT_WEFT).unwrap();
        assert_eq!(spec_of(&m), Some(d));
        assert_eq!(m.header.scope, RouteScope::Universe);
        let m = route_message(&spec("10.0.3.0/24", 5, None), MAIN_TABLE, RTPROT_WEFT).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
    }
}
