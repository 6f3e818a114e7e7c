//! End-to-end tests of the namespace test bed. They need root, so they are
//! ignored by a plain `cargo test`; `cargo xtask test` runs them as
//! `cargo test -p xtask --test testbed -- --ignored --test-threads=1`.
//!
//! What is left behind is checked with the system's own views (`ip netns
//! list`, /proc/self/mountinfo, /proc/*/environ), not the library's. Every
//! test cleans up when an assertion fails: a `Cluster` tears down on drop, and
//! a `Hold` kills its process and sweeps on drop.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use xtask::testbed::{self, BASE_DIR, Cluster, ClusterSpec, LocationSpec};

// ---------------------------------------------------------------- observers

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    let dash = format!("{prefix}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&dash))
        .map(str::to_owned)
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// State letter of a process, None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// Live processes carrying `WEFT_TESTBED=<prefix>`, with their command lines.
fn marked_processes(prefix: &str) -> Vec<(u32, String)> {
    let marker = format!("WEFT_TESTBED={prefix}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if alive(pid) && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push((
                pid,
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .trim()
                    .to_owned(),
            ));
        }
    }
    found
}

fn prefix_dir(prefix: &str) -> PathBuf {
    Path::new(BASE_DIR).join(prefix)
}

/// Everything of `prefix` still there.
fn leftovers(prefix: &str) -> Vec<String> {
    let dir = prefix_dir(prefix);
    let mut left: Vec<String> = netns_with_prefix(prefix)
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    left.extend(mounts_under(&dir).into_iter().map(|m| format!("mount {m}")));
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left.extend(
        marked_processes(prefix)
            .into_iter()
            .map(|(p, c)| format!("process {p} `{c}`")),
    );
    left
}

fn assert_clean(prefix: &str) {
    let left = leftovers(prefix);
    assert!(left.is_empty(), "leftovers of test bed {prefix}: {left:#?}");
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starting a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ------------------------------------------------------------- test 1: shape

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn cluster_connectivity_isolation_mounts_and_teardown() {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let spec = ClusterSpec {
        locations: vec![
            LocationSpec::new("aws", ["a1", "a2"]),
            LocationSpec::new("gcp", ["g1", "g2"]),
            LocationSpec::new("home", ["h1"]),
        ],
        pods_per_node: 2,
        external_peer: true,
        ..Default::default()
    };
    let cluster = Cluster::create(&spec).expect("creating the test bed");
    let prefix = cluster.prefix.clone();
    assert_eq!(cluster.dir, prefix_dir(&prefix));

    // Shape and addresses.
    assert_eq!(cluster.nodes.len(), 5);
    assert_eq!(cluster.pods().count(), 10);
    let (a1, a2, g1, g2, h1) = (
        cluster.node("a1"),
        cluster.node("a2"),
        cluster.node("g1"),
        cluster.node("g2"),
        cluster.node("h1"),
    );
    assert_eq!(a1.private_ip.to_string(), "192.168.1.10");
    assert_eq!(a2.private_ip.to_string(), "192.168.1.11");
    assert_eq!(g1.private_ip.to_string(), "192.168.2.10");
    assert_eq!(h1.private_ip.to_string(), "192.168.3.10");
    assert_eq!(h1.public_ip.to_string(), "198.18.0.14");
    assert_eq!(g2.pod_cidr.to_string(), "10.42.3.0/24");
    assert_eq!(g2.gateway.to_string(), "10.42.3.1");
    assert_eq!(g2.pods[1].ip.to_string(), "10.42.3.3");
    assert_eq!(a1.netns, format!("{prefix}-node-a1"));
    assert_eq!(a1.pods[1].netns, format!("{prefix}-pod-a1-1"));
    let laptop = cluster.laptop.as_ref().expect("the laptop was asked for");
    let mut want: Vec<String> = ["inet", "ext", "laptop", "lan-aws", "lan-gcp", "lan-home"]
        .iter()
        .map(|s| format!("{prefix}-{s}"))
        .chain(cluster.nodes.iter().map(|n| n.netns.clone()))
        .chain(cluster.pods().map(|p| p.netns.clone()))
        .collect();
    let mut have = netns_with_prefix(&prefix);
    want.sort();
    have.sort();
    assert_eq!(have, want);

    // Pods reach their gateway and the pods of their node.
    for node in &cluster.nodes {
        for pod in &node.pods {
            pod.ping(node.gateway, 1).unwrap();
            for other in node.pods.iter().filter(|o| o.ip != pod.ip) {
                pod.ping(other.ip, 1).unwrap();
            }
        }
    }
    // Nodes of a location reach each other's private address; only them.
    for loc in &cluster.locations {
        for x in loc.nodes.iter().map(|n| cluster.node(n)) {
            for y in loc
                .nodes
                .iter()
                .map(|n| cluster.node(n))
                .filter(|y| y.name != x.name)
            {
                x.ping(y.private_ip, 1).unwrap();
            }
        }
    }
    a1.expect_unreachable(g1.private_ip).unwrap();
    g2.expect_unreachable(h1.private_ip).unwrap();
    h1.expect_unreachable(a2.private_ip).unwrap();
    cluster
        .external_host
        .expect_unreachable(a1.private_ip)
        .unwrap();
    // Every node reaches every node's public address, and so do the hosts.
    for x in &cluster.nodes {
        for y in cluster.nodes.iter().filter(|y| y.name != x.name) {
            x.ping(y.public_ip, 1).unwrap();
        }
        cluster.external_host.ping(x.public_ip, 1).unwrap();
        laptop.ping(x.public_ip, 1).unwrap();
        cluster.internet.ping(x.public_ip, 1).unwrap();
    }
    // The external host (and, before any WireGuard, the laptop) reaches no pod.
    for node in &cluster.nodes {
        cluster
            .external_host
            .expect_unreachable(node.gateway)
            .unwrap();
        cluster
            .external_host
            .expect_unreachable(node.pods[0].ip)
            .unwrap();
    }
    laptop.expect_unreachable(a1.pods[0].ip).unwrap();
    assert!(
        cluster.external_host.sh("ip route get 10.42.0.2").is_err(),
        "the external host has a route to pods"
    );

    // Inside a node command: its own devices in /sys, its own bpffs, its own /run/wireguard.
    for node in &cluster.nodes {
        assert_eq!(
            sh(node.cmd("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"])),
            "bpf_fs",
            "{}",
            node.name
        );
        let devices = sh(node.cmd("ls").arg("/sys/class/net"));
        let veths: Vec<&str> = node.pods.iter().map(|p| p.host_veth.as_str()).collect();
        for dev in ["eth0", "eth1", "cni0"].into_iter().chain(veths) {
            assert!(
                devices.split_whitespace().any(|d| d == dev),
                "{}: /sys/class/net has {devices}",
                node.name
            );
        }
        assert_eq!(
            sh(node.cmd("cat").arg("/proc/sys/net/ipv4/ip_forward")),
            "1"
        );
        assert_eq!(
            sh(node.cmd("sh").args(["-c", "echo $WEFT_TESTBED"])),
            prefix
        );
    }
    a1.sh("mkdir /sys/fs/bpf/weft-probe").unwrap();
    assert!(
        a1.bpffs_dir.join("weft-probe").is_dir(),
        "a1's bpffs is not its bpffs_dir"
    );
    a1.sh("test -d /sys/fs/bpf/weft-probe")
        .expect("a1's bpffs outlives a command");
    a2.sh("test ! -e /sys/fs/bpf/weft-probe")
        .expect("a2 sees a1's bpffs");

    a1.sh("touch /run/wireguard/a1-probe").unwrap();
    assert!(a1.run_wireguard_dir.join("a1-probe").exists());
    assert!(
        !Path::new("/run/wireguard/a1-probe").exists(),
        "a1's /run/wireguard is the host's"
    );
    a2.sh("test ! -e /run/wireguard/a1-probe")
        .expect("a2 sees a1's /run/wireguard");
    laptop
        .sh("test ! -e /run/wireguard/a1-probe && touch /run/wireguard/laptop-probe")
        .unwrap();
    let laptop_wg = laptop
        .run_wireguard_dir
        .as_ref()
        .expect("the laptop has its own /run/wireguard");
    assert!(laptop_wg.join("laptop-probe").exists());
    a1.sh("test ! -e /run/wireguard/laptop-probe").unwrap();

    // Daemons: tracked, their own pid, inside the node; a host command is refused.
    let d = a2
        .spawn_logged(
            a2.cmd("sh").args(["-c", "echo started; exec sleep 1000"]),
            "probe",
        )
        .unwrap();
    let mut daemon_ns = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // The shell execs sleep, keeping the pid.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid)).unwrap_or_default();
        if cmdline.starts_with(b"sleep\0") {
            daemon_ns = std::fs::read_link(format!("/proc/{}/ns/net", d.pid))
                .unwrap()
                .display()
                .to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        daemon_ns,
        sh(a2.cmd("readlink").arg("/proc/self/ns/net")),
        "the daemon is not a2's"
    );
    assert!(d.is_running());
    assert!(d.read_log().contains("started"), "log: {:?}", d.read_log());
    assert!(
        a2.spawn(Command::new("sleep").arg("1000")).is_err(),
        "a host command was spawned as a2's daemon"
    );
    let kept = a1.spawn(a1.cmd("sleep").arg("1000")).unwrap();
    let status = d.stop(Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    assert!(!d.is_running() && !alive(d.pid));
    assert!(kept.is_running());

    // Teardown leaves nothing.
    cluster.teardown().expect("teardown");
    assert!(!alive(kept.pid), "the daemon survived teardown");
    assert_clean(&prefix);
    cluster.teardown().expect("a second teardown is a no-op");
    drop(cluster);
    assert_clean(&prefix);
}

// ------------------------------------------------------------ test 1b: options

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn options_forwarding_off_forward_drop_and_mtu() {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let spec = ClusterSpec {
        locations: vec![LocationSpec::new("dc", ["n1"])],
        pods_per_node: 2,
        forwarding: false,
        forward_drop: true,
        public_mtu: Some(1400),
        ..Default::default()
    };
    let cluster = Cluster::create(&spec).expect("creating the test bed");
    let prefix = cluster.prefix.clone();
    assert!(cluster.laptop.is_none());
    assert_eq!(netns_with_prefix(&prefix).len(), 6); // inet, ext, lan, node, 2 pods
    let n1 = cluster.node("n1");
    assert_eq!(
        n1.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "0"
    );
    assert!(
        n1.sh("iptables -S FORWARD")
            .unwrap()
            .lines()
            .any(|l| l == "-P FORWARD DROP")
    );
    assert!(n1.sh("ip -o link show eth1").unwrap().contains("mtu 1400"));
    assert!(
        cluster
            .external_host
            .sh("ip -o link show eth0")
            .unwrap()
            .contains("mtu 1400")
    );
    n1.pods[0].ping(n1.gateway, 1).unwrap();
    n1.ping(cluster.external_host.ip, 1).unwrap();
    // bridge-nf-call-iptables=1 in new namespaces: FORWARD DROP cuts the bridge too.
    n1.pods[0].expect_unreachable(n1.pods[1].ip).unwrap();
    drop(cluster);
    assert_clean(&prefix);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_panic_tears_down() {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let spec = ClusterSpec {
        locations: vec![LocationSpec::new("dc", ["p1"])],
        ..Default::default()
    };
    let seen: Arc<Mutex<(String, Option<Child>)>> = Arc::new(Mutex::new((String::new(), None)));
    let inside = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let cluster = Cluster::create(&spec).expect("creating the test bed");
        let p1 = cluster.node("p1");
        p1.spawn(p1.cmd("sleep").arg("1000")).unwrap();
        let untracked = p1.pods[0].cmd("sleep").arg("1000").spawn().unwrap();
        *inside.lock().unwrap() = (cluster.prefix.clone(), Some(untracked));
        assert_eq!(marked_processes(&cluster.prefix).len(), 2);
        panic!("a failing assertion");
    });
    assert!(result.is_err());
    let (prefix, untracked) = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let status = untracked
        .expect("the pod's sleep was started")
        .wait()
        .unwrap();
    assert!(!status.success(), "the untracked sleep was not stopped");
    assert_clean(&prefix);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn bad_specs_are_refused_before_anything_is_made() {
    let before = std::fs::read_dir(BASE_DIR).map(|d| d.count()).unwrap_or(0);
    for spec in [
        ClusterSpec::default(),
        ClusterSpec::new(vec![
            LocationSpec::new("a", ["x"]),
            LocationSpec::new("b", ["x"]),
        ]),
        ClusterSpec::new(vec![LocationSpec::new("A", ["x"])]),
        ClusterSpec::new(vec![LocationSpec::new("a", ["x y"])]),
        ClusterSpec::new(vec![LocationSpec::new("a", Vec::<String>::new())]),
    ] {
        assert!(Cluster::create(&spec).is_err(), "{spec:?} was accepted");
    }
    assert_eq!(
        std::fs::read_dir(BASE_DIR).map(|d| d.count()).unwrap_or(0),
        before
    );
}

// ------------------------------------------------- tests 2 and 3: the hold process

/// `xtask testbed-hold`: killed and swept on drop, so that a failing test
/// leaves nothing behind.
struct Hold {
    child: Child,
    prefix: String,
    stderr: Arc<Mutex<String>>,
}

impl Hold {
    /// Starts `testbed-hold` and waits for its `READY <prefix>`.
    fn start() -> Hold {
        let (mut hold, rx) = Hold::spawn();
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) if line.starts_with("READY ") => {
                hold.prefix = line["READY ".len()..].trim().to_owned()
            }
            other => panic!(
                "testbed-hold did not get ready ({other:?}); stderr:\n{}",
                hold.stderr()
            ),
        }
        hold
    }

    /// Starts `testbed-hold`; its stdout lines come through the receiver.
    fn spawn() -> (Hold, mpsc::Receiver<String>) {
        Hold::spawn_with(&[])
    }

    fn spawn_with(env: &[(&str, &str)]) -> (Hold, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("testbed-hold")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting xtask testbed-hold");
        let stdout = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let hold = Hold {
            child,
            prefix: String::new(),
            stderr,
        };
        (hold, rx)
    }

    /// Waits until stderr contains `text`.
    fn wait_stderr(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "testbed-hold did not print {text:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signalling testbed-hold");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("waiting for testbed-hold") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "testbed-hold still runs; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Err(e) = testbed::sweep_stale() {
            eprintln!("sweeping after testbed-hold: {e:#}");
        }
    }
}

fn interrupted_hold_cleans_up(sig: Signal) {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let mut hold = Hold::start();
    let prefix = hold.prefix.clone();
    let procs = marked_processes(&prefix);
    let sleeps = procs.iter().filter(|(_, c)| c == "sleep 1000").count();
    assert_eq!(
        sleeps, 3,
        "the hold's sleeps (node, laptop, pod): {procs:?}"
    );
    assert_eq!(netns_with_prefix(&prefix).len(), 8);
    assert_eq!(mounts_under(&prefix_dir(&prefix)).len(), 2);
    if std::env::var_os("WEFT_BIN_DIR").is_some() {
        // Under `cargo xtask test` the hold runs weft on both nodes: agents,
        // their wireguard-go, WireGuard devices and pinned eBPF links.
        let agents = procs
            .iter()
            .filter(|(_, c)| c.contains("weft --dir"))
            .count();
        let wg = procs
            .iter()
            .filter(|(_, c)| c.starts_with("wireguard-go"))
            .count();
        assert_eq!(
            (agents, wg),
            (2, 2),
            "weft agents and wireguard-go in the hold: {procs:?}"
        );
        let links = prefix_dir(&prefix).join("nodes/h1/bpffs/weft/links");
        let pinned = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
        assert!(pinned >= 3, "pinned links in {}: {pinned}", links.display());
    }

    hold.signal(sig);
    let status = hold.wait_exit(Duration::from_secs(120));
    assert_eq!(
        status.code(),
        Some(128 + sig as i32),
        "exit of testbed-hold; stderr:\n{}",
        hold.stderr()
    );
    for (pid, cmd) in &procs {
        assert!(!alive(*pid), "`{cmd}` (pid {pid}) survived");
    }
    assert_clean(&prefix);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn sigterm_tears_everything_down() {
    interrupted_hold_cleans_up(Signal::SIGTERM);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn sigint_tears_everything_down() {
    interrupted_hold_cleans_up(Signal::SIGINT);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn sigterm_while_creating_leaves_nothing() {
    testbed::sweep_stale().expect("sweeping stale test beds");
    // Signalled at a different point of the creation each time; whatever
    // was made by then must go, and the exit status must be the signal's.
    for (i, stage) in [
        "creating the internet",
        "creating location",
        "creating node h2",
    ]
    .into_iter()
    .enumerate()
    {
        let (mut hold, _stdout) = Hold::spawn();
        hold.wait_stderr("creating test bed wt", Duration::from_secs(300));
        let err = hold.stderr();
        let at = err.find("creating test bed wt").unwrap() + "creating test bed ".len();
        hold.prefix = err[at..at + 6].to_owned();
        hold.wait_stderr(stage, Duration::from_secs(300));
        let sig = if i % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        hold.signal(sig);
        let status = hold.wait_exit(Duration::from_secs(120));
        assert_eq!(
            status.code(),
            Some(128 + sig as i32),
            "exit of testbed-hold; stderr:\n{}",
            hold.stderr()
        );
        assert_clean(&hold.prefix);
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_panic_in_the_binary_tears_down() {
    // The binary is built with `panic = "abort"`: no Drop, the panic hook.
    testbed::sweep_stale().expect("sweeping stale test beds");
    let (mut hold, stdout) = Hold::spawn_with(&[("WEFT_TESTBED_HOLD_PANIC", "1")]);
    let line = stdout
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("no READY ({e}); stderr:\n{}", hold.stderr()));
    hold.prefix = line
        .strip_prefix("READY ")
        .expect("READY line")
        .trim()
        .to_owned();
    let status = hold.wait_exit(Duration::from_secs(120));
    assert!(!status.success());
    assert!(
        hold.stderr().contains("panicking as asked"),
        "{}",
        hold.stderr()
    );
    assert_clean(&hold.prefix);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn sweep_stale_removes_what_a_killed_run_left() {
    testbed::sweep_stale().expect("sweeping stale test beds");
    let mut dead = Hold::start();
    let live = Hold::start();
    let (dead_prefix, live_prefix) = (dead.prefix.clone(), live.prefix.clone());
    assert_ne!(dead_prefix, live_prefix);

    dead.signal(Signal::SIGKILL);
    let status = dead.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), None, "killed by SIGKILL");
    let left = leftovers(&dead_prefix);
    // The sleeps, and under `cargo xtask test` the weft agents and their wireguard-go too.
    let procs: Vec<u32> = marked_processes(&dead_prefix)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let sleeps = marked_processes(&dead_prefix)
        .into_iter()
        .filter(|(_, c)| c == "sleep 1000")
        .count();
    assert_eq!(netns_with_prefix(&dead_prefix).len(), 8, "{left:#?}");
    assert_eq!(
        mounts_under(&prefix_dir(&dead_prefix)).len(),
        2,
        "{left:#?}"
    );
    assert!(prefix_dir(&dead_prefix).join("owner.json").exists());
    assert_eq!(sleeps, 3, "{left:#?}");

    let swept = testbed::sweep_stale().expect("sweeping");
    // (Another test run's sweep may have been first; then it must be gone all the same.)
    assert!(
        swept.contains(&dead_prefix) || leftovers(&dead_prefix).is_empty(),
        "swept {swept:?}"
    );
    assert!(!swept.contains(&live_prefix), "swept a live run: {swept:?}");
    for pid in procs {
        assert!(!alive(pid), "pid {pid} survived the sweep");
    }
    assert_clean(&dead_prefix);

    // The live run was not touched.
    assert_eq!(netns_with_prefix(&live_prefix).len(), 8);
    assert_eq!(mounts_under(&prefix_dir(&live_prefix)).len(), 2);
    let live_sleeps = marked_processes(&live_prefix)
        .into_iter()
        .filter(|(_, c)| c == "sleep 1000")
        .count();
    assert_eq!(live_sleeps, 3);
    live.signal(Signal::SIGTERM);
    let mut live = live;
    assert_eq!(live.wait_exit(Duration::from_secs(120)).code(), Some(143));
    assert_clean(&live_prefix);
}
