//! flowwatch: an eBPF flow observer for Kubernetes.
//!
//! The crate is split into a pure core, which takes its inputs (and the time) as values and is
//! unit-tested without root, a kernel or an API server, and thin edges that talk to the world.
//!
//! Pure core: [`model`], [`aggregate`], [`inventory`], [`policy`], [`enrich`], [`classify`],
//! [`count`], [`metrics`], [`flowlog`], [`whatif`], [`advise`], [`report`], [`first_seen`].
//! Edges: [`datapath`] (aya), [`k8s`] (kube-rs), [`http`] (axum), [`agent`] (the runtime that
//! wires them), [`export`] (the OpenTelemetry logs exporter), [`cli`].

pub mod advise;
pub mod aggregate;
pub mod classify;
pub mod count;
pub mod model;
pub mod source;

pub mod enrich;
pub mod error_chain;
pub mod first_seen;
pub mod flowlog;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod policy_cli;
pub mod report;
pub mod sync;
pub mod whatif;

pub mod agent;
pub mod allocator;
pub mod cli;
pub mod datapath;
pub mod export;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod k8s;
