//! Sharing the tc hook: a foreign program (not Weft's: a dozen raw BPF
//! instructions that count packets in an array map and return `TCX_NEXT`,
//! as a monitoring tool or a CNI in compatibility mode would) is attached
//! with TCX after Weft's on a pod veth and on the NIC of a node. It must
//! see what Weft passes (traffic to the host: a pod pinging its gateway, a
//! node pinging another's address), and not what Weft forwards itself
//! (pod to pod across nodes), which shows it runs after Weft; the same
//! after the agent was killed and started again (the re-adopted links
//! keep their place in the chain).

mod common;

use common::bin_dir;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Node, PRIVATE_NIC};

// ------------------------------------------------------------ raw bpf(2)

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// With no relative program: after every program on the hook.
const BPF_F_AFTER: u32 = 1 << 4;

/// `bpf(cmd, attr)` with a zero-padded attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a valid, writable block of the size passed; the
    // kernel reads (and for some commands writes) only within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn put_u32(attr: &mut [u8; 128], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One `struct bpf_insn`.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_ne_bytes());
    i[4..8].copy_from_slice(&imm.to_ne_bytes());
    i
}

/// A tc program counting every packet in slot 0 of `map` and returning
/// `TCX_NEXT` (-1): the next program, then the stack, get the packet.
fn counting_program(map: &OwnedFd) -> Vec<u8> {
    [
        insn(0x62, 10, 0, -4, 0),             // *(u32 *)(r10 - 4) = 0 (the key)
        insn(0xbf, 2, 10, 0, 0),              // r2 = r10
        insn(0x07, 2, 0, 0, -4),              // r2 += -4
        insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = map (BPF_PSEUDO_MAP_FD) ...
        insn(0, 0, 0, 0, 0),                  // ... (second half of the 64-bit load)
        insn(0x85, 0, 0, 0, 1),               // call bpf_map_lookup_elem
        insn(0x15, 0, 0, 2, 0),               // if r0 == 0 goto +2
        insn(0xb7, 1, 0, 0, 1),               // r1 = 1
        insn(0xdb, 0, 1, 0, 0),               // lock *(u64 *)(r0 + 0) += r1
        insn(0xb7, 0, 0, 0, -1),              // r0 = TCX_NEXT
        insn(0x95, 0, 0, 0, 0),               // exit
    ]
    .concat()
}

/// The foreign program on one interface: its counter map and its TCX link
/// (closing the link's descriptor detaches it).
struct Foreign {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    what: String,
}

impl Foreign {
    /// Loads a counting program and appends it to `ifname`'s TCX ingress
    /// chain in `node`'s network namespace.
    fn attach(node: &Node, ifname: &str) -> Foreign {
        let what = format!("foreign program on {}'s {ifname}", node.name);
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, BPF_MAP_TYPE_ARRAY);
        put_u32(&mut a, 4, 4); // key size
        put_u32(&mut a, 8, 8); // value size
        put_u32(&mut a, 12, 1); // max entries
        let map = owned(bpf(BPF_MAP_CREATE, &mut a).unwrap_or_else(|e| panic!("{what}: map: {e}")));

        let insns = counting_program(&map);
        let license = CString::new("GPL").unwrap();
        let mut log = vec![0u8; 4096];
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, BPF_PROG_TYPE_SCHED_CLS);
        put_u32(&mut a, 4, (insns.len() / 8) as u32);
        put_u64(&mut a, 8, insns.as_ptr() as u64);
        put_u64(&mut a, 16, license.as_ptr() as u64);
        put_u32(&mut a, 24, 1); // log level
        put_u32(&mut a, 28, log.len() as u32);
        put_u64(&mut a, 32, log.as_mut_ptr() as u64);
        a[48..55].copy_from_slice(b"foreign");
        put_u32(&mut a, 68, BPF_TCX_INGRESS); // expected attach type
        let prog = match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => owned(fd),
            Err(e) => panic!(
                "{what}: the verifier refused it: {e}\n{}",
                String::from_utf8_lossy(&log).trim_end_matches('\0')
            ),
        };

        // The link is made from inside the node's namespace, where the
        // interface is; its descriptor then works from anywhere.
        let netns = format!("/run/netns/{}", node.netns);
        let (prog_fd, ifname_c) = (prog.as_raw_fd(), CString::new(ifname).unwrap());
        let link = std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<i32> {
                let ns = std::fs::File::open(&netns)?;
                // SAFETY: plain system calls; setns changes only this thread's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(ifname_c.as_ptr()) };
                if ifindex == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut a = [0u8; 128];
                put_u32(&mut a, 0, prog_fd as u32);
                put_u32(&mut a, 4, ifindex);
                put_u32(&mut a, 8, BPF_TCX_INGRESS);
                put_u32(&mut a, 12, BPF_F_AFTER);
                bpf(BPF_LINK_CREATE, &mut a)
            })
            .join()
            .expect("the attaching thread")
        })
        .unwrap_or_else(|e| panic!("{what}: attaching with TCX: {e}"));
        Foreign {
            map,
            _prog: prog,
            _link: owned(link),
            what,
        }
    }

    /// Packets counted so far.
    fn count(&self) -> u64 {
        let (key, mut value) = (0u32, 0u64);
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, self.map.as_raw_fd() as u32);
        put_u64(&mut a, 8, &key as *const u32 as u64);
        put_u64(&mut a, 16, &mut value as *mut u64 as u64);
        bpf(BPF_MAP_LOOKUP_ELEM, &mut a).unwrap_or_else(|e| panic!("{}: reading: {e}", self.what));
        value
    }

    /// How many packets `f` made it count.
    fn counted(&self, f: impl FnOnce()) -> u64 {
        let before = self.count();
        f();
        // Counted on ingress, before any answer: nothing is in flight by now.
        self.count() - before
    }
}

const PINGS: u32 = 10;
/// Of traffic Weft forwards, the foreign program may still see a few
/// frames around it (ARP, a neighbour probe), never the pings.
const STRAY: u64 = 4;

fn check(cluster: &Cluster, veth: &Foreign, nic: &Foreign, when: &str) {
    let (a1, a2) = (cluster.node("aws-1"), cluster.node("aws-2"));
    let (pod, far_pod) = (&a1.pods[0], &a2.pods[0]);
    let to_host = veth.counted(|| pod.ping(pod.gateway, PINGS).unwrap());
    assert!(
        to_host >= PINGS as u64,
        "{when}: {} saw {to_host} packets of {PINGS} pings to the gateway (Weft passes them)",
        veth.what
    );
    let forwarded = veth.counted(|| pod.ping(far_pod.ip, PINGS).unwrap());
    assert!(
        forwarded <= STRAY,
        "{when}: {} saw {forwarded} packets of {PINGS} pings Weft forwards: it runs before Weft?",
        veth.what
    );
    let node_to_node = nic.counted(|| a2.ping(a1.private_ip, PINGS).unwrap());
    assert!(
        node_to_node >= PINGS as u64,
        "{when}: {} saw {node_to_node} packets of {PINGS} pings to aws-1's address",
        nic.what
    );
    let forwarded = nic.counted(|| far_pod.ping(pod.ip, PINGS).unwrap());
    assert!(
        forwarded <= STRAY,
        "{when}: {} saw {forwarded} packets of {PINGS} pod pings Weft delivers",
        nic.what
    );
    eprintln!("    {when}: the foreign programs saw what Weft passes and nothing it forwards");
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_program_attached_after_weft_sees_what_weft_passes() {
    let cluster = Cluster::create(&ClusterSpec::new(vec![LocationSpec::new(
        "aws",
        ["aws-1", "aws-2"],
    )]))
    .expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let a1 = cluster.node("aws-1");
    let veth = Foreign::attach(a1, &a1.pods[0].host_veth);
    let nic = Foreign::attach(a1, PRIVATE_NIC);
    assert_eq!(a1.pods[0].gateway, Ipv4Addr::new(10, 42, 0, 1));
    check(&cluster, &veth, &nic, "agents running");

    mesh.kill("aws-1").unwrap();
    mesh.start("aws-1").unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    check(&cluster, &veth, &nic, "after aws-1's agent restarted");
    mesh.check_running().unwrap();
}
