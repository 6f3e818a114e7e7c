//! Running programs inside the test bed's namespaces, and the daemons it tracks.
//!
//! A command made by [`Namespace::cmd`] enters its namespace between `fork`
//! and `exec` (no `ip netns exec`, no shell): `setns` into the named network
//! namespace, a private mount namespace (`unshare`, `/` made a recursive
//! slave), a fresh sysfs on `/sys` (so that `/sys/class/net` shows the
//! namespace's devices, as `ip netns exec` does), then the namespace's bind
//! mounts: for a node its own bpffs on `/sys/fs/bpf` and its own directory on
//! `/run/wireguard`. The pid of the child is the program's own pid.

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use std::ffi::{CStr, CString, OsStr};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cleanup::{
    ENV_MARKER, NETNS_DIR, ProcRecord, Shared, Tracked, netns_id, proc_start, wait_if_exiting,
};

const NO_PATH: Option<&CStr> = None;

/// What a child does before `exec` to enter a namespace.
struct Enter {
    netns_path: CString,
    /// (source, target) bind mounts in the child's private mount namespace.
    binds: Vec<(CString, CString)>,
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("test bed paths have no NUL byte")
}

impl Enter {
    /// Runs in the forked child: only system calls, no allocation.
    fn enter(&self) -> std::io::Result<()> {
        let fd = open(
            self.netns_path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        setns(&fd, CloneFlags::CLONE_NEWNET)?;
        drop(fd);
        unshare(CloneFlags::CLONE_NEWNS)?;
        mount(
            NO_PATH,
            c"/",
            NO_PATH,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            NO_PATH,
        )?;
        let _ = umount2(c"/sys", MntFlags::MNT_DETACH);
        mount(
            Some(c"sysfs"),
            c"/sys",
            Some(c"sysfs"),
            MsFlags::empty(),
            NO_PATH,
        )?;
        for (src, dst) in &self.binds {
            mount(
                Some(src.as_c_str()),
                dst.as_c_str(),
                NO_PATH,
                MsFlags::MS_BIND,
                NO_PATH,
            )?;
        }
        Ok(())
    }
}

/// One network namespace of the test bed (a node, a pod, a host or a LAN),
/// with the private mounts its commands get.
#[derive(Clone)]
pub struct Namespace {
    netns: String,
    label: String,
    log_dir: PathBuf,
    enter: Arc<Enter>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("netns", &self.netns)
            .field("label", &self.label)
            .finish()
    }
}

impl Namespace {
    /// `binds` are (directory on the host, mount point) pairs.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        netns: &str,
        label: &str,
        log_dir: PathBuf,
        binds: &[(&Path, &Path)],
    ) -> Namespace {
        Namespace {
            netns: netns.to_owned(),
            label: label.to_owned(),
            log_dir,
            enter: Arc::new(Enter {
                netns_path: cstring(&Path::new(NETNS_DIR).join(netns)),
                binds: binds
                    .iter()
                    .map(|(s, d)| (cstring(s), cstring(d)))
                    .collect(),
            }),
            shared: shared.clone(),
        }
    }

    /// The test bed this namespace belongs to.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The network namespace's name (`ip netns list`, `ip -n NAME`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// What this namespace is, for messages ("node a1", "pod a1-pod0", ...).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The test bed's prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// A command running `program` inside this namespace with its private
    /// mounts, and `WEFT_TESTBED=<prefix>` in its environment. Add arguments,
    /// environment and stdio as usual; run it with `status`/`output`, or hand
    /// it to [`Namespace::spawn`] for a daemon.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(ENV_MARKER, &self.shared.prefix);
        let enter = self.enter.clone();
        // SAFETY: `Enter::enter` only makes system calls on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || enter.enter());
        }
        cmd
    }

    /// Starts a daemon from a command made by this namespace's [`cmd`](Self::cmd),
    /// tracked: it is stopped at teardown (SIGTERM, then SIGKILL). Its stdio
    /// is the command's (inherited unless set).
    pub fn spawn(&self, cmd: &mut Command) -> Result<Daemon> {
        self.spawn_inner(cmd, None)
    }

    /// Like [`spawn`](Self::spawn) with stdout and stderr appended to
    /// `<log dir>/<name>.log` (stdin from /dev/null); see [`Daemon::log`].
    pub fn spawn_logged(&self, cmd: &mut Command, name: &str) -> Result<Daemon> {
        self.spawn_inner(cmd, Some(name))
    }

    fn spawn_inner(&self, cmd: &mut Command, log_name: Option<&str>) -> Result<Daemon> {
        let what = format!("{} in {}", cmd.get_program().to_string_lossy(), self.label);
        let mut st = self.shared.lock();
        if st.closed {
            drop(st);
            wait_if_exiting();
            bail!("test bed {} has been torn down", self.shared.prefix);
        }
        // Under the lock, so that nothing is written below the test bed's
        // directory once teardown has removed it.
        let log = match log_name {
            Some(name) => {
                std::fs::create_dir_all(&self.log_dir)
                    .with_context(|| format!("creating {}", self.log_dir.display()))?;
                let path = self.log_dir.join(format!("{name}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdin(Stdio::null())
                    .stdout(file.try_clone()?)
                    .stderr(file);
                Some(path)
            }
            None => None,
        };
        let mut child = cmd.spawn().with_context(|| {
            format!("starting {what} (entering namespace {}: setns, mount namespace, /sys, bind mounts)", self.netns)
        })?;
        let pid = child.id();
        // A command that was not made by this namespace's `cmd` would run
        // elsewhere (the host!): refuse it.
        if let (Ok(m), Some(want)) = (
            std::fs::metadata(format!("/proc/{pid}/ns/net")),
            netns_id(&self.netns),
        ) && (m.dev(), m.ino()) != want
        {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what}: the command must come from `cmd()` of the same namespace ({})",
                self.netns
            );
        }
        let start = proc_start(pid).unwrap_or(0);
        st.journal.processes.push(ProcRecord {
            pid,
            start,
            what: what.clone(),
        });
        st.children.push(Tracked {
            pid,
            child,
            status: None,
        });
        self.shared.save(&st)?;
        Ok(Daemon {
            pid,
            what,
            log,
            shared: self.shared.clone(),
        })
    }

    /// Runs `sh -c script` here; its stdout, or an error with its stderr.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self
            .cmd("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "`{script}` in {} failed ({}): {}{}",
                self.label,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pings `ip` until `count` replies came back (lost ones are sent again),
    /// within a generous deadline; fails if they did not.
    pub fn ping(&self, ip: impl Into<IpAddr>, count: u32) -> Result<()> {
        let ip = ip.into();
        let count = count.max(1);
        let deadline = 10 + count / 5;
        let out = self
            .cmd("ping")
            .args([
                "-n",
                "-q",
                "-i",
                "0.2",
                "-c",
                &count.to_string(),
                "-w",
                &deadline.to_string(),
            ])
            .arg(ip.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ping")?;
        if !out.status.success() {
            bail!(
                "{} cannot ping {ip}: {}{}",
                self.label,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Succeeds if `ip` does not answer two pings (one second each): no route,
    /// filtered or dropped.
    pub fn expect_unreachable(&self, ip: impl Into<IpAddr>) -> Result<()> {
        let ip = ip.into();
        let out = self
            .cmd("ping")
            .args(["-n", "-q", "-i", "0.5", "-c", "2", "-W", "1"])
            .arg(ip.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ping")?;
        if out.status.success() {
            bail!("{} reaches {ip}, which it should not", self.label);
        }
        Ok(())
    }
}

/// A daemon started by [`Namespace::spawn`]; stopped at teardown at the latest.
#[derive(Clone)]
pub struct Daemon {
    /// The daemon's own pid (no shell in between).
    pub pid: u32,
    what: String,
    log: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("pid", &self.pid)
            .field("what", &self.what)
            .finish()
    }
}

impl Daemon {
    fn with<T>(&self, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let mut st = self.shared.lock();
        let t = st
            .children
            .iter_mut()
            .find(|t| t.pid == self.pid)
            .expect("a daemon is tracked until its cluster goes");
        f(t)
    }

    /// True while the process runs (it is reaped once it exits).
    pub fn is_running(&self) -> bool {
        self.with(|t| t.poll())
    }

    /// How it exited, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.with(|t| {
            t.poll();
            t.status
        })
    }

    /// Sends `sig` if it still runs.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.with(|t| {
            if t.poll() {
                kill(Pid::from_raw(t.pid as i32), sig)
                    .with_context(|| format!("sending {sig} to {}", self.what))?;
            }
            Ok(())
        })
    }

    /// Waits until it exits, up to `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} (pid {}) still runs after {timeout:?}",
                    self.what,
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns how it exited.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if let Ok(s) = self.wait_timeout(grace) {
            return Ok(s);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait_timeout(Duration::from_secs(30))
    }

    /// The log file, for daemons started with `spawn_logged`.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log's contents so far ("" without a log).
    pub fn read_log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
