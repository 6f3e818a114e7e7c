//! What the BPF_PROG_TEST_RUN tests share: a private bpffs, the loaded
//! object with map accessors, crafted packets and their checks. Checksums
//! are computed by this file's own RFC 1071 code, not by `weft_common`, so
//! the two check each other.
#![allow(dead_code)]

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{HashMap, LpmTrie, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use weft::datapath::EBPF_OBJECT;
use weft_common::counters::{Counter, CounterValue};
use weft_common::maps::{
    self, ALLOWED, IpipSender, PodEndpoint, Route, route_key, sender_source_key,
};
use weft_common::sources::FROM_NOWHERE;

/// `TC_ACT_UNSPEC` (-1, TCX_NEXT) as the test run reports it: what the
/// programs return for a packet they leave to the next program and the stack.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const POD_PROG: &str = "weft_pod_ingress";
pub const NIC_PROG: &str = "weft_nic_ingress";
pub const WG_PROG: &str = "weft_wg_ingress";
pub const XDP_PROG: &str = "weft_xdp_ipip";
pub const UPLINK_PROG: &str = "weft_uplink_ingress";
pub const NIC_EGRESS_PROG: &str = "weft_nic_egress";

// The test topology. Interfaces need not exist: test runs do not redirect.
/// The loopback device: what XDP test runs arrive on.
pub const LO: u32 = 1;
pub const NIC: u32 = 2;
/// A device no route points to (another NIC, the public uplink).
pub const OTHER_DEV: u32 = 9;
pub const BRIDGE: u32 = 3;
pub const WG: u32 = 4;
pub const VETH_A: u32 = 100;
pub const VETH_B: u32 = 101;

pub const ME: [u8; 4] = [192, 168, 50, 1];
pub const PEER: [u8; 4] = [192, 168, 50, 2];
pub const STRANGER: [u8; 4] = [203, 0, 113, 9];
/// This node's pod CIDR is 10.244.1.0/24.
pub const POD_A: [u8; 4] = [10, 244, 1, 5];
pub const POD_B: [u8; 4] = [10, 244, 1, 6];
/// In this node's CIDR, not in `WEFT_PODS` (no CNI record).
pub const POD_NEW: [u8; 4] = [10, 244, 1, 77];
/// 10.244.2.0/24 is the pod CIDR of PEER, a node of this location.
pub const POD_REMOTE: [u8; 4] = [10, 244, 2, 7];
/// 10.244.9.0/24 is another segment's, behind WireGuard.
pub const POD_FAR: [u8; 4] = [10, 244, 9, 9];
/// No route at all.
pub const OUTSIDE: [u8; 4] = [198, 51, 100, 1];

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x05];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x06];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x02];
/// The address of the test run's device (loopback): frames to it are PACKET_HOST.
pub const HOST_MAC: [u8; 6] = [0; 6];
/// Source MAC the WireGuard program writes (`weft_ebpf::fwd::PSEUDO_MAC`).
pub const PSEUDO_MAC: [u8; 6] = [0x02, 0x57, 0x45, 0x46, 0x54, 0x00];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

// ---------------------------------------------------------------------------
// A private bpffs and the loaded object.

/// A bpffs mounted on a fresh directory, unmounted and removed on drop.
pub struct BpfFs {
    pub path: PathBuf,
}

impl BpfFs {
    pub fn mount() -> BpfFs {
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
pub struct Datapath {
    pub ebpf: Ebpf,
    pub fs: BpfFs,
}

#[derive(Debug)]
pub struct Run {
    pub ret: u32,
    pub out: Vec<u8>,
}

pub type Counts = Vec<CounterValue>;

impl Datapath {
    /// Loads the object and every program; a verifier refusal fails with its log.
    pub fn load() -> Datapath {
        let fs = BpfFs::mount();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&fs.path)
            .load(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"));
        // Load them all, then report every refusal with its verifier log.
        let mut refused = Vec::new();
        for name in [POD_PROG, NIC_PROG, WG_PROG, UPLINK_PROG, NIC_EGRESS_PROG] {
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

    pub fn add_route(&mut self, prefix: [u8; 4], len: u32, route: Route) {
        let mut m: LpmTrie<_, [u8; 4], Route> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::ROUTES).unwrap()).unwrap();
        m.insert(&route_key(prefix, len), route, 0).unwrap();
    }

    /// The routes of a node of this location (its leader: other segments go
    /// into WireGuard) that IPIP-encapsulates to PEER, and who may send what:
    /// PEER, a plain node, from its pod CIDR and its own address, on the NIC,
    /// to ME; this node's pod CIDR and the far segment are cluster ranges
    /// that come from nowhere over the LAN.
    pub fn with_topology(mut self, encapsulate: bool) -> Datapath {
        self.add_route([10, 244, 1, 0], 24, Route::local(BRIDGE));
        let to_peer = if encapsulate {
            Route::node_ipip(NIC, PEER, ME)
        } else {
            Route::node(NIC, PEER)
        };
        self.add_route([10, 244, 2, 0], 24, to_peer);
        self.add_route([10, 244, 9, 0], 24, Route::wireguard(WG));
        self.add_ipip_sender(PEER, NIC, ME);
        self.add_sender_source(PEER, [10, 244, 2, 0], 24);
        self.add_sender_source(PEER, PEER, 32);
        self.add_nic_source([10, 244, 1, 0], 24, FROM_NOWHERE);
        self.add_nic_source(ME, 32, FROM_NOWHERE);
        self.add_nic_source([10, 244, 9, 0], 24, FROM_NOWHERE);
        self.add_nic_source([10, 244, 2, 0], 24, NIC);
        self.add_nic_source(PEER, 32, NIC);
        self
    }

    /// POD_A behind VETH_A and POD_B behind VETH_B in `WEFT_PODS`, as
    /// `weft-cni` registers them at CNI ADD: what lets them send at all.
    pub fn with_pods(mut self) -> Datapath {
        self.add_pod(POD_A, endpoint(VETH_A, MAC_A));
        self.add_pod(POD_B, endpoint(VETH_B, MAC_B));
        self
    }

    pub fn remove_pod(&mut self, ip: [u8; 4]) {
        let mut m: HashMap<_, [u8; 4], PodEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(maps::PODS).unwrap()).unwrap();
        m.remove(&ip).unwrap();
    }

    pub fn add_pod(&mut self, ip: [u8; 4], ep: PodEndpoint) {
        let mut m: HashMap<_, [u8; 4], PodEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(maps::PODS).unwrap()).unwrap();
        m.insert(ip, ep, 0).unwrap();
    }

    pub fn pod(&self, ip: [u8; 4]) -> Option<PodEndpoint> {
        let m: HashMap<_, [u8; 4], PodEndpoint> =
            HashMap::try_from(self.ebpf.map(maps::PODS).unwrap()).unwrap();
        m.get(&ip, 0).ok()
    }

    /// IPIP from `ip` is accepted on `ifindex`, addressed to `local`.
    pub fn add_ipip_sender(&mut self, ip: [u8; 4], ifindex: u32, local: [u8; 4]) {
        let mut m: HashMap<_, [u8; 4], IpipSender> =
            HashMap::try_from(self.ebpf.map_mut(maps::IPIP_SENDERS).unwrap()).unwrap();
        m.insert(ip, IpipSender { ifindex, local }, 0).unwrap();
    }

    /// `sender` may send inner sources in `prefix/len`.
    pub fn add_sender_source(&mut self, sender: [u8; 4], prefix: [u8; 4], len: u32) {
        let mut m: LpmTrie<_, [u8; 8], u32> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::SENDER_SOURCES).unwrap()).unwrap();
        m.insert(&sender_source_key(sender, prefix, len), ALLOWED, 0)
            .unwrap();
    }

    /// Plain IPv4 from `prefix/len` (a cluster range) may arrive on `ifindex` (0: nowhere).
    pub fn add_nic_source(&mut self, prefix: [u8; 4], len: u32, ifindex: u32) {
        let mut m: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::NIC_SOURCES).unwrap()).unwrap();
        m.insert(&route_key(prefix, len), ifindex, 0).unwrap();
    }

    /// Every counter summed over the CPUs, in `Counter::ALL` order.
    pub fn counts(&self) -> Counts {
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
    pub fn tc(&self, name: &str, data: &[u8], ingress_ifindex: u32) -> Run {
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

    pub fn xdp(&self, data: &[u8]) -> Run {
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
pub fn assert_counted(before: &Counts, after: &Counts, want: &[(Counter, u64)]) {
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
pub fn inet_csum(data: &[u8]) -> u16 {
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
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(7)).collect();
    ipv4_with(src, dst, proto, ttl, &payload)
}

pub fn ipv4_with(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
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

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request from `sender` asking for `target`.
pub fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
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
pub fn assert_one_hop(out: &[u8], orig: &[u8]) {
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
pub fn assert_outer(outer: &[u8], inner: &[u8], src: [u8; 4], dst: [u8; 4]) {
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

/// A `WEFT_PODS` value, as `weft-cni` writes it from the CNI result.
pub fn endpoint(ifindex: u32, mac: [u8; 6]) -> PodEndpoint {
    PodEndpoint::new(ifindex, mac)
}
