//! Backends: where the raw nodes, peers and settings come from, and where a
//! node publishes its own annotations.
//!
//! - [`dir`]: a directory of YAML files, needing no cluster.

pub mod dir;
