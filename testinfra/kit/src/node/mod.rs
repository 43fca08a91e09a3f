//! Helpers of `tests/node.rs` and `tests/node_advise.rs`: a node brought up and checked gone
//! for one test, the agent's image, the chart installed and scraped, the metrics text, the
//! pods and the policies of the connectivity matrix with their expected verdicts, a pod
//! address reused, the agent's replacement (its eBPF objects in the kernel), Prometheus'
//! discovery of the agent, and the application whose traffic `policy advise` learns from.

pub mod app;
pub mod chart;
pub mod harness;
pub mod image;
pub mod kernel;
pub mod lifecycle;
pub mod matrix;
pub mod metrics;
pub mod prometheus;
pub mod reuse;
