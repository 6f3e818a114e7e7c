//! Weft's userspace: data flows backend → model → topology → reconcilers.
//!
//! - [`datapath`]: loads, pins, attaches and reads the eBPF programs and maps.

pub mod datapath;
