//! The alert rules and the dashboard as files: `promtool check rules` and `promtool test rules`
//! (each alert has firing and non-firing cases in deploy/prometheus/flowwatch-rules.test.yaml),
//! and the dashboard's structure. Their PromQL is run against a real Prometheus in
//! `prometheus_exporter.rs`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::privileged::{command, require};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_unit_tests_of_every_alert_pass() {
    if !require("promtool test rules", command("promtool")) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "flowwatch-rules.test.yaml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_firing_unit_test() {
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.yaml")).unwrap(),
    )
    .unwrap();
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    let tests: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.test.yaml"))
            .unwrap(),
    )
    .unwrap();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            if a["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty()) {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    assert_eq!(firing, alerts, "alerts without a firing test");
    assert_eq!(quiet, alerts, "alerts without a non-firing test");
}

#[test]
fn promtool_accepts_both_rule_files_and_they_are_identical() {
    let plain = repo().join("deploy/prometheus/flowwatch-rules.yaml");
    let chart = repo().join("deploy/helm/flowwatch/files/rules.yaml");
    assert_eq!(
        std::fs::read_to_string(&plain).unwrap(),
        std::fs::read_to_string(&chart).unwrap(),
        "deploy/prometheus/flowwatch-rules.yaml drifted from the chart's files/rules.yaml: run `cargo xtask render-manifests`"
    );
    if !require("promtool check rules", command("promtool")) {
        return;
    }
    let (ok, out) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&plain));
    assert!(ok, "{out}");
}

#[test]
fn the_dashboard_is_well_formed() {
    let path = repo().join("deploy/grafana/flowwatch-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(repo().join("deploy/helm/flowwatch/files/dashboard.json")).unwrap(),
        "deploy/grafana drifted from the chart's files/dashboard.json: run `cargo xtask render-manifests`"
    );
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "flowwatch-overview");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id in {p}"
        );
        kinds.insert(p["type"].as_str().unwrap().to_string());
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "panel wider than the grid: {}",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", p["title"]);
            for t in targets {
                assert!(t["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("flowwatch_") || e.contains("up{")));
            }
        }
    }
    for kind in ["stat", "table", "timeseries", "nodeGraph"] {
        assert!(kinds.contains(kind), "no {kind} panel");
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Connections governed by a policy",
        "Top uncovered edges",
        "Enforcement drift edges",
        "Blocked attempts",
        "Workload edges by verdict",
        "Kernel events lost",
    ] {
        assert!(titles.contains(&want), "missing panel {want}");
    }
}
