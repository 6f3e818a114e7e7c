//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where `cargo xtask test` built the weft binaries (`WEFT_BIN_DIR`, default target/debug).
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("WEFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    for name in ["weft", "weftctl"] {
        let p = dir.join(name);
        assert!(
            p.is_file(),
            "{} is missing: build it with `cargo build -p weft --bins` (cargo xtask test does)",
            p.display()
        );
    }
    dir
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A ping every 50 ms from a pod, whose losses are checked at the end.
pub struct Pinger {
    ping: xtask::testbed::Daemon,
    started: Instant,
}

impl Pinger {
    /// Starts pinging `dst` from `src` (after 5 pings that must answer).
    pub fn start(src: &xtask::testbed::Pod, dst: std::net::Ipv4Addr) -> Pinger {
        src.ping(dst, 5).unwrap();
        let ping = src
            .spawn_logged(
                src.cmd("ping")
                    .args(["-n", "-i", "0.05"])
                    .arg(dst.to_string()),
                "ping",
            )
            .unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        Pinger { ping, started }
    }

    /// Prints what the test does now with the ping's clock, so that a loss's
    /// icmp_seq can be matched to the step that caused it.
    pub fn mark(&self, what: &str) {
        let t = self.started.elapsed();
        eprintln!(
            "    at {:.1} s of ping (icmp_seq ~{}): {what}",
            t.as_secs_f64(),
            t.as_millis() / 50
        );
    }

    /// Stops the ping and fails unless every request before the last
    /// answered one was answered, and it ran long enough to mean something.
    pub fn assert_no_loss(self) {
        let ping = self.ping;
        assert!(ping.is_running(), "ping ended early:\n{}", ping.read_log());
        ping.signal(nix::sys::signal::Signal::SIGINT).unwrap();
        ping.wait_timeout(Duration::from_secs(10)).unwrap();
        let out = ping.read_log();
        let (seqs, sent) = ping_replies(&out);
        let last = seqs.iter().max().copied().unwrap_or(0);
        let sent = sent.expect("ping's summary");
        let lost: Vec<u32> = (1..=last).filter(|s| !seqs.contains(s)).collect();
        eprintln!(
            "    {sent} pings sent, {} answered, last answered {last}",
            seqs.len()
        );
        assert!(
            lost.is_empty(),
            "{} pings lost (icmp_seq {:?}); ping's output ends:\n{}",
            lost.len(),
            &lost[..lost.len().min(20)],
            xtask::mesh::tail(&out, 10)
        );
        // Only the requests in flight when ping was stopped may be unanswered.
        assert!(
            sent.saturating_sub(last) <= 10 && last > 100,
            "{sent} sent, last answer {last}:\n{}",
            xtask::mesh::tail(&out, 10)
        );
    }
}

/// The icmp_seq of every reply in ping's output, and how many it sent.
pub fn ping_replies(out: &str) -> (std::collections::BTreeSet<u32>, Option<u32>) {
    let seqs = out
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse().ok())
        })
        .collect();
    let sent = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok());
    (seqs, sent)
}

/// Every node's `ip rule` tables, to compare after a clean-up.
pub fn ip_rules(cluster: &xtask::testbed::Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.sh("ip rule show; ip -6 rule show").unwrap())
        .collect()
}

/// No WireGuard device, weft route, changed ip rule, pin, attached program,
/// process or socket is left in `n` (`rules_before`: its [`ip_rules`]).
pub fn assert_nothing_left(n: &xtask::testbed::Node, rules_before: &str) {
    let links = n.sh("ip -o link show").unwrap();
    assert!(!links.contains("weft0"), "{}: {links}", n.name);
    for family in ["-4", "-6"] {
        let routes = n
            .sh(&format!("ip {family} route show table all proto 87"))
            .unwrap();
        assert!(routes.trim().is_empty(), "{}: {routes}", n.name);
    }
    let rules_after = n.sh("ip rule show; ip -6 rule show").unwrap();
    assert_eq!(rules_after, rules_before, "{}: ip rules changed", n.name);
    // Masquerade turns lo forwarding on where it was off (see weft's
    // datapath); clean-up turns it off again: back to what ip_forward gave it.
    let fwd = n
        .sh("sysctl -n net.ipv4.conf.lo.forwarding net.ipv4.ip_forward")
        .unwrap();
    let fwd: Vec<&str> = fwd.split_whitespace().collect();
    assert_eq!(fwd[0], fwd[1], "{}: lo forwarding left changed", n.name);
    assert!(
        !n.bpffs_dir.join("weft").exists(),
        "{}: pins left in {}",
        n.name,
        n.bpffs_dir.display()
    );
    // Programs are global (other nodes' agents may still run theirs): look
    // at what is attached in this node's namespace. (The tc programs are
    // tcx links, which this bpftool does not list per namespace: with their
    // pins and every process gone, nothing holds them.)
    let attached = n.sh("bpftool net show").unwrap();
    assert!(
        !attached.lines().any(|l| l.contains(" id ")),
        "{}: eBPF programs still attached:\n{attached}",
        n.name
    );
    assert_eq!(
        xtask::mesh::processes_in(&n.netns).unwrap(),
        "",
        "{}: processes left in the node namespace",
        n.name
    );
    assert!(
        !n.run_wireguard_dir.join("weft0.sock").exists(),
        "{}: WireGuard socket left",
        n.name
    );
}

/// With `WEFT_DEBUG_DUMP` set: every agent's log and WireGuard state in
/// `/tmp/weft-dump-<node>.*`, for debugging.
pub fn dump(mesh: &xtask::mesh::Mesh) {
    if std::env::var_os("WEFT_DEBUG_DUMP").is_none() {
        return;
    }
    for n in &mesh.cluster.nodes {
        if let Some(d) = mesh.try_agent(&n.name) {
            let _ = std::fs::write(format!("/tmp/weft-dump-{}.log", n.name), d.read_log());
        }
        let _ = std::fs::write(
            format!("/tmp/weft-dump-{}.wg", n.name),
            n.sh("wg show all dump; ip route; ip addr")
                .unwrap_or_default(),
        );
    }
}

/// When dropped during a panic: prints the end of every agent's log to
/// stderr (what a CI log needs to tell why), and [`dump`]s.
pub struct DumpOnPanic<'m, 'c>(pub &'m xtask::mesh::Mesh<'c>);

/// How many lines of each agent's log a failing test prints.
const LOG_TAIL_LINES: usize = 150;

impl Drop for DumpOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.0.cluster.nodes {
                if let Some(d) = self.0.try_agent(&n.name) {
                    eprintln!(
                        "==> the last {LOG_TAIL_LINES} lines of {}'s agent log:\n{}",
                        n.name,
                        xtask::mesh::tail(&d.read_log(), LOG_TAIL_LINES)
                    );
                }
            }
            dump(self.0);
        }
    }
}

/// The xtask binary cargo built for these tests (its hidden subcommands,
/// e.g. `nat-probe`, run inside the test bed's namespaces).
pub fn xtask_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xtask"))
}

/// The SHA-256 of a file, as `sha256sum` prints it (hex).
pub fn sha256(path: &std::path::Path) -> String {
    let out = xtask::util::output(std::process::Command::new("sha256sum").arg(path))
        .unwrap_or_else(|e| panic!("sha256sum {}: {e:#}", path.display()));
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum {}: no output", path.display()))
        .to_string()
}

/// Sends `packets` (whole IPv4 packets, headers included) from a raw socket
/// opened inside the network namespace `netns` (by a thread that enters it).
pub fn send_raw(netns: &str, packets: &[Vec<u8>]) {
    let path = std::path::Path::new("/run/netns").join(netns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // SAFETY: a socket this thread owns; every pointer passed is valid for the
            // length passed with it.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                for p in packets {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: 0,
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
                        },
                        sin_zero: [0; 8],
                    };
                    let n = libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&sin as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                    assert_eq!(
                        n,
                        p.len() as isize,
                        "sendto: {}",
                        std::io::Error::last_os_error()
                    );
                }
                libc::close(fd);
            }
        })
        .join()
        .unwrap()
    });
}
