//! Exporter benchmarks: encoding a 50,000-series exposition (the scrape), and the cost of one
//! flow update into the metric families. `cargo bench -p flowwatch --bench metrics`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use flowwatch::metrics::exposition::openmetrics_to_prometheus_text;
use flowwatch::metrics::{
    encode_openmetrics, encode_prometheus_text, CniPresence, EdgeEnd, FlowEdge, Metrics,
    MetricsConfig, TierLabel, Verdict, WorkloadKind,
};
use flowwatch::model::{Counters, Outcome, Protocol};

const SEC: u64 = 1_000_000_000;

fn edge(i: usize) -> FlowEdge {
    // 100 namespaces x 500 workloads talking to a shared service in 10 namespaces.
    FlowEdge {
        src: EdgeEnd::workload(
            format!("team-{:03}", i % 100),
            format!("service-{:04}", i / 100),
            WorkloadKind::Deployment,
        ),
        dst: EdgeEnd::workload(
            format!("platform-{}", i % 10),
            "api",
            WorkloadKind::Deployment,
        ),
        dst_port: 8080,
        protocol: Protocol::Tcp,
        verdict: Verdict::Allowed,
        egress: Verdict::Uncovered,
        ingress: Verdict::Allowed,
        tier: TierLabel::NetworkPolicy,
        cni_policy_present: CniPresence::No,
    }
}

fn big_config() -> MetricsConfig {
    MetricsConfig {
        max_series_per_family: 100_000,
        max_series_per_namespace: 100_000,
        ..Default::default()
    }
}

fn scrape(c: &mut Criterion) {
    let (m, registry) = Metrics::new(&big_config()).unwrap();
    // 50,000 edge series (connections; health families add a few dozen).
    for i in 0..50_000 {
        m.record_flow(
            &edge(i),
            Some(Outcome::Established),
            &Counters::default(),
            SEC,
        );
    }
    let series: usize = m.series_counts().iter().map(|(_, n)| n).sum();
    assert_eq!(series, 50_000);
    let text = encode_openmetrics(&registry).unwrap();
    eprintln!(
        "exposition: {} bytes, {} sample lines",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    let mut g = c.benchmark_group("scrape");
    g.sample_size(20);
    g.bench_function("openmetrics_50k_series", |b| {
        b.iter(|| black_box(encode_openmetrics(&registry).unwrap()));
    });
    g.bench_function("prometheus_text_50k_series", |b| {
        b.iter(|| black_box(encode_prometheus_text(&registry).unwrap()));
    });
    g.bench_function("prometheus_text_via_a_second_copy", |b| {
        b.iter(|| {
            black_box(openmetrics_to_prometheus_text(
                &encode_openmetrics(&registry).unwrap(),
            ))
        });
    });
    g.bench_function("openmetrics_to_text_conversion_only", |b| {
        b.iter(|| black_box(openmetrics_to_prometheus_text(&text)));
    });
    g.finish();
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_flow");
    // Existing series: the steady state.
    let (m, _registry) = Metrics::new(&big_config()).unwrap();
    let edges: Vec<FlowEdge> = (0..1_000).map(edge).collect();
    let delta = Counters {
        fwd_packets: 3,
        fwd_bytes: 300,
        rev_packets: 2,
        rev_bytes: 1_200,
    };
    for e in &edges {
        m.record_flow(e, Some(Outcome::Established), &delta, SEC);
    }
    let mut i = 0usize;
    g.bench_function("connection_existing_series", |b| {
        b.iter(|| {
            i = (i + 1) % edges.len();
            m.record_flow(
                black_box(&edges[i]),
                Some(Outcome::Established),
                &Counters::default(),
                SEC,
            );
        });
    });
    g.bench_function("traffic_delta_existing_series", |b| {
        b.iter(|| {
            i = (i + 1) % edges.len();
            m.record_flow(black_box(&edges[i]), None, &delta, SEC);
        });
    });
    let uncovered: Vec<FlowEdge> = (0..1_000)
        .map(|i| FlowEdge {
            verdict: Verdict::Uncovered,
            ingress: Verdict::Uncovered,
            ..edge(i)
        })
        .collect();
    for e in &uncovered {
        m.record_flow(e, Some(Outcome::Established), &delta, SEC);
    }
    g.bench_function("uncovered_connection_with_traffic_existing_series", |b| {
        b.iter(|| {
            i = (i + 1) % uncovered.len();
            m.record_flow(
                black_box(&uncovered[i]),
                Some(Outcome::Established),
                &delta,
                SEC,
            );
        });
    });
    // New series: admission into the budget (fresh catalogue per batch).
    g.bench_function("connection_new_series", |b| {
        b.iter_batched(
            || {
                (
                    Metrics::new(&big_config()).unwrap(),
                    (0..100).map(edge).collect::<Vec<_>>(),
                )
            },
            |((m, _r), edges)| {
                for e in &edges {
                    m.record_flow(e, Some(Outcome::Established), &Counters::default(), SEC);
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, record, scrape);
criterion_main!(benches);
