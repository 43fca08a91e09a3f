//! The harness of flowwatch's integration tests, benches and demo (as aya's
//! `test/integration-common`): the flowwatch package uses it as a dev-dependency,
//! `flowwatch_testkit::agent::Agent` and so on. Real parts, not mocks: the agent binary as a
//! child process, pods in network namespaces, a real kube-apiserver and etcd, Prometheus and
//! promtool, the OpenTelemetry Collector, helm, headless Chromium, a real Kubernetes node.
//!
//! * [`agent`], [`netns`], [`traffic`], [`ledger`], [`recording`], [`snapshot`],
//!   [`first_seen`], [`frames`], [`http_flood`]: the agent and the traffic it observes;
//! * [`apiserver`], [`k8s`]: a real API server and the objects and waits of the `k8s_*` tests;
//! * [`policy`], [`whatif_prometheus`]: the policy tests' cluster and matrices, the what-if
//!   benchmark's Prometheus history;
//! * [`prometheus`], [`otelcol`], [`chromium`], [`helm`], [`jsonschema`], [`netpol_analyzer`],
//!   [`gocache`]: the outside tools, built or found, and run;
//! * [`node`]: a real node for `tests/node.rs` and `tests/node_advise.rs`;
//! * [`privileged`]: root-only tests that skip outside CI and never under `CI=true`;
//! * [`paths`]: where the workspace is.

pub mod agent;
pub mod apiserver;
pub mod chromium;
pub mod first_seen;
pub mod frames;
pub mod gocache;
pub mod helm;
pub mod http_flood;
pub mod jsonschema;
pub mod k8s;
pub mod ledger;
pub mod netns;
pub mod netpol_analyzer;
pub mod node;
pub mod otelcol;
pub mod paths;
pub mod policy;
pub mod privileged;
pub mod prometheus;
pub mod recording;
pub mod snapshot;
pub mod traffic;
pub mod whatif_prometheus;
