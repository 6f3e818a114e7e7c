//! `weftctl bpf`: the pinned datapath maps in readable form (bpftool prints
//! them as hex bytes: these maps carry no BTF).

use anyhow::{Context, Result};
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use weft_common::maps::{
    IPIP_SENDERS, IpipSender, NIC_SOURCES, PODS, PodEndpoint, ROUTES, Route, RouteAction,
    SENDER_SOURCE_KEY_LEN, SENDER_SOURCES,
};

fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the weft datapath loaded on this node?)",
            path.display()
        )
    })
}

/// An interface's name from its index, or the index.
fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// One route as text: `10.42.1.0/24 node via 192.168.1.11 dev eth0`.
pub fn format_route(len: u32, dst: [u8; 4], r: &Route) -> String {
    let dst = format!("{}/{len}", Ipv4Addr::from(dst));
    let dev = ifname(r.ifindex);
    match r.kind() {
        Some(RouteAction::Local) => format!("{dst} local dev {dev}"),
        Some(RouteAction::WireGuard) => format!("{dst} wireguard dev {dev}"),
        Some(RouteAction::Node) => {
            format!("{dst} node via {} dev {dev}", Ipv4Addr::from(r.nexthop))
        }
        Some(RouteAction::NodeIpip) => {
            format!(
                "{dst} node-ipip via {} src {} dev {dev}",
                Ipv4Addr::from(r.nexthop),
                Ipv4Addr::from(r.src)
            )
        }
        None => format!("{dst} unknown action {}", r.action),
    }
}

/// `weftctl bpf routes`: the route LPM trie.
pub fn routes(pin_dir: &Path) -> Result<String> {
    let trie: LpmTrie<MapData, [u8; 4], Route> =
        LpmTrie::try_from(Map::LpmTrie(open(pin_dir, ROUTES)?))?;
    let mut rows = Vec::new();
    for item in trie.iter() {
        let (k, v) = item?;
        rows.push((
            (k.data(), k.prefix_len()),
            format_route(k.prefix_len(), k.data(), &v),
        ));
    }
    rows.sort();
    Ok(rows.into_iter().map(|(_, s)| s + "\n").collect())
}

/// `weftctl bpf counters`: every counter summed over CPUs.
pub fn counters(pin_dir: &Path) -> Result<String> {
    let mut out = format!("{:<32} {:>14} {:>16}\n", "counter", "packets", "bytes");
    for (c, v) in crate::datapath::counters::read_pinned(pin_dir)? {
        writeln!(out, "{:<32} {:>14} {:>16}", c.name(), v.packets, v.bytes).expect("String");
    }
    Ok(out)
}

/// `weftctl bpf pods`: the local pods as the CNI registered them.
pub fn pods(pin_dir: &Path) -> Result<String> {
    let map: HashMap<MapData, [u8; 4], PodEndpoint> =
        HashMap::try_from(Map::HashMap(open(pin_dir, PODS)?))?;
    let mut rows = Vec::new();
    for item in map.iter() {
        let (ip, p) = item?;
        let mac = p
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        rows.push((
            ip,
            format!(
                "{} dev {} lladdr {mac}\n",
                Ipv4Addr::from(ip),
                ifname(p.ifindex)
            ),
        ));
    }
    rows.sort();
    Ok(rows.into_iter().map(|(_, s)| s).collect())
}

/// `weftctl bpf ipip-peers`: the nodes IPIP is accepted from, the device it
/// must arrive on and the outer destination it must carry, each followed by
/// the inner sources it may send:
/// `192.168.1.11 dev eth0 to 192.168.1.10 sources 10.42.1.0/24,192.168.1.11/32`.
/// Then the plain-IPv4 rule: `plain 10.42.1.0/24 from eth0`, `plain 10.42.0.0/24 from nowhere`.
pub fn ipip_peers(pin_dir: &Path) -> Result<String> {
    let senders: HashMap<MapData, [u8; 4], IpipSender> =
        HashMap::try_from(Map::HashMap(open(pin_dir, IPIP_SENDERS)?))?;
    let allowed: LpmTrie<MapData, [u8; SENDER_SOURCE_KEY_LEN], u32> =
        LpmTrie::try_from(Map::LpmTrie(open(pin_dir, SENDER_SOURCES)?))?;
    let plain: LpmTrie<MapData, [u8; 4], u32> =
        LpmTrie::try_from(Map::LpmTrie(open(pin_dir, NIC_SOURCES)?))?;
    let mut by_sender: std::collections::BTreeMap<[u8; 4], Vec<(u32, [u8; 4])>> =
        Default::default();
    for item in allowed.iter() {
        let (k, _) = item?;
        let d = k.data();
        by_sender
            .entry([d[0], d[1], d[2], d[3]])
            .or_default()
            .push((k.prefix_len().saturating_sub(32), [d[4], d[5], d[6], d[7]]));
    }
    let mut rows = Vec::new();
    for item in senders.iter() {
        let (ip, s) = item?;
        let mut srcs = by_sender.remove(&ip).unwrap_or_default();
        srcs.sort();
        let srcs: Vec<String> = srcs
            .iter()
            .map(|(len, n)| format!("{}/{len}", Ipv4Addr::from(*n)))
            .collect();
        rows.push(format!(
            "{} dev {} to {} sources {}\n",
            Ipv4Addr::from(ip),
            ifname(s.ifindex),
            Ipv4Addr::from(s.local),
            srcs.join(",")
        ));
    }
    rows.sort();
    let mut plain_rows = Vec::new();
    for item in plain.iter() {
        let (k, v) = item?;
        let from = match v {
            weft_common::sources::FROM_NOWHERE => "nowhere".to_string(),
            i => ifname(i),
        };
        plain_rows.push((
            (k.data(), k.prefix_len()),
            format!(
                "plain {}/{} from {from}\n",
                Ipv4Addr::from(k.data()),
                k.prefix_len()
            ),
        ));
    }
    plain_rows.sort();
    rows.extend(plain_rows.into_iter().map(|(_, r)| r));
    Ok(rows.concat())
}

/// `weftctl bpf nat`: the live masquerade translations.
pub fn nat(pin_dir: &Path) -> Result<String> {
    use weft_common::nat::{NAT_EGRESS, NAT_INGRESS};
    let mut eg = Map::LruHashMap(open(pin_dir, NAT_EGRESS)?);
    let mut ing = Map::LruHashMap(open(pin_dir, NAT_INGRESS)?);
    let (flows, _) = crate::datapath::nat::read_flows(&mut eg, &mut ing)?;
    Ok(crate::datapath::nat::format_flows(
        &flows,
        crate::datapath::nat::monotonic_ns(),
    ))
}

/// `weftctl bpf links`: the pinned program attachments.
pub fn links(pin_dir: &Path) -> Result<String> {
    let dir = pin_dir.join("links");
    let mut names = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().replacen('@', " on ", 1)))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names.into_iter().map(|n| n + "\n").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_like_ip_route() {
        let r = Route::node_ipip(0, [192, 168, 1, 11], [192, 168, 1, 10]);
        assert_eq!(
            format_route(24, [10, 42, 1, 0], &r),
            "10.42.1.0/24 node-ipip via 192.168.1.11 src 192.168.1.10 dev #0"
        );
        let r = Route {
            action: 9,
            ..Route::wireguard(0)
        };
        assert!(format_route(32, [10, 4, 0, 1], &r).ends_with("unknown action 9"));
    }
}
