//! Command-line and environment settings of `flowwatch run`. Every flag has a `FLOWWATCH_*`
//! environment variable, which is how the Helm chart configures the agent.

pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};

use crate::metrics::MetricsConfig;

/// Default pod-interface patterns: the host-side veth names of common CNIs (bridge/ptp plugins,
/// Calico, Cilium, AWS VPC CNI, GKE, Azure, Weave, Flannel's cni0 ports), less Weave's own
/// bridge-to-datapath veth pair, which carries every pod's traffic a second time.
pub const DEFAULT_INTERFACES: &str =
    "veth*,cali*,lxc*,eni*,gke*,azv*,!vethwe-bridge,!vethwe-datapath";

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Pod interfaces to attach to: comma-separated names or globs (`*`). Exact names must
    /// exist at startup; globs follow interfaces as they come and go.
    #[arg(long, env = "FLOWWATCH_INTERFACES", default_value = DEFAULT_INTERFACES, value_delimiter = ',', value_parser = values::parse_interface_pattern)]
    pub interfaces: Vec<String>,

    /// Write the flow log (one JSON object per finished flow) here; `-` for stdout.
    #[arg(long, env = "FLOWWATCH_FLOW_LOG")]
    pub flow_log: Option<PathBuf>,

    /// Rotate the flow log file before it grows past this many bytes; 0 never rotates.
    #[arg(
        long,
        env = "FLOWWATCH_FLOW_LOG_MAX_BYTES",
        default_value_t = 104_857_600
    )]
    pub flow_log_max_bytes: u64,

    /// Rotated flow log files kept (`<path>.1` newest .. `<path>.N` oldest); 0 keeps none.
    #[arg(long, env = "FLOWWATCH_FLOW_LOG_MAX_FILES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub flow_log_max_files: u32,

    /// Also export every flow record as an OpenTelemetry log record over OTLP/HTTP (protobuf)
    /// to this collector: `http://host:port` (`/v1/logs` is added) or `http://host:port/path`.
    #[arg(long, env = "FLOWWATCH_OTLP_ENDPOINT", value_parser = values::parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// Most flow records the exporter holds while the collector is slow or away; beyond it new
    /// records are dropped and counted (flowwatch_flow_export_records_dropped_total).
    #[arg(long, env = "FLOWWATCH_OTLP_BUFFER_RECORDS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|v| v as usize))]
    pub otlp_buffer_records: usize,

    /// Most flow records per OTLP request.
    #[arg(long, env = "FLOWWATCH_OTLP_BATCH_RECORDS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=10_000).map(|v| v as usize))]
    pub otlp_batch_records: usize,

    /// The agent's pod and namespace (from the downward API in the DaemonSet), the
    /// `k8s.pod.name` and `k8s.namespace.name` of the exported records' resource.
    #[arg(long, env = "FLOWWATCH_POD_NAME")]
    pub pod_name: Option<String>,

    /// The agent's namespace (`k8s.namespace.name` of the exported records' resource).
    #[arg(long, env = "FLOWWATCH_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Address of the HTTP server (/metrics, /healthz, /readyz): `address:port`, or
    /// `host:port` with a name resolved at startup.
    #[arg(long, env = "FLOWWATCH_LISTEN", default_value = "0.0.0.0:9810", value_parser = values::parse_listen)]
    pub listen: SocketAddr,

    /// Serve the HTTP server over TLS with this certificate (PEM chain; needs
    /// --metrics-tls-key-file). Both files are re-read when they change on disk.
    #[arg(
        long,
        env = "FLOWWATCH_METRICS_TLS_CERT_FILE",
        requires = "metrics_tls_key_file"
    )]
    pub metrics_tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --metrics-tls-cert-file.
    #[arg(
        long,
        env = "FLOWWATCH_METRICS_TLS_KEY_FILE",
        requires = "metrics_tls_cert_file"
    )]
    pub metrics_tls_key_file: Option<PathBuf>,

    /// Who may read /metrics: `none` (anyone who reaches the port) or `kubernetes` (a bearer
    /// token the API server authenticates (TokenReview) and allows `get` on the non-resource
    /// URL /metrics (SubjectAccessReview)). /healthz and /readyz stay open.
    #[arg(long, env = "FLOWWATCH_METRICS_AUTH", value_enum, default_value_t = MetricsAuth::None)]
    pub metrics_auth: MetricsAuth,

    /// How often the kernel flow map is read, in milliseconds.
    #[arg(long, env = "FLOWWATCH_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// A flow with no packet for this many seconds is reported and forgotten.
    #[arg(long, env = "FLOWWATCH_IDLE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,

    /// Capacity of the kernel flow map (entries); new flows beyond it are counted as lost.
    #[arg(long, env = "FLOWWATCH_FLOWS_MAX_ENTRIES", default_value_t = flowwatch_common::DEFAULT_FLOWS_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub flows_max_entries: u32,

    /// Size of the kernel ring buffer that carries socket events to the agent, in bytes: a power
    /// of two from 64 KiB to 256 MiB. A reader thread empties it every 10 ms while events flow;
    /// it holds 64 bytes per event (about four per TCP connection); its pages are mapped into
    /// the agent (twice, so it counts double in the agent's RSS).
    #[arg(long, env = "FLOWWATCH_EVENTS_RING_BYTES", default_value_t = flowwatch_common::DEFAULT_EVENTS_BYTES, value_parser = parse_ring_bytes)]
    pub events_ring_bytes: u32,

    /// Flows with an end in these networks are not reported (the node's own loopback by
    /// default): `address/prefix`, or a bare address for one host.
    #[arg(
        long,
        env = "FLOWWATCH_IGNORE_CIDRS",
        default_value = "127.0.0.0/8,::1/128",
        value_delimiter = ',',
        value_parser = values::parse_cidr
    )]
    pub ignore_cidrs: Vec<ipnet::IpNet>,

    /// Benchmarks only: attach the kernel programs but make them return at once, to measure
    /// what the hooks themselves cost (`cargo xtask bench capture`). Nothing is captured.
    /// Only in builds with the `test-hooks` feature (the tests' and benchmarks' agent).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value_t = false)]
    pub benchmark_null_datapath: bool,

    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long, env = "FLOWWATCH_MOUNT_TRACEFS", default_value_t = true, action = clap::ArgAction::Set)]
    pub mount_tracefs: bool,

    /// Inventory from snapshot files (`kubectl get ... -o yaml`) instead of the Kubernetes API;
    /// reloaded when they change. Repeatable.
    #[arg(long = "snapshot", env = "FLOWWATCH_SNAPSHOT", value_delimiter = ',')]
    pub snapshots: Vec<PathBuf>,

    /// Watch the Kubernetes API (in-cluster config, or KUBECONFIG).
    #[arg(long, env = "FLOWWATCH_KUBE", default_value_t = false, action = clap::ArgAction::Set)]
    pub kube: bool,

    /// How each watch gets the objects that exist when it starts: `paged` (lists of 100, then
    /// a watch), `streaming` (sendInitialEvents, the WatchList feature) or `auto` (streaming
    /// where the API server supports it, else paged). See docs/benchmarks.md for what each costs.
    #[arg(long, env = "FLOWWATCH_KUBE_LIST_STRATEGY", value_enum, default_value_t = crate::k8s::ListStrategy::Paged)]
    pub kube_list_strategy: crate::k8s::ListStrategy,

    /// This node's name (from the downward API in the DaemonSet), written into each flow record.
    #[arg(long, env = "FLOWWATCH_NODE_NAME")]
    pub node_name: Option<String>,

    /// Pod labels copied into flow records, comma-separated (none by default; never metric labels).
    #[arg(long, env = "FLOWWATCH_LABEL_ALLOWLIST", value_delimiter = ',', value_parser = values::parse_label_key)]
    pub label_allowlist: Vec<String>,

    /// Whether NetworkPolicy ipBlock peers match pod IPs (true as the upstream conformance
    /// suite expects; false as Cilium behaves).
    #[arg(long, env = "FLOWWATCH_IPBLOCK_MATCHES_POD_IPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipblock_matches_pod_ips: bool,

    /// Declare CNI-specific policies (Cilium, Calico, Antrea kinds) irrelevant: verdicts are
    /// then not marked `cni_policy_present` (they are still counted in
    /// `flowwatch_cni_policy_objects`).
    #[arg(long, env = "FLOWWATCH_IGNORE_CNI_POLICIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub ignore_cni_policies: bool,

    /// Networks to name in flow records, comma-separated `name=cidr` (e.g. `corp-vpn=10.200.0.0/16`).
    #[arg(long, env = "FLOWWATCH_NAMED_NETWORKS", value_delimiter = ',')]
    pub named_networks: Vec<crate::enrich::NamedNetwork>,

    /// Most series one edge metric family keeps; the rest fold into an `other` bucket.
    #[arg(long, env = "FLOWWATCH_SERIES_BUDGET", default_value_t = MetricsConfig::DEFAULT_SERIES_PER_FAMILY, value_parser = values::parse_series_budget)]
    pub series_budget: usize,

    /// Most series one source namespace may hold in one edge family.
    #[arg(
        long,
        env = "FLOWWATCH_SERIES_BUDGET_PER_NAMESPACE",
        default_value_t = MetricsConfig::DEFAULT_SERIES_PER_NAMESPACE,
        value_parser = values::parse_series_budget
    )]
    pub series_budget_per_namespace: usize,

    /// Edge series not updated for this many seconds are removed (1 to 2592000, 30 days).
    #[arg(long, env = "FLOWWATCH_SERIES_TTL_SECS", default_value_t = MetricsConfig::DEFAULT_SERIES_TTL_SECS, value_parser = values::parse_series_ttl_secs)]
    pub series_ttl_secs: u64,

    /// Directory where the agent keeps its state across restarts (the known workload edges of
    /// `flowwatch_edge_first_seen_timestamp_seconds`, `known-edges.json`). Without it the
    /// known edges live in memory only: after a restart every edge is first seen again (the
    /// shipped new-edge alert still stays quiet for edges Prometheus saw in its lookback).
    #[arg(long, env = "FLOWWATCH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Known edges not seen for this many days are forgotten (and first seen again when they
    /// come back); 1 to 3650.
    #[arg(long, env = "FLOWWATCH_EDGE_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub edge_retention_days: u64,

    /// Log format.
    #[arg(long, env = "FLOWWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Stop after this many seconds (demos and tests; at least 1); runs until SIGTERM/SIGINT
    /// otherwise.
    #[arg(long, env = "FLOWWATCH_EXIT_AFTER_SECS", value_parser = values::parse_exit_after_secs)]
    pub exit_after_secs: Option<u64>,
}

/// `--metrics-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsAuth {
    None,
    Kubernetes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A ring buffer size: the kernel wants a power of two and a multiple of the page size.
fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let bytes: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of bytes: {e}"))?;
    if !bytes.is_power_of_two() || !(64 * 1024..=256 * 1024 * 1024).contains(&bytes) {
        return Err(format!(
            "{bytes} is not a power of two from 65536 (64 KiB) to 268435456 (256 MiB)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_ring_bytes;

    #[test]
    fn ring_sizes_are_powers_of_two_within_bounds() {
        assert_eq!(parse_ring_bytes("65536"), Ok(65536));
        assert_eq!(parse_ring_bytes("2097152"), Ok(2 * 1024 * 1024));
        for bad in ["32768", "3000000", "536870912", "-1", "2M"] {
            assert!(parse_ring_bytes(bad).is_err(), "{bad}");
        }
    }
}
