//! The eBPF datapath: the object embedded at build time (see `agent/build.rs`).

/// The eBPF object built by `cargo xtask build-ebpf`, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WEFT_EBPF_OBJECT"));
