//! Weft's developer tasks as a library, so that tests, the demo and the
//! benchmarks share one namespace test bed and one toolchain setup.

pub mod bench;
pub mod check;
pub mod demo;
pub mod ebpf;
pub mod k8s;
pub mod manifests;
pub mod mesh;
pub mod probe;
pub mod setup;
pub mod testbed;
pub mod util;
