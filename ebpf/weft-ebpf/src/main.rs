//! Weft's datapath programs. Each program is small and single-purpose; the
//! maps they share are declared in `maps.rs` with their key, value and writer.
//! The packet logic itself (parsing, checksums, the IPIP header, the
//! forwarding decision) is plain code in `weft_common`, unit-tested on the host.
//!
//! | program | type | attached to |
//! |---|---|---|
//! | `weft_pod_ingress` | tc classifier | ingress of every host-side pod veth |
//! | `weft_nic_ingress` | tc classifier | ingress of the NIC |
//! | `weft_nic_egress` | tc classifier | egress of the NIC |
//! | `weft_wg_ingress` | tc classifier | ingress of the WireGuard device |
//! | `weft_uplink_ingress` | tc classifier | ingress of the other devices masqueraded traffic leaves by |
//! | `weft_xdp_ipip` | XDP | the NIC |
#![no_std]
#![no_main]

mod fwd;
mod maps;
mod nat;
mod nic;
mod nic_egress;
mod pod;
mod svc;
mod uplink;
mod wg;
mod xdp;

// The kernel refuses GPL-only helpers to programs without a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in verified BPF code: the verifier rejects any path that could panic.
    loop {}
}
