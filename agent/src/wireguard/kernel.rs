//! Kernel WireGuard configured over generic netlink (the `wireguard` family),
//! with the same [`DeviceState`] / [`DeviceUpdate`] as the userspace API.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use super::state::{DeviceState, DeviceUpdate, PeerState, PeerUpdate};
use crate::keys::{Key, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("opening a generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("WireGuard generic netlink {op} on {name}: {detail}")]
    Request {
        op: &'static str,
        name: String,
        detail: String,
    },
}

/// A generic netlink connection to the kernel's WireGuard for one device.
#[derive(Clone)]
pub struct KernelWg {
    name: String,
    handle: GenetlinkHandle,
}

impl std::fmt::Debug for KernelWg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelWg")
            .field("name", &self.name)
            .finish()
    }
}

impl KernelWg {
    /// Opens the connection; its event loop runs as a tokio task.
    pub fn new(name: &str) -> Result<KernelWg, KernelError> {
        let (conn, handle, _) = genetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(KernelWg {
            name: name.to_owned(),
            handle,
        })
    }

    fn err(&self, op: &'static str, detail: impl ToString) -> KernelError {
        KernelError::Request {
            op,
            name: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    pub async fn get(&self) -> Result<DeviceState, KernelError> {
        let msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.name.clone())],
        });
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(nl).await.map_err(|e| self.err("get", e))?;
        let mut parts = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.map_err(|e| self.err("get", e))?.payload {
                NetlinkPayload::InnerMessage(m) => parts.push(m.payload),
                NetlinkPayload::Error(e) => return Err(self.err("get", e.to_io())),
                _ => {}
            }
        }
        Ok(device_from_messages(parts))
    }

    pub(crate) async fn set(&self, update: &DeviceUpdate) -> Result<(), KernelError> {
        for msg in messages_for_update(&self.name, update) {
            let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
            nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let mut handle = self.handle.clone();
            let mut replies = handle.request(nl).await.map_err(|e| self.err("set", e))?;
            while let Some(reply) = replies.next().await {
                if let NetlinkPayload::Error(e) = reply.map_err(|e| self.err("set", e))?.payload {
                    return Err(self.err("set", e.to_io()));
                }
            }
        }
        Ok(())
    }
}

/// Merges a dump (the kernel splits big devices over several messages, a
/// peer continuing in the next one under the same public key).
pub(crate) fn device_from_messages(parts: Vec<WireguardMessage>) -> DeviceState {
    let mut dev = DeviceState::default();
    for part in parts {
        for attr in part.attributes {
            match attr {
                WireguardAttribute::PrivateKey(k) if k != [0; 32] => {
                    dev.private_key = Some(PrivateKey::from_bytes(k));
                }
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::Fwmark(m) => dev.fwmark = m,
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        merge_peer(&mut dev.peers, p);
                    }
                }
                _ => {}
            }
        }
    }
    dev
}

fn merge_peer(peers: &mut Vec<PeerState>, p: WireguardPeer) {
    let Some(key) = p.0.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(Key(*k)),
        _ => None,
    }) else {
        return;
    };
    if peers.last().is_none_or(|last| last.public_key != key) {
        peers.push(PeerState::new(key));
    }
    let peer = peers.last_mut().expect("just pushed");
    for a in p.0 {
        match a {
            WireguardPeerAttribute::PresharedKey(k) => {
                peer.preshared_key = (k != [0; 32]).then_some(Key(k));
            }
            WireguardPeerAttribute::Endpoint(ep) => peer.endpoint = Some(ep),
            WireguardPeerAttribute::PersistentKeepalive(k) => {
                peer.persistent_keepalive = (k != 0).then_some(k);
            }
            WireguardPeerAttribute::LastHandshake(ts) if ts.seconds > 0 || ts.nano_seconds > 0 => {
                peer.last_handshake = Some(
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            ts.seconds.max(0) as u64,
                            ts.nano_seconds.clamp(0, 999_999_999) as u32,
                        ),
                );
            }
            WireguardPeerAttribute::RxBytes(n) => peer.rx_bytes = n,
            WireguardPeerAttribute::TxBytes(n) => peer.tx_bytes = n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    if let Some(net) = allowed_ip_net(&ip) {
                        peer.allowed_ips.push(net);
                    }
                }
            }
            _ => {}
        }
    }
}

fn allowed_ip_net(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let addr = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
        _ => None,
    })?;
    let cidr = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
        _ => None,
    })?;
    IpNet::new(addr, cidr).ok()
}

fn allowed_ip_attr(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

fn peer_attr(p: &PeerUpdate) -> WireguardPeer {
    let mut attrs = vec![WireguardPeerAttribute::PublicKey(p.public_key.0)];
    let mut flags = WireguardPeerFlags::empty();
    if p.remove {
        flags |= WireguardPeerFlags::RemoveMe;
    }
    if p.update_only {
        flags |= WireguardPeerFlags::UpdateOnly;
    }
    if p.replace_allowed_ips && !p.remove {
        flags |= WireguardPeerFlags::ReplaceAllowedIps;
    }
    if !flags.is_empty() {
        attrs.push(WireguardPeerAttribute::Flags(flags));
    }
    if !p.remove {
        if let Some(k) = p.preshared_key {
            attrs.push(WireguardPeerAttribute::PresharedKey(k.0));
        }
        if let Some(ep) = p.endpoint {
            attrs.push(WireguardPeerAttribute::Endpoint(ep as SocketAddr));
        }
        if let Some(k) = p.persistent_keepalive {
            attrs.push(WireguardPeerAttribute::PersistentKeepalive(k));
        }
        if p.replace_allowed_ips || !p.allowed_ips.is_empty() {
            attrs.push(WireguardPeerAttribute::AllowedIps(
                p.allowed_ips.iter().map(allowed_ip_attr).collect(),
            ));
        }
    }
    WireguardPeer(attrs)
}

/// One `SET_DEVICE` message per peer (plus one for the interface fields),
/// which keeps every message far below the netlink size limits.
pub(crate) fn messages_for_update(name: &str, update: &DeviceUpdate) -> Vec<WireguardMessage> {
    let base = || vec![WireguardAttribute::IfName(name.to_owned())];
    let mut out = Vec::new();
    let mut first = base();
    if let Some(k) = &update.private_key {
        first.push(WireguardAttribute::PrivateKey(*k.secret_bytes()));
    }
    if let Some(p) = update.listen_port {
        first.push(WireguardAttribute::ListenPort(p));
    }
    if first.len() > 1 {
        out.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: first,
        });
    }
    for p in &update.peers {
        let mut attrs = base();
        attrs.push(WireguardAttribute::Peers(vec![peer_attr(p)]));
        out.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: attrs,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;

    #[test]
    fn updates_round_trip_through_the_wire_format() {
        let mut changed = PeerUpdate::new(Key([2; 32]));
        changed.update_only = true;
        changed.replace_allowed_ips = true;
        changed.allowed_ips = vec!["10.0.2.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()];
        changed.endpoint = Some("192.0.2.2:51820".parse().unwrap());
        let mut removed = PeerUpdate::new(Key([3; 32]));
        removed.remove = true;
        let update = DeviceUpdate {
            private_key: Some(PrivateKey::from_bytes([1; 32])),
            listen_port: Some(51820),
            peers: vec![removed, changed],
        };
        let msgs = messages_for_update("wg0", &update);
        assert_eq!(msgs.len(), 3);
        // Emit and parse back each message: what the kernel would receive.
        let parsed: Vec<WireguardMessage> = msgs
            .iter()
            .map(|m| {
                let mut buf = vec![0; m.buffer_len()];
                m.emit(&mut buf);
                let header = GenlHeader { cmd: 1, version: 1 };
                WireguardMessage::parse_with_param(&buf[..], header).unwrap()
            })
            .collect();
        assert_eq!(parsed, msgs);
        let dev = device_from_messages(parsed);
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.private_key, Some(PrivateKey::from_bytes([1; 32])));
        assert_eq!(dev.peers.len(), 2);
        assert_eq!(dev.peers[1].allowed_ips, update.peers[1].allowed_ips);
        assert_eq!(dev.peers[1].endpoint, update.peers[1].endpoint);
        let flags: Vec<_> = msgs[1..]
            .iter()
            .map(|m| match &m.attributes[1] {
                WireguardAttribute::Peers(p) => p[0]
                    .0
                    .iter()
                    .find_map(|a| match a {
                        WireguardPeerAttribute::Flags(f) => Some(*f),
                        _ => None,
                    })
                    .unwrap(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                WireguardPeerFlags::RemoveMe,
                WireguardPeerFlags::UpdateOnly | WireguardPeerFlags::ReplaceAllowedIps
            ]
        );
    }

    #[test]
    fn a_peer_split_over_two_dump_messages_is_merged() {
        let part = |ips: &[&str]| WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([5; 32]),
                WireguardPeerAttribute::AllowedIps(
                    ips.iter()
                        .map(|s| allowed_ip_attr(&s.parse().unwrap()))
                        .collect(),
                ),
            ])])],
        };
        let dev = device_from_messages(vec![part(&["10.0.0.0/24"]), part(&["10.0.1.0/24"])]);
        assert_eq!(dev.peers.len(), 1);
        assert_eq!(dev.peers[0].allowed_ips.len(), 2);
    }
}
