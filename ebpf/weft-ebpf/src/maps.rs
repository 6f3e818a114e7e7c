//! Every map of the datapath. Pinned by the agent under `/sys/fs/bpf/weft/<NAME>`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use weft_common::counters::{COUNTER_SLOTS, Counter, CounterValue};

/// `WEFT_COUNTERS`: key `u32` ([`Counter`] index) → [`CounterValue`] per CPU.
/// Written by every program; read by the agent (`/metrics`) and `weftctl bpf counters`.
#[map]
pub static WEFT_COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Adds one packet of `len` bytes to counter `c` on this CPU.
#[inline(always)]
pub fn count(c: Counter, len: u32) {
    if let Some(slot) = WEFT_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently; pointer checked non-null.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len as u64;
        }
    }
}
