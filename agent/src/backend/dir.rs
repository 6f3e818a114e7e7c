//! The directory backend:
//!
//! ```text
//! DIR/nodes/<name>.yaml   {name, podCIDR, labels: {}, annotations: {}}
//! DIR/peers/<name>.yaml   {name, spec: {allowedIPs, publicKey, endpoint: {dnsOrIP: {ip|dns}, port},
//!                                       persistentKeepalive, presharedKey}}
//! DIR/settings.yaml       optional: {granularity, subnet, port, topologyLabel, encapsulate, serviceCIDRs}
//! ```
//!
//! A file that does not parse is reported (naming the file) and skipped; the
//! rest loads. Each agent rewrites only its own node file, atomically.
//!
//! Loading re-reads only the files that changed: each file's parse is kept
//! with its identity (device, inode, size, modification and change times),
//! so a cluster's check-ins cost one `stat` per file, not a YAML parse of
//! every node on every event. Atomic renames (the agents', a ConfigMap
//! volume's symlink swap) give a new inode, an edit in place a new mtime.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

use super::{AnnotationPatch, Backend, Change, Event, Freshness, Snapshot};
use crate::model::{NodeObject, PeerObject, SettingsFile};

pub const NODES_DIR: &str = "nodes";
pub const PEERS_DIR: &str = "peers";
pub const SETTINGS_FILE: &str = "settings.yaml";
const EXTENSION: &str = ".yaml";

/// The directory as a whole cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {reason}", path.display())]
    Settings { path: PathBuf, reason: String },
    #[error(
        "invalid object name {0:?}: it must be non-empty, at most 253 characters, without '/', control characters or a leading '.'"
    )]
    InvalidName(String),
    #[error("serializing node {name:?}: {reason}")]
    Serialize { name: String, reason: String },
}

/// One file skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

/// Everything the directory holds, raw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// Sorted by file name.
    pub nodes: Vec<NodeObject>,
    pub peers: Vec<PeerObject>,
    /// `None` when there is no settings file.
    pub settings: Option<SettingsFile>,
    /// Files skipped.
    pub errors: Vec<FileError>,
}

/// Whether `name` can be an object's name and so a file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
    /// The last parse of each file (shared by clones).
    cache: Arc<Mutex<Caches>>,
}

#[derive(Debug, Default)]
struct Caches {
    nodes: FileCache<NodeObject>,
    peers: FileCache<PeerObject>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Parsed files by path, with the stamp they were read at.
#[derive(Debug)]
struct FileCache<T> {
    files: HashMap<PathBuf, (Stamp, Result<T, FileError>)>,
    /// Files read and parsed so far (for tests and logs).
    reads: u64,
}

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        Self {
            files: HashMap::new(),
            reads: 0,
        }
    }
}

impl DirBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: Arc::default(),
        }
    }

    /// How many node and peer files loading has read and parsed so far
    /// (unchanged files are not read again).
    pub fn files_read(&self) -> u64 {
        let c = self.cache.lock().expect("not poisoned");
        c.nodes.reads + c.peers.reads
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join(NODES_DIR)
    }

    pub fn peers_dir(&self) -> PathBuf {
        self.root.join(PEERS_DIR)
    }

    pub fn node_path(&self, name: &str) -> PathBuf {
        self.nodes_dir().join(format!("{name}{EXTENSION}"))
    }

    pub fn peer_path(&self, name: &str) -> PathBuf {
        self.peers_dir().join(format!("{name}{EXTENSION}"))
    }

    /// Loads every node, peer and the settings. Fails only when the
    /// directory itself, a listing or the settings file is unusable.
    pub fn load(&self) -> Result<Contents, DirError> {
        let meta = fs::metadata(&self.root).map_err(|source| DirError::Io {
            path: self.root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DirError::NotADirectory(self.root.clone()));
        }
        let mut snap = Contents {
            settings: self.load_settings()?,
            ..Contents::default()
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        let Caches { nodes, peers } = &mut *cache;
        snap.nodes = load_objects(
            &self.nodes_dir(),
            &mut snap.errors,
            nodes,
            |n: &NodeObject| &n.name,
        )?;
        snap.peers = load_objects(
            &self.peers_dir(),
            &mut snap.errors,
            peers,
            |p: &PeerObject| &p.name,
        )?;
        Ok(snap)
    }

    /// The settings file, when there is one.
    pub fn load_settings(&self) -> Result<Option<SettingsFile>, DirError> {
        let path = self.root.join(SETTINGS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DirError::Io { path, source }),
        };
        // An empty file is no settings at all.
        if text.trim().is_empty() {
            return Ok(Some(SettingsFile::default()));
        }
        serde_norway::from_str(&text)
            .map(Some)
            .map_err(|e| DirError::Settings {
                path,
                reason: e.to_string(),
            })
    }

    /// One node's file, if present and valid.
    pub fn read_node(&self, name: &str) -> Result<Option<NodeObject>, FileError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let path = self.node_path(name);
        match fs::read_to_string(&path) {
            Ok(text) => parse_object(&path, &text, |n: &NodeObject| &n.name).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes `nodes/<name>.yaml` atomically (a temporary file in the same
    /// directory, then a rename), touching nothing else.
    pub fn write_node(&self, node: &NodeObject) -> Result<PathBuf, DirError> {
        if !valid_name(&node.name) {
            return Err(DirError::InvalidName(node.name.clone()));
        }
        let text = serde_norway::to_string(node).map_err(|e| DirError::Serialize {
            name: node.name.clone(),
            reason: e.to_string(),
        })?;
        let dir = self.nodes_dir();
        fs::create_dir_all(&dir).map_err(|source| DirError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = self.node_path(&node.name);
        write_atomic(&dir, &path, text.as_bytes())?;
        Ok(path)
    }

    /// One peer's file, if present and valid.
    pub fn read_peer(&self, name: &str) -> Result<Option<PeerObject>, FileError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let path = self.peer_path(name);
        match fs::read_to_string(&path) {
            Ok(text) => parse_object(&path, &text, |p: &PeerObject| &p.name).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes `peers/<name>.yaml` atomically, as [`DirBackend::write_node`]
    /// does (`weftctl connect` registering itself).
    pub fn write_peer(&self, peer: &PeerObject) -> Result<PathBuf, DirError> {
        if !valid_name(&peer.name) {
            return Err(DirError::InvalidName(peer.name.clone()));
        }
        let text = serde_norway::to_string(peer).map_err(|e| DirError::Serialize {
            name: peer.name.clone(),
            reason: e.to_string(),
        })?;
        let dir = self.peers_dir();
        fs::create_dir_all(&dir).map_err(|source| DirError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = self.peer_path(&peer.name);
        write_atomic(&dir, &path, text.as_bytes())?;
        Ok(path)
    }

    /// Removes `peers/<name>.yaml`; returns whether it was there.
    pub fn remove_peer(&self, name: &str) -> Result<bool, DirError> {
        if !valid_name(name) {
            return Err(DirError::InvalidName(name.to_owned()));
        }
        let path = self.peer_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(DirError::Io { path, source }),
        }
    }
}

/// The directory as a [`Backend`]: loads on demand and watches the
/// directory with inotify, turning each file event into a typed [`Event`].
pub struct DirWatch {
    dir: DirBackend,
    _watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::Receiver<Event>,
}

impl DirWatch {
    /// Starts watching `dir` (which must exist).
    pub fn new(dir: DirBackend) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use notify::Watcher as _;
        let (tx, events) = tokio::sync::mpsc::channel(256);
        let root = dir.root().to_path_buf();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if ev.kind.is_access() {
                return;
            }
            for path in &ev.paths {
                if let Some(e) = event_of(&root, path, &ev.kind) {
                    // A full queue already holds a change: the next snapshot sees this one too.
                    let _ = tx.try_send(e);
                }
            }
        })
        .context("starting the directory watcher")?;
        watcher
            .watch(dir.root(), notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", dir.root().display()))?;
        Ok(Self {
            dir,
            _watcher: watcher,
            events,
        })
    }
}

impl From<Contents> for Snapshot {
    fn from(c: Contents) -> Self {
        Snapshot {
            nodes: c.nodes,
            peers: c.peers,
            settings: c.settings,
            errors: c.errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The event a file event under `root` means, if any (temporary files and
/// other names are none).
fn event_of(root: &Path, path: &Path, kind: &notify::EventKind) -> Option<Event> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.iter().filter_map(|p| p.to_str());
    let first = parts.next()?;
    if first == SETTINGS_FILE {
        return Some(Event::Settings);
    }
    let file = parts.next()?;
    if file.starts_with('.') {
        return None;
    }
    let name = file.strip_suffix(EXTENSION)?.to_string();
    // A rename onto the name is an apply; only a removal or a rename away deletes.
    let change = if path.exists()
        || !matches!(
            kind,
            notify::EventKind::Remove(_)
                | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
        ) {
        Change::Applied
    } else {
        Change::Deleted
    };
    match first {
        NODES_DIR => Some(Event::Node { name, change }),
        PEERS_DIR => Some(Event::Peer { name, change }),
        _ => None,
    }
}

impl Backend for DirWatch {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.root().display())
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let c = self
            .dir
            .load()
            .map_err(|e| anyhow::anyhow!("reading the directory backend: {e}"))?;
        Ok(c.into())
    }

    async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    async fn patch_own_node(
        &self,
        name: &str,
        patch: &AnnotationPatch,
    ) -> anyhow::Result<NodeObject> {
        // Into the file as it is now: a user's edit made since the last
        // snapshot is kept, and a removed node is not brought back.
        let mut own = match self.dir.read_node(name) {
            Ok(Some(current)) => current,
            Ok(None) => anyhow::bail!(
                "{} was removed: this node is no longer part of the mesh",
                self.dir.node_path(name).display()
            ),
            Err(e) => anyhow::bail!("re-reading this node's file: {e}"),
        };
        super::apply_patch(&mut own.annotations, patch);
        if own.creation_timestamp.is_none() {
            // Stamped once, as the API server stamps a Node: a file added
            // later to claim this node's pod CIDR is younger and loses.
            own.creation_timestamp = Some(jiff::Timestamp::now().to_string());
        }
        self.dir
            .write_node(&own)
            .map_err(|e| anyhow::anyhow!("writing this node's file: {e}"))?;
        Ok(own)
    }

    fn freshness(&self) -> Freshness {
        Freshness::Fresh
    }
}

/// Temporary names start with '.' and do not end in `.yaml`, so a
/// concurrent load never reads a half-written file.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), DirError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { path, source }
    };
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable; not all filesystems allow syncing a directory.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parse_object<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    name: impl Fn(&T) -> &String,
) -> Result<T, FileError> {
    let bad = |reason: String| FileError {
        path: path.to_path_buf(),
        reason,
    };
    let obj: T = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(EXTENSION))
        .unwrap_or_default();
    if name(&obj) != stem {
        return Err(bad(format!(
            "name {:?} does not match the file name (expected {stem:?})",
            name(&obj)
        )));
    }
    Ok(obj)
}

/// Loads every `*.yaml` of a directory (absent: none), sorted by file name,
/// reading only the files whose [`Stamp`] differs from `cache`'s.
fn load_objects<T: DeserializeOwned + Clone>(
    dir: &Path,
    errors: &mut Vec<FileError>,
    cache: &mut FileCache<T>,
    name: impl Fn(&T) -> &String + Copy,
) -> Result<Vec<T>, DirError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cache.files.clear();
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(DirError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DirError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if n.starts_with('.') || !n.ends_with(EXTENSION) {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort();
    let mut files = HashMap::with_capacity(paths.len());
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        // Followed: a ConfigMap volume's files are symlinks.
        let parsed = match fs::metadata(&path) {
            Ok(m) => {
                let stamp = Stamp::of(&m);
                match cache.files.remove(&path) {
                    Some((was, parsed)) if was == stamp => Some((stamp, parsed)),
                    _ => {
                        cache.reads += 1;
                        let parsed = match fs::read_to_string(&path) {
                            Ok(text) => parse_object(&path, &text, name),
                            Err(e) => Err(FileError {
                                path: path.clone(),
                                reason: e.to_string(),
                            }),
                        };
                        Some((stamp, parsed))
                    }
                }
            }
            // Removed since the listing, or a dangling symlink.
            Err(e) => {
                errors.push(FileError {
                    path: path.clone(),
                    reason: e.to_string(),
                });
                None
            }
        };
        if let Some((stamp, parsed)) = parsed {
            match &parsed {
                Ok(o) => out.push(o.clone()),
                Err(e) => errors.push(e.clone()),
            }
            files.insert(path, (stamp, parsed));
        }
    }
    // Files gone are forgotten.
    cache.files = files;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str) -> NodeObject {
        NodeObject {
            name: name.into(),
            pod_cidr: Some("10.2.1.0/24".into()),
            labels: BTreeMap::from([("topology.kubernetes.io/region".into(), "eu".into())]),
            annotations: BTreeMap::from([("weft.dev/leader".into(), String::new())]),
            creation_timestamp: None,
        }
    }

    #[test]
    fn writes_atomically_and_loads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::new(tmp.path());
        // An empty directory loads as empty.
        assert_eq!(b.load().unwrap(), Contents::default());
        let path = b.write_node(&node("a1")).unwrap();
        assert_eq!(path, tmp.path().join("nodes/a1.yaml"));
        // Only the node file exists: no leftover temporary file.
        let names: Vec<_> = fs::read_dir(b.nodes_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a1.yaml")]);
        let snap = b.load().unwrap();
        assert_eq!(snap.nodes, vec![node("a1")]);
        assert!(snap.errors.is_empty());
        // Rewriting replaces the file.
        let mut n = node("a1");
        n.annotations
            .insert("weft.dev/last-seen".into(), "5".into());
        b.write_node(&n).unwrap();
        assert_eq!(b.read_node("a1").unwrap(), Some(n));
        assert_eq!(b.read_node("zz").unwrap(), None);
    }

    #[test]
    fn peers_are_written_read_back_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::new(tmp.path());
        let peer = PeerObject {
            name: "laptop".into(),
            spec: crate::model::PeerSpec {
                allowed_ips: vec!["10.5.0.1/32".into()],
                public_key: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".into(),
                persistent_keepalive: Some(10),
                ..Default::default()
            },
        };
        assert_eq!(b.read_peer("laptop").unwrap(), None);
        let path = b.write_peer(&peer).unwrap();
        assert_eq!(path, tmp.path().join("peers/laptop.yaml"));
        assert_eq!(b.read_peer("laptop").unwrap(), Some(peer.clone()));
        assert_eq!(b.load().unwrap().peers, vec![peer]);
        assert!(b.remove_peer("laptop").unwrap());
        assert!(!b.remove_peer("laptop").unwrap());
        assert!(b.load().unwrap().peers.is_empty());
        assert!(matches!(
            b.remove_peer("../x"),
            Err(DirError::InvalidName(_))
        ));
    }

    #[test]
    fn refuses_names_that_escape_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::new(tmp.path());
        for bad in ["", "../x", "a/b", ".hidden", "a\nb"] {
            assert!(
                matches!(b.write_node(&node(bad)), Err(DirError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn loading_again_reads_only_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::new(tmp.path());
        for n in ["a", "b", "c"] {
            b.write_node(&node(n)).unwrap();
        }
        let first = b.load().unwrap();
        assert_eq!((first.nodes.len(), b.files_read()), (3, 3));
        // Nothing changed: nothing read, the same contents.
        assert_eq!(b.load().unwrap(), first);
        assert_eq!(b.files_read(), 3);
        // One node rewritten (atomically, as agents do), one removed, one
        // edited in place into a file that does not parse, one added.
        let mut a = node("a");
        a.annotations
            .insert("weft.dev/last-seen".into(), "42".into());
        b.write_node(&a).unwrap();
        fs::remove_file(b.node_path("b")).unwrap();
        fs::write(b.node_path("c"), "name: [").unwrap();
        b.write_node(&node("d")).unwrap();
        let snap = b.load().unwrap();
        assert_eq!(b.files_read(), 6, "a, c and d read again, nothing else");
        let names: Vec<&str> = snap.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(snap.nodes[0].annotations["weft.dev/last-seen"], "42");
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(snap.errors[0].path.ends_with("nodes/c.yaml"));
        // A bad file stays reported without being read again.
        let again = b.load().unwrap();
        assert_eq!((again.errors.len(), b.files_read()), (1, 6));
    }

    #[test]
    fn reads_the_documented_format_and_reports_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("nodes")).unwrap();
        fs::create_dir_all(root.join("peers")).unwrap();
        fs::write(
            root.join("nodes/a.yaml"),
            "name: a\npodCIDR: 10.2.1.0/24\nlabels: {}\nannotations:\n  weft.dev/persistent-keepalive: 25\n  weft.dev/leader:\n",
        )
        .unwrap();
        fs::write(root.join("nodes/b.yaml"), "name: not-b\n").unwrap();
        fs::write(root.join("nodes/c.yaml"), "name: c\nbogus: 1\n").unwrap();
        fs::write(root.join("nodes/d.yaml"), ": : :\n").unwrap();
        fs::write(root.join("nodes/.e.yaml.1.tmp"), "garbage").unwrap();
        fs::write(root.join("nodes/README"), "not yaml").unwrap();
        fs::write(
            root.join("peers/laptop.yaml"),
            "name: laptop\nspec:\n  allowedIPs: [10.5.0.1/32]\n  publicKey: yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n  endpoint:\n    dnsOrIP: {ip: 192.0.2.1}\n    port: 51820\n  persistentKeepalive: 10\n",
        )
        .unwrap();
        fs::write(
            root.join("settings.yaml"),
            "granularity: full\nserviceCIDRs: [10.96.0.0/12]\n",
        )
        .unwrap();
        let snap = DirBackend::new(root).load().unwrap();
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(
            snap.nodes[0].annotations["weft.dev/persistent-keepalive"],
            "25"
        );
        assert_eq!(snap.nodes[0].annotations["weft.dev/leader"], "");
        let failed: Vec<_> = snap
            .errors
            .iter()
            .map(|e| e.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(failed, vec!["b.yaml", "c.yaml", "d.yaml"]);
        assert!(
            snap.errors[0].to_string().contains("does not match"),
            "{}",
            snap.errors[0]
        );
        assert!(
            snap.errors[1].to_string().contains("bogus"),
            "{}",
            snap.errors[1]
        );
        assert_eq!(snap.peers.len(), 1);
        let p = crate::model::Peer::parse(&snap.peers[0]).unwrap();
        assert_eq!(p.endpoint.unwrap().to_string(), "192.0.2.1:51820");
        let s = snap.settings.unwrap().parse().unwrap();
        assert_eq!(s.granularity, crate::model::Granularity::Full);
        assert_eq!(s.service_cidrs, vec!["10.96.0.0/12".parse().unwrap()]);
    }

    #[test]
    fn bad_directory_and_bad_settings_fail_whole() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            DirBackend::new(tmp.path().join("missing")).load(),
            Err(DirError::Io { .. })
        ));
        let file = tmp.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            DirBackend::new(&file).load(),
            Err(DirError::NotADirectory(_))
        ));
        fs::write(tmp.path().join("settings.yaml"), "granularity: [\n").unwrap();
        let e = DirBackend::new(tmp.path()).load().unwrap_err();
        assert!(e.to_string().contains("settings.yaml"), "{e}");
    }
}
