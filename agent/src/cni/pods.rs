//! Pod records: what the CNI assigned to each local pod (host veth, MAC,
//! IPv4 addresses), written by `weft-cni` at ADD into the pod state
//! directory (`<agent --state-dir>/pods/<container id>-<ifname>.json`) and
//! removed at DEL. They are the source of truth of `WEFT_PODS`: the plugin
//! writes the map directly when it is pinned, and the agent rebuilds it from
//! the records at start-up (the plugin may have run before any agent
//! created the map) and on every resync, dropping pods whose veth is gone.

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use weft_common::maps::{PODS, PodEndpoint};

/// The pod state directory of an agent with `--state-dir state_dir`.
pub fn state_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pods")
}

/// A CNI container ID: letters, digits, `_`, `.`, `-`, starting with a
/// letter or digit (the spec's rule), so it is safe in a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl TryFrom<String> for ContainerId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() <= 256
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(ContainerId(s))
        } else {
            Err(format!(
                "container ID {s:?} is not letters, digits, '_', '.' and '-' starting with a letter or digit"
            ))
        }
    }
}

impl From<ContainerId> for String {
    fn from(c: ContainerId) -> String {
        c.0
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An interface name as the kernel accepts it (1-15 bytes, no `/`,
/// whitespace or NUL), so it is safe in a file name too.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl TryFrom<String> for IfName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() < 16
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if ok {
            Ok(IfName(s))
        } else {
            Err(format!(
                "{s:?} is not an interface name (1-15 characters, no '/', ':' or space)"
            ))
        }
    }
}

impl From<IfName> for String {
    fn from(c: IfName) -> String {
        c.0
    }
}

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A MAC address, `aa:bb:cc:dd:ee:ff` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut mac = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("MAC {s:?} is not six ':'-separated bytes"));
        }
        for (b, p) in mac.iter_mut().zip(&parts) {
            *b = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("MAC {s:?}: {p:?} is not a hex byte"))?;
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(format!("MAC {s:?} is not a unicast address"));
        }
        Ok(Mac(mac))
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One pod interface as the CNI set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub container_id: ContainerId,
    /// The interface inside the pod (`CNI_IFNAME`).
    pub ifname: IfName,
    /// The pod's network namespace (`CNI_NETNS`), for the logs.
    pub netns: String,
    /// The host end of the pod's veth.
    pub host_veth: IfName,
    /// Its ifindex at ADD: a veth of the same name with another index is
    /// another pod's, and this record is stale.
    pub host_ifindex: u32,
    /// The pod interface's MAC.
    pub mac: Mac,
    /// The IPv4 addresses the IPAM plugin gave the pod interface.
    pub ips: Vec<Ipv4Addr>,
}

impl PodRecord {
    /// The `WEFT_PODS` entries of this pod.
    pub fn entries(&self) -> impl Iterator<Item = ([u8; 4], PodEndpoint)> + '_ {
        let ep = PodEndpoint::new(self.host_ifindex, self.mac.0);
        self.ips.iter().map(move |ip| (ip.octets(), ep))
    }
}

/// The directory of pod records.
#[derive(Clone, Debug)]
pub struct PodStore {
    dir: PathBuf,
}

impl PodStore {
    pub fn new(dir: impl Into<PathBuf>) -> PodStore {
        PodStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &ContainerId, ifname: &IfName) -> PathBuf {
        self.dir.join(format!("{id}-{ifname}.json"))
    }

    /// Writes `rec` atomically (temp file + rename: the agent never reads half a record).
    pub fn write(&self, rec: &PodRecord) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.path(&rec.container_id, &rec.ifname);
        let tmp = self
            .dir
            .join(format!(".{}-{}.tmp", rec.container_id, rec.ifname));
        let json = serde_json::to_string_pretty(rec).expect("a record serialises");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// The record of (`id`, `ifname`), if there is one.
    pub fn read(&self, id: &ContainerId, ifname: &IfName) -> Result<Option<PodRecord>> {
        let path = self.path(id, ifname);
        match std::fs::read_to_string(&path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .with_context(|| format!("parsing pod record {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Removes the record of (`id`, `ifname`); fine if it is not there.
    pub fn remove(&self, id: &ContainerId, ifname: &IfName) -> Result<()> {
        let path = self.path(id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Every record, and the files that are not one (named for the logs).
    pub fn list(&self) -> Result<(Vec<PodRecord>, Vec<String>)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        let (mut recs, mut bad) = (Vec::new(), Vec::new());
        for e in entries {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|s| Ok(serde_json::from_str::<PodRecord>(&s)?))
            {
                Ok(r) => recs.push(r),
                Err(e) => bad.push(format!("{}: {e}", path.display())),
            }
        }
        recs.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok((recs, bad))
    }
}

/// The `WEFT_PODS` entries of `records`, by IP. An IP claimed by two
/// records (a stale one the agent has not removed yet) goes to the later
/// ifindex, the newer veth.
pub fn desired_entries(records: &[PodRecord]) -> BTreeMap<[u8; 4], PodEndpoint> {
    let mut out: BTreeMap<[u8; 4], PodEndpoint> = BTreeMap::new();
    for r in records {
        for (ip, ep) in r.entries() {
            match out.get(&ip) {
                Some(cur) if cur.ifindex > ep.ifindex => {}
                _ => {
                    out.insert(ip, ep);
                }
            }
        }
    }
    out
}

/// Opens the pinned `WEFT_PODS` under `pin_dir`; `None` if no agent has
/// pinned it yet.
pub fn open_pinned(pin_dir: &Path) -> Result<Option<HashMap<MapData, [u8; 4], PodEndpoint>>> {
    let path = pin_dir.join(PODS);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map =
        Map::from_map_data(data).with_context(|| format!("{} is not a map", path.display()))?;
    let map = HashMap::try_from(map)
        .with_context(|| format!("{} is not a hash of pod endpoints", path.display()))?;
    Ok(Some(map))
}

/// Writes `rec`'s entries into `map`.
pub fn insert(map: &mut HashMap<MapData, [u8; 4], PodEndpoint>, rec: &PodRecord) -> Result<()> {
    for (ip, ep) in rec.entries() {
        map.insert(ip, ep, 0).with_context(|| {
            format!(
                "writing {} of pod {} into {PODS} (map full?)",
                Ipv4Addr::from(ip),
                rec.container_id
            )
        })?;
    }
    Ok(())
}

/// Removes `rec`'s entries from `map`, those that are still its own (same
/// veth): an address already handed to another pod keeps that pod's entry.
pub fn remove(map: &mut HashMap<MapData, [u8; 4], PodEndpoint>, rec: &PodRecord) -> Result<()> {
    for (ip, ep) in rec.entries() {
        match map.get(&ip, 0) {
            Ok(cur) if cur.ifindex == ep.ifindex => {}
            _ => continue,
        }
        match map.remove(&ip) {
            Ok(()) => {}
            // Removed meanwhile (the agent's resync): what we wanted.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => bail!(
                "removing {} of pod {} from {PODS}: {e}",
                Ipv4Addr::from(ip),
                rec.container_id
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str, veth: &str, ifindex: u32, ips: &[&str]) -> PodRecord {
        PodRecord {
            container_id: ContainerId::try_from(id.to_string()).unwrap(),
            ifname: IfName::try_from("eth0".to_string()).unwrap(),
            netns: format!("/run/netns/{id}"),
            host_veth: IfName::try_from(veth.to_string()).unwrap(),
            host_ifindex: ifindex,
            mac: Mac::try_from("0a:58:0a:2a:00:02".to_string()).unwrap(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn ids_names_and_macs_are_checked() {
        for (id, ok) in [
            ("abc-1_2.3", true),
            ("", false),
            ("-abc", false),
            ("../etc", false),
            ("a/b", false),
        ] {
            assert_eq!(ContainerId::try_from(id.to_string()).is_ok(), ok, "{id:?}");
        }
        for (n, ok) in [
            ("veth1234", true),
            ("", false),
            ("a/b", false),
            ("..", false),
            ("sixteen-chars-xx", false),
        ] {
            assert_eq!(IfName::try_from(n.to_string()).is_ok(), ok, "{n:?}");
        }
        for (m, ok) in [
            ("0a:58:0a:2a:00:02", true),
            ("0A:58:0A:2A:00:02", true),
            ("ff:ff:ff:ff:ff:ff", false),
            ("01:00:5e:00:00:01", false),
            ("00:00:00:00:00:00", false),
            ("0a:58:0a:2a:00", false),
            ("0a:58:0a:2a:00:2", false),
            ("0a:58:0a:2a:00:zz", false),
        ] {
            assert_eq!(Mac::try_from(m.to_string()).is_ok(), ok, "{m:?}");
        }
        assert_eq!(
            Mac::try_from("0A:58:0a:2a:00:02".to_string())
                .unwrap()
                .to_string(),
            "0a:58:0a:2a:00:02"
        );
    }

    #[test]
    fn records_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::new(dir.path().join("pods"));
        assert_eq!(
            store.list().unwrap(),
            (vec![], vec![]),
            "missing dir: empty"
        );
        let a = record("a", "veth1", 7, &["10.42.0.2"]);
        let b = record("b", "veth2", 8, &["10.42.0.3", "10.42.0.4"]);
        store.write(&b).unwrap();
        store.write(&a).unwrap();
        std::fs::write(store.dir().join("junk.json"), "{").unwrap();
        let (recs, bad) = store.list().unwrap();
        assert_eq!(recs, vec![a.clone(), b.clone()]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(
            store.read(&a.container_id, &a.ifname).unwrap(),
            Some(a.clone())
        );
        store.remove(&a.container_id, &a.ifname).unwrap();
        store.remove(&a.container_id, &a.ifname).unwrap();
        assert_eq!(store.read(&a.container_id, &a.ifname).unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!left.iter().any(|n| n.ends_with(".tmp")), "{left:?}");
    }

    #[test]
    fn desired_entries_prefer_the_newer_veth() {
        let old = record("old", "veth1", 7, &["10.42.0.2"]);
        let new = record("new", "veth2", 9, &["10.42.0.2", "10.42.0.3"]);
        for recs in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let d = desired_entries(&recs);
            assert_eq!(d.len(), 2);
            assert_eq!(d[&[10, 42, 0, 2]].ifindex, 9);
            assert_eq!(d[&[10, 42, 0, 3]].mac, new.mac.0);
        }
    }
}
