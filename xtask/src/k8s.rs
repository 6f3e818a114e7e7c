//! A real Kubernetes API server for the end-to-end tests.
//!
//! No registry these machines reach ships kube-apiserver binaries, so
//! [`ensure`] builds kube-apiserver and kubectl 1.20.2 once from Debian
//! bookworm's `kubernetes` source package (10–15 minutes on 2 cores) and
//! caches them in `/var/cache/weft/`; etcd comes from Debian.
//! [`ControlPlane::start`] runs etcd and kube-apiserver (TLS, token
//! authentication, RBAC) on the test bed's host `k8s` (198.18.0.250), where
//! every node reaches it over the internet segment.
//!
//! `/usr/bin/kubectl` may be some other kubectl (here a google-cloud-sdk
//! dispatcher for 1.32): everything uses the cached 1.20.2 one by full path.

use anyhow::{Context, Result, bail, ensure as check};
use nix::fcntl::{Flock, FlockArg};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::testbed::{API_SERVER_IP, Cluster, Daemon, Host, Namespace};
use crate::util::{output, run, step};

/// The Kubernetes version built (Debian's 1.20.5+really1.20.2).
pub const VERSION: &str = "1.20.2";
/// Where the built binaries, the source package and the build tree live.
pub const CACHE_DIR: &str = "/var/cache/weft";
/// Debian packages the build and the control plane need.
pub const APT_PACKAGES: &[&str] = &[
    "golang-1.19-go",
    "etcd-server",
    "etcd-client",
    "rsync",
    "jq",
    "golang-github-modern-go-reflect2-dev",
    "openssl",
];
/// The API server's URL on the test bed.
pub const API_SERVER_URL: &str = "https://198.18.0.250:6443";

/// Written by [`deb_src`]; the deb-src twin of the machine's debian.sources.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/weft-deb-src.sources";
/// An earlier hand-made twin, replaced by ours (two would make apt warn).
const OLD_DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/weft-src.sources";
/// Debian's fixed reflect2 1.0.2 (the vendored 1.0.1 crashes under Go ≥ 1.18).
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
/// Matches a build of kube-apiserver, ours or one started by hand.
const MAKE_PATTERN: &str = "make WHAT=cmd/kube-apiserver";

/// The programs of a control plane, by full path.
#[derive(Clone, Debug)]
pub struct K8sTools {
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
}

fn cache() -> PathBuf {
    PathBuf::from(CACHE_DIR)
}

fn tools() -> K8sTools {
    K8sTools {
        kube_apiserver: cache().join(format!("kube-apiserver-{VERSION}")),
        kubectl: cache().join(format!("kubectl-{VERSION}")),
        etcd: "/usr/bin/etcd".into(),
        etcdctl: "/usr/bin/etcdctl".into(),
    }
}

/// True when both binaries exist and print their version.
fn both_run(kube_apiserver: &Path, kubectl: &Path) -> bool {
    let runs = |bin: &Path, args: &[&str]| {
        bin.is_file()
            && Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
    };
    // A plain `kubectl version` fails without a server.
    runs(kube_apiserver, &["--version"]) && runs(kubectl, &["version", "--client"])
}

impl K8sTools {
    /// True when the cached kube-apiserver and kubectl exist and run.
    fn cached(&self) -> bool {
        both_run(&self.kube_apiserver, &self.kubectl)
    }
}

/// Installs what a real API server needs, idempotently: the Debian packages,
/// and kube-apiserver and kubectl 1.20.2 built from Debian's source (once;
/// skipped when both cached binaries run). Concurrent callers serialize on
/// `/var/cache/weft/.lock`, so only one builds.
pub fn ensure() -> Result<K8sTools> {
    (|| {
        crate::setup::apt_install(APT_PACKAGES)?;
        let t = tools();
        if t.cached() {
            return Ok(t);
        }
        check!(
            crate::setup::nix_is_root(),
            "kube-apiserver {VERSION} is not built yet: run `cargo xtask setup` as root"
        );
        std::fs::create_dir_all(cache()).with_context(|| format!("creating {CACHE_DIR}"))?;
        let lock_path = cache().join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, _)) => {
                step(format!(
                    "another process builds kube-apiserver (holds {}): waiting for it",
                    lock_path.display()
                ));
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("locking {}", lock_path.display()))?
            }
        };
        // The holder may just have built them.
        if t.cached() {
            return Ok(t);
        }
        build(&t)?;
        check!(
            t.cached(),
            "the built kube-apiserver or kubectl in {CACHE_DIR} does not run"
        );
        Ok(t)
    })()
    .with_context(|| format!("installing kube-apiserver and kubectl {VERSION} (cargo xtask setup)"))
}

/// Pids of running kube-apiserver builds.
fn running_builds() -> Vec<u32> {
    Command::new("pgrep")
        .args(["-f", MAKE_PATTERN])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn build(t: &K8sTools) -> Result<()> {
    let build_dir = cache().join("build");
    let tree = build_dir.join(format!("kubernetes-{VERSION}"));
    let out_bin = tree.join("_output/bin");

    // A build started by hand (outside the lock) in the same tree: let it
    // finish rather than race it on 2 cores.
    let mut announced = false;
    while !running_builds().is_empty() {
        if !announced {
            step(format!(
                "a kube-apiserver build is already running ({:?}): waiting for it",
                running_builds()
            ));
            announced = true;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    // That build, or an interrupted one of ours, may have left them.
    if !both_run(&out_bin.join("kube-apiserver"), &out_bin.join("kubectl")) {
        step(format!(
            "building kube-apiserver and kubectl {VERSION} from Debian's source: \
             10–15 minutes, once (cached in {CACHE_DIR})"
        ));
        let orig = download_source(&cache().join("src"))?;
        unpack(&orig, &build_dir, &tree)?;
        make(&build_dir, &tree)?;
    }
    for (name, dst) in [
        ("kube-apiserver", &t.kube_apiserver),
        ("kubectl", &t.kubectl),
    ] {
        install_atomically(&out_bin.join(name), dst)?;
    }
    step(format!("removing the build tree {}", build_dir.display()));
    std::fs::remove_dir_all(&build_dir)
        .with_context(|| format!("removing {}", build_dir.display()))?;
    Ok(())
}

/// Copies `src` to `dst` through a temporary name, so that `dst` is either
/// absent or complete.
fn install_atomically(src: &Path, dst: &Path) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", dst.display()));
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    step(format!("installed {}", dst.display()));
    Ok(())
}

/// Writes [`DEB_SRC_FILE`]: the entries of the machine's debian.sources with
/// `Types: deb-src`. True if it changed.
pub fn deb_src() -> Result<bool> {
    let src = Path::new("/etc/apt/sources.list.d/debian.sources");
    let text = std::fs::read_to_string(src).with_context(|| {
        format!(
            "reading {} (the Debian archive to take the sources from)",
            src.display()
        )
    })?;
    let want = deb_src_entries(&text);
    check!(
        !want.is_empty(),
        "{} has no `Types: deb` entry",
        src.display()
    );
    let old = Path::new(OLD_DEB_SRC_FILE);
    if old.exists() {
        step(format!(
            "removing {} (replaced by {DEB_SRC_FILE})",
            old.display()
        ));
        std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
    }
    if std::fs::read_to_string(DEB_SRC_FILE).is_ok_and(|t| t == want) {
        return Ok(false);
    }
    step(format!("adding deb-src entries: {DEB_SRC_FILE}"));
    std::fs::write(DEB_SRC_FILE, &want).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
    Ok(true)
}

/// The deb822 stanzas of `sources` that have `deb` among their types, with
/// `Types: deb-src` (comments dropped).
fn deb_src_entries(sources: &str) -> String {
    let mut out = String::new();
    for stanza in sources.split("\n\n") {
        let lines: Vec<&str> = stanza
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect();
        let is_deb = lines.iter().any(|l| {
            l.strip_prefix("Types:")
                .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
        });
        if !is_deb {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        for l in lines {
            if l.starts_with("Types:") {
                out.push_str("Types: deb-src\n");
            } else {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    out
}

/// The source package's `.orig.tar.gz` in `dir` (`<cache>/src`), downloaded
/// if needed.
fn download_source(dir: &Path) -> Result<PathBuf> {
    let find = || crate::util::find_file(dir, "kubernetes_", ".orig.tar.gz");
    if let Some(p) = find() {
        return Ok(p);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    deb_src()?;
    step("apt-get update (for the deb-src entries)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    step(format!(
        "downloading Debian's kubernetes source package (34 MB) into {}",
        dir.display()
    ));
    run(Command::new("apt-get")
        .args(["source", "--download-only", "-qq", "kubernetes"])
        .current_dir(dir))?;
    find().with_context(|| {
        format!(
            "`apt-get source kubernetes` left no .orig.tar.gz in {}",
            dir.display()
        )
    })
}

/// A fresh `tree` from `orig`, with Debian's reflect2 in `vendor/` and the
/// GOPATH link `<build_dir>/gopath/src/k8s.io/kubernetes`.
fn unpack(orig: &Path, build_dir: &Path, tree: &Path) -> Result<()> {
    if build_dir.exists() {
        std::fs::remove_dir_all(build_dir)
            .with_context(|| format!("removing {}", build_dir.display()))?;
    }
    std::fs::create_dir_all(build_dir)?;
    step(format!("unpacking {}", orig.display()));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(orig)
        .arg("-C")
        .arg(build_dir))?;
    check!(
        tree.join("Makefile").is_file(),
        "{} did not unpack to {}",
        orig.display(),
        tree.display()
    );
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    step(format!("replacing the vendored reflect2 with {REFLECT2}"));
    std::fs::remove_dir_all(&vendored)
        .with_context(|| format!("removing {}", vendored.display()))?;
    run(Command::new("cp").arg("-rL").arg(REFLECT2).arg(&vendored))?;
    // A go.mod inside vendor/ would make the directory a module of its own.
    let _ = std::fs::remove_file(vendored.join("go.mod"));
    let link_dir = build_dir.join("gopath/src/k8s.io");
    std::fs::create_dir_all(&link_dir)?;
    std::os::unix::fs::symlink(tree, link_dir.join("kubernetes"))
        .with_context(|| format!("linking {}", link_dir.join("kubernetes").display()))?;
    Ok(())
}

/// Runs make from the GOPATH link (as Debian's rules do), its output in
/// `<cache>/build.log`, a progress line a minute.
fn make(build_dir: &Path, tree: &Path) -> Result<()> {
    let gopath = build_dir.join("gopath");
    let from = gopath.join("src/k8s.io/kubernetes");
    let log_path = cache().join("build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let path = std::env::join_paths(
        std::iter::once(PathBuf::from("/usr/lib/go-1.19/bin")).chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        ),
    )?;
    step(format!(
        "make WHAT=\"cmd/kube-apiserver cmd/kubectl\" in {} (log {})",
        tree.display(),
        log_path.display()
    ));
    let started = Instant::now();
    let mut child = Command::new("make")
        .arg("WHAT=cmd/kube-apiserver cmd/kubectl")
        .arg(format!("KUBE_GIT_VERSION=v{VERSION}"))
        .arg("KUBE_GIT_TREE_STATE=clean")
        .current_dir(&from)
        // The build scripts look at $PWD to find the GOPATH layout.
        .env("PWD", &from)
        .env("PATH", path)
        .env("GOPATH", &gopath)
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting make")?;
    let mut next = Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() >= next {
            step(format!(
                "building kube-apiserver: {} min, {}",
                next.as_secs() / 60,
                last_lines(&log_path, 1).trim()
            ));
            next += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    if !status.success() {
        bail!(
            "make failed ({status}) after {} s; last lines of {}:\n{}",
            started.elapsed().as_secs(),
            log_path.display(),
            last_lines(&log_path, 30)
        );
    }
    step(format!(
        "built kube-apiserver and kubectl in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    ));
    Ok(())
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------ control plane

/// etcd and kube-apiserver 1.20.2 on the test bed's host `k8s`
/// (198.18.0.250): TLS from a CA made here, token authentication, RBAC.
///
/// Files in the host's directory: `ca.crt`, `admin.kubeconfig`,
/// `agent.kubeconfig`, `tokens.csv`, `etcd/`, and the logs `log/etcd.log`,
/// `log/kube-apiserver.log`. The agent's token authenticates as
/// `system:serviceaccount:kube-system:weft` (groups `system:serviceaccounts`,
/// `system:serviceaccounts:kube-system`, `system:authenticated`), so RBAC
/// bindings to the ServiceAccount kube-system/weft apply to it; it starts
/// with no permission beyond discovery.
pub struct ControlPlane {
    pub host: Host,
    /// The host's directory.
    pub dir: PathBuf,
    pub tools: K8sTools,
    /// `https://198.18.0.250:6443`.
    pub url: String,
    /// The CA that signed the serving certificate (PEM file).
    pub ca_file: PathBuf,
    pub etcd: Daemon,
    apiserver: Mutex<Option<Daemon>>,
}

/// How long kube-apiserver may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

impl ControlPlane {
    /// Starts etcd and kube-apiserver on `cluster.api_server` (the cluster
    /// needs `ClusterSpec::api_server`) and waits until `/readyz` answers.
    /// Builds the binaries first if they are not cached yet ([`ensure`]).
    /// Both are daemons of the test bed: its teardown stops them.
    pub fn start(cluster: &Cluster) -> Result<ControlPlane> {
        let host = cluster
            .api_server
            .clone()
            .context("the cluster has no API server host: set ClusterSpec::api_server")?;
        let dir = host
            .dir
            .clone()
            .context("the API server host has a directory")?;
        let tools = ensure()?;
        let started = Instant::now();
        step(format!(
            "starting etcd and kube-apiserver {VERSION} on {} ({API_SERVER_URL})",
            host.netns
        ));
        let tokens = Tokens::generate()?;
        make_pki(&dir)?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{},admin,admin,\"system:masters\"\n\
                 {},system:serviceaccount:kube-system:weft,weft,\
                 \"system:serviceaccounts,system:serviceaccounts:kube-system,system:authenticated\"\n",
                tokens.admin, tokens.agent
            ),
        )
        .context("writing tokens.csv")?;
        let ca_file = dir.join("ca.crt");
        let ca_b64 = output(Command::new("base64").arg("-w0").arg(&ca_file))?;
        for (name, user, token) in [
            ("admin.kubeconfig", "admin", &tokens.admin),
            ("agent.kubeconfig", "weft", &tokens.agent),
        ] {
            std::fs::write(dir.join(name), kubeconfig(&ca_b64, user, token))
                .with_context(|| format!("writing {name}"))?;
        }

        let etcd = host.spawn_logged(
            host.cmd(&tools.etcd)
                .arg("--name=default")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .args([
                    "--listen-client-urls=http://127.0.0.1:2379",
                    "--advertise-client-urls=http://127.0.0.1:2379",
                    "--listen-peer-urls=http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                    "--initial-cluster=default=http://127.0.0.1:2380",
                ]),
            "etcd",
        )?;
        let cp = ControlPlane {
            host,
            dir,
            tools,
            url: API_SERVER_URL.into(),
            ca_file,
            etcd,
            apiserver: Mutex::new(None),
        };
        cp.wait_etcd()?;
        cp.start_apiserver()?;
        step(format!(
            "control plane ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(cp)
    }

    /// Installs the `Peer` CRD of `group` from `manifests/crds.yaml`
    /// (`kilo.squat.ai`: the same schema in Kilo's group, as a cluster
    /// coming from Kilo has it) and waits until it is served.
    pub fn install_peer_crd(&self, group: &str) -> Result<()> {
        let path = crate::util::workspace_root().join("manifests/crds.yaml");
        let yaml = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .replace("weft.dev", group);
        self.kubectl_stdin(&["apply", "-f", "-"], &yaml)
            .with_context(|| format!("installing the Peer CRD of {group}"))?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/peers.{group}"),
        ])?;
        Ok(())
    }

    /// Kubeconfig of the admin (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Kubeconfig of the agent (`system:serviceaccount:kube-system:weft`).
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.dir.join("agent.kubeconfig")
    }

    /// The cached kubectl with `kubeconfig`, inside namespace `ns` (e.g. a
    /// node, to reach the API server as the node would).
    pub fn kubectl_cmd(&self, ns: &Namespace, kubeconfig: &Path) -> Command {
        let mut cmd = ns.cmd(&self.tools.kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kube-cache").display()
            ));
        cmd
    }

    /// Runs kubectl `args` in `ns` with `kubeconfig`, `stdin` fed to it; its
    /// stdout, or an error with its stderr.
    pub fn kubectl_in(
        &self,
        ns: &Namespace,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        let mut cmd = self.kubectl_cmd(ns, kubeconfig);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped");
            pipe.write_all(input.as_bytes())
                .context("writing kubectl's stdin")?;
        }
        let out = child.wait_with_output().context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "`kubectl {}` in {} failed ({}): {}",
                args.join(" "),
                ns.label(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl `args` as admin on the API server's host.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_in(self.host.namespace(), &self.admin_kubeconfig(), args, None)
    }

    /// Like [`kubectl`](Self::kubectl) with `stdin` (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        self.kubectl_in(
            self.host.namespace(),
            &self.admin_kubeconfig(),
            args,
            Some(stdin),
        )
    }

    /// Runs etcdctl `args` against the control plane's etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        output(
            self.host
                .cmd(&self.tools.etcdctl)
                .arg("--endpoints=http://127.0.0.1:2379")
                .args(args)
                .env("ETCDCTL_API", "3")
                .stdin(Stdio::null()),
        )
    }

    fn wait_etcd(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = match self.etcdctl(&["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if !self.etcd.is_running() || Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy ({}): {err:#}\nlast lines of its log:\n{}",
                    if self.etcd.is_running() {
                        "timeout"
                    } else {
                        "it exited"
                    },
                    tail(&self.etcd.read_log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The kube-apiserver daemon, while it runs.
    pub fn apiserver(&self) -> Option<Daemon> {
        self.apiserver.lock().expect("not poisoned").clone()
    }

    /// Starts kube-apiserver (if it is not running) on the existing etcd
    /// data and waits until it is ready.
    pub fn start_apiserver(&self) -> Result<()> {
        let mut slot = self.apiserver.lock().expect("not poisoned");
        if slot.as_ref().is_some_and(|d| d.is_running()) {
            return Ok(());
        }
        let d = &self.dir;
        let daemon = self.host.spawn_logged(
            self.host.cmd(&self.tools.kube_apiserver).args([
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                "--secure-port=6443",
                "--insecure-port=0",
                &format!("--advertise-address={API_SERVER_IP}"),
                &format!("--tls-cert-file={}", d.join("server.crt").display()),
                &format!("--tls-private-key-file={}", d.join("server.key").display()),
                &format!("--cert-dir={}", d.join("certs").display()),
                &format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", d.join("sa.key").display()),
                &format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
                "--service-cluster-ip-range=10.43.0.0/16",
            ]),
            "kube-apiserver",
        )?;
        *slot = Some(daemon.clone());
        drop(slot);
        self.wait_ready(&daemon)
    }

    fn wait_ready(&self, daemon: &Daemon) -> Result<()> {
        let started = Instant::now();
        loop {
            let err = match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(_) => {
                    step(format!(
                        "kube-apiserver ready in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                Err(e) => e,
            };
            let running = daemon.is_running();
            if !running || started.elapsed() > READY_TIMEOUT {
                bail!(
                    "kube-apiserver did not become ready ({}): {err:#}\nlast lines of {}:\n{}",
                    if running {
                        format!("not within {READY_TIMEOUT:?}")
                    } else {
                        format!("it exited: {:?}", daemon.exit_status())
                    },
                    daemon.log().unwrap_or(Path::new("?")).display(),
                    tail(&daemon.read_log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stops kube-apiserver only (etcd and its data stay), to simulate an
    /// outage of the API; [`start_apiserver`](Self::start_apiserver) brings
    /// it back.
    pub fn stop_apiserver(&self) -> Result<()> {
        let d = self.apiserver.lock().expect("not poisoned").take();
        if let Some(d) = d {
            d.stop(Duration::from_secs(10))
                .context("stopping kube-apiserver")?;
        }
        Ok(())
    }

    /// etcd's current revision (the newest resourceVersion).
    pub fn etcd_revision(&self) -> Result<u64> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `etcdctl endpoint status`: {out}"))?;
        v.get(0)
            .and_then(|e| e.pointer("/Status/header/revision"))
            .and_then(|r| r.as_u64())
            .with_context(|| format!("no revision in `etcdctl endpoint status`: {out}"))
    }

    /// Compacts etcd at its current revision and restarts kube-apiserver, so
    /// that a watch resuming from an older resourceVersion gets 410 Gone
    /// ("too old resource version"), as a client does after a long
    /// disconnection. Returns the revision compacted at.
    ///
    /// The restart is needed: kube-apiserver serves watches from its watch
    /// cache, which still holds the events before the compaction, so a
    /// compaction alone does not make an old resourceVersion expire. A
    /// restarted apiserver fills its cache from a list at the current
    /// revision and answers older ones with 410, as etcd does.
    pub fn compact_etcd(&self) -> Result<u64> {
        let rev = self.etcd_revision()?;
        // kube-apiserver compacts too (every 5 minutes): already done is fine.
        match self.etcdctl(&["compact", &rev.to_string()]) {
            Err(e) if !format!("{e:#}").contains("has been compacted") => {
                return Err(e.context(format!("compacting etcd at revision {rev}")));
            }
            _ => {}
        }
        step(format!(
            "compacted etcd at revision {rev}; restarting kube-apiserver to drop its watch cache"
        ));
        self.stop_apiserver()?;
        self.start_apiserver()?;
        Ok(rev)
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Tokens {
    admin: String,
    agent: String,
}

impl Tokens {
    fn generate() -> Result<Tokens> {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
            &mut bytes,
        )?;
        let hex = |b: &[u8]| {
            b.iter().fold(String::new(), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            })
        };
        Ok(Tokens {
            admin: hex(&bytes[..16]),
            agent: hex(&bytes[16..]),
        })
    }
}

fn kubeconfig(ca_b64: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: weft-test\n  \
           cluster:\n    \
             server: {API_SERVER_URL}\n    \
             certificate-authority-data: {ca_b64}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: {user}\n  \
           context:\n    \
             cluster: weft-test\n    \
             user: {user}\n\
         current-context: {user}\n"
    )
}

/// A CA (`ca.crt`, `ca.key`), the serving certificate it signs
/// (`server.crt`, `server.key`; SANs for every name and address clients
/// use, which rustls insists on) and the service-account key `sa.key`.
fn make_pki(dir: &Path) -> Result<()> {
    let openssl =
        |args: &[&str]| output(Command::new("openssl").args(args).current_dir(dir)).map(drop);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=weft-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .context("making the CA")?;
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:{API_SERVER_IP},IP:127.0.0.1,IP:10.43.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        ),
    )?;
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
    ])
    .context("making the serving key")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        "server.ext",
    ])
    .context("signing the serving certificate")?;
    openssl(&["genrsa", "-out", "sa.key", "2048"]).context("making the service-account key")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_src_copies_deb_entries() {
        let sources = "Types: deb\n\
            # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
            URIs: http://deb.debian.org/debian\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb-src\n\
            URIs: http://example.org/x\n\
            Suites: y\n\
            Components: main\n\
            \n\
            Types: deb\n\
            URIs: http://deb.debian.org/debian-security\n\
            Suites: bookworm-security\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        assert_eq!(
            deb_src_entries(sources),
            "Types: deb-src\n\
             URIs: http://deb.debian.org/debian\n\
             Suites: bookworm bookworm-updates\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
             \n\
             Types: deb-src\n\
             URIs: http://deb.debian.org/debian-security\n\
             Suites: bookworm-security\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    /// The build's first steps, in a scratch directory (no make): deb-src
    /// entries, then (unless the source package is cached already) apt-get
    /// update and the download, unpacking, the reflect2 swap.
    #[test]
    #[ignore = "needs root and the network or the cached source package"]
    fn build_prepares_the_source_tree() {
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("src");
        deb_src().unwrap();
        if let Ok(cached) = download_source(&cache().join("src")) {
            std::fs::create_dir_all(&src).unwrap();
            std::os::unix::fs::symlink(&cached, src.join(cached.file_name().unwrap())).unwrap();
        }
        let orig = download_source(&src).unwrap();
        assert!(Path::new(DEB_SRC_FILE).is_file());
        assert!(!Path::new(OLD_DEB_SRC_FILE).exists());
        let build_dir = scratch.path().join("build");
        let tree = build_dir.join(format!("kubernetes-{VERSION}"));
        unpack(&orig, &build_dir, &tree).unwrap();
        let vendored = tree.join("vendor/github.com/modern-go/reflect2");
        // 1.0.2's file, which 1.0.1 lacks; and no go.mod.
        assert!(vendored.join("go_above_118.go").is_file());
        assert!(!vendored.join("go.mod").exists());
        assert_eq!(
            std::fs::canonicalize(build_dir.join("gopath/src/k8s.io/kubernetes")).unwrap(),
            std::fs::canonicalize(&tree).unwrap()
        );
        assert!(tree.join("Makefile").is_file());
    }

    #[test]
    fn serving_certificate_verifies_against_the_ca_with_ip_sans() {
        let dir = tempfile::tempdir().unwrap();
        make_pki(dir.path()).unwrap();
        let d = |f: &str| dir.path().join(f).display().to_string();
        let verified = output(Command::new("openssl").args([
            "verify",
            "-CAfile",
            &d("ca.crt"),
            "-purpose",
            "sslserver",
            &d("server.crt"),
        ]))
        .unwrap();
        assert!(verified.contains(": OK"), "{verified}");
        let text = output(Command::new("openssl").args([
            "x509",
            "-noout",
            "-text",
            "-in",
            &d("server.crt"),
        ]))
        .unwrap();
        for san in [
            "IP Address:198.18.0.250",
            "IP Address:127.0.0.1",
            "DNS:localhost",
            "DNS:kubernetes.default.svc",
        ] {
            assert!(text.contains(san), "no {san} in {text}");
        }
    }

    #[test]
    fn kubeconfig_is_yaml_with_the_token() {
        let k = kubeconfig("Q0E=", "weft", "t0k");
        assert!(k.contains("    server: https://198.18.0.250:6443\n"));
        assert!(k.contains("    certificate-authority-data: Q0E=\n"));
        assert!(k.contains("- name: weft\n  user:\n    token: t0k\n"));
        assert!(k.ends_with("current-context: weft\n"));
    }
}
