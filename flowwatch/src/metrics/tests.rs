use super::*;
use crate::model::Protocol;

const SEC: Nanos = 1_000_000_000;

fn edge(src: (&str, &str), dst: (&str, &str), port: u16, v: [Verdict; 3]) -> FlowEdge {
    FlowEdge {
        src: EdgeEnd::workload(src.0, src.1, WorkloadKind::Deployment),
        dst: EdgeEnd::workload(dst.0, dst.1, WorkloadKind::Deployment),
        dst_port: port,
        protocol: Protocol::Tcp,
        verdict: v[0],
        egress: v[1],
        ingress: v[2],
        tier: tier_of(v[0]),
        cni_policy_present: CniPresence::No,
    }
}

/// The tier these tests' verdicts come from: NetworkPolicies when a policy decided.
fn tier_of(v: Verdict) -> TierLabel {
    match v {
        Verdict::Allowed | Verdict::Denied => TierLabel::NetworkPolicy,
        _ => TierLabel::None,
    }
}

use Verdict::{Allowed as A, Denied as D, NotApplicable as N, Uncovered as U};

fn text(reg: &Registry) -> String {
    encode_openmetrics(reg).unwrap()
}

/// The sample lines of one metric (name without labels), in exposition order.
fn samples(reg: &Registry, name: &str) -> Vec<String> {
    text(reg)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(str::to_string)
        .collect()
}

fn new(cfg: &MetricsConfig) -> (Metrics, Registry) {
    Metrics::new(cfg).unwrap()
}

#[test]
fn an_allowed_connection_is_counted_with_every_label() {
    let (m, reg) = new(&MetricsConfig::default());
    let e = edge(("shop", "frontend"), ("shop", "cart"), 8080, [A, U, A]);
    m.record_flow(&e, Some(Outcome::Established), &Counters::default(), SEC);
    m.record_flow(
        &e,
        Some(Outcome::Established),
        &Counters::default(),
        2 * SEC,
    );
    assert_eq!(
        samples(&reg, "flowwatch_connections_total"),
        vec![
            "flowwatch_connections_total{src_namespace=\"shop\",src_workload=\"frontend\",src_kind=\"deployment\",\
             dst_namespace=\"shop\",dst_workload=\"cart\",dst_kind=\"deployment\",dst_port=\"8080\",protocol=\"TCP\",\
             verdict=\"allowed\",egress_verdict=\"uncovered\",ingress_verdict=\"allowed\",outcome=\"established\",\
             tier=\"networkpolicy\"} 2"
        ]
    );
    assert!(samples(&reg, "flowwatch_uncovered_connections_total").is_empty());
    assert!(samples(&reg, "flowwatch_enforcement_drift_connections_total").is_empty());
    assert!(samples(&reg, "flowwatch_blocked_attempts_total").is_empty());
}

#[test]
fn uncovered_drift_and_blocked_go_to_their_own_families() {
    let (m, reg) = new(&MetricsConfig::default());
    let none = Counters::default();
    m.record_flow(
        &edge(("a", "x"), ("b", "y"), 80, [U, U, U]),
        Some(Outcome::Established),
        &none,
        SEC,
    );
    m.record_flow(
        &edge(("a", "x"), ("a", "z"), 80, [U, U, U]),
        Some(Outcome::Failed),
        &none,
        SEC,
    );
    m.record_flow(
        &edge(("a", "x"), ("b", "db"), 5432, [D, A, D]),
        Some(Outcome::Established),
        &none,
        SEC,
    );
    m.record_flow(
        &edge(("a", "x"), ("b", "db"), 5432, [D, A, D]),
        Some(Outcome::Failed),
        &none,
        SEC,
    );
    m.record_flow(
        &edge(("a", "x"), ("b", "api"), 443, [A, A, A]),
        Some(Outcome::Failed),
        &none,
        SEC,
    );
    // Pending is not an outcome: nothing is counted.
    m.record_flow(
        &edge(("a", "x"), ("b", "api"), 443, [A, A, A]),
        Some(Outcome::Pending),
        &none,
        SEC,
    );

    let uncovered = samples(&reg, "flowwatch_uncovered_connections_total");
    assert_eq!(uncovered.len(), 2, "{uncovered:#?}");
    assert!(uncovered.iter().any(|l| l.contains("dst_workload=\"y\"")
        && l.contains("scope=\"cross_namespace\"")
        && l.contains("outcome=\"established\"")));
    assert!(uncovered.iter().any(|l| l.contains("dst_workload=\"z\"")
        && l.contains("scope=\"same_namespace\"")
        && l.contains("outcome=\"failed\"")));

    let drift = samples(&reg, "flowwatch_enforcement_drift_connections_total");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert!(
        drift[0].contains("dst_workload=\"db\"") && drift[0].contains("ingress_verdict=\"denied\"")
    );
    assert!(drift[0].ends_with(" 1"));

    let blocked = samples(&reg, "flowwatch_blocked_attempts_total");
    assert_eq!(blocked.len(), 2, "{blocked:#?}");
    assert!(blocked
        .iter()
        .any(|l| l.contains("dst_workload=\"db\"") && l.contains(",verdict=\"denied\"")));
    assert!(blocked
        .iter()
        .any(|l| l.contains("dst_workload=\"api\"") && l.contains(",verdict=\"allowed\"")));

    assert_eq!(samples(&reg, "flowwatch_connections_total").len(), 5);
}

#[test]
fn traffic_deltas_count_bytes_and_packets_by_direction_without_a_connection() {
    let (m, reg) = new(&MetricsConfig::default());
    let e = edge(("a", "x"), ("b", "y"), 80, [A, A, A]);
    let delta = Counters {
        fwd_packets: 3,
        fwd_bytes: 180,
        rev_packets: 0,
        rev_bytes: 0,
    };
    m.record_flow(&e, None, &delta, SEC);
    m.record_flow(&e, None, &delta, 2 * SEC);
    let bytes = samples(&reg, "flowwatch_flow_bytes_total");
    assert_eq!(
        bytes.len(),
        1,
        "zero reverse delta creates no series: {bytes:#?}"
    );
    assert!(bytes[0].contains("direction=\"forward\"") && bytes[0].ends_with(" 360"));
    let packets = samples(&reg, "flowwatch_flow_packets_total");
    assert!(packets[0].ends_with(" 6"));
    assert!(samples(&reg, "flowwatch_connections_total").is_empty());
}

#[test]
fn non_pod_endpoints_have_their_own_scope() {
    let (m, reg) = new(&MetricsConfig::default());
    let mut e = edge(("a", "x"), ("b", "y"), 53, [U, U, N]);
    e.dst = EdgeEnd::external();
    e.protocol = Protocol::Udp;
    m.record_flow(&e, Some(Outcome::Unanswered), &Counters::default(), SEC);
    let u = samples(&reg, "flowwatch_uncovered_connections_total");
    assert!(
        u[0].contains("dst_namespace=\"\",dst_workload=\"external\",dst_kind=\"external\""),
        "{u:?}"
    );
    assert!(u[0].contains("scope=\"non_pod\"") && u[0].contains("protocol=\"UDP\""));
    assert!(u[0].contains("outcome=\"unanswered\""));
}

#[test]
fn the_namespace_budget_folds_into_that_namespaces_other_bucket() {
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 100,
        max_series_per_namespace: 2,
        ..Default::default()
    });
    for i in 0..5 {
        let e = edge(("noisy", &format!("w{i}")), ("b", "y"), 80, [A, A, A]);
        m.record_flow(&e, Some(Outcome::Established), &Counters::default(), SEC);
    }
    m.record_flow(
        &edge(("quiet", "q"), ("b", "y"), 80, [A, A, A]),
        Some(Outcome::Established),
        &Counters::default(),
        SEC,
    );
    let c = samples(&reg, "flowwatch_connections_total");
    assert_eq!(
        c.len(),
        4,
        "two own + one other for noisy, one for quiet: {c:#?}"
    );
    let other: Vec<_> = c
        .iter()
        .filter(|l| l.contains("src_workload=\"other\""))
        .collect();
    assert_eq!(other.len(), 1);
    assert!(other[0].contains("src_namespace=\"noisy\",src_workload=\"other\",src_kind=\"other\",dst_namespace=\"b\",dst_workload=\"other\",dst_kind=\"other\",dst_port=\"other\""));
    assert!(other[0].ends_with(" 3"));
    assert!(samples(&reg, "flowwatch_series_dropped_total")
        .iter()
        .any(|l| l == "flowwatch_series_dropped_total{family=\"connections\"} 3"));
    assert!(samples(&reg, "flowwatch_series")
        .iter()
        .any(|l| l == "flowwatch_series{family=\"connections\"} 4"));
}

#[test]
fn the_family_budget_folds_into_the_global_other_bucket() {
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 3,
        max_series_per_namespace: 3,
        ..Default::default()
    });
    for i in 0..6 {
        let e = edge((&format!("ns{i}"), "w"), ("b", "y"), 80, [A, A, A]);
        m.record_flow(&e, Some(Outcome::Established), &Counters::default(), SEC);
    }
    let c = samples(&reg, "flowwatch_connections_total");
    assert_eq!(c.len(), 4, "{c:#?}");
    assert!(c.iter().any(|l| l.contains("src_namespace=\"other\"")
        && l.contains("dst_namespace=\"other\"")
        && l.ends_with(" 3")));
}

#[test]
fn idle_series_expire_and_free_their_budget() {
    let ttl = Duration::from_mins(1);
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 1,
        max_series_per_namespace: 1,
        series_ttl: ttl,
        ..Default::default()
    });
    let old = edge(("a", "gone"), ("b", "y"), 80, [A, A, A]);
    let newer = edge(("a", "fresh"), ("b", "y"), 80, [A, A, A]);
    m.record_flow(&old, Some(Outcome::Established), &Counters::default(), SEC);
    m.record_flow(
        &newer,
        Some(Outcome::Established),
        &Counters::default(),
        2 * SEC,
    );
    assert!(samples(&reg, "flowwatch_connections_total")
        .iter()
        .any(|l| l.contains("src_workload=\"other\"")));
    // Not idle long enough yet.
    assert_eq!(m.expire(60 * SEC), 0);
    // 61 s later, `gone` and the other bucket are idle past the ttl.
    assert_eq!(m.expire(63 * SEC), 2);
    assert!(samples(&reg, "flowwatch_connections_total").is_empty());
    m.record_flow(
        &newer,
        Some(Outcome::Established),
        &Counters::default(),
        64 * SEC,
    );
    let c = samples(&reg, "flowwatch_connections_total");
    assert_eq!(c.len(), 1);
    assert!(
        c[0].contains("src_workload=\"fresh\""),
        "the freed budget admits the active edge: {c:?}"
    );
}

#[test]
fn record_flow_sweeps_by_itself() {
    let (m, reg) = new(&MetricsConfig {
        series_ttl: Duration::from_secs(10),
        ..Default::default()
    });
    m.record_flow(
        &edge(("a", "old"), ("b", "y"), 80, [A, A, A]),
        Some(Outcome::Established),
        &Counters::default(),
        SEC,
    );
    m.record_flow(
        &edge(("a", "new"), ("b", "y"), 80, [A, A, A]),
        Some(Outcome::Established),
        &Counters::default(),
        30 * SEC,
    );
    let c = samples(&reg, "flowwatch_connections_total");
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains("src_workload=\"new\""));
}

#[test]
fn label_values_are_escaped() {
    let (m, reg) = new(&MetricsConfig::default());
    let e = edge(("a", "we\"ird\\na\nme"), ("b", "y"), 80, [A, A, A]);
    m.record_flow(&e, Some(Outcome::Established), &Counters::default(), SEC);
    let c = samples(&reg, "flowwatch_connections_total");
    assert!(c[0].contains(r#"src_workload="we\"ird\\na\nme""#), "{c:?}");
}

#[test]
fn health_setters_reach_the_exposition() {
    let (m, reg) = new(&MetricsConfig::default());
    m.add_events_lost(LossReason::RingbufFull, 5);
    m.add_events_lost(LossReason::RingbufFull, 2);
    m.add_events_lost(LossReason::AgentFlowLimit, 1);
    m.add_packets_unattributed(4);
    m.set_map_fill(KernelMap::Flows, 1.7);
    m.set_map_fill(KernelMap::Events, f64::NAN);
    m.set_interfaces_attached(3);
    m.set_watch_staleness(WatchedKind::NetworkPolicy, Duration::from_millis(2500));
    m.set_invalid_policies(1);
    m.set_objects_skipped(2);
    m.observe_evaluation(Duration::from_micros(2));
    m.observe_scrape(Duration::from_millis(3));
    let t = text(&reg);
    for want in [
        "flowwatch_kernel_events_lost_total{reason=\"ringbuf_full\"} 7",
        "flowwatch_kernel_events_lost_total{reason=\"flow_map_full\"} 0",
        "flowwatch_kernel_events_lost_total{reason=\"agent_flow_limit\"} 1",
        "flowwatch_kernel_packets_unattributed_total 4",
        "flowwatch_kernel_map_fill_ratio{map=\"flows\"} 1.0",
        "flowwatch_interfaces_attached 3",
        "flowwatch_watch_staleness_seconds{kind=\"NetworkPolicy\"} 2.5",
        "flowwatch_policies_invalid 1",
        "flowwatch_inventory_objects_skipped 2",
        "flowwatch_policy_evaluation_duration_seconds_count 1",
        "flowwatch_scrape_duration_seconds_count 1",
        concat!(
            "flowwatch_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\",commit=\"",
            env!("FLOWWATCH_GIT_COMMIT"),
            "\",ebpf_object_sha256=\"unknown\"} 1"
        ),
        "flowwatch_series_dropped_total{family=\"flow_bytes\"} 0",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains("map=\"events\""), "NaN is ignored");
}

#[test]
fn bad_config_is_an_error_naming_the_field() {
    let cases = [
        (
            MetricsConfig {
                max_series_per_family: 0,
                ..Default::default()
            },
            "max_series_per_family",
        ),
        (
            MetricsConfig {
                max_series_per_namespace: 0,
                ..Default::default()
            },
            "max_series_per_namespace",
        ),
        (
            MetricsConfig {
                max_series_per_family: 10,
                max_series_per_namespace: 20,
                ..Default::default()
            },
            "max_series_per_namespace (20) exceeds max_series_per_family (10)",
        ),
        (
            MetricsConfig {
                series_ttl: Duration::from_millis(10),
                ..Default::default()
            },
            "series_ttl",
        ),
    ];
    for (cfg, field) in cases {
        let err = Metrics::new(&cfg).expect_err("must fail").to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn openmetrics_names_the_units_and_build_info_carries_the_given_build() {
    let (m, reg) = new(&MetricsConfig {
        build: BuildInfo {
            version: "9.9.9".into(),
            commit: "abc123".into(),
            ebpf_object_sha256: "00ff".into(),
        },
        ..Default::default()
    });
    // Empty families are not encoded: give each one a series.
    let traffic = Counters {
        fwd_packets: 1,
        fwd_bytes: 60,
        rev_packets: 0,
        rev_bytes: 0,
    };
    m.record_flow(
        &edge(("a", "x"), ("b", "y"), 80, [A, A, A]),
        None,
        &traffic,
        SEC,
    );
    m.set_map_fill(KernelMap::Flows, 0.5);
    m.set_watch_staleness(WatchedKind::Pod, Duration::ZERO);
    let om = encode_openmetrics(&reg).unwrap();
    for (family, unit) in [
        ("flowwatch_flow_bytes", "bytes"),
        ("flowwatch_kernel_map_fill_ratio", "ratio"),
        ("flowwatch_watch_staleness_seconds", "seconds"),
        ("flowwatch_policy_evaluation_duration_seconds", "seconds"),
        ("flowwatch_scrape_duration_seconds", "seconds"),
    ] {
        assert!(
            om.contains(&format!("# UNIT {family} {unit}\n")),
            "no unit {unit} for {family}:\n{om}"
        );
    }
    // Only where the name ends with a unit.
    assert_eq!(om.matches("# UNIT ").count(), 5, "{om}");
    assert!(om.contains(
        "flowwatch_build_info{version=\"9.9.9\",commit=\"abc123\",ebpf_object_sha256=\"00ff\"} 1"
    ));
    // The Prometheus text format has no UNIT lines.
    assert!(!encode_prometheus_text(&reg).unwrap().contains("# UNIT"));
}

#[test]
fn both_formats_describe_counters_correctly() {
    let (m, reg) = new(&MetricsConfig::default());
    m.record_flow(
        &edge(("a", "x"), ("b", "y"), 80, [A, A, A]),
        Some(Outcome::Established),
        &Counters::default(),
        SEC,
    );
    let om = encode_openmetrics(&reg).unwrap();
    assert!(om.contains("# TYPE flowwatch_connections counter\n"));
    assert!(om.ends_with("# EOF\n"));
    let prom = encode_prometheus_text(&reg).unwrap();
    assert!(prom.contains("# TYPE flowwatch_connections_total counter\n"));
    assert!(prom.contains("# TYPE flowwatch_build_info gauge\n"));
    assert!(!prom.contains("# EOF"));
}

#[test]
fn the_budget_keeps_the_most_active_edges() {
    // ttl 60 s: windows of 6 s.
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 2,
        max_series_per_namespace: 2,
        series_ttl: Duration::from_mins(1),
        ..Default::default()
    });
    let none = Counters::default();
    let [quiet, busy, late] =
        ["quiet", "busy", "late"].map(|w| edge(("a", w), ("b", "y"), 80, [A, A, A]));
    m.record_flow(&quiet, Some(Outcome::Established), &none, SEC);
    m.record_flow(&busy, Some(Outcome::Established), &none, SEC);
    // `late` arrives when the budget is full: folded, a candidate.
    for _ in 0..10 {
        m.record_flow(&late, Some(Outcome::Established), &none, 2 * SEC);
        m.record_flow(&busy, Some(Outcome::Established), &none, 2 * SEC);
    }
    let c = samples(&reg, "flowwatch_connections_total");
    assert!(
        c.iter()
            .any(|l| l.contains("src_workload=\"other\"") && l.ends_with(" 10")),
        "{c:#?}"
    );
    // Next window: `late` (10 updates) replaces `quiet` (1 update); `busy` (11) stays.
    m.expire(8 * SEC);
    m.record_flow(&late, Some(Outcome::Established), &none, 9 * SEC);
    let c = samples(&reg, "flowwatch_connections_total");
    assert!(
        c.iter().all(|l| !l.contains("src_workload=\"quiet\"")),
        "{c:#?}"
    );
    assert!(
        c.iter()
            .any(|l| l.contains("src_workload=\"busy\"") && l.ends_with(" 11")),
        "{c:#?}"
    );
    assert!(
        c.iter()
            .any(|l| l.contains("src_workload=\"late\"") && l.ends_with(" 1")),
        "{c:#?}"
    );
    assert!(samples(&reg, "flowwatch_series")
        .iter()
        .any(|l| l == "flowwatch_series{family=\"connections\"} 3"));
}

#[test]
fn a_candidate_needs_clearly_more_activity_to_displace() {
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 1,
        max_series_per_namespace: 1,
        series_ttl: Duration::from_mins(1),
        ..Default::default()
    });
    let none = Counters::default();
    let [held, challenger] =
        ["held", "challenger"].map(|w| edge(("a", w), ("b", "y"), 80, [A, A, A]));
    // One window (ttl 60 s: windows of 6 s) of `held` with 5 updates and `challenger` with
    // `n`, then the re-ranking.
    let window = |n: u64, at: Nanos| {
        for _ in 0..5 {
            m.record_flow(&held, Some(Outcome::Established), &none, at);
        }
        for _ in 0..n {
            m.record_flow(&challenger, Some(Outcome::Established), &none, at);
        }
        m.expire(at + 7 * SEC);
        samples(&reg, "flowwatch_connections_total")
    };
    // 10 updates against 5: exactly twice is not more than twice, no churn.
    let c = window(10, SEC);
    assert!(
        c.iter().any(|l| l.contains("src_workload=\"held\"")),
        "{c:#?}"
    );
    assert!(
        c.iter().all(|l| !l.contains("src_workload=\"challenger\"")),
        "{c:#?}"
    );
    // 11 against 5: more than twice, `challenger` takes the place (and starts at zero).
    let c = window(11, 9 * SEC);
    assert!(
        c.iter().all(|l| !l.contains("src_workload=\"held\"")),
        "{c:#?}"
    );
    assert!(
        c.iter()
            .any(|l| l.contains("src_workload=\"challenger\"") && l.ends_with(" 0")),
        "{c:#?}"
    );
}

#[test]
fn an_edge_admitted_mid_window_is_not_promoted_again() {
    // ttl 60 s: windows of 6 s. `expire` frees slots on every call, re-ranks once a window.
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 2,
        max_series_per_namespace: 2,
        series_ttl: Duration::from_mins(1),
        ..Default::default()
    });
    let none = Counters::default();
    let rec = |w: &str, at: Nanos| {
        let e = edge(("a", w), ("b", "y"), 80, [A, A, A]);
        m.record_flow(&e, Some(Outcome::Established), &none, at);
    };
    rec("idle", SEC);
    rec("kept", SEC);
    // At 58 s `kept` is updated and the window starts (re-ranking at 64 s).
    rec("kept", 58 * SEC);
    // The budget is full: `late` folds twice, a candidate worth promoting.
    rec("late", 59 * SEC);
    rec("late", 59 * SEC);
    // Mid-window, `idle` expires and frees a slot, which `late` takes at its next update.
    assert_eq!(m.expire(61 * SEC + SEC / 2), 1);
    rec("late", 62 * SEC);
    // The re-ranking must not admit `late` a second time (nor evict `kept` for it).
    m.expire(64 * SEC);
    let c = samples(&reg, "flowwatch_connections_total");
    assert!(
        c.iter()
            .any(|l| l.contains("src_workload=\"late\"") && l.ends_with(" 1")),
        "{c:#?}"
    );
    assert!(
        c.iter().any(|l| l.contains("src_workload=\"kept\"")),
        "{c:#?}"
    );
    // Once everything has expired, the whole budget is free again: no slot leaked.
    m.expire(200 * SEC);
    assert!(samples(&reg, "flowwatch_connections_total").is_empty());
    rec("fresh1", 201 * SEC);
    rec("fresh2", 201 * SEC);
    let c = samples(&reg, "flowwatch_connections_total");
    assert_eq!(c.len(), 2, "{c:#?}");
    assert!(
        c.iter().all(|l| !l.contains("src_workload=\"other\"")),
        "{c:#?}"
    );
}

#[test]
fn a_fold_that_creates_an_overflow_bucket_is_counted_at_once() {
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 100,
        max_series_per_namespace: 1,
        ..Default::default()
    });
    for w in ["first", "second"] {
        let e = edge(("noisy", w), ("b", "y"), 80, [A, A, A]);
        m.record_flow(&e, Some(Outcome::Established), &Counters::default(), SEC);
    }
    // The last update folded into a new bucket: `first` and `noisy`'s other bucket.
    let s = samples(&reg, "flowwatch_series");
    assert!(
        s.iter()
            .any(|l| l == "flowwatch_series{family=\"connections\"} 2"),
        "{s:#?}"
    );
}

#[test]
fn a_full_namespace_only_displaces_its_own_edges() {
    let (m, reg) = new(&MetricsConfig {
        max_series_per_family: 10,
        max_series_per_namespace: 1,
        series_ttl: Duration::from_mins(1),
        ..Default::default()
    });
    let none = Counters::default();
    let other_ns = edge(("quiet-ns", "idle"), ("b", "y"), 80, [A, A, A]);
    let first = edge(("noisy", "first"), ("b", "y"), 80, [A, A, A]);
    let second = edge(("noisy", "second"), ("b", "y"), 80, [A, A, A]);
    m.record_flow(&other_ns, Some(Outcome::Established), &none, SEC);
    m.record_flow(&first, Some(Outcome::Established), &none, SEC);
    for _ in 0..5 {
        m.record_flow(&second, Some(Outcome::Established), &none, SEC);
    }
    m.expire(8 * SEC);
    let c = samples(&reg, "flowwatch_connections_total");
    assert!(
        c.iter().any(|l| l.contains("src_workload=\"idle\"")),
        "another namespace's idle edge stays: {c:#?}"
    );
    assert!(
        c.iter().any(|l| l.contains("src_workload=\"second\"")),
        "{c:#?}"
    );
    assert!(
        c.iter().all(|l| !l.contains("src_workload=\"first\"")),
        "{c:#?}"
    );
}

#[test]
fn expire_scans_at_most_once_a_second() {
    let (m, reg) = new(&MetricsConfig {
        series_ttl: Duration::from_secs(10),
        ..Default::default()
    });
    let none = Counters::default();
    m.record_flow(
        &edge(("a", "x"), ("b", "y"), 80, [A, A, A]),
        Some(Outcome::Established),
        &none,
        SEC,
    );
    assert_eq!(m.expire(10 * SEC + 800_000_000), 0, "not idle for 10 s yet");
    // At 11.5 s the series is idle past the ttl, but the last scan was 0.7 s ago: skipped.
    assert_eq!(m.expire(11 * SEC + SEC / 2), 0);
    assert_eq!(samples(&reg, "flowwatch_connections_total").len(), 1);
    assert_eq!(m.expire(12 * SEC), 1);
    assert!(samples(&reg, "flowwatch_connections_total").is_empty());
}

/// The families of the registry the agent serves: the catalogue plus the `kube_*` families of
/// the inventory's sync status (registered in both kube and snapshot mode) and the flow
/// export's (with `--otlp-endpoint`), by the name a
/// scraper sees (counters with `_total`, the info family with `_info`), with their type.
///
/// An empty family is not encoded, so every family gets a series here first; the number of
/// families encoded must equal the number registered (counted in the registry's `Debug`
/// output, one `Descriptor` each), so a new family nobody fills here fails this test too.
fn agent_families() -> std::collections::BTreeMap<String, String> {
    let (m, mut registry) = new(&MetricsConfig::default());
    crate::k8s::SyncStatus::default().register(&mut registry);
    crate::export::ExportStats::default().register(&mut registry);
    m.start_first_seen(crate::first_seen::KnownEdges::new(100, 100), WallOffset(0));
    let now = SEC;
    let traffic = Counters {
        fwd_packets: 1,
        fwd_bytes: 60,
        rev_packets: 1,
        rev_bytes: 60,
    };
    for (v, outcome) in [
        ([U, U, U], Outcome::Established),
        ([D, A, D], Outcome::Established),
        ([D, A, D], Outcome::Failed),
    ] {
        let e = edge(("shop", "frontend"), ("shop", "cart"), 8080, v);
        m.record_flow(&e, Some(outcome), &traffic, now);
    }
    m.set_map_fill(KernelMap::Flows, 0.5);
    m.set_watch_staleness(WatchedKind::Pod, Duration::ZERO);
    m.record_rule_matches(&rule_verdict(), 1.0);
    let text = encode_prometheus_text(&registry).unwrap();
    let families: std::collections::BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').unwrap();
            (name.to_string(), ty.to_string())
        })
        .collect();
    let registered = format!("{registry:?}").matches("Descriptor {").count();
    assert_eq!(
        families.len(),
        registered,
        "{registered} families registered, {} encoded: give the new family a series in \
         agent_families()\n{text}",
        families.len()
    );
    families
}

/// A verdict one NetworkPolicy rule allows (for the rule-usage families).
fn rule_verdict() -> crate::policy::FlowVerdict {
    use crate::policy::{FlowVerdict, RuleRef, SideReason, SideResult, SideVerdict, Tier};
    let side = |allowed_by: Vec<RuleRef>, verdict| SideResult {
        verdict,
        reason: SideReason::RuleMatched,
        allowed_by: allowed_by.into(),
        tier: Tier::NetworkPolicy,
        decided_by: None,
        cni_policy_present: false,
    };
    let rule = RuleRef {
        policy: std::sync::Arc::from("shop/cart"),
        rule: 0,
    };
    FlowVerdict {
        verdict: crate::policy::Verdict::Allowed,
        ingress: side(vec![rule], SideVerdict::Allowed),
        egress: side(Vec::new(), SideVerdict::Uncovered),
    }
}

/// Every `flowwatch_*` name written in `doc`.
fn names_in(doc: &str) -> std::collections::BTreeSet<&str> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = doc;
    while let Some(at) = rest.find("flowwatch_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if end > "flowwatch_".len() {
            out.insert(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn docs_metrics_md_lists_every_family_the_agent_exposes_and_no_other() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let families = agent_families();
    assert!(
        families.len() >= 25 && families.contains_key("flowwatch_kube_watch_errors_total"),
        "{families:?}"
    );
    // Listed: a table row whose first cell is the family's name.
    let missing: Vec<&String> = families
        .keys()
        .filter(|name| !doc.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "families the agent exposes that docs/metrics.md does not list: {missing:?}"
    );
    // And every name the page writes is one of them (or a histogram's series).
    let unknown: Vec<&str> = names_in(&doc)
        .into_iter()
        .filter(|n| {
            !families.contains_key(*n)
                && !["_bucket", "_count", "_sum"].iter().any(|s| {
                    n.strip_suffix(s)
                        .is_some_and(|f| families.get(f).is_some_and(|t| t == "histogram"))
                })
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/metrics.md names families the agent does not expose: {unknown:?}"
    );
}

#[test]
fn the_deciding_tier_and_cni_presence_are_labels_of_drift_and_blocked() {
    let (m, reg) = new(&MetricsConfig::default());
    let admin = FlowEdge {
        tier: TierLabel::Admin,
        ..edge(("tenant-a", "a1"), ("tenant-b", "b1"), 8080, [D, U, D])
    };
    let cni = FlowEdge {
        cni_policy_present: CniPresence::Yes,
        ..edge(("web", "front"), ("l7", "api"), 80, [D, U, D])
    };
    for e in [&admin, &cni] {
        m.record_flow(e, Some(Outcome::Established), &Counters::default(), SEC);
    }
    m.record_flow(&admin, Some(Outcome::Failed), &Counters::default(), SEC);
    let drift = samples(&reg, "flowwatch_enforcement_drift_connections_total");
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(drift.iter().any(|l| l.contains("dst_workload=\"b1\"")
        && l.contains("tier=\"admin\",cni_policy_present=\"false\"")));
    assert!(drift.iter().any(|l| l.contains("dst_workload=\"api\"")
        && l.contains("tier=\"networkpolicy\",cni_policy_present=\"true\"")));
    let blocked = samples(&reg, "flowwatch_blocked_attempts_total");
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert!(blocked[0].contains("outcome=\"failed\",tier=\"admin\""));
    let conns = samples(&reg, "flowwatch_connections_total");
    assert!(conns.iter().all(|l| l.contains("tier=\"")), "{conns:?}");
}

#[test]
fn cni_policy_objects_are_counted_by_known_kind_from_the_start() {
    let (m, reg) = new(&MetricsConfig::default());
    let zero = samples(&reg, "flowwatch_cni_policy_objects");
    assert_eq!(zero.len(), CniPolicyKind::ALL.len(), "{zero:?}");
    assert!(zero.iter().all(|l| l.ends_with(" 0")), "{zero:?}");
    let counts = std::collections::BTreeMap::from([
        ("CiliumNetworkPolicy".to_string(), 3),
        ("projectcalico.org/NetworkPolicy".to_string(), 1),
        ("example.com/Unknown".to_string(), 9),
    ]);
    m.set_cni_policy_objects(&counts);
    let t = text(&reg);
    assert!(t.contains("flowwatch_cni_policy_objects{kind=\"CiliumNetworkPolicy\"} 3"));
    assert!(t.contains("flowwatch_cni_policy_objects{kind=\"projectcalico.org/NetworkPolicy\"} 1"));
    assert!(!t.contains("example.com"));
    // a kind that went away reads 0 again
    m.set_cni_policy_objects(&std::collections::BTreeMap::default());
    assert!(text(&reg).contains("flowwatch_cni_policy_objects{kind=\"CiliumNetworkPolicy\"} 0"));
}

#[test]
fn every_cni_policy_kind_of_the_inventory_has_its_label_value() {
    // The names the inventory gives CNI kinds (`add_cni_object`) are the gauge's label values.
    let mut into = crate::inventory::cluster_policy::ClusterPolicies::default();
    for (group, kind, _) in crate::inventory::cluster_policy::CNI_POLICY_KINDS {
        crate::inventory::cluster_policy::add_cni_object(
            &mut into,
            kind,
            &format!("{group}/v1"),
            &serde_json::json!({"metadata": {"name": "p", "namespace": "n"}}),
        );
    }
    let names: std::collections::BTreeSet<&str> =
        into.cni_policies.iter().map(|p| p.kind.as_str()).collect();
    let labels: std::collections::BTreeSet<&str> =
        CniPolicyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, labels);
}

#[test]
fn domain_words_are_label_values() {
    use crate::policy;
    for v in [
        policy::Verdict::Allowed,
        policy::Verdict::Denied,
        policy::Verdict::Uncovered,
    ] {
        assert_eq!(Verdict::from(v).as_str(), v.as_str());
    }
    for v in [
        policy::SideVerdict::Allowed,
        policy::SideVerdict::Denied,
        policy::SideVerdict::Uncovered,
        policy::SideVerdict::NotApplicable,
    ] {
        assert_eq!(Verdict::from(v).as_str(), v.as_str());
    }
    for t in [
        policy::Tier::Admin,
        policy::Tier::NetworkPolicy,
        policy::Tier::Baseline,
        policy::Tier::None,
    ] {
        assert_eq!(TierLabel::from(t).as_str(), t.as_str());
    }
}
