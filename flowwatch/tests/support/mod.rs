//! Shared test harness. Each integration-test target includes it with `mod support;` and uses
//! what it needs.
#![allow(dead_code)]

pub mod agent;
pub mod apiserver;
pub mod chromium;
pub mod first_seen;
pub mod frames;
pub mod gocache;
pub mod helm;
pub mod jsonschema;
pub mod ledger;
pub mod netns;
pub mod netpol_analyzer;
pub mod otelcol;
pub mod privileged;
pub mod prometheus;
pub mod recording;
pub mod snapshot;
pub mod traffic;
