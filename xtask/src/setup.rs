//! `cargo xtask setup`: installs every tool the project needs, idempotently.
//!
//! - Debian packages (wireguard-go, wg, bpftool, iproute2, ping, iperf3,
//!   iptables, graphviz, the CNI plugins), installed without recommends (wireguard-tools
//!   would otherwise pull in a whole kernel image);
//! - `rust-src` for the nightly (eBPF builds `core` from source), from rustup,
//!   or in CI from the tarball in `../shared/toolchain/` when rustup fails;
//! - bpf-linker built against the nightly's own libLLVM, installed under
//!   `target/tools/` (nothing outside the repository but apt and rustup state);
//! - a real kube-apiserver and kubectl 1.20.2 with etcd, for the end-to-end
//!   tests ([`crate::k8s::ensure`]: built from Debian's source once, cached in
//!   `/var/cache/weft/`).
//!
//! A second run checks and returns in about a second.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

use crate::util::{output, run, step, workspace_root};

/// Debian packages the tests, the demo and the benchmarks use.
pub const APT_PACKAGES: &[&str] = &[
    "wireguard-go",
    "wireguard-tools",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "iptables",
    // The masquerade tests look for NAT rules and conntrack entries with them;
    // the masquerade bench compares against an nftables set.
    "nftables",
    "conntrack",
    "graphviz",
    // `python3 -m venv` for the manifests' validator (kubernetes-validate).
    "python3-venv",
    // The reference CNI plugins (bridge, host-local, loopback, portmap in
    // /usr/lib/cni): the test bed creates its pods with them, as a runtime does.
    "containernetworking-plugins",
];

/// The bpf-linker release that supports LLVM 22 and builds with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where project-local tools live (bpf-linker and its libLLVM symlinks).
pub fn tools_dir() -> PathBuf {
    workspace_root().join("target/tools")
}

/// PATH with the project's tools first, for commands that need bpf-linker.
pub fn tools_path() -> std::ffi::OsString {
    let mut paths = vec![tools_dir().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH entries are valid")
}

/// Entry point of `cargo xtask setup` and the first step of every task
/// that runs tests: the toolchain and the Kubernetes control plane's tools.
pub fn ensure() -> Result<()> {
    ensure_toolchain()?;
    crate::k8s::ensure()
        .map(drop)
        .context("setting up kube-apiserver (cargo xtask setup)")
}

/// What building needs, and no more (`cargo xtask build-ebpf`, an image
/// build): the Debian packages, rust-src and bpf-linker.
pub fn ensure_toolchain() -> Result<()> {
    (|| {
        apt_install(APT_PACKAGES)?;
        rust_src()?;
        bpf_linker()
    })()
    .context("setting up the toolchain (cargo xtask setup)")
}

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Installs those of `packages` that are missing (without recommends); a
/// no-op, without apt-get, when all are installed.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::util::have("apt-get") {
        bail!("missing packages {missing:?} and no apt-get: install them by hand");
    }
    if !nix_is_root() {
        bail!("missing packages {missing:?}: run as root so that apt-get can install them");
    }
    step(format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

pub(crate) fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is needed to build eBPF: `rustup toolchain install nightly`",
    )?;
    Ok(PathBuf::from(s.trim()))
}

fn rust_src() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust");
    let present = || src.join("library/core/Cargo.toml").is_file();
    if present() {
        return Ok(());
    }
    step("installing rust-src for the nightly toolchain (eBPF builds core from source)");
    let rustup = run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]));
    if rustup.is_ok() && present() {
        return Ok(());
    }
    // CI machines may not reach rustup's server: ../shared carries the same library/.
    let why = match &rustup {
        Err(e) => format!("{e:#}"),
        Ok(()) => format!("rustup left no library/core in {}", src.display()),
    };
    match shared_rust_src_tarball() {
        Some(t) if std::env::var_os("CI").is_some() => {
            step(format!(
                "rustup could not provide rust-src ({why}); unpacking {}",
                t.display()
            ));
            std::fs::create_dir_all(&src)?;
            run(Command::new("tar").arg("-xJf").arg(&t).arg("-C").arg(&src))?;
            if !present() {
                bail!("{} did not hold library/core", t.display());
            }
            Ok(())
        }
        _ => bail!("cannot install rust-src for the nightly: {why}"),
    }
}

fn shared_rust_src_tarball() -> Option<PathBuf> {
    crate::util::find_file(
        &workspace_root().join("../shared/toolchain"),
        "rust-src-",
        ".tar.xz",
    )
}

/// The nightly's LLVM major version, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    let major = line.trim().split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("unexpected LLVM version {line:?}"))
}

fn bpf_linker() -> Result<()> {
    let bin = tools_dir().join("bin/bpf-linker");
    if bin.is_file()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let major = nightly_llvm_major()?;
    // The nightly ships libLLVM with the full C API; bpf-linker must link the
    // same LLVM as rustc, and Debian has no LLVM this new.
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;
    let prefix = tools_dir().join("llvm");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute, once)"
    ));
    run(Command::new("cargo")
        .args([
            "+stable",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(tools_dir())
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    Ok(())
}
