//! Per-CPU datapath counters.
//!
//! Map `WEFT_COUNTERS` (PerCpuArray, pinned at `/sys/fs/bpf/weft/WEFT_COUNTERS`):
//! key = `u32` index from [`Counter`], value = [`CounterValue`] per CPU.
//! Written by the eBPF programs, read (summed over CPUs) by the agent and `weftctl bpf`.

/// Index of each counter in the `WEFT_COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by the pod-side tc program.
    PodIngressSeen = 0,
}

impl Counter {
    pub const ALL: &'static [Counter] = &[Counter::PodIngressSeen];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::PodIngressSeen => "pod_ingress_seen",
        }
    }
}

/// Number of slots in the counter array (room to grow without a map resize).
pub const COUNTER_SLOTS: u32 = 64;

/// One CPU's slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields, no padding.
unsafe impl aya::Pod for CounterValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_fit_the_array() {
        for c in Counter::ALL {
            assert!((*c as u32) < COUNTER_SLOTS, "{}", c.name());
        }
    }
}
