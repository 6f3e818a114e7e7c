//! Types shared across the kernel boundary.
//!
//! Everything here is `#[repr(C)]` plain data so that the eBPF programs and
//! the agent agree on the layout of every map key and value, plus pure packet
//! logic that is unit-tested on the host and used by the eBPF programs.
#![no_std]

pub mod counters;
