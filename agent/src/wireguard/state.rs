//! Plain data: the desired peers the integrator hands in, the device state
//! read back from WireGuard, and the update sent to it.

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::keys::{Key, PrivateKey};

/// A peer as the topology wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub public_key: Key,
    /// `None` leaves whatever endpoint the device has (set earlier, or
    /// learned by roaming) alone.
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; `None` or `Some(0)` means off.
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<Key>,
}

/// A peer as the device reports it (configuration and statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// `None` when off (0).
    pub persistent_keepalive: Option<u16>,
    /// `None` when unset (all zero).
    pub preshared_key: Option<Key>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `None` when the peer never completed a handshake.
    pub last_handshake: Option<SystemTime>,
}

impl PeerState {
    /// A peer as first listed by the device, before its other fields are read.
    pub fn new(public_key: Key) -> PeerState {
        PeerState {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            preshared_key: None,
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
        }
    }
}

/// The whole device as read from WireGuard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerState>,
}

/// Per-peer statistics for metrics, leader health checks and the
/// `discovered-endpoints` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: Key,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub last_handshake: Option<SystemTime>,
    /// The endpoint WireGuard currently uses (configured or learned).
    pub endpoint: Option<SocketAddr>,
}

impl From<&PeerState> for PeerStats {
    fn from(p: &PeerState) -> PeerStats {
        PeerStats {
            public_key: p.public_key,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            last_handshake: p.last_handshake,
            endpoint: p.endpoint,
        }
    }
}

/// What [`super::WireGuard::apply_peers`] did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSummary {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
}

impl PeerSummary {
    /// Whether anything was sent to the device.
    pub fn touched(&self) -> bool {
        self.added + self.removed + self.changed > 0
    }
}

/// One configuration transaction, in the terms of WireGuard's userspace API
/// (and its netlink twin). Only what is `Some`/set is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceUpdate {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerUpdate>,
}

impl DeviceUpdate {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerUpdate {
    pub public_key: Key,
    pub remove: bool,
    /// Fail rather than create the peer if it vanished meanwhile.
    pub update_only: bool,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` turns keepalive off.
    pub persistent_keepalive: Option<u16>,
    /// `Some(Key::ZERO)` clears the preshared key.
    pub preshared_key: Option<Key>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    pub fn new(public_key: Key) -> PeerUpdate {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            endpoint: None,
            persistent_keepalive: None,
            preshared_key: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}
