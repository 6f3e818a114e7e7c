//! The wireguard-go process: spawning it, adopting one left running by a
//! previous agent, waiting for it to exit and stopping it.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use super::uapi::Uapi;

/// How long wireguard-go gets to create its TUN and socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("wireguard-go for {name} {how}; its output ({log}):\n{tail}")]
    Start {
        name: String,
        how: String,
        log: PathBuf,
        tail: String,
    },
    #[error("opening wireguard-go's log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watching adopted wireguard-go (pid {pid}): {source}")]
    Adopt {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// A running wireguard-go.
#[derive(Debug)]
pub enum Process {
    /// Started by this agent.
    Child { child: Child, pid: u32 },
    /// Left by a previous agent, watched through a pidfd.
    Adopted { pid: u32, pidfd: AsyncFd<OwnedFd> },
}

impl Process {
    pub fn pid(&self) -> u32 {
        match self {
            Process::Child { pid, .. } | Process::Adopted { pid, .. } => *pid,
        }
    }

    /// Watches an existing process through a pidfd (no pid reuse races).
    pub fn adopt(pid: u32) -> Result<Process, ProcessError> {
        let err = |source| ProcessError::Adopt { pid, source };
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd stays open as long as the AsyncFd owns it.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| err(e.into_parts().1))?;
        Ok(Process::Adopted { pid, pidfd })
    }

    /// Waits for the process to exit; describes how.
    pub async fn exited(&mut self) -> String {
        match self {
            Process::Child { child, .. } => match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("could not be waited for ({e})"),
            },
            Process::Adopted { pidfd, .. } => {
                // A pidfd becomes readable when its process exits.
                match pidfd.readable().await {
                    Ok(mut guard) => {
                        guard.retain_ready();
                        "exited".to_owned()
                    }
                    Err(e) => format!("could not be watched ({e})"),
                }
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        match self {
            // The child is not reaped before `wait` returns, so its pid
            // cannot have been reused.
            Process::Child { pid, .. } => unsafe {
                libc::kill(*pid as libc::pid_t, sig);
            },
            Process::Adopted { pidfd, .. } => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.get_ref().as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
        }
    }

    /// SIGTERM (wireguard-go then removes its socket and TUN), SIGKILL after
    /// `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            tracing::warn!(pid = self.pid(), "wireguard-go ignored SIGTERM; killing it");
            self.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(grace, self.exited()).await;
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("exited ({status})"),
    }
}

/// The last lines of wireguard-go's log, for error messages.
pub fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(15);
            lines[start..].join("\n")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// Starts `wireguard-go -f <name>` in its own process group (so that a
/// Ctrl-C to the agent's group does not reach it, and it survives an agent
/// killed without clean-up), with output to `log` (not a pipe: Go dies of
/// SIGPIPE writing to stdout once the agent is gone). Returns once its UAPI
/// socket answers.
pub async fn spawn(
    binary: &Path,
    name: &str,
    log: &Path,
    uapi: &Uapi,
) -> Result<Process, ProcessError> {
    if let Some(dir) = log.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let log_err = |source| ProcessError::Log {
        path: log.to_owned(),
        source,
    };
    let out = fs::File::create(log).map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let mut child = Command::new(binary)
        .arg("-f")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ProcessError::Start {
                name: name.to_owned(),
                how: describe(status),
                log: log.to_owned(),
                tail: log_tail(log),
            });
        }
        if uapi.get().await.is_ok() {
            tracing::info!(interface = name, pid, "wireguard-go started");
            return Ok(Process::Child { child, pid });
        }
        if start.elapsed() > START_TIMEOUT {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ProcessError::Start {
                name: name.to_owned(),
                how: format!(
                    "did not answer on {} within {START_TIMEOUT:?}",
                    uapi.path().display()
                ),
                log: log.to_owned(),
                tail: log_tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
