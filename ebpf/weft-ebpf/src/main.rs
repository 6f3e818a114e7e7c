//! Weft's datapath programs. Each program is small and single-purpose; the
//! maps they share are declared in `maps.rs` with their key, value and writer.
#![no_std]
#![no_main]

mod maps;
mod pod;

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
