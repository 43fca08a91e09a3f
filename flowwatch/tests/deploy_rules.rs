//! The alert and recording rules and the dashboard as files. The rules are rendered from the
//! chart's `prometheusRule` values: `deploy/prometheus/flowwatch-rules.yaml` is the chart with
//! its defaults (compared here with a fresh rendering); `promtool test rules` runs the unit tests
//! of the defaults (deploy/prometheus/flowwatch-rules.test.yaml) and of a tuned rendering
//! (flowwatch-rules-tuned.values.yaml, flowwatch-rules-tuned.test.yaml), each alert with a
//! firing and a quiet case in both; every alert can be switched off alone; every alert has a
//! runbook section; no rule reads an hour or more of raw series. Their PromQL is run against a
//! real Prometheus in `prometheus_exporter.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use flowwatch_testkit::paths::repo;
use flowwatch_testkit::privileged::{command, require};

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

macro_rules! need_helm {
    ($what:expr) => {
        match flowwatch_testkit::helm::helm() {
            Ok(h) => h,
            Err(e) => {
                require($what, Err(e));
                return;
            }
        }
    };
}

/// Every rule of a rule file: (alert or record name, is an alert, the rule).
fn rules_of(text: &str) -> Vec<(String, bool, serde_yaml::Value)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            match (r["alert"].as_str(), r["record"].as_str()) {
                (Some(a), _) => out.push((a.to_string(), true, r.clone())),
                (_, Some(rec)) => out.push((rec.to_string(), false, r.clone())),
                _ => panic!("a rule without alert or record: {r:?}"),
            }
        }
    }
    out
}

fn alerts_of(text: &str) -> BTreeSet<String> {
    rules_of(text)
        .into_iter()
        .filter(|(_, alert, _)| *alert)
        .map(|(n, _, _)| n)
        .collect()
}

/// Every alert key of values.yaml (`prometheusRule.alerts.<key>`) and its alert name.
fn alert_keys() -> Vec<(String, String)> {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/helm/flowwatch/values.yaml")).unwrap(),
    )
    .unwrap();
    values["prometheusRule"]["alerts"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| {
            let k = k.as_str().unwrap();
            let mut name = String::from("Flowwatch");
            name.push_str(&k[..1].to_uppercase());
            name.push_str(&k[1..]);
            (k.to_string(), name)
        })
        .collect()
}

fn promtool_test(dir: &Path, file: &str) {
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", file])
        .current_dir(dir));
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool test rules {file}:\n{out}"
    );
}

#[test]
fn promtool_unit_tests_pass_with_the_default_values() {
    if !require("promtool test rules", command("promtool")) {
        return;
    }
    promtool_test(
        &repo().join("deploy/prometheus"),
        "flowwatch-rules.test.yaml",
    );
}

#[test]
fn promtool_unit_tests_pass_with_tuned_values() {
    if !require("promtool test rules (tuned)", command("promtool")) {
        return;
    }
    let helm = need_helm!("promtool test rules (tuned)");
    let dir = tempfile::tempdir().unwrap();
    let prom = repo().join("deploy/prometheus");
    let values = prom.join("flowwatch-rules-tuned.values.yaml");
    let rules = flowwatch_testkit::helm::rules(&helm, &["-f", values.to_str().unwrap()]).unwrap();
    std::fs::write(dir.path().join("flowwatch-rules-tuned.yaml"), &rules).unwrap();
    std::fs::copy(
        prom.join("flowwatch-rules-tuned.test.yaml"),
        dir.path().join("flowwatch-rules-tuned.test.yaml"),
    )
    .unwrap();
    let (ok, out) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(dir.path().join("flowwatch-rules-tuned.yaml")));
    assert!(ok, "{out}\n{rules}");
    promtool_test(dir.path(), "flowwatch-rules-tuned.test.yaml");
}

/// (alerts with a firing case, alerts with a quiet case) of a promtool test file.
fn tested_alerts(test_file: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let tests: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus").join(test_file)).unwrap(),
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
    (firing, quiet)
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test_in_both_forms() {
    let alerts = alerts_of(
        &std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.yaml")).unwrap(),
    );
    let keys: BTreeSet<String> = alert_keys().into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        alerts, keys,
        "alerts of the rule file vs prometheusRule.alerts"
    );
    assert!(alerts.len() >= 12, "{alerts:?}");
    for file in [
        "flowwatch-rules.test.yaml",
        "flowwatch-rules-tuned.test.yaml",
    ] {
        let (firing, quiet) = tested_alerts(file);
        assert_eq!(firing, alerts, "{file}: alerts without a firing test");
        assert_eq!(quiet, alerts, "{file}: alerts without a quiet test");
    }
}

#[test]
fn the_rule_file_is_the_chart_rendered_with_its_defaults_and_promtool_accepts_it() {
    let plain = repo().join("deploy/prometheus/flowwatch-rules.yaml");
    let text = std::fs::read_to_string(&plain).unwrap();
    if require("promtool check rules", command("promtool")) {
        let (ok, out) = run(Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&plain));
        assert!(ok, "{out}");
    }
    let helm = need_helm!("the rule file against the chart");
    assert!(
        text == flowwatch_testkit::helm::rules(&helm, &[]).unwrap(),
        "deploy/prometheus/flowwatch-rules.yaml drifted from the chart: run `cargo xtask render-manifests`"
    );
}

#[test]
fn each_alert_can_be_switched_off_alone_and_takes_its_recording_rules_with_it() {
    let helm = need_helm!("disabling alerts");
    let all = flowwatch_testkit::helm::rules(&helm, &[]).unwrap();
    let all_alerts = alerts_of(&all);
    let used = |rules: &[(String, bool, serde_yaml::Value)], record: &str| {
        rules
            .iter()
            .any(|(n, _, r)| n != record && r["expr"].as_str().unwrap().contains(record))
    };
    for (key, name) in alert_keys() {
        let set = format!("prometheusRule.alerts.{key}.enabled=false");
        let text = flowwatch_testkit::helm::rules(&helm, &["--set", &set]).unwrap();
        let mut want = all_alerts.clone();
        want.remove(&name);
        assert_eq!(alerts_of(&text), want, "--set {set}");
        // Every recording rule left is read by a rule left.
        let rules = rules_of(&text);
        for (record, _, _) in rules.iter().filter(|(_, alert, _)| !alert) {
            assert!(
                used(&rules, record) || record == flowwatch::whatif::EDGE_HISTORY,
                "--set {set}: {record} is read by no rule"
            );
        }
    }
    // The edge history (read by `flowwatch policy whatif`, not by a rule) is switched alone.
    assert!(all.contains(flowwatch::whatif::EDGE_HISTORY));
    let text = flowwatch_testkit::helm::rules(
        &helm,
        &["--set", "prometheusRule.edgeHistory.enabled=false"],
    )
    .unwrap();
    assert!(!text.contains(flowwatch::whatif::EDGE_HISTORY), "{text}");
    assert_eq!(alerts_of(&text), all_alerts);
    // Every alert off: the history alone; and without it, a clear error rather than an empty
    // PrometheusRule.
    let mut off: Vec<String> = alert_keys()
        .into_iter()
        .map(|(k, _)| format!("prometheusRule.alerts.{k}.enabled=false"))
        .collect();
    let text = flowwatch_testkit::helm::rules(&helm, &["--set", &off.join(",")]).unwrap();
    let records: Vec<String> = rules_of(&text).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(records, [flowwatch::whatif::EDGE_HISTORY]);
    off.push("prometheusRule.edgeHistory.enabled=false".into());
    let err = flowwatch_testkit::helm::rules(&helm, &["--set", &off.join(",")]).unwrap_err();
    assert!(
        err.contains(
            "every alert of prometheusRule.alerts and prometheusRule.edgeHistory disabled"
        ),
        "{err}"
    );
}

#[test]
fn every_alert_links_its_runbook_section_which_says_what_to_do() {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    for (name, alert, rule) in rules_of(&text) {
        if !alert {
            continue;
        }
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(
                format!(
                    "https://github.com/flowwatch/flowwatch/blob/main/docs/runbooks.md#{}",
                    name.to_lowercase()
                )
                .as_str()
            ),
            "{name}"
        );
        let heading = format!("\n## {name}\n");
        let start = runbooks
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/runbooks.md has no section {name}"));
        let section = &runbooks[start + heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for part in [
            "**What it means.**",
            "**How to confirm.**",
            "**How to fix.**",
            "**How to silence.**",
        ] {
            assert!(section.contains(part), "runbook {name} lacks {part}");
        }
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} {key}"
            );
        }
    }
}

/// The range selectors of a PromQL expression: (the metric before `[`, the range). Brackets
/// inside quoted strings (a regular expression such as `[a-z]`) are not ranges.
/// A PromQL duration (`1h5m`, `1d`) in seconds.
fn seconds(duration: &str) -> u64 {
    let mut total = 0;
    let mut number = 0;
    for c in duration.chars() {
        if let Some(d) = c.to_digit(10) {
            number = number * 10 + u64::from(d);
        } else {
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                'y' => 31_536_000,
                _ => panic!("{duration:?}: unit {c:?}"),
            };
            total += number * unit;
            number = 0;
        }
    }
    total
}

fn ranges(expr: &str) -> Vec<(String, String)> {
    // The expression with every quoted string blanked out (same length, so offsets hold).
    let mut code = String::with_capacity(expr.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in expr.chars() {
        if quoted {
            code.push(if c == '"' && !escaped { '"' } else { ' ' });
            quoted = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
            continue;
        }
        quoted = c == '"';
        code.push(c);
    }
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find('[').map(|i| i + from) {
        let end = code[i..].find(']').unwrap() + i;
        // The selector: the metric name before its optional `{...}`.
        let before = code[..i].trim_end();
        let before = if before.ends_with('}') {
            &before[..before.rfind('{').unwrap_or(0)]
        } else {
            before
        };
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        out.push((before[start..].to_string(), code[i + 1..end].to_string()));
        from = end + 1;
    }
    out
}

#[test]
fn no_rule_reads_an_hour_or_more_of_raw_series() {
    assert_eq!(
        ranges("max_over_time(flowwatch:edge:seen[1d] offset 10m) + rate(x{a=\"[\"}[5m])"),
        vec![
            ("flowwatch:edge:seen".into(), "1d".into()),
            ("x".into(), "5m".into())
        ]
    );
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut long = 0;
    for group in doc["groups"].as_sequence().expect("groups") {
        // A group evaluated once an hour may read its hour of raw series: each sample is read
        // about once. Others are evaluated every scrape interval or so.
        let interval = group["interval"].as_str().map_or(60, seconds);
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            for (series, range) in ranges(rule["expr"].as_str().unwrap()) {
                let secs = seconds(&range);
                if secs >= 3600 && !series.starts_with("flowwatch:") {
                    long += 1;
                    assert!(
                        secs <= interval + 600,
                        "{name} reads {range} of the raw series {series} every {interval} s: read a recording rule"
                    );
                }
            }
        }
    }
    assert_eq!(
        long, 1,
        "only the hourly edge history reads an hour of raw series"
    );
    let mut long = 0;
    for (_, _, rule) in rules_of(&text) {
        long += ranges(rule["expr"].as_str().unwrap())
            .iter()
            .filter(|(series, range)| series.starts_with("flowwatch:") && seconds(range) >= 3600)
            .count();
    }
    assert!(
        long >= 2,
        "the new-edge and spike rules read long ranges of records"
    );
}

/// The dashboards: (file name under deploy/grafana, uid).
const DASHBOARDS: [(&str, &str); 2] = [
    ("flowwatch-dashboard.json", "flowwatch-overview"),
    ("flowwatch-workload-dashboard.json", "flowwatch-workload"),
];

/// Grafana unit ids the dashboards may use (a typo or a wrong unit such as `reqps` for a
/// connection rate fails here).
const KNOWN_UNITS: [&str; 8] = [
    "short",
    "percentunit",
    "cps",
    "Bps",
    "bytes",
    "pps",
    "s",
    "none",
];

/// Every `$name`, `${name}` and `${name:format}` in `text`, less Grafana's built-ins.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !name.starts_with("__") && name.parse::<u32>().is_err() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_variable_scanner_finds_every_form_and_skips_builtins() {
    let got = variables_in(
        "x{a=~\"$cluster\"}[$__rate_interval] ${workload} ${node:queryparam} \"$1\" ${__data.fields.x}",
    );
    let want: BTreeSet<String> = ["cluster", "node", "workload"]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_dashboards_are_well_formed_linked_and_lint_clean() {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    let uids: BTreeSet<&str> = DASHBOARDS.iter().map(|(_, u)| *u).collect();
    for (file, uid) in DASHBOARDS {
        let path = repo().join("deploy/grafana").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let chart_copy = file.trim_start_matches("flowwatch-");
        assert_eq!(
            text,
            std::fs::read_to_string(repo().join("deploy/helm/flowwatch/files").join(chart_copy))
                .unwrap(),
            "deploy/grafana/{file} drifted from the chart's files/{chart_copy}: run `cargo xtask render-manifests`"
        );
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(d["uid"], uid);
        // Variables: each defined once; each used by a panel, a link or another variable;
        // nothing uses an undefined one.
        let vars: Vec<&serde_json::Value> =
            d["templating"]["list"].as_array().unwrap().iter().collect();
        let defined: BTreeSet<String> = vars
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            defined.len(),
            vars.len(),
            "{file}: a variable defined twice"
        );
        for want in ["datasource", "cluster", "node"] {
            assert!(defined.contains(want), "{file}: no {want} variable");
        }
        let panels = d["panels"].as_array().unwrap();
        let mut used = BTreeSet::new();
        let mut referenced = BTreeSet::new();
        for v in &vars {
            let deps = variables_in(v["definition"].as_str().unwrap_or(""));
            used.extend(deps.iter().cloned());
            referenced.extend(deps);
        }
        let mut ids = BTreeSet::new();
        let mut kinds = BTreeSet::new();
        let mut runbook_links = 0;
        for p in panels {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: duplicate panel id {title}"
            );
            kinds.insert(p["type"].as_str().unwrap().to_string());
            let g = &p["gridPos"];
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{file}: {title} wider than the grid"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {title} has no description"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            used.insert("datasource".to_string());
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(
                unit.is_some_and(|u| KNOWN_UNITS.contains(&u)),
                "{file}: {title} has unit {unit:?}, not one of {KNOWN_UNITS:?}"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title}");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    expr.contains("flowwatch_") || expr.contains("up{"),
                    "{file}: {title}: {expr}"
                );
                // Every selector is scoped by the cluster and node variables.
                for v in ["$cluster", "$node"] {
                    assert!(expr.contains(v), "{file}: {title} ignores {v}: {expr}");
                }
                let vs = variables_in(expr);
                used.extend(vs.iter().cloned());
                referenced.extend(vs);
            }
            // A rate of connections is not a request rate.
            if title.contains("onnection") && unit != Some("percentunit") && unit != Some("short") {
                assert_eq!(unit, Some("cps"), "{file}: {title}");
            }
            for link in p["links"].as_array().into_iter().flatten() {
                let url = link["url"].as_str().unwrap();
                let anchor = url
                    .strip_prefix(
                        "https://github.com/flowwatch/flowwatch/blob/main/docs/runbooks.md#",
                    )
                    .unwrap_or_else(|| {
                        panic!("{file}: {title}: a panel link that is no runbook: {url}")
                    });
                assert!(
                    runbooks.contains(&format!(
                        "\n## {}\n",
                        link["title"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("Runbook: ")
                    )) && link["title"]
                        .as_str()
                        .unwrap()
                        .to_lowercase()
                        .ends_with(anchor),
                    "{file}: {title}: runbook link {url} has no section"
                );
                runbook_links += 1;
            }
            // Data links (drill-down) name an existing dashboard and defined variables.
            for o in p["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for prop in o["properties"].as_array().unwrap() {
                    for link in prop["value"].as_array().into_iter().flatten() {
                        let url = link["url"].as_str().unwrap();
                        let target = url
                            .strip_prefix("/d/")
                            .and_then(|u| u.split('/').next())
                            .unwrap();
                        assert!(uids.contains(target), "{file}: {title}: link to {url}");
                        let vs = variables_in(url);
                        used.extend(vs.iter().cloned());
                        referenced.extend(vs);
                    }
                }
            }
        }
        assert!(runbook_links >= 3, "{file}: panels link their runbooks");
        let undefined: Vec<_> = referenced.difference(&defined).collect();
        assert!(
            undefined.is_empty(),
            "{file}: undefined variables {undefined:?}"
        );
        let dangling: Vec<_> = defined.difference(&used).collect();
        assert!(
            dangling.is_empty(),
            "{file}: variables nothing uses {dangling:?}"
        );
        // Dashboard links: the other dashboard (keeping time and variables) and the runbooks.
        let links = d["links"].as_array().unwrap();
        let other = links
            .iter()
            .filter_map(|l| l["url"].as_str()?.strip_prefix("/d/"))
            .map(|u| u.split('/').next().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(other.len(), 1, "{file}: {links:?}");
        assert!(
            uids.contains(other[0]) && other[0] != uid,
            "{file}: {other:?}"
        );
        assert!(links.iter().any(|l| l["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("docs/runbooks.md"))));
        assert!(links
            .iter()
            .filter(|l| l["url"].as_str().is_some_and(|u| u.starts_with("/d/")))
            .all(|l| l["keepTime"] == true && l["includeVars"] == true));
        if uid == "flowwatch-overview" {
            for kind in ["stat", "table", "timeseries", "nodeGraph"] {
                assert!(kinds.contains(kind), "no {kind} panel");
            }
            for want in ["src_namespace", "dst_namespace"] {
                assert!(defined.contains(want), "{file}: no {want} variable");
            }
            let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
            for want in [
                "Connections governed by a policy",
                "Uncovered share by source namespace",
                "Top uncovered edges",
                "Enforcement drift edges",
                "Blocked attempts",
                "New edges (vs. a day ago)",
                "Workload edges by verdict",
                "Flow data lost",
                "Flow log records dropped",
                "Agent builds",
                "Connections by verdict and deciding tier",
                "CNI-specific policy objects",
            ] {
                assert!(titles.contains(&want), "missing panel {want}");
            }
            // The deciding tier is shown where verdicts are: connections, drift, blocked.
            for want in [
                "Connections by verdict and deciding tier",
                "Enforcement drift edges",
                "Top blocked edges",
            ] {
                let p = panels
                    .iter()
                    .find(|p| p["title"] == want && p["type"] != "stat")
                    .unwrap();
                let expr = p["targets"][0]["expr"].as_str().unwrap();
                assert!(
                    expr.contains(", tier") || expr.contains(" tier,"),
                    "{want} does not show the tier: {expr}"
                );
            }
        } else {
            for want in ["namespace", "workload"] {
                assert!(defined.contains(want), "{file}: no {want} variable");
            }
        }
    }
}
