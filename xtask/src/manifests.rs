//! `cargo xtask validate-manifests`: validates every `manifests/*.yaml`
//! (crds.yaml included once `cargo xtask codegen` has written it) against
//! the Kubernetes OpenAPI schemas, strictly (an unknown field is an error),
//! for the oldest Kubernetes Weft supports and for a current one. Offline:
//! the validator is PyPI's `kubernetes-validate`, which bundles the schemas,
//! installed once into a venv under `target/tools/venv`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::util::{run, step, workspace_root};

/// The validator for current Kubernetes: bundles the schemas of 1.25 to 1.37.
const CURRENT: &str = "kubernetes-validate==1.37.0";
/// Its last release with the schemas of 1.20 (it bundles 1.20 to 1.28),
/// installed beside it without dependencies and imported in its place for
/// those versions. jsonschema is pinned for it: it still uses RefResolver.
const LEGACY: &str = "kubernetes-validate==1.28.3";
const JSONSCHEMA: &str = "jsonschema==4.26.0";

/// Every manifest must pass for each of these: the oldest Kubernetes Weft
/// supports (as Kilo) and the newest the validator knows.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.20.0", "1.37.0"];

/// Versions below this one are validated with [`LEGACY`].
const LEGACY_BELOW: (u32, u32) = (1, 25);

/// One install at a time within a process (tests run in parallel).
static INSTALL: Mutex<()> = Mutex::new(());

/// The venv holding the validator.
pub fn venv_dir() -> PathBuf {
    crate::setup::tools_dir().join("venv")
}

/// Where [`LEGACY`] is installed (a `pip install --target` directory).
fn legacy_dir() -> PathBuf {
    venv_dir().join("kubernetes-validate-legacy")
}

/// Installs the validator into [`venv_dir`] unless it is there already, and
/// returns the venv's python. Idempotent: a stamp file records what was
/// installed; a second call only reads it.
pub fn ensure_validator() -> Result<PathBuf> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let stamp = venv.join(".weft-validator");
    let want = format!("{CURRENT} {JSONSCHEMA} {LEGACY}\n");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
        return Ok(python);
    }
    (|| {
        step(format!(
            "installing {CURRENT} and {LEGACY} (Kubernetes schemas, for offline validation) into {}",
            venv.display()
        ));
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))
        .context("creating the venv (on Debian: apt-get install python3-venv)")?;
        let pip = || {
            let mut c = Command::new(venv.join("bin/pip"));
            c.args(["install", "--quiet", "--disable-pip-version-check"]);
            c
        };
        run(pip().args([CURRENT, JSONSCHEMA]))?;
        run(pip()
            .args(["--no-deps", "--target"])
            .arg(legacy_dir())
            .arg(LEGACY))?;
        std::fs::write(&stamp, &want).with_context(|| format!("writing {}", stamp.display()))
    })()
    .context("installing the manifest validator")?;
    Ok(python)
}

/// Validates every `manifests/*.yaml` of the repository.
/// `cargo xtask codegen`: writes `manifests/crds.yaml` from the Rust type
/// of `Peer` (`weftctl crds`, built on the way). A unit test of the agent
/// fails when the committed file differs.
pub fn codegen() -> Result<()> {
    crate::ebpf::build()?;
    crate::util::run(
        std::process::Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "--package", "weft", "--bin", "weftctl"]),
    )?;
    let yaml = crate::util::output(
        std::process::Command::new(crate::check::bin_dir().join("weftctl")).arg("crds"),
    )?;
    let path = workspace_root().join("manifests/crds.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    crate::util::step(format!("wrote {}", path.display()));
    Ok(())
}

pub fn validate() -> Result<()> {
    validate_dir(&workspace_root().join("manifests"))
}

/// Validates every `*.yaml` in `dir` for every [`KUBERNETES_VERSIONS`];
/// fails with one line per problem: the file, the object and the message.
pub fn validate_dir(dir: &Path) -> Result<()> {
    let files = yaml_files(dir)?;
    if files.is_empty() {
        bail!("no *.yaml in {}", dir.display());
    }
    let python = ensure_validator()?;
    let mut problems = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new(&python);
        if is_legacy(version)? {
            cmd.env("PYTHONPATH", legacy_dir())
                .args(["-W", "ignore::DeprecationWarning"]);
        }
        cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
            .arg(version)
            .args(&files);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {}", python.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let found = problems_in(&stdout, &stderr);
        if found.is_empty() && !out.status.success() {
            bail!(
                "kubernetes-validate for {version} failed ({}) without saying why",
                out.status
            );
        }
        problems.extend(found.into_iter().map(|p| format!("[{version}] {p}")));
    }
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if !problems.is_empty() {
        bail!(
            "{} manifest problem(s) in {}:\n  {}",
            problems.len(),
            dir.display(),
            problems.join("\n  ")
        );
    }
    step(format!(
        "manifests valid (strict) for Kubernetes {}: {}",
        KUBERNETES_VERSIONS.join(", "),
        names.join(" ")
    ));
    Ok(())
}

/// The `*.yaml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn is_legacy(version: &str) -> Result<bool> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor) < LEGACY_BELOW),
        _ => bail!("not a Kubernetes version: {version:?}"),
    }
}

/// The validator's complaints. `--quiet` leaves only problems on stdout:
/// `ERROR`, `FATAL`, and `WARN` for an object it has no schema for (a typo
/// in `apiVersion` or `kind`), which is an error here too. Stderr holds
/// YAML syntax errors.
fn problems_in(stdout: &str, stderr: &str) -> Vec<String> {
    let mut v: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("INFO "))
        .map(str::to_owned)
        .collect();
    v.extend(
        stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_versions() {
        assert!(is_legacy("1.20.0").unwrap());
        assert!(is_legacy("1.24.3").unwrap());
        assert!(!is_legacy("1.25.0").unwrap());
        assert!(!is_legacy("1.37.0").unwrap());
        assert!(is_legacy("one").is_err());
    }

    #[test]
    fn warnings_and_errors_are_problems() {
        let out = "ERROR a.yaml did not validate for resource daemonset/weft\n\
                   WARN a.yaml Couldn't find schema for kind Nonsense\n\
                   INFO a.yaml passed\n\n";
        assert_eq!(problems_in(out, "").len(), 2);
        assert_eq!(problems_in("", "Couldn't parse YAML\n").len(), 1);
        assert!(problems_in("", "").is_empty());
    }

    /// Every DaemonSet manifest chains weft-cni after bridge in the conflist
    /// it installs, pointing at the agent's own pin and state directories
    /// (or pods created before the agent rewrites it would get no identity,
    /// and the datapath would drop what they send), and installs the plugin
    /// into the node's CNI bin directory.
    #[test]
    fn daemonsets_chain_and_install_weft_cni() {
        for name in [
            "weft-k3s.yaml",
            "weft-k3s-userspace.yaml",
            "weft-kubeadm.yaml",
        ] {
            let y = std::fs::read_to_string(workspace_root().join("manifests").join(name)).unwrap();
            let conf = y
                .split("cni-conf.json: |\n")
                .nth(1)
                .and_then(|r| r.split("\n---").next())
                .unwrap_or_else(|| panic!("{name}: no cni-conf.json"));
            let v: serde_json::Value =
                serde_json::from_str(conf).unwrap_or_else(|e| panic!("{name}: {e}"));
            let plugins = v["plugins"].as_array().unwrap();
            let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
            assert_eq!(types, ["bridge", "weft-cni", "portmap"], "{name}");
            let arg = |flag: &str| {
                y.lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("- {flag}=")))
                    .unwrap_or_else(|| panic!("{name}: no {flag}"))
                    .to_string()
            };
            let w = &plugins[1];
            assert_eq!(w["bpfPinDir"], arg("--bpf-pin-dir"), "{name}");
            assert_eq!(
                w["podStateDir"],
                format!("{}/pods", arg("--state-dir")),
                "{name}"
            );
            assert_eq!(w["bridge"], plugins[0]["bridge"], "{name}");
            assert!(
                y.contains("cp /usr/local/bin/weft-cni /host/opt/cni/bin/weft-cni.tmp")
                    && y.contains("mv /host/opt/cni/bin/weft-cni.tmp /host/opt/cni/bin/weft-cni"),
                "{name}: weft-cni not installed"
            );
        }
    }

    /// The repository's manifests pass. Ignored: it installs the validator
    /// from PyPI on first use (`cargo xtask test` runs it after clippy anyway).
    #[test]
    #[ignore]
    fn repository_manifests_pass() {
        validate().unwrap();
    }

    /// A broken copy of a manifest fails, naming the file, the object and the
    /// fault, for every version. Ignored: it needs the validator's venv.
    #[test]
    #[ignore]
    fn broken_manifests_fail() {
        let good =
            std::fs::read_to_string(workspace_root().join("manifests/weft-kubeadm.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // An unknown field in the DaemonSet's pod spec.
        let unknown = good.replacen(
            "      hostNetwork: true\n",
            "      hostNetwork: true\n      hostNetwrok: true\n",
            1,
        );
        assert_ne!(unknown, good);
        std::fs::write(dir.path().join("unknown-field.yaml"), unknown).unwrap();
        // A string where an integer belongs, in the same DaemonSet.
        let wrong_type = good.replacen(
            "terminationGracePeriodSeconds: 10",
            "terminationGracePeriodSeconds: ten",
            1,
        );
        assert_ne!(wrong_type, good);
        std::fs::write(dir.path().join("wrong-type.yaml"), wrong_type).unwrap();
        // A kind no schema knows.
        std::fs::write(
            dir.path().join("unknown-kind.yaml"),
            "apiVersion: apps/v1\nkind: DaemonSett\nmetadata:\n  name: weft\n",
        )
        .unwrap();

        let err = format!("{:#}", validate_dir(dir.path()).unwrap_err());
        for version in KUBERNETES_VERSIONS {
            let mm = &version[..version.rfind('.').unwrap()];
            for (file, fault) in [
                ("unknown-field.yaml", "'hostNetwrok' was unexpected"),
                ("wrong-type.yaml", "'ten' is not of type 'integer'"),
                ("unknown-kind.yaml", "kind DaemonSett"),
            ] {
                assert!(
                    err.lines().any(|l| l.contains(&format!("[{version}]"))
                        && l.contains(file)
                        && l.contains(fault)),
                    "no {fault:?} in {file} for {mm} in:\n{err}"
                );
            }
            assert!(
                err.lines()
                    .any(|l| l.contains("unknown-field.yaml") && l.contains("daemonset/weft")),
                "the object is not named in:\n{err}"
            );
        }
    }
}
