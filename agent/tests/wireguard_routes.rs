//! End-to-end tests of the WireGuard and routes reconcilers in network
//! namespaces: real wireguard-go devices joined by a veth, real routes.
//!
//! Run as root: `cargo test -p weft --test wireguard_routes -- --ignored --test-threads=1`
//!
//! Each test makes its own namespaces and interface names (with the pid), and
//! a guard removes them, and kills any wireguard-go the test left, even when
//! it panics. The reconcilers run on a tokio runtime whose threads were
//! created inside the node's namespace (rtnetlink sockets and spawned
//! wireguard-go processes belong to the namespace of the thread creating
//! them).

use std::fs;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::runtime::Runtime;
use weft::keys::{Key, KeyPair};
use weft::routes::{
    DesiredRoute, LinkRef, MAIN_TABLE, RTPROT_WEFT, RouteSummary, RouteVia, Routes,
};
use weft::wireguard::{
    DesiredPeer, Implementation, Mode, Options, PeerStats, PeerSummary, WgError, WireGuard,
};

const PORT: u16 = 51820;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weft=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn run_cmd(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
fn sh(args: &[&str]) -> String {
    let out = run_cmd(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Namespaces and interface names of one test; everything is removed on drop.
struct Bed {
    tag: String,
    namespaces: Vec<String>,
    interfaces: Vec<String>,
}

impl Bed {
    fn new(test: char) -> Bed {
        init_tracing();
        Bed {
            tag: format!("w{}{test}", std::process::id() % 100_000),
            namespaces: Vec::new(),
            interfaces: Vec::new(),
        }
    }

    fn ns(&mut self, node: char) -> String {
        let name = format!("{}{node}", self.tag);
        let _ = run_cmd(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        in_ns(&name, &["ip", "link", "set", "lo", "up"]);
        name
    }

    /// A WireGuard interface name for `node`, unique on the host (the
    /// wireguard-go socket directory is shared by all namespaces).
    fn wg_name(&mut self, node: char) -> String {
        let name = format!("{}{node}", self.tag);
        self.interfaces.push(name.clone());
        name
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Kill the wireguard-go processes serving this test's interfaces
        // (found by their exact command line) and remove their files.
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
                if args.len() >= 3
                    && args[0].ends_with(b"wireguard-go")
                    && args[1] == b"-f"
                    && self.interfaces.iter().any(|i| args[2] == i.as_bytes())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for i in &self.interfaces {
            let _ = fs::remove_file(format!("/var/run/wireguard/{i}.sock"));
            let _ = fs::remove_file(format!("/var/run/wireguard/{i}.log"));
        }
        for ns in &self.namespaces {
            let _ = run_cmd(&["ip", "netns", "del", ns]);
        }
    }
}

/// A multi-threaded runtime whose threads live in network namespace `ns`.
fn ns_runtime(ns: &str) -> Runtime {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
    .join()
    .unwrap()
}

/// Runs `fut` on one of `rt`'s (namespaced) threads.
fn on<T: Send + 'static>(rt: &Runtime, fut: impl Future<Output = T> + Send + 'static) -> T {
    rt.block_on(rt.spawn(fut)).expect("task panicked")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// One node of the two-node bed: its namespace, runtime, key and device.
struct Node {
    ns: String,
    rt: Runtime,
    wg_name: String,
    keys: KeyPair,
    wg_addr: IpNet,
    underlay: IpAddr,
    wg: Option<Arc<WireGuard>>,
}

impl Node {
    fn wg(&self) -> Arc<WireGuard> {
        self.wg.clone().expect("device open")
    }

    fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.underlay, PORT)
    }

    /// Opens the device and applies interface, addresses, MTU and link state.
    fn open(&mut self) {
        let opts = Options::new(self.wg_name.clone(), Mode::Userspace);
        let wg = on(&self.rt, async move { WireGuard::open(opts).await }).expect("open device");
        assert_eq!(wg.implementation(), Implementation::Userspace);
        self.wg = Some(Arc::new(wg));
        self.configure_interface();
    }

    /// A full resync of the interface part; returns whether anything changed.
    fn configure_interface(&self) -> bool {
        let wg = self.wg();
        let key = self.keys.private_key().clone();
        let addr = self.wg_addr;
        on(&self.rt, async move {
            let a = wg.set_interface(&key, PORT).await.unwrap();
            let b = wg.set_addresses(&[addr]).await.unwrap();
            let c = wg.set_mtu(1420).await.unwrap();
            let d = wg.up().await.unwrap();
            a || !b.added.is_empty() || !b.removed.is_empty() || c || d
        })
    }

    fn apply(&self, peers: Vec<DesiredPeer>) -> PeerSummary {
        let wg = self.wg();
        on(&self.rt, async move { wg.apply_peers(&peers).await }).expect("apply peers")
    }

    fn stats(&self, key: Key) -> PeerStats {
        let wg = self.wg();
        let all = on(&self.rt, async move { wg.peer_stats().await }).expect("peer stats");
        all.into_iter()
            .find(|s| s.public_key == key)
            .unwrap_or_else(|| panic!("no peer {key}"))
    }

    fn clean_up(&mut self) {
        let wg = Arc::try_unwrap(self.wg.take().expect("device open")).expect("sole owner");
        on(&self.rt, async move { wg.clean_up().await }).expect("clean up");
    }

    /// The peer entry another node needs for this one.
    fn as_peer(&self, extra: &[&str]) -> DesiredPeer {
        let mut allowed = vec![IpNet::from(self.wg_addr.addr())];
        allowed.extend(extra.iter().map(|s| net(s)));
        DesiredPeer {
            public_key: self.keys.public_key(),
            endpoint: Some(self.endpoint()),
            allowed_ips: allowed,
            persistent_keepalive: None,
            preshared_key: None,
        }
    }
}

/// Two namespaces joined by a veth, each with a WireGuard device peered with
/// the other. Node B also has `10.202.2.1/24` on a bridge, routed to by
/// A through the tunnel.
fn two_nodes(bed: &mut Bed) -> (Node, Node) {
    let ns_a = bed.ns('a');
    let ns_b = bed.ns('b');
    let veth_a = format!("{}va", bed.tag);
    let veth_b = format!("{}vb", bed.tag);
    sh(&[
        "ip", "link", "add", &veth_a, "netns", &ns_a, "type", "veth", "peer", "name", &veth_b,
        "netns", &ns_b,
    ]);
    in_ns(
        &ns_a,
        &["ip", "addr", "add", "10.200.0.1/24", "dev", &veth_a],
    );
    in_ns(
        &ns_b,
        &["ip", "addr", "add", "10.200.0.2/24", "dev", &veth_b],
    );
    in_ns(&ns_a, &["ip", "link", "set", &veth_a, "up"]);
    in_ns(&ns_b, &["ip", "link", "set", &veth_b, "up"]);
    in_ns(&ns_b, &["ip", "link", "add", "pods", "type", "bridge"]);
    in_ns(
        &ns_b,
        &["ip", "addr", "add", "10.202.2.1/24", "dev", "pods"],
    );
    in_ns(&ns_b, &["ip", "link", "set", "pods", "up"]);
    let node = |bed: &mut Bed, ns: String, id: char, n: u8| Node {
        rt: ns_runtime(&ns),
        ns,
        wg_name: bed.wg_name(id),
        keys: KeyPair::generate(),
        wg_addr: net(&format!("10.201.0.{n}/24")),
        underlay: format!("10.200.0.{n}").parse().unwrap(),
        wg: None,
    };
    let mut a = node(bed, ns_a, 'A', 1);
    let mut b = node(bed, ns_b, 'B', 2);
    a.open();
    b.open();
    let s = a.apply(vec![b.as_peer(&["10.202.2.0/24"])]);
    assert_eq!(
        s,
        PeerSummary {
            added: 1,
            ..Default::default()
        }
    );
    let s = b.apply(vec![a.as_peer(&[])]);
    assert_eq!(
        s,
        PeerSummary {
            added: 1,
            ..Default::default()
        }
    );
    (a, b)
}

/// Pings `dst` from `ns` until one answer (or panics after `within`).
fn wait_ping(ns: &str, dst: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let out = run_cmd(&[
            "ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", dst,
        ]);
        if out.status.success() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "no answer from {dst} in {ns} within {within:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A ping of `count` packets every 10 ms, running in the background.
fn start_flood(ns: &str, dst: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ping")
}

/// Waits for the ping and returns (transmitted, received).
fn finish_flood(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

fn assert_not_reset(before: &PeerStats, after: &PeerStats) {
    assert!(
        before.last_handshake.is_some(),
        "no handshake before: {before:?}"
    );
    assert_eq!(
        after.last_handshake, before.last_handshake,
        "the peer's session was reset (new handshake)"
    );
    assert!(
        after.rx_bytes > before.rx_bytes && after.tx_bytes > before.tx_bytes,
        "the peer's counters were reset: before {before:?}, after {after:?}"
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn tunnel_works_and_reapplying_the_same_config_touches_nothing() {
    let mut bed = Bed::new('t');
    let (mut a, mut b) = two_nodes(&mut bed);

    // Across the tunnel, to B's WireGuard IP and, through a route the routes
    // reconciler puts on A's WireGuard device, to B's pod network.
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));
    let routes = {
        let wg = a.wg_name.clone();
        on(&a.rt, async move {
            let r = Routes::new(MAIN_TABLE, RTPROT_WEFT).unwrap();
            let s = r
                .reconcile(&[DesiredRoute {
                    dst: net("10.202.2.0/24"),
                    via: RouteVia::Device(LinkRef::Name(wg)),
                    src: Some("10.201.0.1".parse().unwrap()),
                    metric: None,
                    mtu: None,
                }])
                .await
                .unwrap();
            assert_eq!(counts(&s), (1, 0, 0, 0), "{s:?}");
            r
        })
    };
    wait_ping(&a.ns, "10.202.2.1", Duration::from_secs(5));

    let b_key = b.keys.public_key();
    let before = a.stats(b_key);
    let flood = start_flood(&a.ns, "10.201.0.2", 300);
    std::thread::sleep(Duration::from_millis(200));
    let desired = vec![b.as_peer(&["10.202.2.0/24"])];
    for _ in 0..10 {
        assert!(
            !a.configure_interface(),
            "an identical interface config changed something"
        );
        let s = a.apply(desired.clone());
        assert_eq!(
            s,
            PeerSummary {
                unchanged: 1,
                ..Default::default()
            }
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let (sent, received) = finish_flood(flood);
    assert_eq!(
        (sent, received),
        (300, 300),
        "packets lost during re-applies"
    );
    let after = a.stats(b_key);
    assert_not_reset(&before, &after);
    let dev = on(&a.rt, {
        let wg = a.wg();
        async move { wg.device().await }
    })
    .unwrap();
    assert_eq!(dev.listen_port, PORT);
    assert_eq!(dev.private_key.as_ref(), Some(a.keys.private_key()));
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(
        dev.peers[0].allowed_ips,
        vec![net("10.201.0.2/32"), net("10.202.2.0/24")]
    );

    // Control: removing and re-adding the peer does reset it, so the checks
    // above would have seen a re-add.
    assert_eq!(
        a.apply(vec![]),
        PeerSummary {
            removed: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        a.apply(desired),
        PeerSummary {
            added: 1,
            ..Default::default()
        }
    );
    let readded = a.stats(b_key);
    assert!(
        readded.rx_bytes < after.rx_bytes && readded.last_handshake.is_none(),
        "{readded:?}"
    );

    // Clean-up leaves no route, interface, socket or process.
    let pid = a.wg().wireguard_go_pid().expect("wireguard-go runs");
    let n = on(&a.rt, async move { routes.clean_up().await }).unwrap();
    assert_eq!(n, 1);
    a.clean_up();
    b.clean_up();
    assert_eq!(
        in_ns(
            &a.ns,
            &["ip", "route", "show", "table", "all", "proto", "87"]
        ),
        ""
    );
    assert!(
        !run_cmd(&[
            "ip", "netns", "exec", &a.ns, "ip", "link", "show", &a.wg_name
        ])
        .status
        .success()
    );
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{}.sock", a.wg_name)).exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "wireguard-go {pid} still runs"
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn changing_one_peer_changes_only_that_peer() {
    let mut bed = Bed::new('c');
    let (mut a, mut b) = two_nodes(&mut bed);
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));

    // A second peer on A, never reachable.
    let other = KeyPair::generate().public_key();
    let mut other_peer = DesiredPeer {
        public_key: other,
        endpoint: None,
        allowed_ips: vec![net("10.203.0.0/24")],
        persistent_keepalive: Some(25),
        preshared_key: None,
    };
    let b_peer = b.as_peer(&["10.202.2.0/24"]);
    let s = a.apply(vec![b_peer.clone(), other_peer.clone()]);
    assert_eq!(
        s,
        PeerSummary {
            added: 1,
            unchanged: 1,
            ..Default::default()
        }
    );
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(5));

    let b_key = b.keys.public_key();
    let before = a.stats(b_key);
    let flood = start_flood(&a.ns, "10.201.0.2", 150);
    std::thread::sleep(Duration::from_millis(200));
    other_peer.allowed_ips.push(net("10.203.1.0/24"));
    let s = a.apply(vec![b_peer.clone(), other_peer.clone()]);
    assert_eq!(
        s,
        PeerSummary {
            changed: 1,
            unchanged: 1,
            ..Default::default()
        }
    );
    // B's endpoint left to WireGuard (None) is not a change either.
    let mut b_roaming = b_peer.clone();
    b_roaming.endpoint = None;
    let s = a.apply(vec![b_roaming, other_peer.clone()]);
    assert_eq!(
        s,
        PeerSummary {
            unchanged: 2,
            ..Default::default()
        }
    );
    let (sent, received) = finish_flood(flood);
    assert_eq!((sent, received), (150, 150));
    assert_not_reset(&before, &a.stats(b_key));

    let dev = on(&a.rt, {
        let wg = a.wg();
        async move { wg.device().await }
    })
    .unwrap();
    let o = dev.peers.iter().find(|p| p.public_key == other).unwrap();
    assert_eq!(
        o.allowed_ips,
        vec![net("10.203.0.0/24"), net("10.203.1.0/24")]
    );
    assert_eq!(o.persistent_keepalive, Some(25));
    let bp = dev.peers.iter().find(|p| p.public_key == b_key).unwrap();
    assert_eq!(bp.endpoint, Some(b.endpoint()));

    a.clean_up();
    b.clean_up();
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_killed_wireguard_go_is_restarted_with_its_configuration() {
    let mut bed = Bed::new('k');
    let (mut a, mut b) = two_nodes(&mut bed);
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));

    let wg = a.wg();
    let mut restarts = wg.restarts();
    let old_pid = wg.wireguard_go_pid().expect("wireguard-go runs");
    let old_index = on(&a.rt, {
        let wg = wg.clone();
        async move { wg.ifindex().await }
    })
    .unwrap();
    unsafe { libc::kill(old_pid as i32, libc::SIGKILL) };
    on(&a.rt, async move {
        tokio::time::timeout(Duration::from_secs(20), restarts.changed())
            .await
            .expect("no restart within 20 s")
            .unwrap();
    });
    let new_pid = wg.wireguard_go_pid().expect("wireguard-go runs again");
    assert_ne!(new_pid, old_pid);

    let (dev, index) = on(&a.rt, {
        let wg = wg.clone();
        async move { (wg.device().await.unwrap(), wg.ifindex().await.unwrap()) }
    });
    assert_ne!(index, old_index, "a new TUN device was expected");
    assert_eq!(dev.private_key.as_ref(), Some(a.keys.private_key()));
    assert_eq!(dev.listen_port, PORT);
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(dev.peers[0].public_key, b.keys.public_key());
    assert_eq!(
        dev.peers[0].allowed_ips,
        vec![net("10.201.0.2/32"), net("10.202.2.0/24")]
    );
    let link = in_ns(&a.ns, &["ip", "-o", "addr", "show", "dev", &a.wg_name]);
    assert!(link.contains("10.201.0.1/24"), "{link}");
    let link = in_ns(&a.ns, &["ip", "-o", "link", "show", "dev", &a.wg_name]);
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
    // And a full resync finds nothing left to do.
    assert!(!a.configure_interface());
    assert_eq!(a.apply(vec![b.as_peer(&["10.202.2.0/24"])]).unchanged, 1);
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));
    drop(wg);
    a.clean_up();
    b.clean_up();
    assert!(!std::path::Path::new(&format!("/proc/{new_pid}")).exists());
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_restarted_agent_adopts_the_running_wireguard_go() {
    let mut bed = Bed::new('r');
    let (mut a, mut b) = two_nodes(&mut bed);
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));
    let b_key = b.keys.public_key();
    let before = a.stats(b_key);
    let pid = a.wg().wireguard_go_pid().unwrap();

    let flood = start_flood(&a.ns, "10.201.0.2", 200);
    std::thread::sleep(Duration::from_millis(200));
    // The agent dies without clean-up: its runtime and handle go away.
    drop(a.wg.take());
    drop(std::mem::replace(&mut a.rt, ns_runtime(&a.ns)));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "wireguard-go died with the agent"
    );
    // A new agent adopts it and finds nothing to change.
    let opts = Options::new(a.wg_name.clone(), Mode::Auto);
    let wg = on(&a.rt, async move { WireGuard::open(opts).await }).unwrap();
    assert!(wg.adopted());
    assert_eq!(wg.implementation(), Implementation::Userspace);
    assert_eq!(wg.wireguard_go_pid(), Some(pid));
    a.wg = Some(Arc::new(wg));
    assert!(!a.configure_interface());
    let s = a.apply(vec![b.as_peer(&["10.202.2.0/24"])]);
    assert_eq!(
        s,
        PeerSummary {
            unchanged: 1,
            ..Default::default()
        }
    );
    let (sent, received) = finish_flood(flood);
    assert_eq!((sent, received), (200, 200));
    assert_not_reset(&before, &a.stats(b_key));

    // The adopted process is supervised too.
    let mut restarts = a.wg().restarts();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    on(&a.rt, async move {
        tokio::time::timeout(Duration::from_secs(20), restarts.changed())
            .await
            .expect("no restart within 20 s")
            .unwrap();
    });
    assert_ne!(a.wg().wireguard_go_pid(), Some(pid));
    wait_ping(&a.ns, "10.201.0.2", Duration::from_secs(10));
    a.clean_up();
    b.clean_up();
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn kernel_mode_fails_clearly_without_the_module_and_auto_falls_back() {
    let mut bed = Bed::new('m');
    let ns = bed.ns('a');
    let rt = ns_runtime(&ns);
    let probe = run_cmd(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "ip",
        "link",
        "add",
        "probe0",
        "type",
        "wireguard",
    ]);
    let has_module = probe.status.success();
    let name = bed.wg_name('K');
    let opts = Options::new(name.clone(), Mode::Kernel);
    let r = on(&rt, async move { WireGuard::open(opts).await });
    if has_module {
        let wg = r.expect("kernel WireGuard");
        assert_eq!(wg.implementation(), Implementation::Kernel);
        on(&rt, async move { wg.clean_up().await }).unwrap();
        return;
    }
    match r {
        Err(e @ WgError::KernelUnavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("--wireguard auto or userspace"), "{msg}");
        }
        other => panic!("expected KernelUnavailable, got {other:?}"),
    }
    assert!(
        !run_cmd(&["ip", "netns", "exec", &ns, "ip", "link", "show", &name])
            .status
            .success()
    );
    let opts = Options::new(name.clone(), Mode::Auto);
    let wg = on(&rt, async move { WireGuard::open(opts).await }).expect("auto falls back");
    assert_eq!(wg.implementation(), Implementation::Userspace);
    assert!(!wg.adopted());
    on(&rt, async move { wg.clean_up().await }).unwrap();
    assert!(
        !run_cmd(&["ip", "netns", "exec", &ns, "ip", "link", "show", &name])
            .status
            .success()
    );
}

/// Records `ip monitor route` events of protocol 87 in `ns` while `f` runs.
fn monitor_routes<T>(ns: &str, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let mut mon = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "-o", "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = f();
    std::thread::sleep(Duration::from_millis(300));
    mon.kill().unwrap();
    let out = mon.wait_with_output().unwrap();
    // Only events of Weft's routes: the kernel's own (IPv6 link-local
    // addresses appearing) are not the reconciler's doing.
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" proto 87"))
        .map(str::to_owned)
        .collect();
    (r, lines)
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn routes_reconcile_by_difference_and_clean_up_removes_only_ours() {
    let mut bed = Bed::new('o');
    let ns = bed.ns('a');
    // No dummy module here: a veth pair inside the namespace.
    in_ns(
        &ns,
        &[
            "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d0p",
        ],
    );
    in_ns(&ns, &["ip", "link", "set", "d0p", "up"]);
    in_ns(&ns, &["ip", "addr", "add", "10.210.0.1/24", "dev", "d0"]);
    in_ns(
        &ns,
        &["ip", "addr", "add", "fd00:210::1/64", "dev", "d0", "nodad"],
    );
    in_ns(&ns, &["ip", "link", "set", "d0", "up"]);
    // Somebody else's route, which must survive everything.
    in_ns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "10.220.9.0/24",
            "dev",
            "d0",
            "proto",
            "static",
        ],
    );
    let rt = ns_runtime(&ns);
    let routes = on(&rt, async { Routes::new(MAIN_TABLE, RTPROT_WEFT).unwrap() });

    let d0 = || LinkRef::Name("d0".into());
    let route = |dst: &str, via: RouteVia| DesiredRoute {
        dst: net(dst),
        via,
        src: None,
        metric: None,
        mtu: None,
    };
    let r1 = route("10.220.1.0/24", RouteVia::Device(d0()));
    let r2 = route(
        "10.220.2.0/24",
        RouteVia::Gateway {
            gw: "10.210.0.2".parse().unwrap(),
            dev: d0(),
            onlink: false,
        },
    );
    let r3 = route("fd00:220::/64", RouteVia::Device(d0()));
    let mut r4 = route(
        "10.220.4.0/24",
        RouteVia::Gateway {
            gw: "10.230.0.9".parse().unwrap(),
            dev: d0(),
            onlink: true,
        },
    );
    r4.src = Some("10.210.0.1".parse().unwrap());
    r4.mtu = Some(1400);
    let reconcile = |desired: Vec<DesiredRoute>| {
        let routes = routes.clone();
        on(&rt, async move { routes.reconcile(&desired).await }).expect("reconcile")
    };

    let s = reconcile(vec![r1.clone(), r2.clone(), r3.clone(), r4.clone()]);
    assert_eq!(counts(&s), (4, 0, 0, 0), "{s:?}");
    let listed = in_ns(&ns, &["ip", "route", "show", "proto", "87"]);
    assert!(
        listed.contains("10.220.1.0/24 dev d0 scope link"),
        "{listed}"
    );
    assert!(
        listed.contains("10.220.2.0/24 via 10.210.0.2 dev d0"),
        "{listed}"
    );
    assert!(
        listed.contains("10.220.4.0/24 via 10.230.0.9 dev d0 src 10.210.0.1 onlink mtu 1400"),
        "{listed}"
    );
    let listed6 = in_ns(&ns, &["ip", "-6", "route", "show", "proto", "87"]);
    assert!(listed6.contains("fd00:220::/64 dev d0"), "{listed6}");

    // The same desired routes again: not one netlink route event.
    let (s, events) = monitor_routes(&ns, || {
        reconcile(vec![r1.clone(), r2.clone(), r3.clone(), r4.clone()])
    });
    assert_eq!(counts(&s), (0, 0, 0, 4), "{s:?}");
    assert!(
        events.is_empty(),
        "an unchanged reconcile touched routes: {events:?}"
    );

    // Drop r1, move r2 to another gateway, add r5: only those change.
    let mut r2b = r2.clone();
    r2b.via = RouteVia::Gateway {
        gw: "10.210.0.3".parse().unwrap(),
        dev: d0(),
        onlink: false,
    };
    let r5 = route("10.220.5.0/24", RouteVia::Device(d0()));
    let now = vec![r2b, r3, r4, r5];
    let (s, events) = monitor_routes(&ns, || reconcile(now.clone()));
    assert_eq!(counts(&s), (1, 1, 1, 2), "{s:?}");
    for e in &events {
        assert!(
            ["10.220.1.0/24", "10.220.2.0/24", "10.220.5.0/24"]
                .iter()
                .any(|d| e.contains(d)),
            "unexpected route event {e}"
        );
    }
    for d in ["10.220.1.0/24", "10.220.2.0/24", "10.220.5.0/24"] {
        assert!(
            events.iter().any(|e| e.contains(d)),
            "no event for {d}: {events:?}"
        );
    }
    let listed = in_ns(&ns, &["ip", "route", "show", "proto", "87"]);
    assert!(!listed.contains("10.220.1.0/24"), "{listed}");
    assert!(
        listed.contains("10.220.2.0/24 via 10.210.0.3 dev d0"),
        "{listed}"
    );

    // A route of someone else in the way is reported, not overwritten, and
    // the other routes are reconciled all the same.
    let mut with_clash = now.clone();
    with_clash.push(route("10.220.9.0/24", RouteVia::Device(d0())));
    let r6 = route("10.220.6.0/24", RouteVia::Device(d0()));
    with_clash.push(r6.clone());
    let s = reconcile(with_clash);
    assert_eq!(
        (s.added, s.replaced, s.removed, s.unchanged),
        (1, 0, 0, 4),
        "{s:?}"
    );
    assert_eq!(s.failed.len(), 1, "{s:?}");
    assert!(
        s.failed[0]
            .to_string()
            .contains("another owner (protocol 4)"),
        "{}",
        s.failed[0]
    );
    let listed = in_ns(&ns, &["ip", "route", "show", "proto", "87"]);
    assert!(
        listed.contains("10.220.6.0/24"),
        "the later route: {listed}"
    );
    let mut now = now;
    now.push(r6);

    let n = on(&rt, {
        let routes = routes.clone();
        async move { routes.clean_up().await }
    })
    .unwrap();
    assert_eq!(n, now.len());

    // `--mtu auto`: the default route's interface MTU minus 80.
    let auto = || on(&rt, async { weft::wireguard::auto_mtu().await });
    assert!(auto().is_err(), "no default route yet");
    in_ns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.210.0.254",
            "dev",
            "d0",
        ],
    );
    assert_eq!(auto().unwrap(), 1420);
    in_ns(&ns, &["ip", "link", "set", "d0", "mtu", "9000"]);
    assert_eq!(auto().unwrap(), 8920);
    assert_eq!(
        in_ns(&ns, &["ip", "route", "show", "table", "all", "proto", "87"]),
        ""
    );
    assert!(in_ns(&ns, &["ip", "route", "show", "proto", "static"]).contains("10.220.9.0/24"));
}

/// (added, replaced, removed, unchanged), failing on any failed route.
fn counts(s: &RouteSummary) -> (usize, usize, usize, usize) {
    assert!(s.failed.is_empty(), "failed routes: {:?}", s.failed);
    (s.added, s.replaced, s.removed, s.unchanged)
}
