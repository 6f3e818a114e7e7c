//! Reading the per-CPU counters map, summed over CPUs.

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use std::path::Path;
use weft_common::counters::{Counter, CounterValue};

/// Name of the counters map (and of its pin under the pin directory).
pub const MAP: &str = "WEFT_COUNTERS";

/// Every counter with its total over all CPUs, read from the pinned map.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<(Counter, CounterValue)>> {
    let path = pin_dir.join(MAP);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the weft datapath loaded on this node?)",
            path.display()
        )
    })?;
    let map: PerCpuArray<MapData, CounterValue> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    read(&map)
}

/// Every counter with its total over all CPUs.
pub fn read<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, CounterValue>,
) -> Result<Vec<(Counter, CounterValue)>> {
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = map
                .get(&(c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            let total = per_cpu
                .iter()
                .fold(CounterValue::default(), |acc, v| CounterValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                });
            Ok((c, total))
        })
        .collect()
}
