//! Command-line and environment settings of `flowwatch run`. Every flag has a `FLOWWATCH_*`
//! environment variable, which is how the Helm chart configures the agent.

pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

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

    /// Address of the HTTP server (/metrics, /healthz, /readyz): `address:port`, or
    /// `host:port` with a name resolved at startup.
    #[arg(long, env = "FLOWWATCH_LISTEN", default_value = "0.0.0.0:9810", value_parser = values::parse_listen)]
    pub listen: SocketAddr,

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

    /// This node's name (from the downward API in the DaemonSet), written into each flow record.
    #[arg(long, env = "FLOWWATCH_NODE_NAME")]
    pub node_name: Option<String>,

    /// Pod labels copied into flow records, comma-separated (none by default; never metric labels).
    #[arg(long, env = "FLOWWATCH_LABEL_ALLOWLIST", value_delimiter = ',')]
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
    #[arg(long, env = "FLOWWATCH_SERIES_BUDGET", default_value_t = 10_000, value_parser = values::parse_series_budget)]
    pub series_budget: usize,

    /// Most series one source namespace may hold in one edge family.
    #[arg(
        long,
        env = "FLOWWATCH_SERIES_BUDGET_PER_NAMESPACE",
        default_value_t = 2_000,
        value_parser = values::parse_series_budget
    )]
    pub series_budget_per_namespace: usize,

    /// Edge series not updated for this many seconds are removed (1 to 2592000, 30 days).
    #[arg(long, env = "FLOWWATCH_SERIES_TTL_SECS", default_value_t = 900, value_parser = values::parse_series_ttl_secs)]
    pub series_ttl_secs: u64,

    /// Log format.
    #[arg(long, env = "FLOWWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Stop after this many seconds (demos and tests; at least 1); runs until SIGTERM/SIGINT
    /// otherwise.
    #[arg(long, env = "FLOWWATCH_EXIT_AFTER_SECS", value_parser = values::parse_exit_after_secs)]
    pub exit_after_secs: Option<u64>,
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
