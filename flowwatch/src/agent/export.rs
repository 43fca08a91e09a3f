//! The OpenTelemetry export of flow records, from the flags: its metrics registered with the
//! rest, its sender started, and stopped after the last records at shutdown.

use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::export::otlp_proto::Value;
use crate::export::{ExportError, ExportStats, OtlpExporter, OtlpOptions};

/// A running exporter and how to stop it.
pub struct Export {
    pub exporter: OtlpExporter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Export {
    /// Sends what is buffered (within the shutdown deadline) and counts the rest.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        tracing::info!(offered = self.exporter.offered(), "flow export stopped");
    }
}

/// The agent as an OpenTelemetry resource: `service.*` and the `k8s.*` names of its pod.
pub fn resource(args: &RunArgs) -> Vec<(String, Value)> {
    let mut out = vec![
        ("service.name".to_string(), Value::Str("flowwatch".into())),
        (
            "service.version".to_string(),
            Value::Str(env!("CARGO_PKG_VERSION").into()),
        ),
    ];
    for (key, value) in [
        ("k8s.node.name", &args.node_name),
        ("k8s.pod.name", &args.pod_name),
        ("k8s.namespace.name", &args.pod_namespace),
    ] {
        if let Some(v) = value {
            out.push((key.to_string(), Value::Str(v.clone())));
        }
    }
    out
}

/// Starts the exporter when `--otlp-endpoint` is set, its metrics in `registry`.
pub fn start(
    args: &RunArgs,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Option<Export>, ExportError> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(None);
    };
    let stats = ExportStats::default();
    stats.register(registry);
    let mut opts = OtlpOptions::new(endpoint);
    opts.buffer_records = args.otlp_buffer_records;
    opts.batch_records = args.otlp_batch_records;
    opts.resource = resource(args);
    let stop = CancellationToken::new();
    let (exporter, task) = OtlpExporter::start(opts, stats, stop.clone())?;
    tracing::info!(%endpoint, buffer = args.otlp_buffer_records, "exporting flow records over OTLP/HTTP");
    Ok(Some(Export {
        exporter,
        stop,
        task,
    }))
}
