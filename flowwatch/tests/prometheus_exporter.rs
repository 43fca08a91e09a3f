//! The exporter scraped by a real Prometheus (Debian's `prometheus`), fed a deterministic
//! traffic scenario through the public metrics API and served by the real HTTP edge on loopback.
//!
//! Two agents ("node-a" with traffic, "node-b" unhealthy with a tiny series budget) and one dead
//! target are scraped every second: node-a twice, once negotiating OpenMetrics and once forced to
//! the Prometheus text format. The assertions go through Prometheus's HTTP API: the series and
//! their labels and values, every PromQL expression of the dashboard and of the chart's rules
//! (parses and returns data), the alerts that must be active, and `promtool check metrics`.
//!
//! The rules are the chart's, rendered by helm with its default values except two lookbacks the
//! test cannot wait for ([`SHORT_LOOKBACKS`]): with the defaults the new-edge and spike rules
//! wait a day and an hour after being loaded before they can fire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowwatch::http::{self, HttpState, Readiness};
use flowwatch::metrics::{
    CniPresence, EdgeEnd, FlowEdge, KernelMap, LossReason, Metrics, MetricsConfig, TierLabel,
    Verdict, WatchedKind, WorkloadKind,
};
use flowwatch::model::{Counters, Outcome, Protocol};
use flowwatch_testkit::privileged::{command, require};
use flowwatch_testkit::prometheus::{self, http_get, http_get_full, Job, Prometheus};
use tokio_util::sync::CancellationToken;

const SEC: u64 = 1_000_000_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// An exporter on a loopback port; stops on drop.
struct Exporter {
    metrics: Metrics,
    readiness: Readiness,
    addr: String,
    shutdown: CancellationToken,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start_exporter(rt: &tokio::runtime::Runtime, cfg: &MetricsConfig) -> Exporter {
    let (metrics, registry) = Metrics::new(cfg).expect("valid config");
    // First-seen edges as the agent tracks them, this test's time 0 being now.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    metrics.start_first_seen(
        flowwatch::first_seen::KnownEdges::new(
            cfg.max_series_per_family,
            cfg.max_series_per_namespace,
        ),
        flowwatch::metrics::WallOffset(unix_now),
    );
    let readiness = Readiness::new();
    let state = HttpState::new(Arc::new(registry), metrics.clone(), readiness.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    rt.spawn(http::serve(listener, state, shutdown.clone()));
    Exporter {
        metrics,
        readiness,
        addr,
        shutdown,
    }
}

fn dep(ns: &str, name: &str) -> EdgeEnd {
    EdgeEnd::workload(ns, name, WorkloadKind::Deployment)
}

fn edge(src: EdgeEnd, dst: EdgeEnd, port: u16, v: [Verdict; 3]) -> FlowEdge {
    FlowEdge {
        src,
        dst,
        dst_port: port,
        protocol: Protocol::Tcp,
        verdict: v[0],
        egress: v[1],
        ingress: v[2],
        tier: match v[0] {
            Verdict::Allowed | Verdict::Denied => TierLabel::NetworkPolicy,
            _ => TierLabel::None,
        },
        cni_policy_present: CniPresence::No,
    }
}

use Verdict::{Allowed as A, Denied as D, Uncovered as U};

struct Scenario {
    frontend_cart: FlowEdge,
    frontend_ledger: FlowEdge,
    frontend_db: FlowEdge,
    cart_redis: FlowEdge,
    monitoring_cart: FlowEdge,
}

impl Scenario {
    fn new() -> Scenario {
        Scenario {
            // Allowed by the ingress policy of cart; no egress policy on frontend.
            frontend_cart: edge(
                dep("shop", "frontend"),
                dep("shop", "cart"),
                8080,
                [A, U, A],
            ),
            // No policy on either side, across namespaces.
            frontend_ledger: edge(
                dep("shop", "frontend"),
                dep("payments", "ledger"),
                8443,
                [U, U, U],
            ),
            // Denied by payments' ingress policy.
            frontend_db: edge(
                dep("shop", "frontend"),
                EdgeEnd::workload("payments", "db", WorkloadKind::StatefulSet),
                5432,
                [D, U, D],
            ),
            // Allowed, yet failing.
            cart_redis: edge(dep("shop", "cart"), dep("shop", "redis"), 6379, [A, A, A]),
            // Appears only in phase 2: a new edge.
            monitoring_cart: edge(
                dep("monitoring", "prober"),
                dep("shop", "cart"),
                8080,
                [U, U, U],
            ),
        }
    }
}

fn connections(m: &Metrics, e: &FlowEdge, outcome: Outcome, n: u64, now: u64) {
    for _ in 0..n {
        m.record_flow(e, Some(outcome), &Counters::default(), now);
    }
}

fn phase1(a: &Metrics, b: &Metrics, s: &Scenario) {
    let now = 10 * SEC;
    connections(a, &s.frontend_cart, Outcome::Established, 5, now);
    let traffic = Counters {
        fwd_packets: 10,
        fwd_bytes: 1_000,
        rev_packets: 8,
        rev_bytes: 20_000,
    };
    a.record_flow(&s.frontend_cart, None, &traffic, now);
    connections(a, &s.frontend_ledger, Outcome::Established, 3, now);
    connections(a, &s.frontend_db, Outcome::Established, 2, now);
    connections(a, &s.frontend_db, Outcome::Failed, 10, now);
    connections(a, &s.cart_redis, Outcome::Failed, 4, now);
    a.set_interfaces_attached(4);
    a.set_map_fill(KernelMap::Flows, 0.1);
    a.set_watch_staleness(WatchedKind::Pod, Duration::from_secs(1));
    a.set_invalid_policies(0);
    a.observe_evaluation(Duration::from_micros(3));

    b.set_interfaces_attached(0);
    b.set_map_fill(KernelMap::Flows, 0.95);
    b.set_watch_staleness(WatchedKind::NetworkPolicy, Duration::from_mins(10));
    b.set_invalid_policies(2);
    b.add_events_lost(LossReason::RingbufFull, 0);
}

fn phase2(a: &Metrics, b: &Metrics, s: &Scenario) {
    let now = 20 * SEC;
    connections(a, &s.frontend_cart, Outcome::Established, 5, now);
    a.record_flow(
        &s.frontend_cart,
        None,
        &Counters {
            fwd_packets: 10,
            fwd_bytes: 1_000,
            rev_packets: 8,
            rev_bytes: 20_000,
        },
        now,
    );
    connections(a, &s.frontend_ledger, Outcome::Established, 3, now);
    connections(a, &s.frontend_db, Outcome::Established, 1, now);
    connections(a, &s.frontend_db, Outcome::Failed, 100, now);
    connections(a, &s.monitoring_cart, Outcome::Established, 1, now);
    for _ in 0..20 {
        a.observe_evaluation(Duration::from_micros(5));
    }
    // node-b: budget of 2 series per family, 1 per namespace: the third edge and the second
    // edge of a namespace fold into `other`.
    connections(b, &s.frontend_cart, Outcome::Established, 1, now);
    connections(b, &s.frontend_ledger, Outcome::Established, 1, now);
    connections(b, &s.cart_redis, Outcome::Established, 1, now);
    connections(b, &s.monitoring_cart, Outcome::Established, 1, now);
    b.add_events_lost(LossReason::RingbufFull, 50);
}

/// The alert that fires when no agent is scraped at all: quiet in this scenario.
const ABSENT_ALERT: &str = "FlowwatchAgentAbsent";

/// The chart's values changed for this test: the new-edge rule's lookback and the spike rule's
/// baseline, each also how long the rules must have been loaded before they fire.
const SHORT_LOOKBACKS: &str = "prometheusRule.alerts.newEdge.lookback=5s,prometheusRule.alerts.newEdge.window=1m,prometheusRule.alerts.blockedAttemptsSpike.baselineWindow=5s";

/// Every `expr` of a rule file.
fn rule_exprs(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            out.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// `expr` without its `or vector(0)` fallbacks: the left operand of each, which must return
/// data by itself.
fn without_vector_fallback(expr: &str) -> String {
    let bare = expr.replace(" or vector(0)", "");
    assert!(
        !bare.contains("vector("),
        "a fallback this test does not strip: {expr}"
    );
    bare
}

#[test]
fn the_vector_fallback_is_stripped() {
    assert_eq!(without_vector_fallback("count(x) or vector(0)"), "count(x)");
    assert_eq!(
        without_vector_fallback("1 - ((sum(a) or vector(0)) / sum(b))"),
        "1 - ((sum(a)) / sum(b))"
    );
    assert_eq!(without_vector_fallback("sum(a)"), "sum(a)");
}

/// Every query of both dashboards, with Grafana's variables replaced as Grafana would with
/// "All" selected (the workload drill-down's single-value variables by a regex of everything).
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in [
        "flowwatch-dashboard.json",
        "flowwatch-workload-dashboard.json",
    ] {
        let path = repo().join("deploy/grafana").join(file);
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let mut expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m");
                for var in [
                    "$cluster",
                    "$src_namespace",
                    "$dst_namespace",
                    "$namespace",
                    "$workload",
                    "$node",
                ] {
                    expr = expr.replace(var, ".*");
                }
                assert!(
                    !expr.contains('$') || expr.contains("\"$1\""),
                    "unsubstituted variable in {expr}"
                );
                let title = format!(
                    "{file}: {} [{}]",
                    panel["title"].as_str().unwrap(),
                    t["refId"].as_str().unwrap()
                );
                out.push((title, expr));
            }
        }
    }
    out
}

#[test]
fn prometheus_scrapes_the_exporter_and_every_dashboard_and_rule_query_returns_data() {
    if !require("prometheus exporter test", prometheus::available()) {
        return;
    }
    if !require("prometheus exporter test", command("promtool")) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node_a = start_exporter(&rt, &MetricsConfig::default());
    let node_b = start_exporter(
        &rt,
        &MetricsConfig {
            max_series_per_family: 2,
            max_series_per_namespace: 1,
            ..Default::default()
        },
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string(); // released at once: nothing listens there

    // The HTTP edge itself: probes and negotiation.
    assert_eq!(http_get(&node_a.addr, "/healthz", None).unwrap().0, 200);
    let (status, body) = http_get(&node_a.addr, "/readyz", None).unwrap();
    assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
    node_a.readiness.set_ready();
    node_b.readiness.set_ready();
    assert_eq!(
        http_get(&node_a.addr, "/readyz", None).unwrap(),
        (200, "ready\n".into())
    );

    let s = Scenario::new();
    phase1(&node_a.metrics, &node_b.metrics, &s);

    let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (_, headers, om) = http_get_full(&node_a.addr, "/metrics", Some(prom_accept)).unwrap();
    assert!(
        headers.iter().any(|(k, v)| k == "content-type"
            && v.starts_with("application/openmetrics-text; version=1.0.0")),
        "{headers:?}"
    );
    assert!(om.ends_with("# EOF\n"));
    let (_, headers, text) = http_get_full(&node_a.addr, "/metrics", None).unwrap();
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    assert!(!text.contains("# EOF"));

    // promtool lints the text exposition of both agents.
    for (name, addr) in [("node-a", &node_a.addr), ("node-b", &node_b.addr)] {
        prometheus::promtool_check_metrics(name, addr);
    }

    let helm = match flowwatch_testkit::helm::helm() {
        Ok(h) => h,
        Err(e) => {
            require("prometheus exporter test (the chart's rules)", Err(e));
            return;
        }
    };
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("flowwatch-rules.yaml");
    std::fs::write(
        &rules,
        flowwatch_testkit::helm::rules(&helm, &["--set", SHORT_LOOKBACKS]).unwrap(),
    )
    .unwrap();
    let prom = Prometheus::start(
        &[
            Job::new("flowwatch", &[&node_a.addr, &node_b.addr, &dead]),
            Job::new("flowwatch-text", &[&node_a.addr]).param("format", "prometheus"),
        ],
        std::slice::from_ref(&rules),
    );
    let a = node_a.addr.as_str();
    // Three scrapes of phase 1 before phase 2, so rate() and increase() see the change.
    prom.wait_for(
        &format!("count_over_time(flowwatch_build_info{{instance=\"{a}\",job=\"flowwatch\"}}[1m])"),
        Duration::from_secs(30),
        |r| r.first().is_some_and(|s| s.value >= 3.0),
    );
    phase2(&node_a.metrics, &node_b.metrics, &s);
    // Every target scrapes at its own offset in the interval: the assertions below read all
    // of them (the text job, node-b), so each must have been scraped since phase 2.
    let phase2_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    prom.wait_for("min(timestamp(up))", Duration::from_secs(30), |r| {
        r.first().is_some_and(|s| s.value > phase2_at)
    });
    let sel = format!("job=\"flowwatch\",instance=\"{a}\"");
    prom.wait_for(
        &format!(
            "flowwatch_connections_total{{{sel},src_workload=\"frontend\",dst_workload=\"cart\"}}"
        ),
        Duration::from_secs(30),
        |r| r.len() == 1 && r[0].value == 10.0,
    );

    // Series, labels and values.
    let r = prom
        .query(&format!(
            "flowwatch_connections_total{{{sel},src_workload=\"frontend\",dst_workload=\"cart\"}}"
        ))
        .unwrap();
    for (k, v) in [
        ("src_namespace", "shop"),
        ("src_kind", "deployment"),
        ("dst_namespace", "shop"),
        ("dst_kind", "deployment"),
        ("dst_port", "8080"),
        ("protocol", "TCP"),
        ("verdict", "allowed"),
        ("egress_verdict", "uncovered"),
        ("ingress_verdict", "allowed"),
        ("outcome", "established"),
    ] {
        assert_eq!(r[0].label(k), v, "label {k} of {:?}", r[0].labels);
    }
    let r = prom
        .query(&format!(
            "flowwatch_uncovered_connections_total{{{sel},scope=\"cross_namespace\",src_namespace=\"shop\"}}"
        ))
        .unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (
            r[0].label("dst_namespace"),
            r[0].label("dst_workload"),
            r[0].value
        ),
        ("payments", "ledger", 6.0)
    );
    let r = prom
        .query(&format!(
            "flowwatch_enforcement_drift_connections_total{{{sel}}}"
        ))
        .unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (
            r[0].label("dst_workload"),
            r[0].label("ingress_verdict"),
            r[0].value
        ),
        ("db", "denied", 3.0)
    );
    let r = prom
        .query(&format!(
            "sum by (dst_workload, verdict) (flowwatch_blocked_attempts_total{{{sel}}})"
        ))
        .unwrap();
    let mut blocked: Vec<_> = r
        .iter()
        .map(|s| {
            (
                s.label("dst_workload").to_string(),
                s.label("verdict").to_string(),
                s.value,
            )
        })
        .collect();
    blocked.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        blocked,
        vec![
            ("db".into(), "denied".into(), 110.0),
            ("redis".into(), "allowed".into(), 4.0)
        ]
    );
    let r = prom
        .query(&format!(
            "flowwatch_flow_bytes_total{{{sel},dst_workload=\"cart\",direction=\"reverse\"}}"
        ))
        .unwrap();
    assert_eq!(r[0].value, 40_000.0);
    let r = prom
        .query(&format!(
            "flowwatch_connections_total{{{sel},src_namespace=\"monitoring\"}}"
        ))
        .unwrap();
    assert_eq!((r.len(), r[0].label("verdict")), (1, "uncovered"));

    // The text-format scrape of node-a carries the same series and values.
    let om_series = prom
        .query("sort(flowwatch_connections_total{job=\"flowwatch-text\"})")
        .unwrap();
    let text_series = prom
        .query(&format!("sort(flowwatch_connections_total{{{sel}}})"))
        .unwrap();
    assert_eq!(om_series.len(), text_series.len());
    assert_eq!(om_series.len(), 6);
    let r = prom
        .query(
            "flowwatch_uncovered_connections_total{job=\"flowwatch-text\",dst_workload=\"ledger\"}",
        )
        .unwrap();
    assert_eq!(r[0].value, 6.0);

    // node-b: budget folding and health.
    let b = node_b.addr.as_str();
    let r = prom
        .query(&format!(
            "flowwatch_connections_total{{instance=\"{b}\",src_workload=\"other\"}}"
        ))
        .unwrap();
    assert!(!r.is_empty(), "node-b folds over-budget edges into other");
    let r = prom
        .query(&format!(
            "flowwatch_series_dropped_total{{instance=\"{b}\",family=\"connections\"}}"
        ))
        .unwrap();
    assert_eq!(r[0].value, 2.0);
    let r = prom
        .query(&format!(
            "flowwatch_kernel_map_fill_ratio{{instance=\"{b}\",map=\"flows\"}}"
        ))
        .unwrap();
    assert_eq!(r[0].value, 0.95);
    let r = prom
        .query(&format!(
            "flowwatch_watch_staleness_seconds{{instance=\"{b}\"}}"
        ))
        .unwrap();
    assert_eq!((r[0].label("kind"), r[0].value), ("NetworkPolicy", 600.0));
    let r = prom
        .query(&format!(
            "flowwatch_kernel_events_lost_total{{instance=\"{b}\",reason=\"ringbuf_full\"}}"
        ))
        .unwrap();
    assert_eq!(r[0].value, 50.0);

    // Labels name workloads: no IPs, pods or ports other than the destination port.
    let (_, body) = prom
        .get(&format!(
            "/api/v1/labels?match[]={}",
            flowwatch_testkit::prometheus::urlencode("{__name__=~\"flowwatch_.*\"}")
        ))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: BTreeSet<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    let allowed: BTreeSet<&str> = [
        "__name__",
        "instance",
        "job",
        "src_namespace",
        "src_workload",
        "src_kind",
        "dst_namespace",
        "dst_workload",
        "dst_kind",
        "dst_port",
        "protocol",
        "verdict",
        "egress_verdict",
        "ingress_verdict",
        "outcome",
        "tier",
        "cni_policy_present",
        "scope",
        "direction",
        "family",
        "map",
        "kind",
        "reason",
        "le",
        "version",
        "commit",
        "ebpf_object_sha256",
    ]
    .into_iter()
    .collect();
    assert!(
        names.is_subset(&allowed),
        "unexpected labels: {:?}",
        names.difference(&allowed).collect::<Vec<_>>()
    );

    // Every PromQL expression of the dashboard and the rules parses and returns data. A stat
    // panel's `or vector(0)` fallback returns data whatever the metrics say, so each query is
    // also run without its fallbacks: what the panel shows must come from the metrics.
    // The recording rules lag the scrapes by up to an evaluation interval: wait until the rule
    // group has been evaluated after the last scrape of every target, and (the new-edge and
    // spike rules fire only then) for as long as their shortened lookbacks.
    let scraped = prom.query("max(timestamp(up))").unwrap()[0].value;
    prom.wait_for(
        "timestamp(flowwatch:rules_loaded)",
        Duration::from_secs(30),
        |r| r.first().is_some_and(|s| s.value > scraped),
    );
    prom.wait_for(
        "present_over_time(flowwatch:rules_loaded[5m] offset 5s)",
        Duration::from_secs(30),
        |r| !r.is_empty(),
    );
    let mut failures = Vec::new();
    let mut fallbacks = 0;
    let (absent, present): (Vec<_>, Vec<_>) = rule_exprs(&rules)
        .into_iter()
        .partition(|(name, _)| name == ABSENT_ALERT);
    // The alert for no agent at all has data only when no flowwatch job has targets: none
    // here, and one sample once its matcher names a job nobody scrapes.
    let [(_, absent)] = absent.as_slice() else {
        panic!("the rules have no single {ABSENT_ALERT}: {absent:?}");
    };
    assert_eq!(prom.query(absent).map(|r| r.len()), Ok(0), "{absent}");
    let no_job = absent.replace(".*flowwatch.*", "no-such-job");
    assert_ne!(
        &no_job, absent,
        "{absent} does not match the flowwatch jobs"
    );
    assert_eq!(prom.query(&no_job).map(|r| r.len()), Ok(1), "{no_job}");
    for (what, expr) in dashboard_exprs().into_iter().chain(present) {
        // `flowwatch:rules_loaded` is `vector(1)` by design (no fallback to strip).
        let bare = if expr.trim() == "vector(1)" {
            expr.clone()
        } else {
            without_vector_fallback(&expr)
        };
        if bare != expr {
            fallbacks += 1;
        }
        for q in [expr.as_str(), bare.as_str()] {
            match prom.query(q) {
                Ok(r) if r.is_empty() => failures.push(format!("{what}: no data for {q}")),
                Ok(r) if r.iter().all(|s| s.value.is_nan()) => {
                    failures.push(format!("{what}: only NaN for {q}"));
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{what}: {e} in {q}")),
            }
            if bare == expr {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        fallbacks, 8,
        "dashboard queries with an `or vector(0)` fallback (the overview's five stats, the \
         drill-down's two coverage ratios and its drift count)"
    );

    // The rules are loaded and healthy, and the scenario's alerts are active.
    let want = [
        "FlowwatchUncoveredCrossNamespaceTraffic",
        "FlowwatchNewEdge",
        "FlowwatchEnforcementDrift",
        "FlowwatchBlockedAttemptsSpike",
        "FlowwatchAgentDown",
        "FlowwatchKernelEventsLost",
        "FlowwatchKernelMapNearlyFull",
        "FlowwatchNoInterfacesAttached",
        "FlowwatchWatchStale",
        "FlowwatchInvalidPolicies",
        "FlowwatchSeriesBudgetExhausted",
    ];
    let quiet = [ABSENT_ALERT];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rules = prom.rules();
        let (all, records): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = rules["data"]
            ["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .partition(|r| r["type"] == "alerting");
        assert_eq!(all.len(), want.len() + quiet.len(), "rules loaded: {all:?}");
        assert!(records.len() >= 8, "recording rules loaded: {records:?}");
        let broken: Vec<_> = records
            .iter()
            .filter(|r| r["health"] != "ok" && r["health"] != "unknown")
            .collect();
        assert!(broken.is_empty(), "{broken:?}");
        let unhealthy: Vec<_> = all
            .iter()
            .filter(|r| r["health"] != "ok" && r["health"] != "unknown")
            .collect();
        assert!(unhealthy.is_empty(), "{unhealthy:?}");
        let inactive: Vec<&str> = all
            .iter()
            .filter(|r| r["state"] != "firing" && r["state"] != "pending")
            .map(|r| r["name"].as_str().unwrap())
            .filter(|name| !quiet.contains(name))
            .collect();
        let noisy: Vec<&str> = all
            .iter()
            .filter(|r| r["state"] != "inactive")
            .map(|r| r["name"].as_str().unwrap())
            .filter(|name| quiet.contains(name))
            .collect();
        assert!(noisy.is_empty(), "active with agents scraped: {noisy:?}");
        if inactive.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts not active: {inactive:?}\n{rules}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
