//! Helpers of `tests/node.rs`: the agent's image, the metrics text, the pods and the policies of
//! the connectivity matrix with their expected verdicts.
#![allow(dead_code)]

pub mod image;
pub mod matrix;
pub mod metrics;
