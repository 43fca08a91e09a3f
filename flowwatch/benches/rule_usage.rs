//! What the rule-usage counters (`flowwatch_policy_rule_*`) add to the agent's CPU per
//! connection: the agent's userspace path for a connection (the pipeline aggregating its
//! kernel events and totals, the reporter classifying it, enrichment and policy verdict, and
//! counting it into the metric families), run over the same connections with the counters on
//! and off, in alternating rounds, in one process. Prints the median time per connection of
//! each and their ratio; the target is under +5%.
//!
//! `cargo bench -p flowwatch --bench rule_usage`. `FLOWWATCH_BENCH_CONNECTIONS` (default
//! 2,000 per round: connections ending in one poll of a busy node; the reporter's cost per
//! connection grows with far larger batches, which would only flatter the ratio) and `FLOWWATCH_BENCH_ROUNDS` (default 31 of each) scale it.
//!
//! The cluster: 20 namespaces of 10 pods; in each, an ingress policy of three rules (two of them
//! allow the same traffic: every such connection credits two rules) and an egress policy of two,
//! and an AdminNetworkPolicy that denies one namespace's ingress from another. Every connection
//! is a new 5-tuple (as in the agent, where each is classified once). The flow log is left out
//! (it would only add to both sides: the ratio is the upper bound).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use flowwatch::agent::pipeline::Pipeline;
use flowwatch::aggregate::AggregatorConfig;
use flowwatch::classify::Classifier;
use flowwatch::count::ConnectionCounter;
use flowwatch::enrich::{EnrichOptions, OwnerIndex};
use flowwatch::flowlog::WallClock;
use flowwatch::metrics::{Metrics, MetricsConfig};
use flowwatch::model::{Counters, EventKind, Flow, FlowKey, Nanos, Observation, Protocol, Role};
use flowwatch::policy::PolicyOptions;
use flowwatch::source::FakeSource;

const SEC: Nanos = 1_000_000_000;
const NAMESPACES: usize = 20;
const PODS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ip(ns: usize, pod: usize) -> String {
    format!("10.{}.{}.{}", 1 + ns / 200, ns % 200, 10 + pod)
}

fn cluster() -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for ns in 0..NAMESPACES {
        let _ = writeln!(
            y,
            "- {{apiVersion: v1, kind: Namespace, metadata: {{name: ns{ns}, labels: {{team: t{}}}}}}}",
            ns % 4
        );
        for p in 0..PODS {
            let _ = writeln!(
                y,
                "- {{apiVersion: v1, kind: Pod, metadata: {{namespace: ns{ns}, name: pod{p}, labels: {{app: a{}}}}}, \
                 spec: {{containers: [{{name: c}}]}}, status: {{podIP: {}}}}}",
                p % 3,
                ip(ns, p)
            );
        }
    }
    for ns in 0..NAMESPACES {
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: ns{ns}, name: ingress}}\n\
             spec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n  ingress:\n\
             \x20 - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: a0}}}}}}]\n    ports: [{{port: 80}}]\n\
             \x20 - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n\
             \x20 - from: [{{podSelector: {{}}}}]\n    ports: [{{port: 80}}, {{port: 443}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: ns{ns}, name: egress}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a1}}}}\n  policyTypes: [Egress]\n  egress:\n\
             \x20 - to: [{{namespaceSelector: {{}}}}]\n    ports: [{{port: 80}}]\n\
             \x20 - to: [{{ipBlock: {{cidr: 0.0.0.0/0}}}}]\n    ports: [{{port: 443}}]\n",
            ns % 4
        );
    }
    y.push_str(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: guard}\n\
         spec:\n  priority: 10\n  subject: {namespaces: {matchLabels: {team: t0}}}\n  ingress:\n\
         \x20 - {name: deny-t3, action: Deny, from: [{namespaces: {matchLabels: {team: t3}}}]}\n",
    );
    y
}

/// The kernel's view of `n` short TCP connections, each a new 5-tuple: connect, established,
/// closed, and its packet totals.
fn connections(round: usize, n: usize, at: Nanos) -> Vec<Observation> {
    let mut out = Vec::with_capacity(4 * n);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ round as u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (sn, sp, dn, dp) = (
            (x % NAMESPACES as u64) as usize,
            ((x >> 8) % PODS as u64) as usize,
            ((x >> 16) % NAMESPACES as u64) as usize,
            ((x >> 24) % PODS as u64) as usize,
        );
        let port = [80, 443, 8080][((x >> 32) % 3) as usize];
        let key = FlowKey {
            src: format!("{}:{}", ip(sn, sp), 10_000 + (i % 50_000))
                .parse()
                .unwrap(),
            dst: format!("{}:{port}", ip(dn, dp)).parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        for kind in [
            EventKind::TcpConnect,
            EventKind::TcpEstablished,
            EventKind::TcpClosed,
        ] {
            out.push(Observation::Event {
                key,
                kind,
                role: Role::Client,
                at,
            });
        }
        out.push(Observation::Totals {
            key,
            counters: Counters {
                fwd_packets: 5,
                fwd_bytes: 400,
                rev_packets: 4,
                rev_bytes: 900,
            },
            first_seen: at,
            last_seen: at,
            fwd_tcp_flags: 0,
            rev_tcp_flags: 0,
        });
    }
    out
}

/// One round: `n` connections through the pipeline and the reporter; nanoseconds per
/// connection.
fn round(classifier: &Classifier, metrics: &Metrics, n: usize, r: usize) -> f64 {
    let at = (r as Nanos + 1) * 100 * SEC;
    let observations = connections(r, n, at);
    let mut pipeline = Pipeline::new(FakeSource::default(), AggregatorConfig::default(), &[]);
    let mut reporter =
        ConnectionCounter::new(None, WallClock::new(std::time::SystemTime::now(), 0));
    let started = Instant::now();
    for obs in observations {
        match obs {
            Observation::Event { .. } => pipeline.source.events.push(obs),
            Observation::Totals { .. } => pipeline.source.totals.push(obs),
        }
    }
    let mut reported = 0;
    for now in [at, at + 60 * SEC] {
        let ended = pipeline.pump_totals(now).unwrap();
        let classes = reporter.tick(
            pipeline.aggregator().flows(),
            &ended.flows,
            classifier,
            metrics,
            &mut |_| None,
            now,
        );
        reported += classes.len();
    }
    let took = started.elapsed();
    assert_eq!(reported, n, "every connection reported once");
    took.as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("FLOWWATCH_BENCH_CONNECTIONS", 2_000);
    let rounds = env_usize("FLOWWATCH_BENCH_ROUNDS", 31);
    let (inventory, errors) = flowwatch::inventory::snapshot::parse(&cluster(), "bench").unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let mut classifier = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
    let skipped = classifier.update(&inventory, &OwnerIndex::default(), 1, 0);
    assert!(skipped.is_empty(), "{skipped:?}");
    let config = |rule_usage| MetricsConfig {
        max_series_per_family: 100_000,
        max_series_per_namespace: 100_000,
        rule_usage,
        ..MetricsConfig::default()
    };
    let (on, _on_registry) = Metrics::new(&config(true)).unwrap();
    let (off, _off_registry) = Metrics::new(&config(false)).unwrap();
    // Warm-up: caches, series and allocator in their steady state on both sides.
    round(&classifier, &on, n, 0);
    round(&classifier, &off, n, 0);
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        // Alternating, and each side first half of the time: drift on a shared machine hits both.
        if r % 2 == 0 {
            t_on.push(round(&classifier, &on, n, r));
            t_off.push(round(&classifier, &off, n, r));
        } else {
            t_off.push(round(&classifier, &off, n, r));
            t_on.push(round(&classifier, &on, n, r));
        }
    }
    // The counting alone, over the same connections' verdicts: what it adds, measured
    // directly (the paired rounds above carry the machine's noise).
    let verdicts: Vec<_> = connections(0, n, SEC)
        .iter()
        .filter_map(|o| match o {
            Observation::Totals { key, .. } => Some(Flow::new(*key, SEC)),
            Observation::Event { .. } => None,
        })
        .filter_map(|f| classifier.classify(&f, None)?.0.verdict)
        .collect();
    let mut direct = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        for v in &verdicts {
            on.record_rule_matches(black_box(v), 1.0);
        }
        direct.push(started.elapsed().as_nanos() as f64 / verdicts.len() as f64);
    }
    let direct = median(&mut direct);
    // Pairwise ratios: each pair ran back to back on the same connections.
    let mut ratios: Vec<f64> = t_on.iter().zip(&t_off).map(|(a, b)| a / b).collect();
    let ratio = median(&mut ratios);
    let (m_on, m_off) = (median(&mut t_on), median(&mut t_off));
    println!(
        "rule_usage: {n} connections x {rounds} rounds; per connection: counters off {m_off:.0} ns, \
         on {m_on:.0} ns; overhead (median of paired ratios) {:+.2}% (target < +5%); rule series {}",
        (ratio - 1.0) * 100.0,
        on.rule_series()
    );
    println!(
        "rule_usage: the counting alone: {direct:.0} ns per connection = {:.2}% of the path without \
         it ({m_off:.0} ns; target < 5%)",
        direct / m_off * 100.0
    );
    assert!(on.rule_series() > 0, "the counters counted nothing");
}
