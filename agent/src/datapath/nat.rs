//! Masquerade, the agent's side: the exemption and source prefix tries
//! (written by difference), the NAT settings, the garbage collector of the
//! NAT maps, and the readable list of live translations (`weftctl bpf nat`).
//! The programs create flows (`ebpf/weft-ebpf/src/nat.rs`); the agent only
//! ever deletes them.

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use weft_common::nat::{
    FlowKey, FlowState, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NatConfig, NatEgress, NatIngress,
    Timeouts,
};

use super::maps::{Writes, diff};

/// Makes the LPM trie `map` (`WEFT_MASQ_SOURCES`, `WEFT_MASQ_EXEMPT` or
/// `WEFT_SERVICE_CIDRS`) hold exactly `desired`.
pub fn sync_prefixes(map: &mut Map, name: &str, desired: &[Ipv4Net]) -> Result<Writes> {
    let mut trie: LpmTrie<&mut MapData, [u8; 4], u32> = LpmTrie::try_from(map)?;
    let mut current = BTreeMap::new();
    for item in trie.iter() {
        let (k, v) = item.with_context(|| format!("reading {name}"))?;
        current.insert((k.prefix_len(), k.data()), v);
    }
    let desired: BTreeMap<(u32, [u8; 4]), u32> = desired
        .iter()
        .map(|n| {
            let n = n.trunc();
            ((u32::from(n.prefix_len()), n.network().octets()), 1)
        })
        .collect();
    let (upserts, removals) = diff(&current, &desired);
    let mut w = Writes::default();
    for ((len, addr), v, existed) in upserts {
        trie.insert(&Key::new(len, addr), v, 0)
            .with_context(|| format!("writing {}/{len} into {name}", Ipv4Addr::from(addr)))?;
        if existed {
            w.updated += 1
        } else {
            w.inserted += 1
        }
    }
    for (len, addr) in removals {
        trie.remove(&Key::new(len, addr))
            .with_context(|| format!("removing {}/{len} from {name}", Ipv4Addr::from(addr)))?;
        w.removed += 1;
    }
    Ok(w)
}

/// The masquerade settings the agent gives the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub port_min: u16,
    pub port_max: u16,
    pub max_flows: u32,
    /// See [`NatConfig::fib_ifindex`].
    pub fib_ifindex: u32,
}

/// Writes `s` into `WEFT_NAT_CONFIG`, keeping the flow count. Returns
/// whether anything changed.
pub fn write_settings(map: &mut Map, s: &Settings) -> Result<bool> {
    let mut a: Array<&mut MapData, NatConfig> = Array::try_from(map)?;
    let cur = a.get(&0, 0).context("reading WEFT_NAT_CONFIG")?;
    let want = NatConfig {
        enabled: s.enabled as u32,
        port_min: s.port_min,
        port_max: s.port_max,
        max_flows: s.max_flows,
        fib_ifindex: s.fib_ifindex,
        flows: cur.flows,
    };
    if want == cur {
        return Ok(false);
    }
    a.set(0, want, 0).context("writing WEFT_NAT_CONFIG")?;
    Ok(true)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One translation, both directions joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// As the pod sent it.
    pub key: FlowKey,
    pub egress: NatEgress,
    /// `None`: the reply entry is gone (evicted), the flow is half dead.
    pub ingress: Option<NatIngress>,
}

impl Flow {
    /// The key of the replies.
    pub fn reply_key(&self) -> FlowKey {
        reply_key(&self.key, &self.egress)
    }

    pub fn state(&self) -> FlowState {
        FlowState::of(
            self.key.proto,
            self.egress.flags,
            self.ingress.map(|i| i.flags).unwrap_or(0),
        )
    }

    /// The last packet either way.
    pub fn last_ns(&self) -> u64 {
        self.egress
            .last_ns
            .max(self.ingress.map(|i| i.last_ns).unwrap_or(0))
    }
}

fn reply_key(k: &FlowKey, e: &NatEgress) -> FlowKey {
    FlowKey::new(k.proto, k.dst, e.nat_ip, k.dport, e.nat_port)
}

type EgressMap<'a> = HashMap<&'a mut MapData, FlowKey, NatEgress>;
type IngressMap<'a> = HashMap<&'a mut MapData, FlowKey, NatIngress>;

/// Ingress entries no egress entry points to, with their keys.
pub type Orphans = Vec<(FlowKey, NatIngress)>;

/// Every flow of the NAT maps, and the orphaned ingress entries.
pub fn read_flows(egress: &mut Map, ingress: &mut Map) -> Result<(Vec<Flow>, Orphans)> {
    let eg: EgressMap = HashMap::try_from(egress)?;
    let ing: IngressMap = HashMap::try_from(ingress)?;
    let mut back: BTreeMap<FlowKey, NatIngress> = BTreeMap::new();
    for item in ing.iter() {
        let (k, v) = item.context("reading WEFT_NAT_INGRESS")?;
        back.insert(k, v);
    }
    let mut flows = Vec::new();
    let mut claimed = BTreeSet::new();
    for item in eg.iter() {
        let (k, e) = item.context("reading WEFT_NAT_EGRESS")?;
        let rk = reply_key(&k, &e);
        let i = back.get(&rk).copied();
        if i.is_some() {
            claimed.insert(rk);
        }
        flows.push(Flow {
            key: k,
            egress: e,
            ingress: i,
        });
    }
    let orphans = back
        .into_iter()
        .filter(|(k, _)| !claimed.contains(k))
        .collect();
    Ok((flows, orphans))
}

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Flows left.
    pub live: u64,
    /// Flows removed because they expired.
    pub expired: u64,
    /// Half-flows removed (their other direction was evicted by the LRU).
    pub orphans: u64,
}

/// A new flow's ingress entry is written just before its egress entry:
/// an ingress entry alone is an orphan only once older than this.
const ORPHAN_GRACE_NS: u64 = 5_000_000_000;

/// Removes the flows that expired by `timeouts` at `now_ns`, and half-flows;
/// writes the live count into `WEFT_NAT_CONFIG` (the programs' flow limit).
pub fn gc(
    egress: &mut Map,
    ingress: &mut Map,
    config: &mut Map,
    timeouts: &Timeouts,
    now_ns: u64,
) -> Result<GcStats> {
    let (flows, orphans) = read_flows(egress, ingress)?;
    let mut stats = GcStats::default();
    let mut eg: EgressMap = HashMap::try_from(&mut *egress)?;
    let mut dead_replies = Vec::new();
    for f in &flows {
        let expired = timeouts.expired(f.key.proto, f.state(), f.last_ns(), now_ns);
        // An egress entry whose reply entry is gone can never be answered.
        let half =
            f.ingress.is_none() && now_ns.saturating_sub(f.egress.created_ns) > ORPHAN_GRACE_NS;
        if !(expired || half) {
            stats.live += 1;
            continue;
        }
        // Gone already (a race with the LRU) is fine.
        let _ = eg.remove(&f.key);
        if f.ingress.is_some() {
            dead_replies.push(f.reply_key());
            stats.expired += 1;
        } else {
            stats.orphans += 1;
        }
    }
    for (k, v) in &orphans {
        if now_ns.saturating_sub(v.last_ns) > ORPHAN_GRACE_NS {
            dead_replies.push(*k);
            stats.orphans += 1;
        }
    }
    let mut ing: IngressMap = HashMap::try_from(&mut *ingress)?;
    for k in dead_replies {
        let _ = ing.remove(&k);
    }
    let mut a: Array<&mut MapData, NatConfig> = Array::try_from(config)?;
    let mut c = a.get(&0, 0).context("reading WEFT_NAT_CONFIG")?;
    c.flows = stats.live;
    a.set(0, c, 0).context("writing WEFT_NAT_CONFIG")?;
    Ok(stats)
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => format!("proto-{other}"),
    }
}

fn endpoint(ip: [u8; 4], port: u16, proto: u8) -> String {
    if proto == IPPROTO_ICMP {
        // The echo identifier stands for the port.
        format!("{}#{port}", Ipv4Addr::from(ip))
    } else {
        format!("{}:{port}", Ipv4Addr::from(ip))
    }
}

/// One line per translation, sorted:
/// `tcp 10.42.0.2:40000 -> 198.18.0.10:40000 -> 198.18.0.200:5201 established 3s idle 1s`.
pub fn format_flows(flows: &[Flow], now_ns: u64) -> String {
    let mut rows: Vec<String> = flows
        .iter()
        .map(|f| {
            let k = &f.key;
            let remote = if k.proto == IPPROTO_ICMP {
                Ipv4Addr::from(k.dst).to_string()
            } else {
                endpoint(k.dst, k.dport, k.proto)
            };
            let state = if f.ingress.is_none() {
                "half (reply entry evicted)"
            } else {
                f.state().name()
            };
            format!(
                "{:<5} {:<21} -> {:<21} -> {:<21} {:<12} {}s idle {}s",
                proto_name(k.proto),
                endpoint(k.src, k.sport, k.proto),
                endpoint(f.egress.nat_ip, f.egress.nat_port, k.proto),
                remote,
                state,
                now_ns.saturating_sub(f.egress.created_ns) / 1_000_000_000,
                now_ns.saturating_sub(f.last_ns()) / 1_000_000_000,
            )
        })
        .collect();
    rows.sort();
    let mut out = format!(
        "{:<5} {:<21}    {:<21}    {:<21} {:<12} age\n",
        "proto", "pod", "node", "remote", "state"
    );
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::nat::{SEEN_ANY, SEEN_FIN, SEEN_SYN};

    #[test]
    fn flows_read_as_lines() {
        let s = 1_000_000_000;
        let flows = vec![
            Flow {
                key: FlowKey::new(IPPROTO_TCP, [10, 42, 0, 2], [198, 18, 0, 200], 40000, 5201),
                egress: NatEgress {
                    nat_ip: [198, 18, 0, 10],
                    nat_port: 40000,
                    flags: SEEN_SYN | SEEN_ANY,
                    _pad: 0,
                    created_ns: 7 * s,
                    last_ns: 9 * s,
                },
                ingress: Some(NatIngress {
                    pod_ip: [10, 42, 0, 2],
                    pod_port: 40000,
                    flags: SEEN_SYN | SEEN_ANY,
                    _pad: 0,
                    last_ns: 9 * s,
                }),
            },
            Flow {
                key: FlowKey::new(IPPROTO_ICMP, [10, 42, 0, 3], [198, 18, 0, 200], 7, 0),
                egress: NatEgress {
                    nat_ip: [198, 18, 0, 10],
                    nat_port: 1031,
                    flags: SEEN_ANY | SEEN_FIN,
                    _pad: 0,
                    created_ns: 9 * s,
                    last_ns: 9 * s,
                },
                ingress: None,
            },
        ];
        let out = format_flows(&flows, 10 * s);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("proto pod"), "{out}");
        assert!(
            lines[1].starts_with("icmp  10.42.0.3#7") && lines[1].contains("198.18.0.10#1031"),
            "{out}"
        );
        assert!(lines[1].contains("half"), "{out}");
        assert!(lines[2].starts_with("tcp   10.42.0.2:40000"), "{out}");
        assert!(
            lines[2].contains("-> 198.18.0.10:40000")
                && lines[2].contains("-> 198.18.0.200:5201")
                && lines[2].contains("established")
                && lines[2].contains("3s idle 1s"),
            "{out}"
        );
        assert_eq!(
            flows[0].reply_key(),
            FlowKey::new(
                IPPROTO_TCP,
                [198, 18, 0, 200],
                [198, 18, 0, 10],
                5201,
                40000
            )
        );
    }
}
