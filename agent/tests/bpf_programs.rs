//! The datapath programs run on crafted packets with BPF_PROG_TEST_RUN.
//!
//! Each test loads the embedded object (`weft::datapath::EBPF_OBJECT`) with
//! its maps pinned in a private bpffs mounted for the test (and unmounted
//! after), fills the maps, runs one program and checks the verdict, the
//! packet that comes out and the counters. In a test run the redirect helpers
//! only record their target, so a redirect shows as `TC_ACT_REDIRECT` (7).
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the mount):
//! `cargo test -p weft --test bpf_programs -- --ignored` (run by `cargo xtask test`).
//!
//! Checksums here are computed by the test's own RFC 1071 code, not by
//! `weft_common`, so the two check each other.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{HashMap, LpmTrie, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use weft::datapath::EBPF_OBJECT;
use weft_common::counters::{Counter, CounterValue};
use weft_common::maps::{self, IPIP_PEER, PodEndpoint, Route, route_key};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const POD_PROG: &str = "weft_pod_ingress";
const NIC_PROG: &str = "weft_nic_ingress";
const WG_PROG: &str = "weft_wg_ingress";
const XDP_PROG: &str = "weft_xdp_ipip";

// The test topology. Interfaces need not exist: test runs do not redirect.
const NIC: u32 = 2;
const BRIDGE: u32 = 3;
const WG: u32 = 4;
const VETH_A: u32 = 100;
const VETH_B: u32 = 101;

const ME: [u8; 4] = [192, 168, 50, 1];
const PEER: [u8; 4] = [192, 168, 50, 2];
const STRANGER: [u8; 4] = [203, 0, 113, 9];
/// This node's pod CIDR is 10.244.1.0/24.
const POD_A: [u8; 4] = [10, 244, 1, 5];
const POD_B: [u8; 4] = [10, 244, 1, 6];
/// In this node's CIDR, never learned.
const POD_NEW: [u8; 4] = [10, 244, 1, 77];
/// 10.244.2.0/24 is the pod CIDR of PEER, a node of this location.
const POD_REMOTE: [u8; 4] = [10, 244, 2, 7];
/// 10.244.9.0/24 is another segment's, behind WireGuard.
const POD_FAR: [u8; 4] = [10, 244, 9, 9];
/// No route at all.
const OUTSIDE: [u8; 4] = [198, 51, 100, 1];

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x05];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x06];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x02];
/// The address of the test run's device (loopback): frames to it are PACKET_HOST.
const HOST_MAC: [u8; 6] = [0; 6];
/// Source MAC the WireGuard program writes (`weft_ebpf::fwd::PSEUDO_MAC`).
const PSEUDO_MAC: [u8; 6] = [0x02, 0x57, 0x45, 0x46, 0x54, 0x00];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

// ---------------------------------------------------------------------------
// A private bpffs and the loaded object.

/// A bpffs mounted on a fresh directory, unmounted and removed on drop.
struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    fn mount() -> BpfFs {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-test-bpffs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the bpffs mount point");
        let target = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let bpf = CString::new("bpf").unwrap();
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                bpf.as_ptr(),
                target.as_ptr(),
                bpf.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a bpffs on {} (are you root?): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        BpfFs { path }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The loaded object. Fields drop in order: the maps' fds close before the unmount.
struct Datapath {
    ebpf: Ebpf,
    fs: BpfFs,
}

#[derive(Debug)]
struct Run {
    ret: u32,
    out: Vec<u8>,
}

type Counts = Vec<CounterValue>;

impl Datapath {
    /// Loads the object and every program; a verifier refusal fails with its log.
    fn load() -> Datapath {
        let fs = BpfFs::mount();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&fs.path)
            .load(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"));
        // Load them all, then report every refusal with its verifier log.
        let mut refused = Vec::new();
        for name in [POD_PROG, NIC_PROG, WG_PROG] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} missing from the object"))
                .try_into()
                .expect("a tc classifier");
            if let Err(e) = prog.load() {
                refused.push(format!("the verifier refused {name}:\n{e}"));
            }
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROG)
            .expect("program weft_xdp_ipip")
            .try_into()
            .expect("an XDP program");
        if let Err(e) = xdp.load() {
            refused.push(format!("the verifier refused {XDP_PROG}:\n{e}"));
        }
        assert!(refused.is_empty(), "{}", refused.join("\n\n"));
        Datapath { ebpf, fs }
    }

    fn add_route(&mut self, prefix: [u8; 4], len: u32, route: Route) {
        let mut m: LpmTrie<_, [u8; 4], Route> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::ROUTES).unwrap()).unwrap();
        m.insert(&route_key(prefix, len), route, 0).unwrap();
    }

    /// The routes of a node of this location that IPIP-encapsulates to PEER.
    fn with_topology(mut self, encapsulate: bool) -> Datapath {
        self.add_route([10, 244, 1, 0], 24, Route::local(BRIDGE));
        let to_peer = if encapsulate {
            Route::node_ipip(NIC, PEER, ME)
        } else {
            Route::node(NIC, PEER)
        };
        self.add_route([10, 244, 2, 0], 24, to_peer);
        self.add_route([10, 244, 9, 0], 24, Route::wireguard(WG));
        self.add_ipip_peer(PEER);
        self
    }

    fn add_pod(&mut self, ip: [u8; 4], ep: PodEndpoint) {
        let mut m: HashMap<_, [u8; 4], PodEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(maps::PODS).unwrap()).unwrap();
        m.insert(ip, ep, 0).unwrap();
    }

    fn pod(&self, ip: [u8; 4]) -> Option<PodEndpoint> {
        let m: HashMap<_, [u8; 4], PodEndpoint> =
            HashMap::try_from(self.ebpf.map(maps::PODS).unwrap()).unwrap();
        m.get(&ip, 0).ok()
    }

    fn add_ipip_peer(&mut self, ip: [u8; 4]) {
        let mut m: HashMap<_, [u8; 4], u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::IPIP_PEERS).unwrap()).unwrap();
        m.insert(ip, IPIP_PEER, 0).unwrap();
    }

    /// Every counter summed over the CPUs, in `Counter::ALL` order.
    fn counts(&self) -> Counts {
        let m: PerCpuArray<_, CounterValue> =
            PerCpuArray::try_from(self.ebpf.map(maps::COUNTERS).unwrap()).unwrap();
        Counter::ALL
            .iter()
            .map(|c| {
                m.get(&(*c as u32), 0)
                    .unwrap()
                    .iter()
                    .fold(CounterValue::default(), |a, v| CounterValue {
                        packets: a.packets + v.packets,
                        bytes: a.bytes + v.bytes,
                    })
            })
            .collect()
    }

    /// Runs a tc program on `data`, as if it entered `ingress_ifindex`.
    fn tc(&self, name: &str, data: &[u8], ingress_ifindex: u32) -> Run {
        let prog: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        // struct __sk_buff up to `cb`: only ingress_ifindex (offset 36) is set.
        let mut ctx = [0u8; 48];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; data.len() + 512];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| {
                let why = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                panic!("BPF_PROG_TEST_RUN of {name}: {e}: {why}")
            });
        out.truncate(r.data_size_out as usize);
        Run {
            ret: r.return_value,
            out,
        }
    }

    fn xdp(&self, data: &[u8]) -> Run {
        let prog: &Xdp = self.ebpf.program(XDP_PROG).unwrap().try_into().unwrap();
        let mut out = vec![0u8; data.len() + 512];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {XDP_PROG}: {e}"));
        out.truncate(r.data_size_out as usize);
        Run {
            ret: r.return_value,
            out,
        }
    }
}

/// Asserts that exactly the counters in `want` grew, by the packet counts given.
#[track_caller]
fn assert_counted(before: &Counts, after: &Counts, want: &[(Counter, u64)]) {
    let mut got: Vec<(Counter, u64)> = Counter::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a.packets != b.packets)
        .map(|(c, (b, a))| (*c, a.packets - b.packets))
        .collect();
    let mut want = want.to_vec();
    got.sort_by_key(|(c, _)| *c as u32);
    want.sort_by_key(|(c, _)| *c as u32);
    assert_eq!(got, want, "counter increments");
}

// ---------------------------------------------------------------------------
// Packets.

/// RFC 1071, written independently of weft_common.
fn inet_csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            (pair[0] as u16) << 8
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet with a UDP-looking payload: DF set, TOS 0x10, ID 0x1234.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(7)).collect();
    ipv4_with(src, dst, proto, ttl, &payload)
}

fn ipv4_with(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len() as u16;
    let mut h = vec![0x45, 0x10];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = inet_csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request from `sender` asking for `target`.
fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target_ip);
    eth([0xff; 6], sender_mac, ETH_P_ARP, &a)
}

/// Checks that `out` is `orig` forwarded by one router hop: TTL − 1, a valid
/// checksum, every other byte unchanged.
#[track_caller]
fn assert_one_hop(out: &[u8], orig: &[u8]) {
    assert_eq!(out.len(), orig.len(), "IPv4 packet length");
    assert_eq!(out[8], orig[8] - 1, "TTL decremented");
    assert_eq!(inet_csum(&out[..20]), 0, "IPv4 header checksum valid");
    let mut a = out.to_vec();
    let mut b = orig.to_vec();
    for p in [&mut a, &mut b] {
        p[8] = 0;
        p[10] = 0;
        p[11] = 0;
    }
    assert_eq!(a, b, "only TTL and checksum changed");
}

/// Checks an IPIP outer header from `src` to `dst` around `inner`.
#[track_caller]
fn assert_outer(outer: &[u8], inner: &[u8], src: [u8; 4], dst: [u8; 4]) {
    assert_eq!(outer[0], 0x45, "version 4, IHL 5");
    assert_eq!(outer[1], inner[1], "TOS copied");
    assert_eq!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize,
        20 + inner.len(),
        "outer total length"
    );
    assert_eq!(outer[6] & 0x40, inner[6] & 0x40, "DF copied");
    assert_eq!(outer[6] & 0x3f, 0, "no fragment offset, no MF");
    assert_eq!(outer[7], 0);
    assert_eq!(outer[8], 64, "outer TTL");
    assert_eq!(outer[9], 4, "protocol IPIP");
    assert_eq!(inet_csum(&outer[..20]), 0, "outer checksum valid");
    assert_eq!(&outer[12..16], &src, "outer source");
    assert_eq!(&outer[16..20], &dst, "outer destination");
}

fn learned(ifindex: u32, mac: [u8; 6]) -> PodEndpoint {
    PodEndpoint::new(ifindex, mac)
}

// ---------------------------------------------------------------------------
// Loading.

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn every_program_passes_the_verifier_and_maps_are_pinned_by_name() {
    let dp = Datapath::load();
    for name in [maps::ROUTES, maps::PODS, maps::IPIP_PEERS, maps::COUNTERS] {
        assert!(Path::new(&dp.fs.path).join(name).exists(), "{name} pinned");
    }
    assert_eq!(dp.counts().iter().map(|c| c.packets).sum::<u64>(), 0);
}

// ---------------------------------------------------------------------------
// weft_pod_ingress

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_learns_the_source_of_ipv4_once() {
    let dp = Datapath::load().with_topology(true);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, OUTSIDE, 17, 64));
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.out, frame, "passed unchanged");
    assert_eq!(dp.pod(POD_A), Some(learned(VETH_A, MAC_A)));
    let c1 = dp.counts();
    assert_counted(
        &c0,
        &c1,
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::PassNoRoute, 1),
        ],
    );
    let seen = Counter::PodIngressSeen as usize;
    assert_eq!(
        c1[seen].bytes - c0[seen].bytes,
        frame.len() as u64,
        "bytes counted"
    );

    // Same source again: no write.
    dp.tc(POD_PROG, &frame, VETH_A);
    assert_counted(
        &c1,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::PassNoRoute, 1)],
    );

    // The pod moved to another veth (or the IP was reused): updated.
    dp.tc(
        POD_PROG,
        &eth(GW_MAC, MAC_B, ETH_P_IP, &ipv4(POD_A, OUTSIDE, 17, 64)),
        VETH_B,
    );
    assert_eq!(dp.pod(POD_A), Some(learned(VETH_B, MAC_B)));
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_learns_the_sender_of_arp() {
    let dp = Datapath::load().with_topology(true);
    let frame = arp(MAC_B, POD_B, [10, 244, 1, 1]);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_B);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.out, frame);
    assert_eq!(dp.pod(POD_B), Some(learned(VETH_B, MAC_B)));
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::PassNotIpv4, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_learns_only_addresses_of_this_nodes_pod_cidr() {
    let dp = Datapath::load().with_topology(true);
    // A source in another node's CIDR, one outside the cluster, and 0.0.0.0 (DHCP, ARP probes).
    dp.tc(
        POD_PROG,
        &eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_REMOTE, OUTSIDE, 17, 64)),
        VETH_A,
    );
    dp.tc(
        POD_PROG,
        &eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(OUTSIDE, POD_B, 17, 64)),
        VETH_A,
    );
    dp.tc(POD_PROG, &arp(MAC_A, [0, 0, 0, 0], POD_A), VETH_A);
    assert_eq!(dp.pod(POD_REMOTE), None);
    assert_eq!(dp.pod(OUTSIDE), None);
    assert_eq!(dp.pod([0, 0, 0, 0]), None);
    assert_eq!(dp.counts()[Counter::PodLearned as usize].packets, 0);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_switches_same_node_pods_at_l2() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    dp.add_pod(POD_B, learned(VETH_B, MAC_B));
    // TTL 1 too: switching is not a router hop.
    for ttl in [64, 1] {
        let frame = eth(MAC_B, MAC_A, ETH_P_IP, &ipv4(POD_A, POD_B, 6, ttl));
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
        assert_eq!(r.out, frame, "frame unchanged (L2)");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::LocalSameNode, 1)],
        );
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_routes_into_a_learned_pod_when_sent_to_the_gateway() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    dp.add_pod(POD_B, learned(VETH_B, MAC_B));
    let ip = ipv4(POD_A, POD_B, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &MAC_B, "dst = the pod's MAC");
    assert_eq!(&r.out[6..12], &GW_MAC, "src = the gateway the pod sent to");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_redirects_other_segments_into_wireguard() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_A, POD_FAR, 17, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect into WireGuard");
    assert_eq!(
        &r.out[..14],
        &frame[..14],
        "Ethernet header left for the kernel to strip"
    );
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::RedirectWireguard, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_redirects_to_a_node_directly() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_A, POD_REMOTE, 6, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh");
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::RedirectNode, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_encapsulates_ipip_to_a_node() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_A, POD_REMOTE, 6, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh");
    assert_eq!(r.out.len(), frame.len() + 20, "20 bytes of outer header");
    assert_eq!(&r.out[..14], &frame[..14], "Ethernet header kept in front");
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_one_hop(&r.out[34..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::RedirectNodeIpip, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_encapsulation_copies_no_df_and_tos() {
    let dp = Datapath::load().with_topology(true);
    let mut ip = ipv4(POD_A, POD_REMOTE, 17, 30);
    ip[1] = 0xb9; // DSCP EF + ECN CE
    ip[6] = 0; // DF clear
    ip[10] = 0;
    ip[11] = 0;
    let c = inet_csum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_eq!(
        r.out[14 + 6],
        0,
        "DF not set when the inner packet has none"
    );
    assert_one_hop(&r.out[34..], &ip);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_leaves_unlearned_local_pods_to_the_bridge() {
    let dp = Datapath::load().with_topology(true);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, POD_NEW, 6, 64));
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(r.out, frame);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::PodLearned, 1),
            (Counter::PassLocalBridge, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_passes_ttl_1_to_the_stack() {
    let dp = Datapath::load().with_topology(true);
    for dst in [POD_FAR, POD_REMOTE] {
        let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, dst, 1, 1));
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_OK, "the stack sends ICMP time exceeded");
        assert_eq!(r.out, frame, "TTL untouched");
        assert_eq!(
            dp.counts()[Counter::PassTtlExpired as usize].packets
                - c0[Counter::PassTtlExpired as usize].packets,
            1
        );
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_passes_non_ipv4_and_malformed() {
    let dp = Datapath::load().with_topology(true);
    let v6 = eth(GW_MAC, MAC_A, ETH_P_IPV6, &[0x60; 60]);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &v6, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_OK, &v6));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::PassNotIpv4, 1)],
    );

    let mut bad = ipv4(POD_A, POD_FAR, 6, 64);
    bad[0] = 0x43; // IHL 3
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &bad);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_OK, &frame));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::Malformed, 1)],
    );

    // Total length shorter than the header. (A frame cut inside the IPv4 header
    // cannot be tested: BPF_PROG_TEST_RUN itself refuses it with EINVAL.)
    let mut bad = ipv4(POD_A, POD_FAR, 6, 64);
    bad[2..4].copy_from_slice(&12u16.to_be_bytes());
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &bad);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_OK, &frame));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::Malformed, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_ttl_and_checksum_are_right_for_many_headers() {
    let dp = Datapath::load().with_topology(true);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let mut ip = ipv4(POD_A, [10, 244, 9, b[0]], b[1], 2 + b[2] % 254);
        ip[1] = b[3]; // TOS
        ip[4] = b[4]; // ID
        ip[5] = b[5];
        ip[6] = b[6] & 0x40; // DF or not
        ip[10] = 0;
        ip[11] = 0;
        let c = inet_csum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_one_hop(&r.out[14..], &ip);
    }
}

// ---------------------------------------------------------------------------
// weft_nic_ingress

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_delivers_to_a_learned_pod() {
    let mut dp = Datapath::load().with_topology(false);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    let ip = ipv4(POD_REMOTE, POD_A, 6, 63);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip), NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(&r.out[0..6], &MAC_A, "dst = the pod's MAC");
    assert_eq!(&r.out[6..12], &HOST_MAC, "src = this NIC");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::NicIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_sends_unlearned_local_pods_through_the_bridge() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_REMOTE, POD_NEW, 17, 64);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh to the bridge");
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::DeliverLocalBridge, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_forwards_other_segments_into_wireguard() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_REMOTE, POD_FAR, 17, 64);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::RedirectWireguard, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_passes_node_routes_no_route_ttl_1_and_other_hosts_frames() {
    let dp = Datapath::load().with_topology(false);
    let cases = [
        (
            eth(
                HOST_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(POD_A, POD_REMOTE, 6, 64),
            ),
            Counter::PassNotOurs,
        ),
        (
            eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(PEER, ME, 6, 64)),
            Counter::PassNoRoute,
        ),
        (
            eth(
                HOST_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(POD_REMOTE, POD_NEW, 6, 1),
            ),
            Counter::PassTtlExpired,
        ),
        (
            eth(MAC_B, PEER_MAC, ETH_P_IP, &ipv4(POD_REMOTE, POD_NEW, 6, 64)),
            Counter::PassNotForHost,
        ),
        (arp(PEER_MAC, PEER, ME), Counter::PassNotIpv4),
    ];
    for (frame, why) in cases {
        let c0 = dp.counts();
        let r = dp.tc(NIC_PROG, &frame, NIC);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &frame), "{why:?}");
        assert_counted(&c0, &dp.counts(), &[(Counter::NicIngressSeen, 1), (why, 1)]);
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_decapsulates_ipip_from_a_peer_and_delivers() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let outer = ipv4_with(PEER, ME, 4, 64, &inner);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &outer);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(r.out.len(), frame.len() - 20, "outer header removed");
    assert_eq!(&r.out[0..6], &MAC_A);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &inner);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::IpipDecap, 1),
            (Counter::DeliverLocalPeer, 1),
        ],
    );

    // An outer header with options (IHL 6) is removed whole.
    let inner = ipv4(POD_REMOTE, POD_A, 17, 40);
    let mut outer = ipv4_with(
        PEER,
        ME,
        4,
        64,
        &[[1u8, 1, 1, 0].as_slice(), &inner].concat(),
    );
    outer[0] = 0x46;
    outer[10] = 0;
    outer[11] = 0;
    let c = inet_csum(&outer[..24]);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &outer);
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(
        r.out.len(),
        frame.len() - 24,
        "outer header and its options removed"
    );
    assert_one_hop(&r.out[14..], &inner);

    // Unlearned destination: decapsulated, then through the bridge.
    let inner = ipv4(POD_REMOTE, POD_NEW, 17, 64);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &inner);

    // For the host itself: decapsulated and passed up.
    let inner = ipv4(PEER, ME, 17, 64);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(&r.out[14..], &inner[..], "inner packet untouched");
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::IpipDecap, 1),
            (Counter::PassNoRoute, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_drops_ipip_from_strangers() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(STRANGER, ME, 4, 64, &inner),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_SHOT);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::DropIpipUnknownSource, 1),
        ],
    );

    // From a peer but not IPv4 inside: not decapsulated.
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &[0x60; 40]),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!((r.ret, &r.out), (TC_ACT_OK, &frame));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::NicIngressSeen, 1), (Counter::Malformed, 1)],
    );
}

// ---------------------------------------------------------------------------
// weft_wg_ingress (packets start at the IP header)

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_delivers_to_a_learned_pod_with_an_ethernet_header() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, learned(VETH_A, MAC_A));
    let ip = ipv4(POD_FAR, POD_A, 6, 60);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(r.out.len(), ip.len() + 14, "Ethernet header pushed");
    assert_eq!(&r.out[0..6], &MAC_A);
    assert_eq!(&r.out[6..12], &PSEUDO_MAC);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_sends_unlearned_local_pods_through_the_bridge() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_FAR, POD_NEW, 17, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh to the bridge");
    assert_eq!(r.out.len(), ip.len() + 14);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_eq!(
        r.out[0] & 1,
        0,
        "unicast destination (redirect_neigh refuses multicast)"
    );
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::WgIngressSeen, 1),
            (Counter::DeliverLocalBridge, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_forwards_to_a_node_of_this_location() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_FAR, POD_REMOTE, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh out of the NIC");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::RedirectNode, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_encapsulates_ipip_to_a_node_of_this_location() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_FAR, POD_REMOTE, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh out of the NIC");
    assert_eq!(r.out.len(), ip.len() + 14 + 20, "Ethernet and outer header");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_one_hop(&r.out[34..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::RedirectNodeIpip, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_passes_wireguard_routes_no_route_ttl_1_and_non_ipv4() {
    let dp = Datapath::load().with_topology(true);
    let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 17, 64];
    v6.extend_from_slice(&[0xfd; 32]);
    v6.extend_from_slice(&[0; 20]);
    let cases = [
        (ipv4(POD_FAR, [10, 244, 9, 10], 6, 64), Counter::PassNotOurs),
        (ipv4(POD_FAR, OUTSIDE, 6, 64), Counter::PassNoRoute),
        (ipv4(POD_FAR, POD_NEW, 6, 1), Counter::PassTtlExpired),
        (v6, Counter::PassNotIpv4),
    ];
    for (pkt, why) in cases {
        let c0 = dp.counts();
        let r = dp.tc(WG_PROG, &pkt, WG);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &pkt), "{why:?}");
        assert_counted(&c0, &dp.counts(), &[(Counter::WgIngressSeen, 1), (why, 1)]);
    }
}

// ---------------------------------------------------------------------------
// weft_xdp_ipip

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn xdp_drops_ipip_from_unknown_sources_and_passes_the_rest() {
    let dp = Datapath::load().with_topology(true);
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let from_stranger = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(STRANGER, ME, 4, 64, &inner),
    );
    let from_peer = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let tcp_from_stranger = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(STRANGER, ME, 6, 64));
    let arp_frame = arp(PEER_MAC, PEER, ME);

    let c0 = dp.counts();
    let r = dp.xdp(&from_stranger);
    assert_eq!(r.ret, XDP_DROP);
    let c1 = dp.counts();
    assert_counted(&c0, &c1, &[(Counter::XdpDropIpipUnknownSource, 1)]);
    let drop = Counter::XdpDropIpipUnknownSource as usize;
    assert_eq!(c1[drop].bytes - c0[drop].bytes, from_stranger.len() as u64);

    for frame in [&from_peer, &tcp_from_stranger, &arp_frame] {
        let c0 = dp.counts();
        let r = dp.xdp(frame);
        assert_eq!((r.ret, &r.out), (XDP_PASS, frame));
        assert_counted(&c0, &dp.counts(), &[(Counter::XdpPass, 1)]);
    }
}
