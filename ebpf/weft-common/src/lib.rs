//! Types shared across the kernel boundary.
//!
//! Everything here is `#[repr(C)]` plain data so that the eBPF programs and
//! the agent agree on the layout of every map key and value, plus pure packet
//! logic that is unit-tested on the host and used by the eBPF programs.
//!
//! - [`counters`]: the per-CPU counters (`WEFT_COUNTERS`).
//! - [`maps`]: map names, sizes, keys and values (`WEFT_ROUTES`, `WEFT_PODS`,
//!   `WEFT_IPIP_SENDERS`, `WEFT_SENDER_SOURCES`, `WEFT_NIC_SOURCES`).
//! - [`packet`]: header offsets and parsing (Ethernet, IPv4, ARP).
//! - [`csum`]: the IPv4 header checksum, full and incremental (RFC 1624).
//! - [`ipip`]: the outer header of IPv4-in-IPv4 encapsulation.
//! - [`route`]: the forwarding decision of each program.
//! - [`sources`]: who may send what into this node without WireGuard, and the MTU check.
//! - [`nat`]: masquerade: flow keys, NAT entries, port choice, TCP state, expiry.
//! - [`svc`]: Services: the client sockets whose replies go back through the kernel.
//!
//! The code must stay usable from eBPF: no allocation, no panics reachable
//! from the functions the programs call (fixed-size arrays, checked lengths).
#![no_std]

pub mod counters;
pub mod csum;
pub mod ipip;
pub mod maps;
pub mod nat;
pub mod packet;
pub mod route;
pub mod sources;
pub mod svc;

#[cfg(test)]
mod testutil;
