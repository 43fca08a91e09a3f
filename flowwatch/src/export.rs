//! Flow export beyond the local flow log: an OpenTelemetry logs exporter (OTLP/HTTP with
//! protobuf), bounded and counted ([`otlp`]); the wire format is [`otlp_proto`].

pub mod otlp;
pub mod otlp_proto;

pub use otlp::{DropReason, ExportError, ExportStats, OtlpExporter, OtlpOptions};
