//! Everything about removing a test bed: the journal (`owner.json`), the
//! registry of this process's live test beds, the signal and panic handlers,
//! the teardown itself and the sweeper of runs whose owner died.
//!
//! A test bed is torn down from its journal, not from the `Cluster` value:
//! every namespace, mount and daemon is written to the journal *before* it is
//! created, under the same lock that teardown takes, so that a teardown from
//! another thread (a signal) either runs before a creation step or after it,
//! never in the middle, and nothing is created after it.

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::step;

/// Where every test bed keeps its per-node directories and its journal.
pub const BASE_DIR: &str = "/run/weft-testbed";
/// Where `ip netns` keeps its named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// The environment variable set to the prefix for every command the test bed
/// starts, so that a process that left our namespaces can still be found.
pub const ENV_MARKER: &str = "WEFT_TESTBED";
/// A directory without a journal younger than this may be a run being created.
const JOURNAL_GRACE: Duration = Duration::from_secs(60);

/// What a test bed created, written to `<BASE_DIR>/<prefix>/owner.json`.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub(crate) struct Journal {
    pub prefix: String,
    pub owner_pid: u32,
    /// Start time of the owner (clock ticks since boot, /proc/PID/stat field
    /// 22), so that a reused pid is not taken for the owner.
    pub owner_start: u64,
    pub created_unix: u64,
    /// Named network namespaces (`/run/netns/<name>`), in creation order.
    pub netns: Vec<String>,
    /// Mounts in the host mount namespace (bpffs), in creation order.
    pub mounts: Vec<PathBuf>,
    /// Tracked daemons.
    pub processes: Vec<ProcRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ProcRecord {
    pub pid: u32,
    pub start: u64,
    pub what: String,
}

/// A daemon started by the test bed, a child of this process.
pub(crate) struct Tracked {
    pub pid: u32,
    pub child: Child,
    pub status: Option<ExitStatus>,
}

impl Tracked {
    /// Reaps the child if it has exited; true while it runs.
    pub fn poll(&mut self) -> bool {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
        }
        self.status.is_none()
    }
}

pub(crate) struct State {
    pub closed: bool,
    pub journal: Journal,
    pub children: Vec<Tracked>,
}

/// The part of a test bed shared by the `Cluster`, its nodes, pods and hosts,
/// and the registry that the signal handler reads.
pub(crate) struct Shared {
    pub prefix: String,
    pub root: PathBuf,
    state: Mutex<State>,
}

static LIVE: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());
static HANDLERS: OnceLock<Result<(), String>> = OnceLock::new();
/// Set once a signal is being handled: the process is about to exit with
/// 128 + the signal number.
static EXITING: AtomicBool = AtomicBool::new(false);
const SIGNAL_THREAD: &str = "testbed-signals";

/// After a signal, a thread other than the handler's that reaches the test
/// bed waits for the handler to exit the process, so that the exit status is
/// the signal's and not, say, an error about the test bed being gone.
pub(crate) fn wait_if_exiting() {
    if EXITING.load(Ordering::SeqCst) && std::thread::current().name() != Some(SIGNAL_THREAD) {
        loop {
            std::thread::park();
        }
    }
}

fn lock_live() -> MutexGuard<'static, Vec<Arc<Shared>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Claims a fresh prefix (its directory), writes the journal, registers
    /// the test bed and installs the signal handlers.
    pub fn create() -> Result<Arc<Shared>> {
        install_handlers()?;
        let (prefix, root) = allocate_prefix()?;
        let journal = Journal {
            prefix: prefix.clone(),
            owner_pid: std::process::id(),
            owner_start: proc_start(std::process::id()).unwrap_or(0),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            prefix,
            root,
            state: Mutex::new(State {
                closed: false,
                journal,
                children: Vec::new(),
            }),
        });
        lock_live().push(shared.clone());
        let saved = {
            let st = shared.lock();
            save_journal(&shared.root, &st.journal)
        };
        if let Err(e) = saved {
            let _ = shared.teardown();
            return Err(e);
        }
        Ok(shared)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one creation step under the lock: `record` notes in the journal
    /// what `action` is about to create (saved first), then `action` runs.
    /// Fails without running anything once the test bed is torn down.
    pub fn step<T>(
        &self,
        record: impl FnOnce(&mut Journal),
        action: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            wait_if_exiting();
            bail!("test bed {} has been torn down", self.prefix);
        }
        let before = st.journal.netns.len() + st.journal.mounts.len() + st.journal.processes.len();
        record(&mut st.journal);
        if st.journal.netns.len() + st.journal.mounts.len() + st.journal.processes.len() != before {
            save_journal(&self.root, &st.journal)?;
        }
        action()
    }

    /// Removes everything the test bed created; idempotent.
    pub fn teardown(&self) -> Result<()> {
        let result = {
            let mut st = self.lock();
            if st.closed {
                None
            } else {
                st.closed = true;
                step(format!("tearing down test bed {}", self.prefix));
                let journal = st.journal.clone();
                Some(teardown_journal(&journal, &mut st.children, &self.root))
            }
        };
        lock_live().retain(|s| !std::ptr::eq(s.as_ref(), self));
        wait_if_exiting();
        result.unwrap_or(Ok(()))
    }

    /// Like `teardown` but gives up if the lock stays taken (from a panic hook,
    /// where the panicking thread may hold it).
    fn teardown_from_hook(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.state.try_lock() {
                Ok(guard) => {
                    drop(guard);
                    if let Err(e) = self.teardown() {
                        eprintln!("==> tearing down test bed {}: {e:#}", self.prefix);
                    }
                    return;
                }
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    let _ = self.teardown();
                    return;
                }
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => {
                    eprintln!(
                        "==> test bed {} is busy: left for `sweep_stale`",
                        self.prefix
                    );
                    return;
                }
            }
        }
    }

    pub fn save(&self, st: &State) -> Result<()> {
        save_journal(&self.root, &st.journal)
    }
}

/// Tears down every live test bed of this process.
fn teardown_all(from_hook: bool) {
    let live: Vec<Arc<Shared>> = lock_live().clone();
    for s in live {
        if from_hook {
            s.teardown_from_hook();
        } else if let Err(e) = s.teardown() {
            eprintln!("==> tearing down test bed {}: {e:#}", s.prefix);
        }
    }
}

/// Installs, once per process, a SIGINT/SIGTERM/SIGHUP handler that tears
/// down every live test bed and exits with 128 + the signal number, and (when
/// panics abort, so that no `Drop` runs) a panic hook that does the same.
fn install_handlers() -> Result<()> {
    HANDLERS
        .get_or_init(|| {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
                .map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name(SIGNAL_THREAD.into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        EXITING.store(true, Ordering::SeqCst);
                        let name = Signal::try_from(sig)
                            .map(|s| s.as_str())
                            .unwrap_or("signal");
                        eprintln!("==> {name}: tearing down the test bed");
                        teardown_all(false);
                        std::process::exit(128 + sig);
                    }
                })
                .map_err(|e| e.to_string())?;
            if cfg!(panic = "abort") {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    previous(info);
                    teardown_all(true);
                }));
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!("installing the test bed's signal handlers: {e}"))
}

fn journal_path(root: &Path) -> PathBuf {
    root.join("owner.json")
}

fn save_journal(root: &Path, j: &Journal) -> Result<()> {
    let path = journal_path(root);
    let tmp = root.join("owner.json.tmp");
    let text = serde_json::to_string_pretty(j)?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn load_journal(root: &Path) -> Result<Journal> {
    let path = journal_path(root);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `wt` followed by four lowercase hex digits.
pub(crate) fn is_prefix(s: &str) -> bool {
    s.len() == 6
        && s.starts_with("wt")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The prefix of a namespace name created by a test bed (`wt1a2b-...`).
pub(crate) fn prefix_of(netns: &str) -> Option<&str> {
    let (p, _) = netns.split_once('-')?;
    is_prefix(p).then_some(p)
}

fn allocate_prefix() -> Result<(String, PathBuf)> {
    use std::hash::BuildHasher;
    std::fs::create_dir_all(BASE_DIR).with_context(|| format!("creating {BASE_DIR}"))?;
    let netns = list_netns();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hasher = std::collections::hash_map::RandomState::new();
    for attempt in 0..256u32 {
        let n = hasher.hash_one((std::process::id(), nanos, attempt)) & 0xffff;
        let prefix = format!("wt{n:04x}");
        if netns
            .iter()
            .any(|ns| prefix_of(ns) == Some(prefix.as_str()))
        {
            continue;
        }
        let root = Path::new(BASE_DIR).join(&prefix);
        match std::fs::create_dir(&root) {
            Ok(()) => return Ok((prefix, root)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
        }
    }
    bail!("no free test bed prefix under {BASE_DIR}: run `sweep_stale` or remove old runs")
}

/// Names of the namespaces in /run/netns.
pub(crate) fn list_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

/// Start time of a live (not zombie) process, from /proc/PID/stat.
pub(crate) fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn owner_alive(j: &Journal) -> bool {
    proc_start(j.owner_pid).is_some_and(|s| j.owner_start == 0 || s == j.owner_start)
}

/// Live processes (not zombies, not this one) inside one of the namespaces
/// whose (device, inode) is in `netns`, or carrying `WEFT_TESTBED=<prefix>`.
pub(crate) fn scan_processes(netns: &HashSet<(u64, u64)>, prefix: &str) -> Vec<u32> {
    let marker = format!("{ENV_MARKER}={prefix}");
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || proc_start(pid).is_none() {
            continue;
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            && netns.contains(&(m.dev(), m.ino()))
        {
            found.push(pid);
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// (device, inode) of a named namespace, to compare with /proc/PID/ns/net.
pub(crate) fn netns_id(name: &str) -> Option<(u64, u64)> {
    let m = std::fs::metadata(Path::new(NETNS_DIR).join(name)).ok()?;
    Some((m.dev(), m.ino()))
}

/// Mount points at or below `root` in this process's mount namespace.
pub(crate) fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(root))
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes what a journal lists, plus whatever else carries its prefix: the
/// processes in its namespaces or marked with it, the namespaces
/// (`<prefix>-*` in /run/netns), the mounts below `root`, and `root`.
pub(crate) fn teardown_journal(j: &Journal, children: &mut [Tracked], root: &Path) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut names = j.netns.clone();
    let dash = format!("{}-", j.prefix);
    for n in list_netns() {
        if n.starts_with(&dash) && !names.contains(&n) {
            names.push(n);
        }
    }

    if let Err(e) = kill_everything(j, &names, children) {
        errors.push(format!("{e:#}"));
    }

    for name in names.iter().rev() {
        let path = Path::new(NETNS_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => errors.push(format!("unmounting {}: {e}", path.display())),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", path.display())),
        }
    }

    // Deepest first; a mount that stays busy is detached lazily.
    for _round in 0..5 {
        let mut mounts = mounts_under(root);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            match umount2(&m, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    let _ = umount2(&m, MntFlags::MNT_DETACH);
                }
                Err(e) => errors.push(format!("unmounting {}: {e}", m.display())),
            }
        }
    }
    let left = mounts_under(root);
    if !left.is_empty() {
        errors.push(format!(
            "mounts left below {}: {left:?}; not removing it",
            root.display()
        ));
    } else {
        match std::fs::remove_dir_all(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", root.display())),
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        bail!("tearing down test bed {}: {}", j.prefix, errors.join("; "))
    }
}

/// SIGTERM to every process of the test bed, SIGKILL to the ones still there
/// after a grace period, until none is left (new ones are found by re-scanning).
fn kill_everything(j: &Journal, names: &[String], children: &mut [Tracked]) -> Result<()> {
    let ids: HashSet<(u64, u64)> = names.iter().filter_map(|n| netns_id(n)).collect();
    let victims = |children: &mut [Tracked]| -> Vec<u32> {
        let mut v = scan_processes(&ids, &j.prefix);
        for r in &j.processes {
            if proc_start(r.pid) == Some(r.start) && !v.contains(&r.pid) {
                v.push(r.pid);
            }
        }
        for t in children.iter_mut() {
            if t.poll() && !v.contains(&t.pid) {
                v.push(t.pid);
            }
        }
        v
    };
    let signal_all = |pids: &[u32], sig: Signal| {
        for &pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    };

    let first = victims(children);
    if first.is_empty() {
        return Ok(());
    }
    signal_all(&first, Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(2);
    while Instant::now() < grace {
        if victims(children).is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = victims(children);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {left:?} survived SIGKILL");
        }
        signal_all(&left, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the leftovers of test beds whose owner process is gone (killed
/// with -9, or a crashed machine's /run): processes, namespaces, mounts and
/// directories. Test beds of live processes (this one included) are left
/// alone. Returns the prefixes it swept.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut live: HashSet<String> = lock_live().iter().map(|s| s.prefix.clone()).collect();
    let mut swept = Vec::new();
    let mut errors = Vec::new();

    if let Ok(dir) = std::fs::read_dir(BASE_DIR) {
        for entry in dir.flatten() {
            let Some(prefix) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_prefix(&prefix) || live.contains(&prefix) {
                continue;
            }
            let root = entry.path();
            let journal = match load_journal(&root) {
                Ok(j) if owner_alive(&j) => {
                    live.insert(prefix);
                    continue;
                }
                Ok(j) => {
                    step(format!(
                        "sweeping stale test bed {prefix} (owner pid {} is gone)",
                        j.owner_pid
                    ));
                    j
                }
                Err(_) => {
                    let young = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_none_or(|age| age < JOURNAL_GRACE);
                    if young {
                        live.insert(prefix);
                        continue;
                    }
                    step(format!("sweeping stale test bed {prefix} (no journal)"));
                    Journal {
                        prefix: prefix.clone(),
                        ..Default::default()
                    }
                }
            };
            if let Err(e) = teardown_journal(&journal, &mut [], &root) {
                errors.push(format!("{e:#}"));
            }
            swept.push(prefix);
        }
    }

    // Namespaces whose directory is gone (a teardown that failed half-way).
    let mut orphans: Vec<String> = list_netns()
        .iter()
        .filter_map(|n| prefix_of(n).map(str::to_owned))
        .filter(|p| !live.contains(p) && !swept.contains(p))
        .collect();
    orphans.sort();
    orphans.dedup();
    for prefix in orphans {
        step(format!("sweeping stale namespaces {prefix}-*"));
        let journal = Journal {
            prefix: prefix.clone(),
            ..Default::default()
        };
        if let Err(e) = teardown_journal(&journal, &mut [], &Path::new(BASE_DIR).join(&prefix)) {
            errors.push(format!("{e:#}"));
        }
        swept.push(prefix);
    }

    if errors.is_empty() {
        Ok(swept)
    } else {
        bail!("sweeping stale test beds: {}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(is_prefix("wt01af"));
        assert!(!is_prefix("wt01aF"));
        assert!(!is_prefix("wt01a"));
        assert!(!is_prefix("xt01af"));
        assert_eq!(prefix_of("wt01af-node-a1"), Some("wt01af"));
        assert_eq!(prefix_of("wt01afx-node"), None);
        assert_eq!(prefix_of("other"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\"), r"/x\");
    }

    #[test]
    fn own_start_time() {
        assert!(proc_start(std::process::id()).is_some());
    }
}
