//! WireGuard's cross-platform userspace API: `key=value` lines over the unix
//! socket `/var/run/wireguard/<iface>.sock` that wireguard-go serves
//! (<https://www.wireguard.com/xplatform/>).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

use super::state::{DeviceState, DeviceUpdate, PeerState};
use crate::keys::{Key, PrivateKey};

/// Where wireguard-go puts its sockets (compiled into it).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("WireGuard UAPI socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WireGuard UAPI socket {path}: no answer within {TIMEOUT:?}")]
    Timeout { path: PathBuf },
    #[error("WireGuard UAPI socket {path}: `{op}` failed with errno {errno} ({})", io::Error::from_raw_os_error(*.errno as i32))]
    Errno {
        path: PathBuf,
        op: &'static str,
        errno: i64,
    },
    #[error("WireGuard UAPI socket {path}: unexpected reply line {line:?}")]
    Protocol { path: PathBuf, line: String },
}

/// The socket path of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

/// A client of one device's UAPI socket. Each call opens a new connection.
#[derive(Debug, Clone)]
pub struct Uapi {
    path: PathBuf,
}

impl Uapi {
    pub fn new(path: PathBuf) -> Uapi {
        Uapi { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> UapiError {
        UapiError::Io {
            path: self.path.clone(),
            source,
        }
    }

    async fn connect(&self) -> Result<UnixStream, UapiError> {
        UnixStream::connect(&self.path)
            .await
            .map_err(|e| self.io(e))
    }

    /// The pid of the process serving the socket (from `SO_PEERCRED`).
    pub async fn server_pid(&self) -> Result<Option<u32>, UapiError> {
        let s = self.connect().await?;
        let cred = s.peer_cred().map_err(|e| self.io(e))?;
        Ok(cred
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0))
    }

    /// Sends `request` and reads the reply up to its terminating blank line.
    async fn exchange(&self, request: &[u8]) -> Result<Vec<String>, UapiError> {
        let run = async {
            let mut s = self.connect().await?;
            s.write_all(request).await.map_err(|e| self.io(e))?;
            let mut reader = BufReader::new(s);
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line).await.map_err(|e| self.io(e))?;
                if n == 0 {
                    return Err(self.io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the end of the reply",
                    )));
                }
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    return Ok(lines);
                }
                lines.push(line.to_owned());
            }
        };
        tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| UapiError::Timeout {
                path: self.path.clone(),
            })?
    }

    fn check_errno(&self, op: &'static str, lines: &[String]) -> Result<(), UapiError> {
        match lines.last().and_then(|l| l.strip_prefix("errno=")) {
            Some(n) => match n.parse::<i64>() {
                Ok(0) => Ok(()),
                Ok(errno) => Err(UapiError::Errno {
                    path: self.path.clone(),
                    op,
                    errno,
                }),
                Err(_) => Err(self.protocol(lines.last().unwrap())),
            },
            None => Err(self.protocol(lines.last().map(String::as_str).unwrap_or(""))),
        }
    }

    fn protocol(&self, line: &str) -> UapiError {
        UapiError::Protocol {
            path: self.path.clone(),
            line: line.to_owned(),
        }
    }

    /// `get=1`: the device's configuration and statistics.
    pub async fn get(&self) -> Result<DeviceState, UapiError> {
        let lines = Zeroizing::new(self.exchange(b"get=1\n\n").await?);
        self.check_errno("get", &lines)?;
        parse_get(&lines[..lines.len() - 1]).map_err(|l| self.protocol(&l))
    }

    /// `set=1`: applies `update` in one transaction.
    pub(crate) async fn set(&self, update: &DeviceUpdate) -> Result<(), UapiError> {
        let request = Zeroizing::new(format_set(update));
        let lines = self.exchange(request.as_bytes()).await?;
        self.check_errno("set", &lines)
    }
}

/// Parses the lines of a `get` reply (without the final `errno=`). On error,
/// returns the offending line (never one holding the private key).
pub(crate) fn parse_get(lines: &[String]) -> Result<DeviceState, String> {
    let mut dev = DeviceState::default();
    let mut peer: Option<PeerState> = None;
    let mut hs_sec: u64 = 0;
    let mut hs_nsec: u32 = 0;
    fn finish(peer: Option<PeerState>, sec: u64, nsec: u32, dev: &mut DeviceState) {
        if let Some(mut p) = peer {
            if sec != 0 || nsec != 0 {
                p.last_handshake =
                    Some(SystemTime::UNIX_EPOCH + Duration::new(sec, nsec.min(999_999_999)));
            }
            dev.peers.push(p);
        }
    }
    for line in lines {
        let (k, v) = line.split_once('=').ok_or_else(|| line.clone())?;
        let bad = || line.clone();
        match (k, peer.as_mut()) {
            ("private_key", None) => {
                let key = Key::from_hex(v).map_err(|_| "private_key=<invalid>".to_owned())?;
                if !key.is_zero() {
                    dev.private_key = Some(PrivateKey::from_bytes(key.0));
                }
            }
            ("listen_port", None) => dev.listen_port = v.parse().map_err(|_| bad())?,
            ("fwmark", None) => dev.fwmark = v.parse().map_err(|_| bad())?,
            ("public_key", _) => {
                finish(peer.take(), hs_sec, hs_nsec, &mut dev);
                (hs_sec, hs_nsec) = (0, 0);
                peer = Some(PeerState::new(Key::from_hex(v).map_err(|_| bad())?));
            }
            ("preshared_key", Some(p)) => {
                let key = Key::from_hex(v).map_err(|_| "preshared_key=<invalid>".to_owned())?;
                p.preshared_key = (!key.is_zero()).then_some(key);
            }
            ("endpoint", Some(p)) => {
                p.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| bad())?);
            }
            ("persistent_keepalive_interval", Some(p)) => {
                let n: u16 = v.parse().map_err(|_| bad())?;
                p.persistent_keepalive = (n != 0).then_some(n);
            }
            ("allowed_ip", Some(p)) => p.allowed_ips.push(v.parse().map_err(|_| bad())?),
            ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().map_err(|_| bad())?,
            ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().map_err(|_| bad())?,
            ("last_handshake_time_sec", Some(_)) => hs_sec = v.parse().map_err(|_| bad())?,
            ("last_handshake_time_nsec", Some(_)) => hs_nsec = v.parse().map_err(|_| bad())?,
            // Informational keys this crate does not use.
            ("protocol_version", _) => {}
            _ => return Err(bad()),
        }
    }
    finish(peer, hs_sec, hs_nsec, &mut dev);
    Ok(dev)
}

/// Formats a `set=1` request, terminated by its blank line. Holds the
/// private key when the update sets it: callers wipe it.
pub(crate) fn format_set(update: &DeviceUpdate) -> String {
    let mut s = String::from("set=1\n");
    if let Some(k) = &update.private_key {
        let _ = writeln!(
            s,
            "private_key={}",
            Zeroizing::new(Key(*k.secret_bytes()).to_hex()).as_str()
        );
    }
    if let Some(p) = update.listen_port {
        let _ = writeln!(s, "listen_port={p}");
    }
    for p in &update.peers {
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        if p.remove {
            s.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            s.push_str("update_only=true\n");
        }
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(s, "preshared_key={}", k.to_hex());
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(s, "persistent_keepalive_interval={k}");
        }
        if p.replace_allowed_ips {
            s.push_str("replace_allowed_ips=true\n");
        }
        for ip in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}");
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::state::PeerUpdate;
    use ipnet::IpNet;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn parses_a_wireguard_go_reply() {
        let pk = Key([7; 32]);
        let reply = format!(
            "private_key={}\nlisten_port=51820\nfwmark=3\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\n\
             endpoint=[2001:db8::1]:51821\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n\
             persistent_keepalive_interval=25\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00::/64\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\n",
            Key([1; 32]).to_hex(),
            pk.to_hex(),
            Key([9; 32]).to_hex(),
            Key([8; 32]).to_hex(),
            Key::ZERO.to_hex(),
        );
        let dev = parse_get(&lines(&reply)).unwrap();
        assert_eq!(dev.private_key, Some(PrivateKey::from_bytes([1; 32])));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.fwmark, 3);
        assert_eq!(dev.peers.len(), 2);
        let p = &dev.peers[0];
        assert_eq!(p.public_key, pk);
        assert_eq!(p.preshared_key, Some(Key([9; 32])));
        assert_eq!(p.endpoint, Some("[2001:db8::1]:51821".parse().unwrap()));
        assert_eq!(
            p.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((p.rx_bytes, p.tx_bytes), (20, 10));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.0.1.0/24".parse::<IpNet>().unwrap(),
                "fd00::/64".parse().unwrap()
            ]
        );
        let q = &dev.peers[1];
        assert_eq!(q.preshared_key, None);
        assert_eq!(q.last_handshake, None);
        assert_eq!(q.persistent_keepalive, None);
        assert!(q.allowed_ips.is_empty());
    }

    #[test]
    fn rejects_unknown_or_misplaced_keys_without_echoing_the_private_key() {
        assert_eq!(parse_get(&lines("bogus=1")), Err("bogus=1".to_owned()));
        assert_eq!(
            parse_get(&lines("endpoint=1.2.3.4:5")),
            Err("endpoint=1.2.3.4:5".to_owned())
        );
        let err = parse_get(&lines("private_key=secretsecret")).unwrap_err();
        assert!(!err.contains("secret"));
    }

    #[test]
    fn formats_minimal_set_requests() {
        let mut change = PeerUpdate::new(Key([2; 32]));
        change.update_only = true;
        change.replace_allowed_ips = true;
        change.allowed_ips = vec!["10.0.2.0/24".parse().unwrap()];
        let mut gone = PeerUpdate::new(Key([3; 32]));
        gone.remove = true;
        gone.allowed_ips = vec!["10.9.9.0/24".parse().unwrap()];
        let update = DeviceUpdate {
            private_key: None,
            listen_port: Some(51820),
            peers: vec![gone, change],
        };
        assert_eq!(
            format_set(&update),
            format!(
                "set=1\nlisten_port=51820\npublic_key={}\nremove=true\npublic_key={}\n\
                 update_only=true\nreplace_allowed_ips=true\nallowed_ip=10.0.2.0/24\n\n",
                Key([3; 32]).to_hex(),
                Key([2; 32]).to_hex()
            )
        );
    }
}
