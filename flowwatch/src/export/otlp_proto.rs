//! The OTLP logs request (`opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`) in
//! protobuf wire format, written by hand: the few messages flow export needs are small and
//! stable (OTLP 1.x), and a code generator would add a build step and crates for them. Pure.
//!
//! A flow record becomes one `LogRecord`: its JSON line (the versioned flow-log schema) is the
//! body, its time is the flow's end, and the attributes a log pipeline routes and indexes on are
//! lifted out under OpenTelemetry semantic-convention names: `network.transport`,
//! `source.address`/`source.port`, `destination.address`/`destination.port`, and each end's
//! Kubernetes identity as `source.k8s.namespace.name`, `source.k8s.pod.name`,
//! `source.k8s.<workload>.name` (`deployment`, `statefulset`, `daemonset`, `job`, `cronjob`,
//! `replicaset`) and the same under `destination.`; the agent itself is the resource
//! (`service.name`, `k8s.node.name`, `k8s.pod.name`, `k8s.namespace.name`).

use crate::flowlog::FlowRecord;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// A length-delimited field (string, bytes, embedded message).
fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1; int_value = 3 }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let mut any = Vec::new();
    match value {
        Value::Str(s) => bytes_field(&mut any, 1, s.as_bytes()),
        Value::Int(i) => varint_field(&mut any, 3, *i as u64),
    }
    let mut kv = Vec::with_capacity(key.len() + any.len() + 4);
    bytes_field(&mut kv, 1, key.as_bytes());
    bytes_field(&mut kv, 2, &any);
    bytes_field(out, field, &kv);
}

/// `SEVERITY_NUMBER_INFO`: a flow is an observation, not a problem.
const SEVERITY_INFO: u64 = 9;

/// The `event.name` of every flow record.
pub const EVENT_NAME: &str = "flowwatch.flow";

/// One encoded `LogRecord` (its bytes, without the field tag of its container).
pub fn log_record(
    time_unix_nano: u64,
    observed_unix_nano: u64,
    body: &str,
    attributes: &[(String, Value)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64 * attributes.len() + 64);
    fixed64_field(&mut out, 1, time_unix_nano);
    varint_field(&mut out, 2, SEVERITY_INFO);
    bytes_field(&mut out, 3, b"INFO");
    let mut any = Vec::with_capacity(body.len() + 4);
    bytes_field(&mut any, 1, body.as_bytes());
    bytes_field(&mut out, 5, &any);
    for (k, v) in attributes {
        key_value(&mut out, 6, k, v);
    }
    fixed64_field(&mut out, 11, observed_unix_nano);
    bytes_field(&mut out, 12, EVENT_NAME.as_bytes());
    out
}

/// `ExportLogsServiceRequest` with one `ResourceLogs` (the agent) holding one `ScopeLogs`
/// (flowwatch) with `records` (each from [`log_record`]).
pub fn export_request<'a>(
    resource: &[(String, Value)],
    scope_version: &str,
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in resource {
        key_value(&mut res, 1, k, v);
    }
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"flowwatch");
    bytes_field(&mut scope, 2, scope_version.as_bytes());
    let mut scope_logs = Vec::new();
    bytes_field(&mut scope_logs, 1, &scope);
    for r in records {
        bytes_field(&mut scope_logs, 2, r);
    }
    let mut resource_logs = Vec::with_capacity(scope_logs.len() + res.len() + 16);
    bytes_field(&mut resource_logs, 1, &res);
    bytes_field(&mut resource_logs, 2, &scope_logs);
    let mut out = Vec::with_capacity(resource_logs.len() + 8);
    bytes_field(&mut out, 1, &resource_logs);
    out
}

/// `rejected_log_records` of an `ExportLogsServiceResponse`'s `partial_success` (0 when absent
/// or unreadable: the collector accepted the request).
pub fn rejected_in_response(body: &[u8]) -> u64 {
    fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// The fields of one message: (field, wire type, varint value or the slice).
    fn fields(b: &[u8]) -> Vec<(u64, u64, u64, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let Some(key) = read_varint(b, &mut at) else {
                break;
            };
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => match read_varint(b, &mut at) {
                    Some(v) => out.push((field, wire, v, &b[0..0])),
                    None => break,
                },
                2 => {
                    let Some(len) = read_varint(b, &mut at) else {
                        break;
                    };
                    let end = at.saturating_add(len as usize);
                    let Some(slice) = b.get(at..end) else {
                        break;
                    };
                    out.push((field, wire, 0, slice));
                    at = end;
                }
                1 => at += 8,
                5 => at += 4,
                _ => break,
            }
        }
        out
    }
    fields(body)
        .into_iter()
        .filter(|(f, w, _, _)| *f == 1 && *w == 2)
        .flat_map(|(_, _, _, partial)| fields(partial))
        .find(|(f, w, _, _)| *f == 1 && *w == 0)
        .map_or(0, |(_, _, v, _)| v)
}

/// The OpenTelemetry name of a workload kind (`k8s.<name>.name`).
fn workload_attribute(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "deployment",
        "StatefulSet" => "statefulset",
        "DaemonSet" => "daemonset",
        "Job" => "job",
        "CronJob" => "cronjob",
        "ReplicaSet" => "replicaset",
        _ => return None,
    })
}

/// The attributes lifted out of a flow record (see the module comment).
pub fn flow_attributes(record: &FlowRecord) -> Vec<(String, Value)> {
    let mut out = vec![
        (
            "flowwatch.schema_version".to_string(),
            Value::Int(i64::from(record.schema_version)),
        ),
        (
            "network.transport".to_string(),
            Value::Str(
                serde_json::to_value(record.protocol)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_ascii_lowercase))
                    .unwrap_or_default(),
            ),
        ),
    ];
    for (role, end) in [("source", &record.src), ("destination", &record.dst)] {
        out.push((format!("{role}.address"), Value::Str(end.ip.to_string())));
        out.push((format!("{role}.port"), Value::Int(i64::from(end.port))));
        let Some(id) = &end.identity else {
            continue;
        };
        let text = |k: &str| id.get(k).and_then(|v| v.as_str());
        if let Some(ns) = text("namespace") {
            out.push((format!("{role}.k8s.namespace.name"), Value::Str(ns.into())));
        }
        if text("kind") == Some("pod") {
            if let Some(pod) = text("name") {
                out.push((format!("{role}.k8s.pod.name"), Value::Str(pod.into())));
            }
        }
        if let (Some(kind), Some(name)) = (
            text("workload_kind").and_then(workload_attribute),
            text("workload_name"),
        ) {
            out.push((format!("{role}.k8s.{kind}.name"), Value::Str(name.into())));
        }
        if let Some(node) = text("node") {
            out.push((format!("{role}.k8s.node.name"), Value::Str(node.into())));
        }
    }
    if let Some(verdict) = record
        .policy
        .as_ref()
        .and_then(|p| p.get("verdict"))
        .and_then(|v| v.as_str())
    {
        out.push((
            "flowwatch.verdict".to_string(),
            Value::Str(verdict.to_string()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        varint(&mut out, 1);
        assert_eq!(out, [1]);
    }

    #[test]
    fn a_request_nests_resource_scope_and_records() {
        let rec = log_record(1, 2, "{}", &[("a".into(), Value::Int(5))]);
        let req = export_request(
            &[("k8s.node.name".into(), Value::Str("n".into()))],
            "0.1",
            [rec.as_slice()],
        );
        // field 1 (resource_logs), length-delimited
        assert_eq!(req[0], 0x0a);
        let text = String::from_utf8_lossy(&req);
        assert!(text.contains("k8s.node.name") && text.contains("flowwatch.flow"));
    }

    #[test]
    fn partial_success_reports_rejected_records() {
        // partial_success { rejected_log_records: 7, error_message: "x" }
        let partial = [0x08, 0x07, 0x12, 0x01, b'x'];
        let mut body = vec![0x0a, partial.len() as u8];
        body.extend_from_slice(&partial);
        assert_eq!(rejected_in_response(&body), 7);
        assert_eq!(rejected_in_response(&[]), 0);
        assert_eq!(
            rejected_in_response(&[0xff]),
            0,
            "garbage is not a rejection"
        );
    }
}
