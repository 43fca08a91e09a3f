//! `policy whatif` and `policy diff` on the example repository (deploy/examples/shop) and its
//! proposed change: flow records in the agent's format, the report's JSON and table, and the
//! exit status that gates a pull request.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn example(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/shop")
        .join(part)
}

fn flowwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
}

fn pod(ip: &str, port: u16, ns: &str, name: &str, kind: &str, workload: &str, node: &str) -> Value {
    json!({"ip": ip, "port": port, "kind": "pod", "namespace": ns, "name": name,
           "workload_kind": kind, "workload_name": workload, "node": node})
}

fn record(protocol: &str, src: &Value, dst: &Value, outcome: &str, node: &str) -> String {
    json!({"start": "2026-11-25T01:09:33.465Z", "end": "2026-11-25T01:09:33.467Z",
           "protocol": protocol, "src": src, "dst": dst, "outcome": outcome,
           "end_reason": "closed", "observed_at": ["client"],
           "fwd": {"packets": 6, "bytes": 322}, "rev": {"packets": 4, "bytes": 221},
           "node": node, "verdict": "allowed"})
    .to_string()
}

/// Two nodes' flow logs of the shop: web -> api, api -> postgres (a Service with its
/// backend), api -> redis, api -> DNS, backup -> postgres, web -> redis (failing today: the
/// policies deny it), and the internet -> web.
fn flow_logs(dir: &std::path::Path) -> Vec<PathBuf> {
    let web = |i: u8| {
        pod(
            &format!("10.1.0.{i}"),
            40000 + u16::from(i),
            "shop",
            &format!("web-5d8c7f9b4-{i}"),
            "Deployment",
            "web",
            "node-a",
        )
    };
    let api = pod(
        "10.1.0.20",
        9090,
        "shop",
        "api-7c9d6b5f8-k4m2p",
        "Deployment",
        "api",
        "node-a",
    );
    let redis = pod(
        "10.1.0.30",
        6379,
        "shop",
        "redis-6f7d8c9b0-aaaaa",
        "Deployment",
        "redis",
        "node-a",
    );
    let postgres = pod(
        "10.2.0.10",
        5432,
        "data",
        "postgres-0",
        "StatefulSet",
        "postgres",
        "node-b",
    );
    let postgres_svc = json!({"ip": "10.96.0.30", "port": 5432, "kind": "service", "namespace": "data",
        "name": "postgres", "backend": postgres.clone()});
    let dns = pod(
        "10.3.0.2",
        53,
        "kube-system",
        "coredns-abc-1",
        "Deployment",
        "coredns",
        "node-b",
    );
    let backup = pod(
        "10.4.0.7",
        51000,
        "ops",
        "backup-29000000-x1",
        "CronJob",
        "backup",
        "node-b",
    );
    let internet =
        json!({"ip": "203.0.113.9", "port": 61000, "kind": "external", "class": "public"});
    let mut a = Vec::new();
    for i in 1..=3 {
        a.push(record("TCP", &web(i), &api, "established", "node-a"));
    }
    a.push(record("TCP", &api, &postgres_svc, "established", "node-a"));
    a.push(record("TCP", &api, &redis, "established", "node-a"));
    a.push(record("UDP", &api, &dns, "established", "node-a"));
    a.push(record("TCP", &web(4), &redis, "failed", "node-a"));
    let mut web_server = web(5);
    web_server["port"] = json!(8080);
    a.push(record(
        "TCP",
        &internet,
        &web_server,
        "established",
        "node-a",
    ));
    a.push("{\"not\": \"a record\"}".to_string());
    let b = [
        // node-b's copy of api -> postgres (cross-node): counted once, on node-a.
        record("TCP", &api, &postgres, "established", "node-b"),
        record("TCP", &backup, &postgres, "established", "node-b"),
        record("TCP", &backup, &postgres, "established", "node-b"),
    ];
    let paths = vec![dir.join("node-a.log"), dir.join("node-b.log")];
    std::fs::write(&paths[0], a.join("\n") + "\n").unwrap();
    std::fs::write(&paths[1], b.join("\n") + "\n").unwrap();
    paths
}

fn whatif(args: &[&str], logs: &[PathBuf]) -> Output {
    let mut cmd = flowwatch();
    cmd.args(["policy", "whatif", "--snapshot"])
        .arg(example("repo"))
        .arg("--proposed")
        .arg(example("change"))
        .args(args);
    for l in logs {
        cmd.arg("--flows").arg(l);
    }
    cmd.output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn whatif_names_the_edges_a_change_breaks_and_the_ones_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let logs = flow_logs(dir.path());
    let out = whatif(&["-o", "json"], &logs);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a would_break edge fails the gate: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a flow record: "), "{stderr}");
    assert!(
        stderr.contains("1 connections not judged: the other node's copy"),
        "{stderr}"
    );
    let edges = json_lines(&out);
    let edge = |src: &str, dst: &str, port: u16| {
        edges
            .iter()
            .find(|e| e["src"] == src && e["dst"] == dst && e["port"] == port)
            .unwrap_or_else(|| panic!("no edge {src} -> {dst}:{port} in {edges:#?}"))
    };
    assert_eq!(edges.len(), 7, "{edges:#?}");

    let broken = edge("ops/cronjob/backup", "data/statefulset/postgres", 5432);
    assert_eq!(broken["change"], "would_break");
    assert_eq!(broken["connections"], 2);
    assert_eq!(broken["before"]["verdict"], "allowed");
    assert_eq!(
        broken["before"]["ingress"]["rules"],
        json!([{"policy": "data/postgres-ingress", "rule": 0}])
    );
    assert_eq!(broken["after"]["verdict"], "denied");
    assert_eq!(broken["after"]["ingress"]["verdict"], "denied");
    assert_eq!(
        broken["after"]["ingress"]["selected_by"],
        json!([
            "data/default-deny",
            "data/same-namespace",
            "data/postgres-ingress"
        ])
    );
    assert_eq!(broken["after"]["egress"]["verdict"], "allowed");

    let opened = edge("shop/deployment/web", "shop/deployment/redis", 6379);
    assert_eq!(opened["change"], "newly_allowed");
    assert_eq!(
        (opened["connections"].clone(), opened["established"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(opened["before"]["verdict"], "denied");
    assert_eq!(opened["after"]["verdict"], "allowed");
    assert_eq!(
        opened["after"]["egress"]["rules"],
        json!([{"policy": "shop/web", "rule": 1}])
    );

    let web_api = edge("shop/deployment/web", "shop/deployment/api", 9090);
    assert_eq!(
        (web_api["change"].clone(), web_api["connections"].clone()),
        (json!("unchanged"), json!(3))
    );
    // Through a Service: judged at its backend; counted once though both nodes logged it.
    let api_pg = edge("shop/deployment/api", "data/statefulset/postgres", 5432);
    assert_eq!(
        (api_pg["change"].clone(), api_pg["connections"].clone()),
        (json!("unchanged"), json!(1))
    );
    assert_eq!(api_pg["after"]["verdict"], "allowed");
    let dns = edge("shop/deployment/api", "kube-system/deployment/coredns", 53);
    assert_eq!(
        (dns["protocol"].clone(), dns["after"]["verdict"].clone()),
        (json!("UDP"), json!("allowed"))
    );
    let inbound = edge("203.0.113.9", "shop/deployment/web", 8080);
    assert_eq!(inbound["change"], "unchanged");
    assert_eq!(inbound["before"]["egress"]["verdict"], "not_applicable");
    // The worst first.
    assert_eq!(edges[0]["change"], "would_break");
    assert_eq!(edges[1]["change"], "newly_allowed");
}

#[test]
fn whatif_tables_fail_on_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = flow_logs(dir.path());
    let out = whatif(&["-o", "table", "--fail-on", "newly_covered"], &logs);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("CHANGE"), "{text}");
    assert!(
        lines[1].starts_with("would_break    ops/cronjob/backup"),
        "{text}"
    );
    assert!(
        lines[1]
            .contains("allowed (egress ops/backup-egress[1]; ingress data/postgres-ingress[0])"),
        "{text}"
    );
    assert!(
        lines[1].contains(
            "denied (egress ops/backup-egress[1]; ingress denied by data/default-deny, data/same-namespace, data/postgres-ingress)"
        ),
        "{text}"
    );
    assert!(
        lines[2].starts_with("newly_allowed  shop/deployment/web"),
        "{text}"
    );
    assert!(
        !text.contains("unchanged  "),
        "unchanged edges only with --all: {text}"
    );
    assert!(
        text.ends_with("7 observed edges: 1 would_break, 1 newly_allowed, 5 unchanged (1 connections not judged, see stderr)\n"),
        "{text}"
    );

    let md = whatif(&["-o", "md", "--all"], &logs);
    let text = String::from_utf8(md.stdout).unwrap();
    assert!(
        text.starts_with(
            "| CHANGE | SOURCE | DESTINATION | PORT | CONNECTIONS | BEFORE | AFTER |\n|---|"
        ),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("| unchanged |"))
            .count(),
        5,
        "{text}"
    );

    // Deleting the backup's egress policy instead: the backup job is still isolated by its
    // namespace's default deny, so its connections break on the egress side.
    let out = flowwatch()
        .args(["policy", "whatif", "-o", "json", "--snapshot"])
        .arg(example("repo"))
        .args(["--delete", "NetworkPolicy/ops/backup-egress", "--flows"])
        .args(&logs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let edges = json_lines(&out);
    let changed: Vec<(&str, &str)> = edges
        .iter()
        .filter(|e| e["change"] != "unchanged")
        .map(|e| (e["src"].as_str().unwrap(), e["change"].as_str().unwrap()))
        .collect();
    assert_eq!(changed, [("ops/cronjob/backup", "would_break")]);
    assert_eq!(edges[0]["after"]["egress"]["verdict"], "denied");

    let typo = flowwatch()
        .args(["policy", "whatif", "--snapshot"])
        .arg(example("repo"))
        .args(["--delete", "NetworkPolicy/ops/nope", "--flows"])
        .args(&logs)
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&typo.stderr)
        .contains("--delete NetworkPolicy/ops/nope: no such object"));

    let nothing = flowwatch()
        .args(["policy", "whatif", "--snapshot"])
        .arg(example("repo"))
        .arg("--flows")
        .args(&logs)
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(1));
}

#[test]
fn a_workload_gone_from_the_proposal_leaves_its_edges_unresolved() {
    let dir = tempfile::tempdir().unwrap();
    let logs = flow_logs(dir.path());
    let out = flowwatch()
        .args(["policy", "whatif", "-o", "json", "--snapshot"])
        .arg(example("repo"))
        .args(["--delete", "CronJob/ops/backup", "--flows"])
        .args(&logs)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "unresolved does not fail by default: {out:?}"
    );
    let edges = json_lines(&out);
    let gone = edges
        .iter()
        .find(|e| e["src"] == "ops/cronjob/backup")
        .unwrap();
    assert_eq!(gone["change"], "unresolved");
    assert_eq!(gone["after"]["error"], "no cronjob ops/backup");
}

#[test]
fn diff_lists_every_workload_pair_and_port_range_that_changes() {
    let out = flowwatch()
        .args(["policy", "diff", "-o", "json", "--snapshot"])
        .arg(example("repo"))
        .arg("--proposed")
        .arg(example("change"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let diffs: Vec<(String, String, String, String, String)> = json_lines(&out)
        .iter()
        .map(|d| {
            let s = |f: &str| d[f].as_str().unwrap().to_string();
            (s("change"), s("src"), s("dst"), s("ports"), s("protocol"))
        })
        .collect();
    let t = |c: &str, s: &str, d: &str, p: &str, proto: &str| {
        (
            c.to_string(),
            s.to_string(),
            d.to_string(),
            p.to_string(),
            proto.to_string(),
        )
    };
    assert_eq!(
        diffs,
        [
            t(
                "would_break",
                "ops/cronjob/backup",
                "data/statefulset/postgres",
                "5432",
                "TCP"
            ),
            t(
                "newly_allowed",
                "shop/deployment/web",
                "shop/deployment/redis",
                "6379",
                "TCP"
            ),
        ]
    );

    let same = flowwatch()
        .args(["policy", "diff", "-o", "table", "--snapshot"])
        .arg(example("repo"))
        .arg("--proposed")
        .arg(example("repo/shop/policies.yaml"))
        .output()
        .unwrap();
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(
        String::from_utf8(same.stdout).unwrap(),
        "0 reachability changes: 0 would_break, 0 newly_allowed\n"
    );
}

#[test]
fn unreadable_traffic_is_an_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port(); // released: nothing listens there
    let run = |traffic: &[&str]| {
        flowwatch()
            .args(["policy", "whatif", "--snapshot"])
            .arg(example("repo"))
            .arg("--proposed")
            .arg(example("change"))
            .args(traffic)
            .output()
            .unwrap()
    };
    let url = format!("http://127.0.0.1:{port}");
    let out = run(&["--prometheus", &url, "--since", "1h"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the observed traffic"),
        "{stderr}"
    );
    assert!(stderr.contains(&url), "{stderr}");
    let out = run(&["--flows", "/nonexistent/flowwatch.log"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/flowwatch.log"));
    // --since without --prometheus, or both sources: usage errors.
    assert_eq!(
        run(&["--since", "1h", "--flows", "x"]).status.code(),
        Some(1)
    );
    let out = run(&["--prometheus", &url, "--since", "7x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown unit"),
        "{out:?}"
    );
}
