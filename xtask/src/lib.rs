//! Weft's developer tasks as a library, so that tests, the demo and the
//! benchmarks share one namespace test bed and one toolchain setup.

pub mod ebpf;
pub mod setup;
pub mod util;
