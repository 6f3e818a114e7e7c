//! tc program on the pod side: every packet a pod sends enters here.

use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};
use weft_common::counters::Counter;

use crate::maps::count;

/// Counts pod packets and hands them to the next stage unchanged.
#[classifier]
pub fn weft_pod_ingress(ctx: TcContext) -> i32 {
    count(Counter::PodIngressSeen, ctx.len());
    TC_ACT_PIPE
}
