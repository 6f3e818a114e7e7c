//! Every map of the datapath. Declared `pinned`: aya pins each by name under
//! the loader's pin directory (`/sys/fs/bpf/weft/<NAME>`), and a restarted
//! agent reuses them. Key and value types live in `weft_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use weft_common::{
    counters::{COUNTER_SLOTS, Counter, CounterValue},
    maps::{
        IPIP_SENDERS_MAX_ENTRIES, IpipSender, NIC_SOURCES_MAX_ENTRIES, PODS_MAX_ENTRIES,
        PodEndpoint, ROUTES_MAX_ENTRIES, Route, SENDER_SOURCE_KEY_LEN, SENDER_SOURCES_MAX_ENTRIES,
        sender_source_data,
    },
    nat::{FlowKey, MASQ_PREFIXES_MAX_ENTRIES, NAT_MAX_ENTRIES, NatConfig, NatEgress, NatIngress},
    svc::{ClientEntry, ClientKey, SERVICE_CIDRS_MAX_ENTRIES, SERVICE_CLIENTS_MAX_ENTRIES},
};

/// `WEFT_ROUTES`: LPM trie, key `Key<[u8; 4]>` (prefix length, IPv4 destination in
/// network order) → [`Route`]. Written by the agent from the topology (this node's
/// pod CIDR → Local, other segments → WireGuard or the leader, nodes of this
/// location → Node/NodeIpip); read by the tc programs.
#[map]
pub static WEFT_ROUTES: LpmTrie<[u8; 4], Route> = LpmTrie::pinned(ROUTES_MAX_ENTRIES, 0);

/// `WEFT_PODS`: hash, key `[u8; 4]` pod IP → [`PodEndpoint`] (host-side veth,
/// pod MAC). Written only by user space, from what the CNI assigned: the
/// `weft-cni` plugin at ADD/DEL and the agent from its pod records. Never
/// written by packets, so a pod cannot claim an address. Read by all tc
/// programs to deliver with `bpf_redirect_peer`, and by `weft_pod_ingress`
/// to drop what a pod sends from an address that is not its own.
#[map]
pub static WEFT_PODS: HashMap<[u8; 4], PodEndpoint> = HashMap::pinned(PODS_MAX_ENTRIES, 0);

/// `WEFT_IPIP_SENDERS`: hash, key `[u8; 4]` private IP of a node of this location
/// (the outer source) → [`IpipSender`] (the NIC the route to it points to, and
/// the outer destination it must use: this node's private IP). Written by the
/// agent from the topology; read by `weft_xdp_ipip` and `weft_nic_ingress`
/// (IPIP from anyone else, or not so addressed, is dropped).
#[map]
pub static WEFT_IPIP_SENDERS: HashMap<[u8; 4], IpipSender> =
    HashMap::pinned(IPIP_SENDERS_MAX_ENTRIES, 0);

/// `WEFT_SENDER_SOURCES`: LPM trie, key `Key<[u8; 8]>` (prefix length 32 + source
/// prefix length; sender private IP, then the inner source prefix) → `u32` (1).
/// Written by the agent from the topology (what each node of this location may
/// send: its pod CIDR and node IP, for the leader what it relays); read by
/// `weft_xdp_ipip` and `weft_nic_ingress` (the inner source of IPIP).
#[map]
pub static WEFT_SENDER_SOURCES: LpmTrie<[u8; SENDER_SOURCE_KEY_LEN], u32> =
    LpmTrie::pinned(SENDER_SOURCES_MAX_ENTRIES, 0);

/// `WEFT_NIC_SOURCES`: LPM trie, key `Key<[u8; 4]>` source prefix → `u32` ifindex
/// of the NIC plain IPv4 from that cluster range may arrive on (0: none). Written
/// by the agent from the topology (every cluster range; see
/// `weft_common::sources`); read by `weft_nic_ingress` and `weft_uplink_ingress`
/// before forwarding plain IPv4.
#[map]
pub static WEFT_NIC_SOURCES: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(NIC_SOURCES_MAX_ENTRIES, 0);

/// `WEFT_COUNTERS`: per-CPU array, key `u32` ([`Counter`] index) → [`CounterValue`].
/// Written by every program; read by the agent (`/metrics`) and `weftctl bpf counters`.
#[map]
pub static WEFT_COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// `WEFT_MASQ_SOURCES`: LPM trie, key `Key<[u8; 4]>` source prefix → `u32` (1).
/// Written by the agent (the topology's masquerade sources: this node's pod
/// CIDR, external peers' allowed IPs); read by the programs that masquerade.
#[map]
pub static WEFT_MASQ_SOURCES: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MASQ_PREFIXES_MAX_ENTRIES, 0);

/// `WEFT_MASQ_EXEMPT`: LPM trie, key `Key<[u8; 4]>` destination prefix → `u32` (1).
/// Written by the agent (the topology's exemptions); a destination in it keeps
/// the pod's address.
#[map]
pub static WEFT_MASQ_EXEMPT: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MASQ_PREFIXES_MAX_ENTRIES, 0);

/// `WEFT_NAT_EGRESS`: LRU hash, key [`FlowKey`] as the pod sent it → [`NatEgress`]
/// (the node address and port it leaves with). Written by the programs for
/// new flows; the agent's GC deletes expired ones.
#[map]
pub static WEFT_NAT_EGRESS: LruHashMap<FlowKey, NatEgress> = LruHashMap::pinned(NAT_MAX_ENTRIES, 0);

/// `WEFT_NAT_INGRESS`: LRU hash, key [`FlowKey`] of the replies as they arrive
/// → [`NatIngress`] (the pod address and port they go back to). Written with
/// `WEFT_NAT_EGRESS`; its keys are the allocated (node address, port) pairs.
#[map]
pub static WEFT_NAT_INGRESS: LruHashMap<FlowKey, NatIngress> =
    LruHashMap::pinned(NAT_MAX_ENTRIES, 0);

/// `WEFT_NAT_CONFIG`: array of one [`NatConfig`]. Written by the agent (on,
/// port range, flow limit, the flow count of each GC pass); the programs add
/// one to `flows` per new flow.
#[map]
pub static WEFT_NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// `WEFT_SERVICE_CIDRS`: LPM trie, key `Key<[u8; 4]>` service prefix → `u32` (1).
/// Written by the agent (the service CIDRs of `--service-cidr` and
/// `serviceCIDRs`, by difference); read by `weft_pod_ingress`: a pod's
/// packet to it goes to the stack (kube-proxy's DNAT) and is recorded.
#[map]
pub static WEFT_SERVICE_CIDRS: LpmTrie<[u8; 4], u32> =
    LpmTrie::pinned(SERVICE_CIDRS_MAX_ENTRIES, 0);

/// `WEFT_SERVICE_CLIENTS`: LRU hash, key [`ClientKey`] (protocol, local pod
/// address and port) → [`ClientEntry`] (time of its last packet to a
/// service, closing). Written by `weft_pod_ingress` (see
/// [`crate::svc`]); read by every program that delivers into pods, which
/// leave replies to a fresh client to the kernel. Never deleted: the LRU
/// evicts, stale entries are ignored.
#[map]
pub static WEFT_SERVICE_CLIENTS: LruHashMap<ClientKey, ClientEntry> =
    LruHashMap::pinned(SERVICE_CLIENTS_MAX_ENTRIES, 0);

/// Adds one packet of `len` bytes to counter `c` on this CPU.
#[inline(always)]
pub fn count(c: Counter, len: u32) {
    if let Some(slot) = WEFT_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently; pointer checked non-null.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len as u64;
        }
    }
}

/// The longest-prefix route to `dst`, copied out of the map; `action` 0 if none.
///
/// Plain values, not `Option`s: LLVM leaves the payload of a `None` in
/// registers the verifier considers uninitialised ("!read_ok").
#[inline(always)]
pub fn lookup_route(dst: [u8; 4]) -> Route {
    match WEFT_ROUTES.get(Key::new(32, dst)) {
        Some(r) => *r,
        None => Route::default(),
    }
}

/// The endpoint of pod `ip`, copied out of the map; `ifindex` 0 if none.
#[inline(always)]
pub fn lookup_pod(ip: [u8; 4]) -> PodEndpoint {
    match WEFT_PODS.get_ptr(ip) {
        // SAFETY: the pointer comes from a successful lookup and is read once; a concurrent
        // update can at worst give a torn copy of plain data, corrected by the next packet.
        Some(p) => unsafe { p.read() },
        None => PodEndpoint::default(),
    }
}

/// Whether `ip` belongs to the pod behind `ingress_ifindex` with MAC `mac`
/// ([`weft_common::route::owns_source`]), read in place: one lookup, no
/// copy shared with [`lookup_pod`] for LLVM to merge the two through.
#[inline(always)]
pub fn pod_owns(ip: [u8; 4], ingress_ifindex: u32, mac: &[u8; 6]) -> bool {
    match WEFT_PODS.get_ptr(ip) {
        // SAFETY: the pointer comes from a successful lookup; the value is plain data.
        Some(p) => weft_common::route::owns_source(unsafe { &*p }, ingress_ifindex, mac),
        None => false,
    }
}

/// The `WEFT_IPIP_SENDERS` entry of `ip`, copied out; `ifindex` 0 if none.
#[inline(always)]
pub fn lookup_ipip_sender(ip: [u8; 4]) -> IpipSender {
    match WEFT_IPIP_SENDERS.get_ptr(ip) {
        // SAFETY: the pointer comes from a successful lookup and is read once (plain data).
        Some(p) => unsafe { p.read() },
        None => IpipSender::default(),
    }
}

/// Whether `sender` may send IPIP with inner source `src`.
#[inline(always)]
pub fn sender_may_send(sender: [u8; 4], src: [u8; 4]) -> bool {
    WEFT_SENDER_SOURCES
        .get(Key::new(64, sender_source_data(sender, src)))
        .is_some()
}

/// The `WEFT_NIC_SOURCES` value for source `src`, `NOT_CLUSTER` on a miss.
#[inline(always)]
pub fn nic_source_rule(src: [u8; 4]) -> u32 {
    match WEFT_NIC_SOURCES.get(Key::new(32, src)) {
        Some(v) => *v,
        None => weft_common::sources::NOT_CLUSTER,
    }
}

/// Whether `ip` is in an LPM trie of prefixes.
#[inline(always)]
pub fn in_prefixes(map: &LpmTrie<[u8; 4], u32>, ip: [u8; 4]) -> bool {
    map.get(Key::new(32, ip)).is_some()
}
