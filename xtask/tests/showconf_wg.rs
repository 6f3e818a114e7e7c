//! `weftctl showconf` output fed to the real `wg setconf` on a wireguard-go
//! interface in a private network namespace, and `weftctl graph` rendered by
//! GraphViz. Needs root, wireguard-go, wireguard-tools and graphviz, and a
//! built `weftctl` (in `$WEFT_BIN_DIR`, default `<workspace>/target/debug`):
//!
//! ```text
//! cargo test -p xtask --test showconf_wg -- --ignored
//! ```
//!
//! Endpoints are loopback addresses and the interface gets no private key,
//! so nothing is ever sent.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

fn weftctl() -> PathBuf {
    let dir = std::env::var_os("WEFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug"));
    let bin = dir.join("weftctl");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p weft --bin weftctl`) or set WEFT_BIN_DIR to the directory holding it",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

fn wg_key_pair() -> (String, String) {
    let private = stdout(Command::new("wg").arg("genkey")).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey runs");
    std::io::Write::write_all(child.stdin.as_mut().expect("piped"), private.as_bytes())
        .expect("writes the key");
    let out = child.wait_with_output().expect("wg pubkey ends");
    assert!(out.status.success());
    (
        private,
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned(),
    )
}

/// One node of the generated cluster.
struct TestNode {
    name: &'static str,
    location: &'static str,
    endpoint: &'static str,
    private: &'static str,
    pod: &'static str,
    key: String,
}

/// One external peer.
struct TestPeer {
    name: &'static str,
    allowed: &'static str,
    key: String,
    psk: Option<String>,
}

/// Three locations: eu (eu-1, eu-2), us (us-1), asia (asia-1, asia-2), and two peers.
fn cluster(dir: &Path) -> (Vec<TestNode>, Vec<TestPeer>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let spec = [
        (
            "eu-1",
            "eu",
            "127.0.1.1:51820",
            "192.168.10.1/24",
            "10.2.1.0/24",
        ),
        (
            "eu-2",
            "eu",
            "127.0.1.2:51820",
            "192.168.10.2/24",
            "10.2.2.0/24",
        ),
        (
            "us-1",
            "us",
            "127.0.2.1:51820",
            "192.168.20.1/24",
            "10.2.3.0/24",
        ),
        (
            "asia-1",
            "asia",
            "127.0.3.1:51820",
            "192.168.30.1/24",
            "10.2.4.0/24",
        ),
        (
            "asia-2",
            "asia",
            "127.0.3.2:51820",
            "192.168.30.2/24",
            "10.2.5.0/24",
        ),
    ];
    fs::create_dir_all(dir.join("nodes")).unwrap();
    fs::create_dir_all(dir.join("peers")).unwrap();
    let nodes: Vec<TestNode> = spec
        .into_iter()
        .map(|(name, location, endpoint, private, pod)| {
            let key = wg_key_pair().1;
            fs::write(
                dir.join(format!("nodes/{name}.yaml")),
                format!(
                    "name: {name}\npodCIDR: {pod}\nlabels:\n  topology.kubernetes.io/region: {location}\nannotations:\n  \
                     weft.dev/key: {key}\n  weft.dev/endpoint: \"{endpoint}\"\n  weft.dev/internal-ip: {private}\n  \
                     weft.dev/last-seen: \"{now}\"\n"
                ),
            )
            .unwrap();
            TestNode { name, location, endpoint, private, pod, key }
        })
        .collect();
    let psk = stdout(Command::new("wg").arg("genpsk")).trim().to_owned();
    let peers = vec![
        TestPeer {
            name: "laptop",
            allowed: "10.5.0.1/32",
            key: wg_key_pair().1,
            psk: Some(psk),
        },
        TestPeer {
            name: "phone",
            allowed: "10.5.0.2/32",
            key: wg_key_pair().1,
            psk: None,
        },
    ];
    for p in &peers {
        let psk = p
            .psk
            .as_ref()
            .map(|k| format!("  presharedKey: {k}\n"))
            .unwrap_or_default();
        fs::write(
            dir.join(format!("peers/{}.yaml", p.name)),
            format!("name: {}\nspec:\n  allowedIPs: [{}]\n  publicKey: {}\n  persistentKeepalive: 25\n{psk}", p.name, p.allowed, p.key),
        )
        .unwrap();
    }
    (nodes, peers)
}

/// A network namespace running a wireguard-go interface; removed on drop,
/// panics included.
struct WgNamespace {
    netns: String,
    iface: String,
    child: Option<Child>,
}

impl WgNamespace {
    fn new() -> WgNamespace {
        let pid = std::process::id();
        let netns = format!("weft-scw-{pid}");
        let iface = format!("wscw{}", pid % 10000);
        // A namespace left by a killed earlier run with this pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &netns]));
        let mut ns = WgNamespace {
            netns,
            iface,
            child: None,
        };
        ns.child = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns.netns, "wireguard-go", "-f", &ns.iface])
                // wireguard-go refuses to run where the kernel module exists, unless told.
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("wireguard-go starts"),
        );
        // The UAPI socket appears once the interface is up.
        let sock = PathBuf::from(format!("/var/run/wireguard/{}.sock", ns.iface));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(status) = ns.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("wireguard-go exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "wireguard-go made no {} within 10 s",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ns
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).args(args);
        cmd
    }

    /// Replaces the interface's configuration with `conf`, then returns
    /// its peers from `wg show dump`: public key → (psk, endpoint, allowed IPs, keepalive).
    fn setconf(&self, conf: &str, scratch: &Path) -> BTreeMap<String, DumpPeer> {
        let file = scratch.join("wg.conf");
        fs::write(&file, conf).unwrap();
        run(&mut self.exec(&[
            "wg",
            "setconf",
            &self.iface,
            file.to_str().expect("UTF-8 path"),
        ]));
        // `wg showconf` reads it back too.
        let shown = stdout(&mut self.exec(&["wg", "showconf", &self.iface]));
        assert!(
            shown.contains("[Peer]") || !conf.contains("[Peer]"),
            "{shown}"
        );
        let dump = stdout(&mut self.exec(&["wg", "show", &self.iface, "dump"]));
        dump.lines()
            .skip(1) // the interface
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 8, "dump line {l:?}");
                let allowed = if f[3] == "(none)" {
                    BTreeSet::new()
                } else {
                    f[3].split(',').map(str::to_owned).collect()
                };
                (
                    f[0].to_owned(),
                    DumpPeer {
                        psk: f[1].to_owned(),
                        endpoint: f[2].to_owned(),
                        allowed,
                        keepalive: f[7].to_owned(),
                    },
                )
            })
            .collect()
    }
}

impl Drop for WgNamespace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
    }
}

#[derive(Debug)]
struct DumpPeer {
    psk: String,
    endpoint: String,
    allowed: BTreeSet<String>,
    keepalive: String,
}

fn host(cidr: &str) -> String {
    format!("{}/32", cidr.split('/').next().expect("a CIDR"))
}

/// The allowed IPs a location's peer must have, besides its WireGuard IP.
fn location_ips(nodes: &[TestNode], location: &str) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.location == location)
        .flat_map(|n| [n.pod.to_owned(), host(n.private)])
        .collect()
}

/// Checks a location's peer and returns its WireGuard IP.
fn check_location_peer(
    peers: &BTreeMap<String, DumpPeer>,
    nodes: &[TestNode],
    leader: &str,
) -> String {
    let l = nodes
        .iter()
        .find(|n| n.name == leader)
        .expect("known leader");
    let p = peers
        .get(&l.key)
        .unwrap_or_else(|| panic!("no peer for {leader} in {peers:?}"));
    assert_eq!(p.endpoint, l.endpoint, "{leader}");
    let want = location_ips(nodes, l.location);
    assert!(
        p.allowed.is_superset(&want),
        "{leader}: {:?} lacks some of {want:?}",
        p.allowed
    );
    let extra: Vec<&String> = p.allowed.difference(&want).collect();
    assert_eq!(
        extra.len(),
        1,
        "{leader}: one WireGuard IP besides, got {extra:?}"
    );
    assert!(
        extra[0].starts_with("10.4.") && extra[0].ends_with("/32"),
        "{leader}: {extra:?}"
    );
    extra[0].clone()
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn showconf_is_accepted_by_wg_setconf_and_graph_by_dot() {
    let bin = weftctl();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let (nodes, peers) = cluster(&dir);
    let weftctl = |args: &[&str]| stdout(Command::new(&bin).arg("--dir").arg(&dir).args(args));
    let ns = WgNamespace::new();

    // eu-1 leads eu (first by name): it peers with us-1, asia-1 and both peers.
    let conf = weftctl(&["showconf", "node", "eu-1", "-o", "wireguard"]);
    let got = ns.setconf(&conf, tmp.path());
    assert_eq!(got.len(), 4, "{got:?}");
    let us = check_location_peer(&got, &nodes, "us-1");
    let asia = check_location_peer(&got, &nodes, "asia-1");
    assert_ne!(us, asia);
    for p in &peers {
        let d = &got[&p.key];
        assert_eq!(d.allowed, BTreeSet::from([p.allowed.to_owned()]));
        assert_eq!(
            d.psk,
            p.psk.clone().unwrap_or_else(|| "(none)".into()),
            "{}",
            p.name
        );
        // The leader's own keepalive (none here), as Kilo.
        assert_eq!(d.keepalive, "off");
    }
    let listen = stdout(&mut ns.exec(&["wg", "show", &ns.iface, "listen-port"]));
    assert_eq!(listen.trim(), "51820");

    // The laptop's view: the three locations (with its preshared key and
    // keepalive) and the phone.
    let laptop = &peers[0];
    let conf = weftctl(&["showconf", "peer", "laptop", "-o", "wireguard"]);
    let got = ns.setconf(&conf, tmp.path());
    assert_eq!(got.len(), 4, "{got:?}");
    let eu = check_location_peer(&got, &nodes, "eu-1");
    assert_eq!(
        check_location_peer(&got, &nodes, "us-1"),
        us,
        "the same WireGuard IPs from every view"
    );
    assert_eq!(check_location_peer(&got, &nodes, "asia-1"), asia);
    assert!(![&us, &asia].contains(&&eu));
    for leader in ["eu-1", "us-1", "asia-1"] {
        let key = &nodes.iter().find(|n| n.name == leader).unwrap().key;
        assert_eq!(&got[key].psk, laptop.psk.as_ref().unwrap());
        assert_eq!(got[key].keepalive, "25");
    }
    assert_eq!(got[&peers[1].key].psk, "(none)");

    // As a peer of another interface, with extra allowed IPs.
    let conf = weftctl(&[
        "showconf",
        "node",
        "asia-1",
        "--as-peer",
        "--allowed-ips",
        "10.9.0.0/16",
    ]);
    let got = ns.setconf(&conf, tmp.path());
    let p = &got[&nodes[3].key];
    assert!(
        p.allowed.contains("10.9.0.0/16") && p.allowed.is_superset(&location_ips(&nodes, "asia"))
    );

    // The graph renders.
    let dot = weftctl(&["graph"]);
    let svg = tmp.path().join("mesh.svg");
    let dot_file = tmp.path().join("mesh.dot");
    fs::write(&dot_file, &dot).unwrap();
    run(Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_file)
        .arg("-o")
        .arg(&svg));
    let svg = fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("laptop"), "{svg}");
    // Five nodes and two peers, in three locations and the peers' cluster.
    assert_eq!(svg.matches("class=\"node\"").count(), 7, "{svg}");
    assert_eq!(svg.matches("class=\"cluster\"").count(), 4, "{svg}");
}

#[test]
#[ignore = "needs the built weftctl; run by cargo xtask test"]
fn weftctl_errors_are_one_line_and_fail() {
    let bin = weftctl();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    cluster(&dir);
    let cases: &[(&[&str], &str)] = &[
        (&["showconf", "node", "nope"], "no node named \"nope\""),
        (&["showconf", "peer", "nope"], "no peer named \"nope\""),
        (
            &["showconf", "node", "eu-1", "--allowed-ips", "10.9.0.0/16"],
            "only valid with --as-peer",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(&bin)
            .arg("--dir")
            .arg(&dir)
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("weftctl: error: ") && err.contains(want),
            "{args:?}: {err:?}"
        );
    }
    // A non-leader, as kgctl: a note on stderr, nothing on stdout, success.
    for extra in [&[][..], &["--as-peer", "-o", "yaml"]] {
        let out = Command::new(&bin)
            .arg("--dir")
            .arg(&dir)
            .args(["showconf", "node", "eu-2"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err:?}");
        assert!(
            err.starts_with("weftctl: node \"eu-2\" is not a leader node") && err.contains("eu-1"),
            "{err:?}"
        );
    }
    // No ready node: a failure, as kgctl's.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    for args in [["showconf", "node", "eu-1"], ["showconf", "peer", "laptop"]] {
        let out = Command::new(&bin)
            .arg("--dir")
            .arg(&empty)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?}");
        assert!(
            err.starts_with("weftctl: error: no ready node in "),
            "{err:?}"
        );
    }
    // A directory that is not there.
    let out = Command::new(&bin)
        .args(["--dir", "/nonexistent/weft", "graph"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("/nonexistent/weft"), "{err:?}");
}
