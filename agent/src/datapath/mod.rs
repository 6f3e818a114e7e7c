//! The eBPF datapath: loads the programs embedded at build time (see
//! `agent/build.rs`), pins their maps and links under the pin directory
//! (`/sys/fs/bpf/weft` by default) and attaches them to interfaces.
//!
//! Pinning is what lets forwarding survive the agent: a pinned TCX/XDP link
//! keeps its program attached after the agent dies (even by `kill -9`), and
//! the program keeps its maps. On start the agent re-adopts what is pinned:
//! maps are reused by name (their contents survive), and each pinned link is
//! atomically switched to the newly loaded program (`bpf_link_update`), so a
//! restart never leaves an interface without a program.

pub mod counters;
pub mod maps;
pub mod nat;

use anyhow::{Context, Result, bail};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::xdp::XdpMode;
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// The eBPF object built by `cargo xtask build-ebpf`, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WEFT_EBPF_OBJECT"));

/// Default pin directory; `bpftool map dump pinned /sys/fs/bpf/weft/<MAP>` reads it.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// Where `net.ipv4.conf.lo.forwarding` is.
const LO_FORWARDING: &str = "/proc/sys/net/ipv4/conf/lo/forwarding";
/// Marker (an empty directory in the pin directory) that the agent turned
/// `lo` forwarding on, so that clean-up turns it off again.
const LO_FORWARDING_MARKER: &str = "lo_forwarding_set";
/// The loopback device's index (always 1).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// `statfs(2)` magic of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Where a program hooks into an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// tc ingress of a host-side pod veth: everything a pod sends.
    PodIngress,
    /// tc ingress of the node's NIC: traffic from the location's other nodes.
    NicIngress,
    /// tc ingress of the WireGuard device: traffic from other segments.
    WgIngress,
    /// XDP on the node's NIC: drops IPIP from outside the location.
    NicXdp,
    /// tc ingress of the node's other uplinks: replies to masqueraded flows.
    UplinkIngress,
    /// tc egress of the node's NIC: IPIP for what the kernel itself sends
    /// to a pod CIDR reached through IPIP.
    NicEgress,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::PodIngress,
        Hook::NicIngress,
        Hook::WgIngress,
        Hook::NicXdp,
        Hook::UplinkIngress,
        Hook::NicEgress,
    ];

    /// The program's name in the eBPF object.
    pub fn program(self) -> &'static str {
        match self {
            Hook::PodIngress => "weft_pod_ingress",
            Hook::NicIngress => "weft_nic_ingress",
            Hook::WgIngress => "weft_wg_ingress",
            Hook::NicXdp => "weft_xdp_ipip",
            Hook::UplinkIngress => "weft_uplink_ingress",
            Hook::NicEgress => "weft_nic_egress",
        }
    }

    /// Short name used in link pin names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PodIngress => "pod_ingress",
            Hook::NicIngress => "nic_ingress",
            Hook::WgIngress => "wg_ingress",
            Hook::NicXdp => "nic_xdp",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::NicEgress => "nic_egress",
        }
    }

    /// The tc direction of a classifier hook.
    fn tc_attach_type(self) -> TcAttachType {
        match self {
            Hook::NicEgress => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    fn from_name(s: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == s)
    }
}

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// TCX links (kernel ≥ 6.6), pinned under `links/`: they survive the
    /// agent and are switched to a new program atomically.
    Tcx,
    /// clsact filters through netlink, for older kernels. They outlive the
    /// agent by themselves; an empty directory under `links/` records each
    /// one, and a new agent replaces the filter (detach by name, attach).
    Netlink,
}

impl TcMode {
    /// TCX where the kernel has it, clsact otherwise.
    pub fn detect() -> TcMode {
        match aya::util::KernelVersion::current() {
            Ok(v) if v >= aya::util::KernelVersion::new(6, 6, 0) => TcMode::Tcx,
            _ => TcMode::Netlink,
        }
    }
}

/// An attachment: a hook on a named interface.
pub type Attachment = (Hook, String);

enum LinkId {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
    /// A clsact filter, owned by the kernel (found again by program name).
    TcNetlink,
}

/// The loaded datapath. Dropping it leaves everything pinned in place (the
/// datapath keeps forwarding); [`Datapath::clean_up`] removes it all.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    tc_mode: TcMode,
    /// Attachments made or adopted by this process, with our handle on the link.
    attached: BTreeMap<Attachment, LinkId>,
}

/// Removes `hook`'s clsact filter from `ifname`, if there is one (the
/// interface may be gone with its filters: nothing to do then).
fn detach_filter(hook: Hook, ifname: &str) {
    if let Err(e) =
        aya::programs::tc::qdisc_detach_program(ifname, hook.tc_attach_type(), hook.program())
    {
        debug!(
            hook = hook.name(),
            ifname, "no clsact filter to remove: {e}"
        );
    }
}

/// Fails unless `dir`'s parent is on a bpffs: pinning elsewhere fails with
/// an obscure EPERM, and on a test node a stray /sys/fs/bpf is a common trap.
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes only into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "cannot stat {}: {e} (is a bpffs mounted there? `mount -t bpf bpf {}`)",
            parent.display(),
            parent.display()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs (filesystem magic {:#x}): mount one with `mount -t bpf bpf {}`",
            parent.display(),
            st.f_type,
            parent.display()
        );
    }
    Ok(())
}

impl Datapath {
    /// Loads the programs, reusing maps pinned by an earlier run under `pin_dir`.
    /// The programs' aya-log lines are compiled in but silent unless `debug`;
    /// with `debug` they are forwarded to the agent's log.
    pub fn load(pin_dir: &Path, debug: bool, tc_mode: TcMode) -> Result<Self> {
        check_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir.join("links"))
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let level: u8 = if debug {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global(aya_log::LEVEL, &level, false)
            .load(EBPF_OBJECT)
            .with_context(|| {
                format!(
                    "loading the eBPF object (maps pinned in {} from an incompatible version? `weft --clean-up` or remove them)",
                    pin_dir.display()
                )
            })?;
        for hook in Hook::ALL {
            let prog = ebpf.program_mut(hook.program()).with_context(|| {
                format!("program {} missing from the eBPF object", hook.program())
            })?;
            match prog {
                aya::programs::Program::SchedClassifier(p) => p.load(),
                aya::programs::Program::Xdp(p) => p.load(),
                _ => bail!("program {} has an unexpected type", hook.program()),
            }
            .with_context(|| format!("the kernel refused program {}", hook.program()))?;
        }
        info!(pin_dir = %pin_dir.display(), ?tc_mode, "eBPF datapath loaded");
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            tc_mode,
            attached: BTreeMap::new(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The map named `name` (for the map writers).
    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    }

    /// Several maps at once (the GC needs three).
    pub fn maps_mut<const N: usize>(
        &mut self,
        names: [&str; N],
    ) -> Result<[&mut aya::maps::Map; N]> {
        let mut out: Vec<&mut aya::maps::Map> = Vec::with_capacity(N);
        let mut found: Vec<(&str, &mut aya::maps::Map)> = self
            .ebpf
            .maps_mut()
            .filter(|(n, _)| names.contains(n))
            .collect();
        for name in names {
            let i = found
                .iter()
                .position(|(n, _)| *n == name)
                .with_context(|| format!("map {name} missing from the eBPF object"))?;
            out.push(found.swap_remove(i).1);
        }
        out.try_into()
            .map_err(|_| anyhow::anyhow!("map names repeated"))
    }

    fn link_pin(&self, hook: Hook, ifname: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{}@{}", hook.name(), ifname))
    }

    /// Attachments pinned on this node (by this run or an earlier one).
    pub fn pinned_attachments(&self) -> Result<Vec<Attachment>> {
        let mut out = Vec::new();
        let dir = self.pin_dir.join("links");
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some((h, ifname)) = name.split_once('@')
                && let Some(hook) = Hook::from_name(h)
            {
                out.push((hook, ifname.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Attaches `hook`'s program to `ifname`, or adopts the link an earlier
    /// run pinned there by switching it to this run's program. Idempotent.
    pub fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let key = (hook, ifname.to_string());
        if self.attached.contains_key(&key) {
            return Ok(());
        }
        let pin = self.link_pin(hook, ifname);
        if self.tc_mode == TcMode::Netlink && hook != Hook::NicXdp {
            let id = self.attach_netlink(hook, ifname, &pin)?;
            self.attached.insert(key, id);
            return Ok(());
        }
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(pinned) => match self.adopt(hook, FdLink::from(pinned)) {
                Ok(id) => Some(id),
                Err(e) => {
                    // A link whose interface was deleted and re-created is defunct: start over.
                    debug!(
                        hook = hook.name(),
                        ifname, "pinned link not adoptable ({e:#}); re-attaching"
                    );
                    let _ = std::fs::remove_file(&pin);
                    None
                }
            },
            Err(_) => None,
        };
        let id = match adopted {
            Some(id) => {
                info!(hook = hook.name(), ifname, "re-adopted pinned eBPF link");
                id
            }
            None => {
                let id = self.attach_new(hook, ifname, &pin)?;
                info!(hook = hook.name(), ifname, "attached eBPF program");
                id
            }
        };
        self.attached.insert(key, id);
        Ok(())
    }

    /// Attaches a clsact filter; one an earlier run left (its marker
    /// directory exists) is replaced by this run's program: detached by
    /// name, then attached again — a gap of one netlink round trip, the
    /// price of kernels without TCX links.
    fn attach_netlink(&mut self, hook: Hook, ifname: &str, marker: &Path) -> Result<LinkId> {
        let readopt = marker.is_dir();
        if readopt {
            detach_filter(hook, ifname);
        }
        // Fails with EEXIST once the interface has its clsact qdisc: fine.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        let prog = self
            .ebpf
            .program_mut(hook.program())
            .expect("checked at load");
        let p: &mut SchedClassifier = prog.try_into()?;
        let opts = TcAttachOptions::Netlink(aya::programs::tc::NlOptions::default());
        let id = p
            .attach_with_options(ifname, hook.tc_attach_type(), opts)
            .with_context(|| format!("attaching {} to {ifname} (clsact)", hook.program()))?;
        // The kernel keeps the filter after we exit; aya's handle would remove it on drop.
        std::mem::forget(p.take_link(id)?);
        if !readopt {
            std::fs::create_dir(marker)
                .with_context(|| format!("recording {}", marker.display()))?;
        }
        let what = if readopt {
            "re-adopted eBPF filter (clsact, replaced)"
        } else {
            "attached eBPF program (clsact)"
        };
        info!(hook = hook.name(), ifname, "{what}");
        Ok(LinkId::TcNetlink)
    }

    fn adopt(&mut self, hook: Hook, link: FdLink) -> Result<LinkId> {
        let prog = self
            .ebpf
            .program_mut(hook.program())
            .expect("checked at load");
        Ok(match hook {
            Hook::NicXdp => {
                let p: &mut Xdp = prog.try_into()?;
                LinkId::Xdp(p.attach_to_link(XdpLink::try_from(link)?)?)
            }
            _ => {
                let p: &mut SchedClassifier = prog.try_into()?;
                LinkId::Tc(p.attach_to_link(SchedClassifierLink::try_from(link)?)?)
            }
        })
    }

    fn attach_new(&mut self, hook: Hook, ifname: &str, pin: &Path) -> Result<LinkId> {
        let prog = self
            .ebpf
            .program_mut(hook.program())
            .expect("checked at load");
        let ctx = || format!("attaching {} to {ifname}", hook.program());
        // Attach, take the link from the program and pin it so that it outlives this process.
        let fd_link: FdLink = match hook {
            Hook::NicXdp => {
                let p: &mut Xdp = prog.try_into()?;
                let id = p.attach(ifname, XdpMode::Default).with_context(ctx)?;
                p.take_link(id)?
                    .try_into()
                    .context("XDP attached through netlink: cannot pin")?
            }
            _ => {
                let p: &mut SchedClassifier = prog.try_into()?;
                let opts = TcAttachOptions::TcxOrder(LinkOrder::default());
                let id = p
                    .attach_with_options(ifname, hook.tc_attach_type(), opts)
                    .with_context(ctx)?;
                p.take_link(id)?
                    .try_into()
                    .context("tc attached through netlink: cannot pin")?
            }
        };
        let pinned = fd_link
            .pin(pin)
            .with_context(|| format!("pinning link at {}", pin.display()))?;
        // Hand the link back to the program so that detach() can find it.
        self.adopt(hook, FdLink::from(pinned))
    }

    /// Detaches `hook` from `ifname` and removes its pin.
    pub fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let key = (hook, ifname.to_string());
        let pin = self.link_pin(hook, ifname);
        if let Some(id) = self.attached.remove(&key) {
            let prog = self
                .ebpf
                .program_mut(hook.program())
                .expect("checked at load");
            match id {
                LinkId::Tc(id) => <&mut SchedClassifier>::try_from(prog)?.detach(id)?,
                LinkId::Xdp(id) => <&mut Xdp>::try_from(prog)?.detach(id)?,
                LinkId::TcNetlink => {}
            }
        }
        if pin.is_dir() {
            // A clsact filter's marker: the filter is found by program name.
            detach_filter(hook, ifname);
            std::fs::remove_dir(&pin).with_context(|| format!("removing {}", pin.display()))?;
            info!(hook = hook.name(), ifname, "detached eBPF filter (clsact)");
            return Ok(());
        }
        match std::fs::remove_file(&pin) {
            Ok(()) => info!(hook = hook.name(), ifname, "detached eBPF program"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
        }
        Ok(())
    }

    /// Makes the attachments of `hook` exactly `ifnames`: attaches the new
    /// ones, detaches (and unpins) the ones no longer wanted.
    pub fn reconcile_hook(&mut self, hook: Hook, ifnames: &[String]) -> Result<()> {
        for ifname in ifnames {
            self.attach(hook, ifname)?;
        }
        for (h, ifname) in self.pinned_attachments()? {
            if h == hook && !ifnames.contains(&ifname) {
                self.detach(h, &ifname)?;
            }
        }
        Ok(())
    }

    /// Makes masquerade's FIB lookups possible with forwarding off.
    ///
    /// `bpf_fib_lookup` refuses to look up from a device whose IPv4
    /// forwarding is off (`BPF_FIB_LKUP_RET_FWD_DISABLED`), and with
    /// `net.ipv4.ip_forward=0` every device's is. The lookups are made from
    /// `lo` instead, as for traffic the host sends itself (the kernel's own
    /// output lookups use `lo` as their input device), which needs
    /// forwarding on `lo` only: `lo` receives nothing but what this host
    /// sends to itself, so no packet is kernel-forwarded because of it, and
    /// `ip_forward` (all devices) stays as it is. Checked on every
    /// reconcile, since writing `ip_forward` resets every device's setting.
    /// Returns whether it was turned on now.
    pub fn ensure_lo_forwarding(&self) -> Result<bool> {
        let cur = std::fs::read_to_string(LO_FORWARDING)
            .with_context(|| format!("reading {LO_FORWARDING}"))?;
        if cur.trim() == "1" {
            return Ok(false);
        }
        std::fs::write(LO_FORWARDING, "1").with_context(|| {
            format!("writing 1 to {LO_FORWARDING} (a read-only /proc/sys in an unprivileged container? set it on the host, or keep ip_forward=1 as Kubernetes nodes have it)")
        })?;
        let marker = self.pin_dir.join(LO_FORWARDING_MARKER);
        if !marker.is_dir() {
            std::fs::create_dir(&marker)
                .with_context(|| format!("recording {}", marker.display()))?;
        }
        Ok(true)
    }

    /// Turns `lo` forwarding off again if [`Datapath::ensure_lo_forwarding`] turned it on.
    pub fn restore_lo_forwarding(&self) -> Result<()> {
        let marker = self.pin_dir.join(LO_FORWARDING_MARKER);
        if !marker.is_dir() {
            return Ok(());
        }
        std::fs::write(LO_FORWARDING, "0")
            .with_context(|| format!("writing 0 to {LO_FORWARDING}"))?;
        std::fs::remove_dir(&marker).with_context(|| format!("removing {}", marker.display()))?;
        info!("net.ipv4.conf.lo.forwarding turned off again (masquerade off)");
        Ok(())
    }

    /// Removes every program, link and pin: nothing of the datapath is left.
    pub fn clean_up(mut self) -> Result<()> {
        self.restore_lo_forwarding()?;
        for (hook, ifname) in self.pinned_attachments()? {
            self.detach(hook, &ifname)?;
        }
        let keys: Vec<Attachment> = self.attached.keys().cloned().collect();
        for (hook, ifname) in keys {
            self.detach(hook, &ifname)?;
        }
        let pin_dir = self.pin_dir.clone();
        drop(self);
        std::fs::remove_dir_all(&pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(pin_dir = %pin_dir.display(), "eBPF datapath removed");
        Ok(())
    }
}
