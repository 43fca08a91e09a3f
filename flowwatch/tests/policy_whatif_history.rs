//! `policy whatif --prometheus` over a long window reads the edge history the chart records
//! (`flowwatch:edge_connections:history`, one sample per edge an hour) where it reaches back to
//! the window's start, and the raw series otherwise: both against a real Prometheus holding a
//! backfilled history of the example shop (deploy/examples/shop).
//!
//! Each path is told apart by an edge only it can see: one edge exists only in the history
//! (as after a raw series' samples are gone), one only in old raw samples.

use std::path::PathBuf;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use flowwatch_testkit::prometheus::Prometheus;
use serde_json::Value;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

fn example(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/shop")
        .join(part)
}

/// One edge's labels, as the agent exports them (`instance` and `job` on raw series only).
fn edge(src: (&str, &str, &str), dst: (&str, &str, &str), port: u16, outcome: &str) -> String {
    format!(
        "src_namespace=\"{}\",src_kind=\"{}\",src_workload=\"{}\",dst_namespace=\"{}\",\
         dst_kind=\"{}\",dst_workload=\"{}\",dst_port=\"{port}\",protocol=\"TCP\",outcome=\"{outcome}\"",
        src.0, src.1, src.2, dst.0, dst.1, dst.2
    )
}

const WEB: (&str, &str, &str) = ("shop", "deployment", "web");
const API: (&str, &str, &str) = ("shop", "deployment", "api");
const REDIS: (&str, &str, &str) = ("shop", "deployment", "redis");
const BACKUP: (&str, &str, &str) = ("ops", "cronjob", "backup");
const POSTGRES: (&str, &str, &str) = ("data", "statefulset", "postgres");

/// Ten days of the shop: web -> api every 5 minutes all along (its counter ends at
/// `steady_total`), web -> redis failing once 8 days ago (raw samples only), backup ->
/// postgres a day ago (history samples only), and the history of web -> api hourly from
/// `history_from` seconds ago until an hour ago.
fn shop_history(now: u64, history_from: u64) -> (String, u64) {
    let raw = "flowwatch_connections_total";
    let hist = "flowwatch:edge_connections:history";
    let web_api = edge(WEB, API, 9090, "established");
    let start = now - 10 * DAY;
    let steady = |t: u64| (t - start) / 300 + 1;
    // OpenMetrics: each family's samples together, each series' in time order.
    let mut lines = vec![format!("# TYPE {raw} counter")];
    let last = now - 300;
    lines.extend((start..=last).step_by(300).map(|t| {
        format!(
            "{raw}{{job=\"flowwatch\",instance=\"node-a:9810\",{web_api}}} {} {t}",
            steady(t)
        )
    }));
    let redis = edge(WEB, REDIS, 6379, "failed");
    lines.extend((0..6).map(|i| {
        let t = now - 8 * DAY + i * 300;
        format!("{raw}{{job=\"flowwatch\",instance=\"node-b:9810\",{redis}}} 1 {t}")
    }));
    lines.push(format!("# TYPE {hist} gauge"));
    let hours = (now - history_from..=now - HOUR).step_by(HOUR as usize);
    lines.extend(
        hours
            .clone()
            .map(|t| format!("{hist}{{{web_api}}} {} {t}", steady(t))),
    );
    let backup = edge(BACKUP, POSTGRES, 5432, "established");
    lines.extend(
        hours
            .filter(|t| (now - 2 * DAY..now - DAY).contains(t))
            .map(|t| format!("{hist}{{{backup}}} 2 {t}")),
    );
    lines.push("# EOF".into());
    (lines.join("\n") + "\n", steady(last))
}

fn whatif(prom: &Prometheus, since: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "whatif", "--snapshot"])
        .arg(example("repo"))
        .arg("--proposed")
        .arg(example("change"))
        .args(["--prometheus", &prom.url(), "--since", since, "-o", "json"])
        .output()
        .expect("run flowwatch")
}

/// `(src, dst, port) -> (change, connections)` of the report.
fn edges(out: &Output) -> Vec<(String, String, u64, String, u64)> {
    let mut edges: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|e| {
            (
                e["src"].as_str().unwrap_or_default().to_string(),
                e["dst"].as_str().unwrap_or_default().to_string(),
                e["port"].as_u64().unwrap_or_default(),
                e["change"].as_str().unwrap_or_default().to_string(),
                e["connections"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    edges.sort();
    edges
}

fn now() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    now.as_secs() / 60 * 60
}

const NOTE: &str = "holds no edge history";

#[test]
fn a_history_that_reaches_the_window_start_is_read_instead_of_raw_samples() {
    if !flowwatch_testkit::privileged::require(
        "whatif on a Prometheus history",
        flowwatch_testkit::prometheus::available(),
    ) {
        return;
    }
    let now = now();
    let (history, steady_total) = shop_history(now, 10 * DAY);
    let prom = Prometheus::start_with_history(&history);
    let out = whatif(&prom, "9d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(NOTE),
        "the history covers the window: {stderr}"
    );
    assert_eq!(
        edges(&out),
        vec![
            (
                "ops/cronjob/backup".into(),
                "data/statefulset/postgres".into(),
                5432,
                "would_break".into(),
                2
            ),
            (
                "shop/deployment/web".into(),
                "shop/deployment/api".into(),
                9090,
                "unchanged".into(),
                steady_total
            ),
        ],
        "the history's edges, the raw tail's counter; not the old raw-only edge: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "a would_break edge gates: {stderr}"
    );
}

#[test]
fn without_history_at_the_window_start_the_raw_samples_are_read_and_that_is_said() {
    if !flowwatch_testkit::privileged::require(
        "whatif on a Prometheus history",
        flowwatch_testkit::prometheus::available(),
    ) {
        return;
    }
    let now = now();
    let (history, steady_total) = shop_history(now, 2 * DAY);
    let prom = Prometheus::start_with_history(&history);
    let out = whatif(&prom, "9d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(NOTE),
        "the history starts 2 days ago: {stderr}"
    );
    assert_eq!(
        edges(&out),
        vec![
            (
                "shop/deployment/web".into(),
                "shop/deployment/api".into(),
                9090,
                "unchanged".into(),
                steady_total
            ),
            (
                "shop/deployment/web".into(),
                "shop/deployment/redis".into(),
                6379,
                "newly_allowed".into(),
                1
            ),
        ],
        "every raw edge of the window, none of the history's: {stderr}"
    );
    // A window shorter than the raw tail never reads the history.
    let out = whatif(&prom, "1h");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(NOTE), "{stderr}");
    assert_eq!(edges(&out).len(), 1, "{stderr}");
}
