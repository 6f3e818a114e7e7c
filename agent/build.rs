//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object lives at `<workspace>/target/bpf/weft.bpf.o` (or wherever
//! `WEFT_EBPF_OBJECT` points). Building it needs the nightly toolchain and
//! bpf-linker, which `cargo xtask build-ebpf` installs; a plain `cargo build`
//! without it stops here with a message saying so.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_EBPF_OBJECT");
    let path = match std::env::var_os("WEFT_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../target/bpf/weft.bpf.o"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        panic!(
            "\n\nthe eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (it installs the toolchain it needs and builds the programs)\n",
            path.display()
        );
    }
    let path = path.canonicalize().expect("object path resolves");
    println!("cargo:rustc-env=WEFT_EBPF_OBJECT={}", path.display());
}
