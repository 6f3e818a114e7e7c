//! Weft's userspace: data flows backend → model → topology → reconcilers.
//!
//! - [`datapath`]: loads, pins, attaches and reads the eBPF programs and maps.

pub mod agent;
pub mod args;
pub mod backend;
pub mod cni;
pub mod ctl;
pub mod datapath;
pub mod detect;
pub mod dns;
pub mod health;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod podside;
pub mod routes;
pub mod topology;
pub mod wireguard;
