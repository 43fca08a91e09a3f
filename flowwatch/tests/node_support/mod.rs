//! Helpers of `tests/node.rs`: the agent's image, the metrics text, the pods and the policies of
//! the connectivity matrix with their expected verdicts, a pod address reused, the agent's
//! replacement (its eBPF objects in the kernel), Prometheus' discovery of the agent.
#![allow(dead_code)]

pub mod image;
pub mod kernel;
pub mod lifecycle;
pub mod matrix;
pub mod metrics;
pub mod prometheus;
pub mod reuse;
