//! `weft-cni`, Weft's chained CNI plugin: it makes each pod's identity
//! (IPv4 → host veth, MAC) known to the datapath from what the CNI
//! assigned, so that `weft_pod_ingress` can drop whatever a pod sends from
//! an address that is not its own.
//!
//! # Why a chained plugin rather than rtnetlink watches
//!
//! Pod identity used to be learned from packets, so one forged packet or
//! gratuitous ARP could claim a neighbour's address. It must come from
//! whoever assigned it. Two ways to get that without trusting packets:
//!
//! - rtnetlink link/address watches in the agent. But the host side of a
//!   pod veth carries no pod address: the agent would have to enter every
//!   pod's network namespace to read its addresses, which it can only find
//!   through the runtime, and it races the pod (the pod runs before the
//!   agent has seen its address, and an address the pod adds to itself
//!   with `CAP_NET_ADMIN` would look just as CNI-assigned). With the agent
//!   down (a rolling update) new pods get no identity at all.
//! - A chained plugin, listed after `bridge` + `host-local` as `portmap` is.
//!   The runtime hands it the IPAM result (`prevResult`: the host veth, the
//!   pod's MAC, its addresses) synchronously at ADD, before the pod starts,
//!   and calls DEL when the pod goes. It writes `WEFT_PODS` itself, so a new
//!   pod is protected and reachable at once and a deleted pod's entry is
//!   gone at once, with or without an agent running; and it leaves a record
//!   ([`super::pods`]) from which the agent rebuilds the map at start-up and
//!   checks it on every resync.
//!
//! The plugin is chosen; the agent still watches the record directory
//! (new veths get their program at once) and removes records whose veth is
//! gone (a runtime that crashed before DEL). A plugin is also where pod
//! devices will be created directly later (netkit pairs on kernels ≥ 6.7):
//! [`PodInterface`] is what the rest of the plugin needs from whichever
//! source made the device — today [`PodInterface::from_prev_result`], a
//! netkit mode would fill it from the pair it creates — and ADD/DEL/CHECK
//! work on it alone.
//!
//! # Protocol
//!
//! CNI 0.3.0-1.0.0: `CNI_COMMAND` ADD, DEL, CHECK, VERSION; the network
//! configuration with `prevResult` on stdin; ADD prints `prevResult` back
//! as its result (it adds nothing to it); DEL succeeds when things are
//! already gone; errors are the spec's error JSON on stdout, exit code 1.

use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::pods::{self, ContainerId, IfName, Mac, PodRecord, PodStore};

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The spec's error codes that the plugin returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Io = 5,
    Decoding = 6,
    InvalidConfig = 7,
}

/// A CNI error, printed as `{"cniVersion", "code", "msg", "details"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn io(msg: impl Into<String>, e: anyhow::Error) -> CniError {
        CniError {
            code: ErrorCode::Io,
            msg: msg.into(),
            details: format!("{e:#}"),
        }
    }

    /// The error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.msg, self.details)
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// What the runtime passes in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Env {
    /// ADD, DEL or CHECK of one pod interface.
    Pod {
        command: Command,
        container_id: ContainerId,
        ifname: IfName,
        /// Required for ADD and CHECK; DEL may come without it.
        netns: Option<String>,
    },
    Version,
}

impl Env {
    /// Reads `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_NETNS` through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let invalid = |m: String| CniError::new(ErrorCode::InvalidEnvironment, m);
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => return Ok(Env::Version),
            Some(other) => return Err(invalid(format!("unknown CNI_COMMAND {other:?}"))),
            None => return Err(invalid("CNI_COMMAND is not set".into())),
        };
        let container_id = var("CNI_CONTAINERID")
            .ok_or_else(|| invalid("CNI_CONTAINERID is not set".into()))
            .and_then(|s| {
                ContainerId::try_from(s).map_err(|e| invalid(format!("CNI_CONTAINERID: {e}")))
            })?;
        let ifname = var("CNI_IFNAME")
            .ok_or_else(|| invalid("CNI_IFNAME is not set".into()))
            .and_then(|s| IfName::try_from(s).map_err(|e| invalid(format!("CNI_IFNAME: {e}"))))?;
        let netns = var("CNI_NETNS").filter(|s| !s.is_empty());
        if netns.is_none() && command != Command::Del {
            return Err(invalid(format!(
                "CNI_NETNS is not set (needed by {command:?} of {container_id})"
            )));
        }
        Ok(Env::Pod {
            command,
            container_id,
            ifname,
            netns,
        })
    }
}

/// This plugin's entry of the conflist, as the runtime passes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    /// The pod bridge: an interface of `prevResult` that is not the pod's veth.
    pub bridge: String,
    /// Where the agent pins `WEFT_PODS` (its `--bpf-pin-dir`).
    pub bpf_pin_dir: PathBuf,
    /// Where the pod records go (`<agent --state-dir>/pods`).
    pub pod_state_dir: PathBuf,
    /// The result of the plugins before this one (ADD, CHECK; optional on DEL).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

/// The parts of a CNI result (0.3.0-1.0.0) the plugin reads.
#[derive(Clone, Debug, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// Set (the netns path) for interfaces inside the pod.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, `10.42.0.2/24`.
    pub address: String,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// What the plugin needs to know of a pod interface, whatever made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub host_veth: IfName,
    pub mac: Mac,
    pub ips: Vec<Ipv4Addr>,
}

impl PodInterface {
    /// The pod interface `ifname` as the bridge plugin reported it: its MAC
    /// and IPv4 addresses, and the host veth — the one interface outside
    /// the sandbox that is not the bridge.
    pub fn from_prev_result(
        prev: &PrevResult,
        ifname: &IfName,
        bridge: &str,
    ) -> Result<PodInterface, CniError> {
        let cfg = |m: String| CniError::new(ErrorCode::InvalidConfig, m);
        let in_sandbox = |i: &Interface| i.sandbox.as_deref().is_some_and(|s| !s.is_empty());
        let (index, pod_if) = prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| in_sandbox(i) && i.name == ifname.as_str())
            .ok_or_else(|| {
                cfg(format!(
                    "prevResult has no interface {ifname} inside the pod: weft-cni must be chained after the plugin that creates it (bridge)"
                ))
            })?;
        let mac = pod_if
            .mac
            .clone()
            .ok_or_else(|| cfg(format!("prevResult: interface {ifname} has no mac")))
            .and_then(|m| {
                Mac::try_from(m).map_err(|e| cfg(format!("prevResult: interface {ifname}: {e}")))
            })?;
        let hosts: Vec<&Interface> = prev
            .interfaces
            .iter()
            .filter(|i| !in_sandbox(i) && i.name != bridge)
            .collect();
        let host = match hosts.as_slice() {
            [one] => one,
            [] => {
                return Err(cfg(format!(
                    "prevResult has no host-side veth for {ifname} (interfaces outside the pod other than bridge {bridge:?})"
                )));
            }
            many => {
                return Err(cfg(format!(
                    "prevResult has several host-side interfaces besides bridge {bridge:?} ({}): cannot tell which is {ifname}'s veth",
                    many.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let host_veth = IfName::try_from(host.name.clone())
            .map_err(|e| cfg(format!("prevResult: host veth: {e}")))?;
        let mut ips = Vec::new();
        for ip in &prev.ips {
            if ip.interface.is_some_and(|i| i != index) {
                continue;
            }
            let net: ipnet::IpNet = ip
                .address
                .parse()
                .map_err(|e| cfg(format!("prevResult: ips: address {:?}: {e}", ip.address)))?;
            // IPv6 is not forwarded by the datapath: nothing to record.
            if let ipnet::IpNet::V4(v4) = net {
                ips.push(v4.addr());
            }
        }
        if ips.is_empty() {
            return Err(cfg(format!(
                "prevResult has no IPv4 address for {ifname}: the IPAM plugin must assign one"
            )));
        }
        Ok(PodInterface {
            host_veth,
            mac,
            ips,
        })
    }
}

/// The version answer.
pub fn version_json() -> String {
    serde_json::json!({ "cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS })
        .to_string()
}

/// The cniVersion of `stdin` if it has one (for error replies), else 1.0.0.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".into())
}

/// Runs one command. `ifindex` resolves an interface name in the host
/// namespace. Returns what goes to stdout.
pub fn run(
    stdin: &[u8],
    env: &Env,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<String, CniError> {
    let Env::Pod {
        command,
        container_id,
        ifname,
        netns,
    } = env
    else {
        return Ok(version_json());
    };
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| CniError {
        code: ErrorCode::Decoding,
        msg: "weft-cni: cannot parse the network configuration".into(),
        details: e.to_string(),
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "weft-cni speaks CNI {}, not {}",
                SUPPORTED_VERSIONS.join(", "),
                conf.cni_version
            ),
        ));
    }
    let store = PodStore::new(&conf.pod_state_dir);
    let prev = |required: bool| -> Result<Option<(serde_json::Value, PodInterface)>, CniError> {
        let Some(v) = conf.prev_result.clone() else {
            return if required {
                Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "no prevResult for {container_id}: weft-cni is a chained plugin, list it after bridge"
                    ),
                ))
            } else {
                Ok(None)
            };
        };
        let parsed: PrevResult = serde_json::from_value(v.clone()).map_err(|e| CniError {
            code: ErrorCode::Decoding,
            msg: format!("weft-cni: cannot parse prevResult of {container_id}"),
            details: e.to_string(),
        })?;
        let pod = PodInterface::from_prev_result(&parsed, ifname, &conf.bridge)?;
        Ok(Some((v, pod)))
    };
    match command {
        Command::Add => {
            let (mut result, pod) = prev(true)?.expect("required");
            let host_ifindex = ifindex(pod.host_veth.as_str()).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "host veth {} of {container_id} (from prevResult) does not exist",
                        pod.host_veth
                    ),
                )
            })?;
            let rec = PodRecord {
                container_id: container_id.clone(),
                ifname: ifname.clone(),
                netns: netns.clone().unwrap_or_default(),
                host_veth: pod.host_veth,
                host_ifindex,
                mac: pod.mac,
                ips: pod.ips,
            };
            // The record first: with it the agent can always repair the map.
            store
                .write(&rec)
                .map_err(|e| CniError::io(format!("recording pod {container_id}"), e))?;
            match pods::open_pinned(&conf.bpf_pin_dir) {
                // No agent has pinned the map yet: it writes it from the record at start-up.
                Ok(None) => {}
                Ok(Some(mut map)) => pods::insert(&mut map, &rec)
                    .map_err(|e| CniError::io(format!("registering pod {container_id}"), e))?,
                Err(e) => return Err(CniError::io(format!("registering pod {container_id}"), e)),
            }
            result["cniVersion"] = conf.cni_version.clone().into();
            Ok(result.to_string())
        }
        Command::Del => {
            let rec = store.read(container_id, ifname).map_err(|e| {
                CniError::io(format!("reading the record of pod {container_id}"), e)
            })?;
            if let Some(rec) = rec {
                // A map that cannot be opened is not fatal: the agent removes
                // entries without a record on its next resync.
                match pods::open_pinned(&conf.bpf_pin_dir).and_then(|m| match m {
                    Some(mut map) => pods::remove(&mut map, &rec),
                    None => Ok(()),
                }) {
                    Ok(()) => {}
                    Err(e) => {
                        eprintln!("weft-cni: DEL {container_id}: {e:#} (the agent cleans up)")
                    }
                }
                store.remove(container_id, ifname).map_err(|e| {
                    CniError::io(format!("removing the record of pod {container_id}"), e)
                })?;
            }
            Ok(String::new())
        }
        Command::Check => {
            let (_, pod) = prev(true)?.expect("required");
            let rec = store
                .read(container_id, ifname)
                .map_err(|e| CniError::io(format!("reading the record of pod {container_id}"), e))?
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("pod {container_id} {ifname} is not recorded"),
                    )
                })?;
            if rec.host_veth != pod.host_veth || rec.mac != pod.mac || rec.ips != pod.ips {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("the record of pod {container_id} differs from prevResult"),
                ));
            }
            if ifindex(rec.host_veth.as_str()) != Some(rec.host_ifindex) {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("host veth {} of pod {container_id} is gone", rec.host_veth),
                ));
            }
            Ok(String::new())
        }
        Command::Version => Ok(version_json()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_result(version: &str) -> serde_json::Value {
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:2a:00:01"},
                {"name": "veth1a2b3c4d", "mac": "de:ad:be:ef:00:01"},
                {"name": "eth0", "mac": "0a:58:0a:2a:00:02", "sandbox": "/run/netns/p0"}
            ],
            "ips": [
                {"version": "4", "interface": 2, "address": "10.42.0.2/24", "gateway": "10.42.0.1"},
                {"interface": 2, "address": "fd00::2/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
            "dns": {}
        })
    }

    fn eth0() -> IfName {
        IfName::try_from("eth0".to_string()).unwrap()
    }

    #[test]
    fn pod_interface_from_prev_results() {
        let parse = |v: serde_json::Value| {
            let prev: PrevResult = serde_json::from_value(v).unwrap();
            PodInterface::from_prev_result(&prev, &eth0(), "cni0")
        };
        let ok = PodInterface {
            host_veth: IfName::try_from("veth1a2b3c4d".to_string()).unwrap(),
            mac: Mac([0x0a, 0x58, 0x0a, 0x2a, 0, 2]),
            ips: vec!["10.42.0.2".parse().unwrap()],
        };
        assert_eq!(
            parse(bridge_result("0.4.0")),
            Ok(ok.clone()),
            "0.4.0, IPv6 skipped"
        );
        // 1.0.0 has no "version" in ips; an ip without an interface index counts.
        let mut v = bridge_result("1.0.0");
        v["ips"] = json!([{"address": "10.42.0.2/24"}]);
        assert_eq!(parse(v), Ok(ok.clone()));
        // Errors name what is missing: (mutation, expected fragment of the message).
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| v["interfaces"][2]["name"] = json!("net1")),
                "no interface eth0",
            ),
            (
                Box::new(|v| v["interfaces"][2]["sandbox"] = json!("")),
                "no interface eth0",
            ),
            (
                Box::new(|v| {
                    v["interfaces"][2].as_object_mut().unwrap().remove("mac");
                }),
                "has no mac",
            ),
            (
                Box::new(|v| v["interfaces"][2]["mac"] = json!("ff:ff:ff:ff:ff:ff")),
                "not a unicast",
            ),
            (
                Box::new(|v| {
                    v["interfaces"].as_array_mut().unwrap().remove(1);
                }),
                "no host-side veth",
            ),
            (
                Box::new(|v| {
                    v["interfaces"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "vethother"}))
                }),
                "several host-side",
            ),
            (
                Box::new(|v| v["ips"] = json!([{"interface": 2, "address": "fd00::2/64"}])),
                "no IPv4",
            ),
            (
                Box::new(|v| v["ips"] = json!([{"interface": 1, "address": "10.42.0.9/24"}])),
                "no IPv4",
            ),
            (
                Box::new(|v| v["ips"][0]["address"] = json!("10.42.0.300/24")),
                "address",
            ),
        ];
        for (i, (mutate, want)) in cases.iter().enumerate() {
            let mut v = bridge_result("0.4.0");
            mutate(&mut v);
            let e = parse(v).expect_err(&format!("case {i}"));
            assert_eq!(e.code, ErrorCode::InvalidConfig, "case {i}: {e}");
            assert!(e.msg.contains(want), "case {i}: {e}");
        }
    }

    fn env(command: Command) -> Env {
        Env::Pod {
            command,
            container_id: ContainerId::try_from("c0ffee".to_string()).unwrap(),
            ifname: eth0(),
            netns: Some("/run/netns/p0".into()),
        }
    }

    fn conf(dir: &std::path::Path, prev: Option<serde_json::Value>) -> Vec<u8> {
        let mut c = json!({
            "cniVersion": "0.4.0",
            "name": "weft",
            "type": "weft-cni",
            "bridge": "cni0",
            "bpfPinDir": dir.join("bpf"),
            "podStateDir": dir.join("pods"),
        });
        if let Some(p) = prev {
            c["prevResult"] = p;
        }
        serde_json::to_vec(&c).unwrap()
    }

    fn veth_index(name: &str) -> Option<u32> {
        (name == "veth1a2b3c4d").then_some(42)
    }

    #[test]
    fn add_records_and_echoes_prev_result_del_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let prev = bridge_result("0.3.1");
        let out = run(
            &conf(dir.path(), Some(prev.clone())),
            &env(Command::Add),
            &veth_index,
        )
        .unwrap();
        let mut want = prev.clone();
        want["cniVersion"] = json!("0.4.0");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            want
        );
        let store = PodStore::new(dir.path().join("pods"));
        let (recs, bad) = store.list().unwrap();
        assert!(bad.is_empty());
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].host_ifindex, recs[0].host_veth.as_str()),
            (42, "veth1a2b3c4d")
        );
        assert_eq!(recs[0].ips, vec![Ipv4Addr::new(10, 42, 0, 2)]);

        assert_eq!(
            run(
                &conf(dir.path(), Some(prev.clone())),
                &env(Command::Check),
                &veth_index
            ),
            Ok(String::new())
        );
        let gone = |_: &str| None;
        assert!(
            run(
                &conf(dir.path(), Some(prev.clone())),
                &env(Command::Check),
                &gone
            )
            .is_err()
        );

        // DEL without prevResult and without CNI_NETNS, twice.
        let del = Env::Pod {
            command: Command::Del,
            container_id: ContainerId::try_from("c0ffee".to_string()).unwrap(),
            ifname: eth0(),
            netns: None,
        };
        for _ in 0..2 {
            assert_eq!(run(&conf(dir.path(), None), &del, &gone), Ok(String::new()));
        }
        assert!(store.list().unwrap().0.is_empty());
        assert!(
            run(
                &conf(dir.path(), Some(prev)),
                &env(Command::Check),
                &veth_index
            )
            .is_err()
        );
    }

    #[test]
    fn bad_input_gives_cni_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, Env, ErrorCode, &str)> = vec![
            (b"{not json".to_vec(), env(Command::Add), ErrorCode::Decoding, "cannot parse"),
            (conf(dir.path(), None), env(Command::Add), ErrorCode::InvalidConfig, "chained plugin"),
            (
                conf(dir.path(), Some(json!({"interfaces": "x"}))),
                env(Command::Add),
                ErrorCode::Decoding,
                "prevResult",
            ),
            (
                conf(dir.path(), Some(bridge_result("0.4.0"))),
                env(Command::Add),
                ErrorCode::InvalidConfig,
                "does not exist",
            ),
            (
                serde_json::to_vec(&json!({"cniVersion": "0.2.0", "bridge": "b", "bpfPinDir": "/x", "podStateDir": "/y"})).unwrap(),
                env(Command::Del),
                ErrorCode::IncompatibleVersion,
                "0.2.0",
            ),
        ];
        let none = |_: &str| None;
        for (i, (stdin, env, code, want)) in cases.into_iter().enumerate() {
            let e = run(&stdin, &env, &none).expect_err(&format!("case {i}"));
            assert_eq!(e.code, code, "case {i}: {e}");
            assert!(e.to_string().contains(want), "case {i}: {e}");
            let j: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
            assert_eq!(j["code"], code as u32);
            assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert!(
            !dir.path().join("pods").exists(),
            "nothing recorded on error"
        );
    }

    #[test]
    fn environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            Env::from_vars(vars(&[("CNI_COMMAND", "VERSION")])),
            Ok(Env::Version)
        );
        assert_eq!(
            Env::from_vars(vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c0ffee"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/run/netns/p0"),
            ])),
            Ok(env(Command::Add))
        );
        for (pairs, want) in [
            (&[][..], "CNI_COMMAND is not set"),
            (&[("CNI_COMMAND", "GC")][..], "unknown CNI_COMMAND"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/n"),
                ][..],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "../x"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/n"),
                ][..],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                ][..],
                "CNI_NETNS",
            ),
        ] {
            let e = Env::from_vars(vars(pairs)).expect_err(want);
            assert_eq!(e.code, ErrorCode::InvalidEnvironment);
            assert!(e.msg.contains(want), "{e}");
        }
        let v: serde_json::Value = serde_json::from_str(&version_json()).unwrap();
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!("0.4.0"))
        );
    }
}
