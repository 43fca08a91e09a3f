//! The OpenTelemetry logs exporter against a real OpenTelemetry Collector (its OTLP receiver,
//! built from the collector's published Go modules by `cargo xtask k8s-bins`): every record
//! offered below the buffer arrives, with the flow-log JSON as its body, the OTel `k8s.*`,
//! `source.*`, `destination.*` and `network.*` attributes and the agent as the resource; with
//! the collector stopped, exactly what exceeds the buffer is dropped and counted, and the
//! buffered records arrive once it is back. Loopback only; the collector is killed on drop.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use flowwatch::aggregate::{EndReason, FinishedFlow};
use flowwatch::export::otlp_proto::Value;
use flowwatch::export::{DropReason, ExportStats, OtlpExporter, OtlpOptions};
use flowwatch::flowlog::{FlowRecord, WallClock};
use flowwatch::model::{Flow, FlowKey, Outcome, Protocol};
use flowwatch_testkit::otelcol::{attribute, Collector};
use flowwatch_testkit::privileged::require;
use tokio_util::sync::CancellationToken;

/// A finished TCP flow from 10.0.0.1:`port` to 10.0.0.2:5432, its source a Deployment's pod.
fn record(port: u16) -> FlowRecord {
    let key = FlowKey {
        src: format!("10.0.0.1:{port}").parse().unwrap(),
        dst: "10.0.0.2:5432".parse().unwrap(),
        protocol: Protocol::Tcp,
    };
    let mut flow = Flow::new(key, 1_000_000_000);
    flow.last_seen = 2_000_000_000;
    flow.outcome = Outcome::Established;
    let mut r = FlowRecord::new(
        &FinishedFlow {
            flow,
            reason: EndReason::Closed,
        },
        WallClock::new(SystemTime::now(), 2_000_000_000),
    );
    r.node = Some("node-a".into());
    r.src.identity = serde_json::json!({
        "kind": "pod", "namespace": "shop", "name": "web-5d8c7f9b4-x2x7q",
        "workload_kind": "Deployment", "workload_name": "web", "node": "node-a"
    })
    .as_object()
    .cloned();
    r
}

fn exporter(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    buffer: usize,
) -> (
    OtlpExporter,
    ExportStats,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let stats = ExportStats::default();
    let stop = CancellationToken::new();
    let mut opts = OtlpOptions::new(endpoint);
    opts.buffer_records = buffer;
    opts.batch_records = 100;
    opts.flush_interval = Duration::from_millis(200);
    opts.resource = vec![
        ("service.name".into(), Value::Str("flowwatch".into())),
        ("k8s.node.name".into(), Value::Str("node-a".into())),
    ];
    let _guard = rt.enter();
    let (exp, task) = OtlpExporter::start(opts, stats.clone(), stop.clone()).expect("exporter");
    (exp, stats, stop, task)
}

fn ports(records: &[(serde_json::Value, serde_json::Value)]) -> BTreeSet<u16> {
    records
        .iter()
        .map(|(_, r)| {
            attribute(&r["attributes"], "source.port")
                .and_then(|p| p.parse().ok())
                .expect("source.port")
        })
        .collect()
}

fn wait(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_record_below_the_buffer_arrives_with_otel_attributes() {
    if !require(
        "flow export (OpenTelemetry Collector)",
        flowwatch_testkit::otelcol::available(),
    ) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::start();
    let (exp, stats, stop, task) = exporter(&rt, &collector.endpoint(), 1000);
    let n = 800u16;
    for p in 0..n {
        exp.offer(&record(40_000 + p));
    }
    let got = collector.wait_records(usize::from(n), Duration::from_secs(20));
    assert_eq!(got.len(), usize::from(n), "no record twice");
    assert_eq!(
        ports(&got),
        (40_000..40_000 + n).collect(),
        "every record once"
    );
    wait("exported counted", Duration::from_secs(5), || {
        stats.exported() == u64::from(n)
    });
    for reason in DropReason::ALL {
        assert_eq!(stats.dropped(reason), 0, "{reason:?}");
    }

    let (resource, r) = &got[0];
    assert_eq!(
        attribute(&resource["attributes"], "k8s.node.name").as_deref(),
        Some("node-a")
    );
    assert_eq!(
        attribute(&resource["attributes"], "service.name").as_deref(),
        Some("flowwatch")
    );
    let a = &r["attributes"];
    for (key, want) in [
        ("network.transport", "tcp"),
        ("source.address", "10.0.0.1"),
        ("destination.address", "10.0.0.2"),
        ("destination.port", "5432"),
        ("source.k8s.namespace.name", "shop"),
        ("source.k8s.pod.name", "web-5d8c7f9b4-x2x7q"),
        ("source.k8s.deployment.name", "web"),
        ("source.k8s.node.name", "node-a"),
        ("flowwatch.schema_version", "1"),
    ] {
        assert_eq!(attribute(a, key).as_deref(), Some(want), "{key} in {a}");
    }
    assert_eq!(r["eventName"], "flowwatch.flow");
    assert_eq!(r["severityText"], "INFO");
    let body: serde_json::Value =
        serde_json::from_str(r["body"]["stringValue"].as_str().expect("string body"))
            .expect("the body is the flow-log JSON");
    assert_eq!(body["schema_version"], 1);
    assert_eq!(body["src"]["workload_name"], "web");
    // The record's time is the flow's end.
    let end = humantime::parse_rfc3339(body["end"].as_str().unwrap()).unwrap();
    let end_ns = end
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    assert_eq!(r["timeUnixNano"].as_str(), Some(end_ns.as_str()));

    stop.cancel();
    rt.block_on(task).unwrap();
    assert_eq!(stats.dropped(DropReason::Shutdown), 0);
}

#[test]
fn with_the_collector_away_only_what_exceeds_the_buffer_is_lost_and_counted() {
    if !require(
        "flow export (OpenTelemetry Collector)",
        flowwatch_testkit::otelcol::available(),
    ) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = Collector::start();
    let buffer = 300usize;
    let (exp, stats, stop, task) = exporter(&rt, &collector.endpoint(), buffer);
    for p in 0..10 {
        exp.offer(&record(1_000 + p));
    }
    collector.wait_records(10, Duration::from_secs(20));
    wait("first records counted", Duration::from_secs(5), || {
        stats.exported() == 10
    });

    // Collector stopped: the buffer fills, the rest is dropped, counted exactly.
    collector.stop();
    let offered = 1_000u16;
    for p in 0..offered {
        exp.offer(&record(10_000 + p));
    }
    assert_eq!(exp.buffered(), buffer);
    assert_eq!(
        stats.dropped(DropReason::BufferFull),
        u64::from(offered) - buffer as u64
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stats.exported(), 10, "nothing can be exported meanwhile");

    // Back: the buffered records arrive (the oldest, the first `buffer` offered), once each.
    collector.restart();
    let got = collector.wait_records(10 + buffer, Duration::from_secs(30));
    assert_eq!(got.len(), 10 + buffer, "no record twice");
    let want: BTreeSet<u16> = (1_000..1_010)
        .chain(10_000..10_000 + buffer as u16)
        .collect();
    assert_eq!(ports(&got), want);
    wait(
        "the buffered records counted",
        Duration::from_secs(5),
        || stats.exported() == 10 + buffer as u64,
    );
    stop.cancel();
    rt.block_on(task).unwrap();
    // Every record offered is accounted for: exported or dropped by reason.
    let dropped: u64 = DropReason::ALL.iter().map(|r| stats.dropped(*r)).sum();
    assert_eq!(stats.exported() + dropped, exp.offered());
    assert_eq!(stats.dropped(DropReason::Rejected), 0);
    assert_eq!(stats.dropped(DropReason::Shutdown), 0);
}

/// The agent itself: its records of real flows (two network-namespace pods) reach the
/// collector, each body equal to the flow-log line of the same flow, the node as resource.
#[test]
fn the_agent_exports_the_records_it_logs() {
    if !flowwatch_testkit::privileged::root_test("agent flow export")
        || !require("agent flow export", flowwatch_testkit::otelcol::available())
    {
        return;
    }
    let collector = Collector::start();
    let node = flowwatch_testkit::netns::Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let endpoint = collector.endpoint();
    let mut agent = flowwatch_testkit::agent::Agent::start(&[
        "--interfaces",
        &node.interface_glob(),
        "--idle-timeout-secs",
        "1",
        "--node-name",
        "node-x",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let port = 7101u16;
    let target = std::net::SocketAddr::new(server.ipv4.into(), port);
    client
        .run(move || {
            for _ in 0..5 {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.send_to(b"flow", target).unwrap();
            }
        })
        .join()
        .unwrap();
    let to_port = |c: &Collector| -> Vec<(serde_json::Value, serde_json::Value)> {
        c.records()
            .into_iter()
            .filter(|(_, r)| {
                attribute(&r["attributes"], "destination.port").as_deref()
                    == Some(port.to_string().as_str())
            })
            .collect()
    };
    wait(
        "5 records at the collector",
        Duration::from_secs(30),
        || to_port(&collector).len() >= 5,
    );
    let exported = to_port(&collector);
    assert_eq!(exported.len(), 5, "each flow once");
    let mut bodies: Vec<String> = exported
        .iter()
        .map(|(resource, r)| {
            assert_eq!(
                attribute(&resource["attributes"], "k8s.node.name").as_deref(),
                Some("node-x")
            );
            r["body"]["stringValue"].as_str().unwrap().to_string()
        })
        .collect();
    let (status, logged) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());
    let mut lines: Vec<String> = logged
        .iter()
        .filter(|r| r["dst"]["port"] == port)
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let normalize = |v: &mut Vec<String>| {
        for s in v.iter_mut() {
            *s = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(s).unwrap())
                .unwrap();
        }
        v.sort();
    };
    normalize(&mut bodies);
    normalize(&mut lines);
    assert_eq!(
        bodies, lines,
        "the exported bodies are the flow-log records"
    );
}
