//! The offline CLI: the `eval` batch contract (through its reader/writer core and through the
//! real binary), `explain` and `coverage`, on the fixture cluster in fixtures/policy/.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flowwatch::inventory::snapshot;
use flowwatch::policy::{PolicyEngine, PolicyOptions};
use flowwatch::policy_cli::{eval, eval_flows, write_coverage, OutputFormat};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(name)
}

fn fixture_engine(name: &str) -> PolicyEngine {
    let (inv, errors) = snapshot::load_files(&[fixture(name)]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (engine, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    assert_eq!(errors.len(), 1, "only shop/broken is invalid: {errors:?}");
    assert_eq!(errors[0].object, "NetworkPolicy shop/broken");
    engine
}

fn run_eval(engine: &PolicyEngine, input: &str) -> Vec<Value> {
    let mut out = Vec::new();
    eval_flows(engine, input.as_bytes(), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect()
}

fn flows() -> String {
    std::fs::read_to_string(fixture("flows.jsonl")).unwrap()
}

fn side(line: &Value, side: &str) -> (String, Vec<String>) {
    let s = &line[side];
    let policies = s["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    (s["verdict"].as_str().unwrap().to_string(), policies)
}

fn v(verdict: &str, policies: &[&str]) -> (String, Vec<String>) {
    (
        verdict.to_string(),
        policies
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
    )
}

#[test]
fn eval_answers_every_line_in_order_per_the_contract() {
    let out = run_eval(&fixture_engine("cluster.yaml"), &flows());
    // 13 input lines, one blank: 12 answers.
    assert_eq!(out.len(), 12);
    let by_id = |id: i64| out.iter().find(|l| l["id"] == json!(id)).unwrap();
    let ids: Vec<Value> = out.iter().map(|l| l["id"].clone()).collect();
    assert_eq!(ids[..8], [1, 2, 3, 4, 5, 6, 7, 8].map(|i| json!(i)));
    assert_eq!(ids[9..], [10, 11, 12].map(|i| json!(i)));

    // frontend -> api:8080, both sides allowed by their policies.
    let l = by_id(1);
    assert_eq!(l["verdict"], "allowed");
    assert_eq!(side(l, "egress"), v("allowed", &["shop/frontend-egress"]));
    assert_eq!(side(l, "ingress"), v("allowed", &["shop/api-ingress"]));
    assert_eq!(
        l["ingress"]["rules"],
        json!([{"policy": "shop/api-ingress", "rule": 0}])
    );
    assert_eq!(
        l["src"], "shop/frontend-7d9f-abcde",
        "input fields are kept"
    );

    // prometheus (by address) -> api metrics: monitoring has no policy.
    let l = by_id(2);
    assert_eq!(l["verdict"], "allowed");
    assert_eq!(side(l, "egress"), v("uncovered", &[]));
    assert_eq!(
        l["ingress"]["rules"],
        json!([{"policy": "shop/api-ingress", "rule": 1}])
    );

    // frontend -> db: neither side allows it.
    let l = by_id(3);
    assert_eq!(l["verdict"], "denied");
    assert_eq!(side(l, "egress"), v("denied", &[]));
    assert_eq!(side(l, "ingress"), v("denied", &[]));
    // shop/broken (invalid, skipped) is an Ingress policy of db-0's namespace.
    assert_eq!(l["ingress"]["skipped_policies"], json!(["shop/broken"]));
    assert!(l["egress"].get("skipped_policies").is_none());

    // external -> frontend on the named port.
    let l = by_id(4);
    assert_eq!(l["verdict"], "allowed");
    assert_eq!(side(l, "egress"), v("not_applicable", &[]));
    assert_eq!(side(l, "ingress"), v("allowed", &["shop/frontend-ingress"]));

    let l = by_id(5);
    assert_eq!(l["verdict"], "uncovered");
    assert_eq!(side(l, "egress"), v("uncovered", &[]));
    assert_eq!(side(l, "ingress"), v("uncovered", &[]));

    let l = by_id(6);
    assert_eq!(l["verdict"], "denied");
    assert_eq!(side(l, "egress"), v("denied", &[]));
    assert_eq!(side(l, "ingress"), v("not_applicable", &[]));

    // db's own node reaches it whatever the policies say.
    let l = by_id(7);
    assert_eq!(l["verdict"], "allowed");
    assert_eq!(side(l, "ingress"), v("allowed", &[]));
    assert_eq!(l["ingress"]["reason"], "own_node");

    let l = by_id(8);
    assert_eq!(l["error"], "unknown pod shop/nope");
    assert!(l.get("verdict").is_none() && l.get("ingress").is_none());

    let l = &out[8];
    assert!(
        l["error"]
            .as_str()
            .unwrap()
            .starts_with("line 9: invalid JSON"),
        "{l}"
    );
    assert!(l.get("verdict").is_none());

    let l = by_id(10);
    assert!(l["error"].as_str().unwrap().contains("70000"), "{l}");

    // api -> db on SCTP: the egress rule allows TCP 5432 only.
    assert_eq!(by_id(11)["verdict"], "denied");
    assert_eq!(side(by_id(11), "egress"), v("denied", &[]));

    let l = by_id(12);
    assert_eq!(l["verdict"], "allowed");
    assert_eq!(
        l["egress"]["rules"],
        json!([{"policy": "shop/frontend-egress", "rule": 1}])
    );
    assert_eq!(side(l, "ingress"), v("uncovered", &[]));
    assert_eq!(
        l["note"],
        json!({"kept": [1, 2]}),
        "unknown fields pass through"
    );
}

#[test]
fn json_and_yaml_snapshots_give_the_same_answers() {
    let yaml = run_eval(&fixture_engine("cluster.yaml"), &flows());
    let json = run_eval(&fixture_engine("cluster.json"), &flows());
    assert_eq!(yaml, json);
}

#[test]
fn bad_lines_never_stop_the_run() {
    let input = "[1,2]\n{\"src\": 5, \"dst\": \"x\", \"port\": 1}\n{\"src\": \"shop/db-0\", \"dst\": \"nonsense\", \"port\": 1}\n{\"src\": \"shop/db-0\", \"dst\": \"1.2.3.4\"}\n{\"src\": \"shop/db-0\", \"dst\": \"1.2.3.4\", \"port\": 53, \"protocol\": \"ICMP\"}\n\u{fffd}\u{0}\n{\"src\": \"shop/db-0\", \"dst\": \"1.2.3.4\", \"port\": 53}";
    let out = run_eval(&fixture_engine("cluster.yaml"), input);
    assert_eq!(out.len(), 7);
    for l in &out[..6] {
        assert!(l["error"].is_string() && l.get("verdict").is_none(), "{l}");
    }
    assert_eq!(out[0]["error"], "line 1: expected a JSON object");
    assert!(out[1]["error"].as_str().unwrap().starts_with("src:"));
    assert!(out[2]["error"].as_str().unwrap().starts_with("dst:"));
    assert_eq!(out[3]["error"], "missing \"port\"");
    assert!(out[4]["error"].as_str().unwrap().starts_with("protocol:"));
    assert_eq!(out[6]["verdict"], "denied");
}

#[test]
fn eval_over_an_inventory_honours_the_ipblock_option() {
    let inv = flowwatch_testkit::policy::inventory(&[flowwatch_testkit::policy::np(
        "x",
        "from-cluster-cidr",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16}}]}]}",
    )]);
    let input = "{\"src\": \"y/b\", \"dst\": \"x/a\", \"port\": 80}\n";
    let answer = |ipblock_matches_pod_ips| {
        let mut out = Vec::new();
        let (summary, errors) = eval(
            &inv,
            input.as_bytes(),
            &mut out,
            PolicyOptions {
                ipblock_matches_pod_ips,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((summary.evaluated, summary.errors, errors.len()), (1, 0, 0));
        serde_json::from_slice::<Value>(&out).unwrap()
    };
    assert_eq!(answer(true)["verdict"], "allowed");
    assert_eq!(answer(false)["verdict"], "denied");
}

#[test]
fn explain_names_policies_and_rules_of_both_sides() {
    let e = fixture_engine("cluster.yaml");
    let x = e
        .explain(
            &"shop/frontend-7d9f-abcde".parse().unwrap(),
            &"shop/db-0".parse().unwrap(),
            5432,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap();
    let text = x.to_string();
    assert!(text.starts_with("pod shop/frontend-7d9f-abcde (10.244.1.10) -> pod shop/db-0 (10.244.2.30) on 5432/TCP: denied"), "{text}");
    for needle in [
        "egress (on shop/frontend-7d9f-abcde): denied",
        "policy shop/default-deny selects shop/frontend-7d9f-abcde for egress",
        "no egress rules: allows nothing",
        "rule egress[0]: no to peer matches; no ports entry matches -> does not allow",
        "ingress (on shop/db-0): denied",
        "rule ingress[0]: no from peer matches; ports[0] matches -> does not allow",
        "warning: policy shop/broken is invalid and was skipped",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let ok = e
        .explain(
            &"10.244.1.40".parse().unwrap(),
            &"shop/api-5c6b-xyz12".parse().unwrap(),
            9090,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap();
    let text = ok.to_string();
    assert!(
        text.contains("rule ingress[1]: from[0] matches; ports[0] matches -> ALLOWS"),
        "{text}"
    );
    assert!(
        text.contains("egress (on monitoring/prometheus-0): uncovered"),
        "{text}"
    );
    let json = serde_json::to_value(&ok).unwrap();
    assert_eq!(
        json["ingress"]["policies"][0]["policy"],
        "shop/default-deny"
    );
    assert_eq!(
        json["ingress"]["policies"][1]["rules"][1]["peer"],
        json!({"kind": "matched", "index": 0})
    );
}

#[test]
fn coverage_lists_gaps() {
    let c = fixture_engine("cluster.yaml").coverage();
    assert_eq!(
        c.namespaces_without_policy().collect::<Vec<_>>(),
        vec!["default", "kube-system", "monitoring"]
    );
    let no_deny: Vec<&str> = c
        .namespaces_without_default_deny()
        .map(|(ns, _)| ns)
        .collect();
    assert_eq!(no_deny, vec!["default", "kube-system", "monitoring"]);
    assert_eq!(
        c.pods_without_ingress_policy,
        vec![
            "default/debug",
            "kube-system/coredns-1",
            "monitoring/prometheus-0"
        ]
    );
    assert_eq!(c.pods_without_egress_policy, c.pods_without_ingress_policy);
    assert_eq!(c.policies_selecting_no_pod, vec!["shop/cache-ingress"]);
    assert_eq!(c.skipped_policies, vec!["shop/broken"]);
    let mut text = Vec::new();
    write_coverage(&c, OutputFormat::Text, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("Namespaces without any NetworkPolicy (3):\n  default\n"),
        "{text}"
    );
    assert!(
        text.contains("  monitoring: no ingress and no egress default deny"),
        "{text}"
    );
    assert!(
        text.contains("Policies that select no pod (1):\n  shop/cache-ingress"),
        "{text}"
    );
}

#[test]
fn coverage_default_deny_needs_an_isolating_policy_without_allow_all() {
    use flowwatch_testkit::policy::np;
    let e = flowwatch_testkit::policy::engine(&[
        np("x", "deny-in", "{podSelector: {}, policyTypes: [Ingress]}"),
        np(
            "y",
            "isolate-but-allow-all",
            "{podSelector: {}, ingress: [{}]}",
        ),
        np("z", "deny-out", "{podSelector: {}, policyTypes: [Egress]}"),
        np(
            "z",
            "one-pod",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
        ),
    ]);
    let c = e.coverage();
    let ns = |n: &str| {
        c.namespaces
            .iter()
            .find(|c| c.namespace == n)
            .unwrap()
            .clone()
    };
    assert!(ns("x").ingress_default_deny && !ns("x").egress_default_deny);
    assert!(!ns("y").ingress_default_deny);
    assert!(!ns("z").ingress_default_deny && ns("z").egress_default_deny);
    assert_eq!(ns("z").policies, 2);
}

// ---- the real binary (`flowwatch policy ...`) ----

fn flowwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
}

#[test]
fn binary_eval_matches_the_library_and_reads_stdin() {
    let expected = run_eval(&fixture_engine("cluster.yaml"), &flows());
    let from_file = flowwatch()
        .args(["policy", "eval", "--snapshot"])
        .arg(fixture("cluster.yaml"))
        .arg("--flows")
        .arg(fixture("flows.jsonl"))
        .output()
        .unwrap();
    assert!(from_file.status.success());
    let lines: Vec<Value> = String::from_utf8(from_file.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, expected);
    let stderr = String::from_utf8(from_file.stderr).unwrap();
    assert!(
        stderr.contains("warning: skipped NetworkPolicy shop/broken: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR"),
        "{stderr}"
    );

    let line = eval_stdin(
        &fixture("cluster.json"),
        &[],
        "{\"src\": \"shop/frontend-7d9f-abcde\", \"dst\": \"shop/api-5c6b-xyz12\", \"port\": 8080}",
    );
    assert_eq!(line["verdict"], "allowed");
}

/// `flowwatch policy eval --snapshot <snapshot> <args>` with one flow line on stdin.
fn eval_stdin(snapshot: &std::path::Path, args: &[&str], flow: &str) -> Value {
    let mut child = flowwatch()
        .args(["policy", "eval"])
        .args(args)
        .arg("--snapshot")
        .arg(snapshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(flow.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn binary_honours_the_ipblock_option() {
    // x/a admits only an ipBlock that covers y/b's pod IP: allowed when ipBlocks match pod
    // addresses (the default), denied when they do not.
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    std::fs::write(
        &snapshot,
        r"apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {kubernetes.io/metadata.name: y}}}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: x, name: a, labels: {pod: a}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.0.1.1}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: y, name: b, labels: {pod: b}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.0.2.2}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {namespace: x, name: from-cluster-cidr}
  spec:
    podSelector: {matchLabels: {pod: a}}
    ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16}}]}]
",
    )
    .unwrap();
    let flow = r#"{"src": "y/b", "dst": "x/a", "port": 80}"#;
    assert_eq!(eval_stdin(&snapshot, &[], flow)["verdict"], "allowed");
    let off = ["--ipblock-matches-pod-ips=false"];
    assert_eq!(eval_stdin(&snapshot, &off, flow)["verdict"], "denied");
}

#[test]
fn binary_fails_only_when_the_snapshot_cannot_be_read() {
    let missing = flowwatch()
        .args([
            "policy",
            "eval",
            "--snapshot",
            "/nonexistent/snapshot.yaml",
            "--flows",
        ])
        .arg(fixture("flows.jsonl"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read snapshot"));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, "items: [unclosed").unwrap();
    let bad = flowwatch()
        .args(["policy", "coverage", "--snapshot"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn bad_arguments_exit_1_not_the_unreadable_snapshot_code() {
    for args in [
        &["policy", "eval", "--no-such-flag"][..],
        &["policy", "eval", "--ipblock-matches-pod-ips=maybe"],
        &["run", "--poll-interval-ms", "0"],
    ] {
        let out = flowwatch().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error:"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = flowwatch().args(["policy", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("eval"));
}

#[test]
fn binary_explain_and_coverage() {
    let explain = flowwatch()
        .args(["policy", "explain", "--snapshot"])
        .arg(fixture("cluster.yaml"))
        .args([
            "--from",
            "shop/frontend-7d9f-abcde",
            "--to",
            "shop/api-5c6b-xyz12",
            "--port",
            "8080/TCP",
        ])
        .output()
        .unwrap();
    assert!(explain.status.success());
    let text = String::from_utf8(explain.stdout).unwrap();
    assert!(text.contains("on 8080/TCP: allowed"), "{text}");
    assert!(
        text.contains("rule egress[0]: to[0] matches; ports[0] matches -> ALLOWS"),
        "{text}"
    );

    let unknown = flowwatch()
        .args(["policy", "explain", "--snapshot"])
        .arg(fixture("cluster.yaml"))
        .args(["--from", "shop/ghost", "--to", "10.0.0.1", "--port", "80"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown pod shop/ghost"));

    let coverage = flowwatch()
        .args(["policy", "coverage", "--output", "json", "--snapshot"])
        .arg(fixture("cluster.yaml"))
        .output()
        .unwrap();
    assert!(coverage.status.success());
    let c: Value = serde_json::from_slice(&coverage.stdout).unwrap();
    assert_eq!(
        c["policies_selecting_no_pod"],
        json!(["shop/cache-ingress"])
    );
}

// ---- regressions ----

/// A namespace `x` with pods `a` and `b`, plus `extra` (YAML documents).
fn small_snapshot(extra: &str) -> String {
    format!(
        r"apiVersion: v1
kind: Namespace
metadata: {{name: x}}
---
apiVersion: v1
kind: Pod
metadata: {{namespace: x, name: a, labels: {{pod: a}}}}
status: {{podIP: 10.0.1.1}}
---
apiVersion: v1
kind: Pod
metadata: {{namespace: x, name: b, labels: {{pod: b}}}}
status: {{podIP: 10.0.1.2}}
{extra}"
    )
}

#[test]
fn a_policy_that_does_not_decode_is_reported_as_skipped_everywhere() {
    // `endPort: "high"` is not even a number: the loader cannot decode the policy, yet it
    // must be reported like a policy that decodes but is invalid.
    let text = small_snapshot(
        r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: bad}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports: [{port: 80, endPort: "high"}]
"#,
    );
    let (inv, errors) = snapshot::parse(&text, "s.yaml").unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].object, "NetworkPolicy x/bad");
    assert_eq!(
        errors[0].field.as_deref(),
        Some("spec.ingress[0].ports[0].endPort")
    );
    let (engine, build_errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    assert_eq!(build_errors, vec![], "reported once, by the loader");
    assert_eq!(engine.skipped_policies().collect::<Vec<_>>(), vec!["x/bad"]);
    assert_eq!(engine.coverage().skipped_policies, vec!["x/bad"]);

    let out = run_eval(&engine, r#"{"src": "x/b", "dst": "x/a", "port": 80}"#);
    assert_eq!(out[0]["ingress"]["skipped_policies"], json!(["x/bad"]));
    // It declared only ingress, so the egress side does not mention it.
    assert!(
        out[0]["egress"].get("skipped_policies").is_none(),
        "{}",
        out[0]
    );

    let x = engine
        .explain(
            &"x/b".parse().unwrap(),
            &"x/a".parse().unwrap(),
            80,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap();
    assert!(
        x.to_string()
            .contains("warning: policy x/bad is invalid and was skipped"),
        "{x}"
    );
}

#[test]
fn an_undecodable_policy_with_unreadable_types_counts_for_both_directions() {
    let text = small_snapshot(
        r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: bad}
spec: {podSelector: {}, policyTypes: "Egress"}
"#,
    );
    let (inv, errors) = snapshot::parse(&text, "s.yaml").unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (engine, _) = PolicyEngine::build(&inv, PolicyOptions::default());
    let out = run_eval(&engine, r#"{"src": "x/b", "dst": "x/a", "port": 80}"#);
    assert_eq!(out[0]["ingress"]["skipped_policies"], json!(["x/bad"]));
    assert_eq!(out[0]["egress"]["skipped_policies"], json!(["x/bad"]));
}

#[test]
fn eval_replaces_the_fields_it_writes() {
    let engine = fixture_engine("cluster.yaml");
    // An earlier answer fed back in, now naming an unknown pod: no stale verdict survives.
    let stale = r#"{"src": "shop/ghost", "dst": "shop/db-0", "port": 5432, "verdict": "allowed", "ingress": {"verdict": "allowed"}, "egress": {"verdict": "allowed"}, "id": 7}"#;
    // An earlier error answer fed back in, now valid: no stale error survives.
    let fixed = r#"{"src": "shop/frontend-7d9f-abcde", "dst": "shop/api-5c6b-xyz12", "port": 8080, "error": "old"}"#;
    let out = run_eval(&engine, &format!("{stale}\n{fixed}\n"));
    assert!(out[0]["error"].is_string(), "{}", out[0]);
    for field in ["verdict", "ingress", "egress"] {
        assert!(out[0].get(field).is_none(), "{field} kept: {}", out[0]);
    }
    assert_eq!(out[0]["id"], 7, "other fields pass through");
    assert_eq!(out[1]["verdict"], "allowed");
    assert!(out[1].get("error").is_none(), "{}", out[1]);

    let mut sink = Vec::new();
    let summary = eval_flows(&engine, format!("{stale}\n{fixed}\n").as_bytes(), &mut sink).unwrap();
    assert_eq!((summary.evaluated, summary.errors), (1, 1));
}

#[test]
fn binary_unreadable_flows_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowwatch()
        .args(["policy", "eval", "--snapshot"])
        .arg(fixture("cluster.yaml"))
        .arg("--flows")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read flows"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
}

#[test]
fn a_good_copy_of_a_policy_wins_over_an_earlier_copy_that_did_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |end_port: &str| {
        format!(
            r"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: x, name: allow-b}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80, endPort: {end_port}}}]}}]
"
        )
    };
    let first = dir.path().join("first.yaml");
    let second = dir.path().join("second.yaml");
    std::fs::write(&first, small_snapshot(&policy("\"high\""))).unwrap();
    std::fs::write(&second, policy("90")).unwrap();
    let (inv, _) = snapshot::load_files(&[&first, &second]).unwrap();
    let (engine, _) = PolicyEngine::build(&inv, PolicyOptions::default());
    assert_eq!(
        engine.skipped_policies().count(),
        0,
        "the good copy is used"
    );
    let out = run_eval(&engine, r#"{"src": "x/b", "dst": "x/a", "port": 85}"#);
    assert_eq!(
        out[0]["ingress"]["rules"],
        json!([{"policy": "x/allow-b", "rule": 0}]),
        "{out:?}"
    );
}

#[test]
fn a_policy_in_two_snapshot_files_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = r"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: allow-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: bad}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]}
";
    let first = dir.path().join("first.yaml");
    let second = dir.path().join("second.yaml");
    std::fs::write(&first, small_snapshot(policy)).unwrap();
    std::fs::write(&second, policy).unwrap();
    let (inv, errors) = snapshot::load_files(&[&first, &second]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (engine, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    let duplicates: Vec<String> = errors
        .iter()
        .filter(|e| e.message.contains("listed twice"))
        .map(|e| e.object.clone())
        .collect();
    assert_eq!(
        duplicates,
        vec!["NetworkPolicy x/allow-b", "NetworkPolicy x/bad"],
        "{errors:?}"
    );
    assert_eq!(engine.skipped_policies().collect::<Vec<_>>(), vec!["x/bad"]);
    let c = engine.coverage();
    let x = c.namespaces.iter().find(|n| n.namespace == "x").unwrap();
    assert_eq!(x.policies, 1);
    let out = run_eval(&engine, r#"{"src": "x/b", "dst": "x/a", "port": 80}"#);
    assert_eq!(
        out[0]["ingress"]["rules"],
        json!([{"policy": "x/allow-b", "rule": 0}])
    );
}

// ---- cluster-scoped policies (tiers) ----

#[test]
fn the_tier_example_of_the_docs_is_what_the_binary_prints() {
    let docs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md"),
    )
    .unwrap();
    let flows = [
        r#"{"src": "shop/api-5c6b-xyz12", "dst": "shop/db-0", "port": 5432}"#,
        r#"{"src": "default/debug", "dst": "shop/api-5c6b-xyz12", "port": 8080}"#,
        r#"{"src": "shop/frontend-7d9f-abcde", "dst": "shop/api-5c6b-xyz12", "port": 8080}"#,
    ];
    let mut child = flowwatch()
        .args(["policy", "eval", "--snapshot"])
        .arg(fixture("tiers.yaml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for f in flows {
        assert!(docs.contains(&format!("'{f}'")), "the docs list {f}");
        writeln!(stdin, "{f}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "the fixture is valid"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(docs.contains(line), "docs/policy.md lacks the line\n{line}");
    }
    let answers: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Pass, then the NetworkPolicy of db-0.
    assert_eq!(answers[0]["ingress"]["tier"], "networkpolicy");
    assert_eq!(answers[0]["egress"]["reason"], "passed");
    // Another tenant: the Admin Deny.
    assert_eq!(
        answers[1]["ingress"]["decided_by"],
        json!({"kind": "ClusterNetworkPolicy", "name": "tenant-isolation", "rule": "deny-other-tenants", "action": "Deny"})
    );
    // Same tenant, no NetworkPolicy: the Baseline.
    assert_eq!(answers[2]["ingress"]["tier"], "baseline");
    assert_eq!(answers[2]["verdict"], "denied");
}

#[test]
fn explain_walks_the_tiers() {
    let (inv, errors) = snapshot::load_files(&[fixture("tiers.yaml")]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (e, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    let x = e
        .explain(
            &"shop/frontend-7d9f-abcde".parse().unwrap(),
            &"shop/api-5c6b-xyz12".parse().unwrap(),
            8080,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap();
    let text = x.to_string();
    for needle in [
        "ingress (on shop/api-5c6b-xyz12): denied (decided by the baseline tier: ClusterNetworkPolicy baseline-deny rule \"deny-all\", Deny)",
        "admin tier: ClusterNetworkPolicy tenant-isolation (priority 10) selects shop/api-5c6b-xyz12 for ingress",
        "rule \"pass-same-tenant\" (Pass): from[0] matches; any port -> PASS: leaves the admin tier",
        "rule \"deny-other-tenants\" (Deny): from[0] matches; any port -> not reached",
        "networkpolicy tier: no NetworkPolicy selects shop/api-5c6b-xyz12 for ingress",
        "rule \"deny-all\" (Deny): from[0] matches; any port -> DENY: decides",
        "egress (on shop/frontend-7d9f-abcde): uncovered (no tier decided)",
        "a Pass rule left the cluster tiers and no later tier decided",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let json = serde_json::to_value(&x).unwrap();
    assert_eq!(json["ingress"]["tier"], "baseline");
    assert_eq!(
        json["ingress"]["admin"][0]["rules"][0]["outcome"],
        "decided"
    );
    assert_eq!(
        json["ingress"]["admin"][0]["rules"][1]["outcome"],
        "not_reached"
    );
    assert_eq!(
        json["ingress"]["baseline"][0]["rules"][0]["outcome"],
        "decided"
    );

    // Another tenant: the Admin Deny decides and the Baseline is not reached.
    let denied = e
        .explain(
            &"default/debug".parse().unwrap(),
            &"shop/db-0".parse().unwrap(),
            5432,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap();
    let json = serde_json::to_value(&denied).unwrap();
    assert_eq!(json["ingress"]["tier"], "admin");
    assert_eq!(
        json["ingress"]["admin"][0]["rules"][0]["outcome"],
        "no_match"
    );
    assert_eq!(
        json["ingress"]["admin"][0]["rules"][1]["outcome"],
        "decided"
    );
    assert_eq!(
        json["ingress"]["baseline"][0]["rules"][0]["outcome"],
        "not_reached"
    );
    let text = denied.to_string();
    assert!(
        text.contains("(the NetworkPolicy tier above was not reached: the admin tier decided)"),
        "{text}"
    );
}

#[test]
fn coverage_says_which_tiers_select_each_namespace_and_workload() {
    use flowwatch::policy::Tier;
    let (inv, _) = snapshot::load_files(&[fixture("tiers.yaml")]).unwrap();
    let (e, _) = PolicyEngine::build(&inv, PolicyOptions::default());
    let c = e.coverage();
    let shop = c.namespaces.iter().find(|n| n.namespace == "shop").unwrap();
    assert_eq!(
        shop.cluster_policies,
        vec![
            "ClusterNetworkPolicy tenant-isolation",
            "ClusterNetworkPolicy baseline-deny"
        ]
    );
    let default = c
        .namespaces
        .iter()
        .find(|n| n.namespace == "default")
        .unwrap();
    assert!(default.cluster_policies.is_empty());
    let db = c.workloads.iter().find(|w| w.pods == ["db-0"]).unwrap();
    assert_eq!(
        db.ingress,
        vec![Tier::Admin, Tier::NetworkPolicy, Tier::Baseline]
    );
    assert_eq!(db.egress, vec![Tier::Admin]);
    let debug = c.workloads.iter().find(|w| w.pods == ["debug"]).unwrap();
    assert!(debug.ingress.is_empty() && debug.egress.is_empty());
    let mut text = Vec::new();
    write_coverage(&c, OutputFormat::Text, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    for needle in [
        "shop: ClusterNetworkPolicy tenant-isolation, ClusterNetworkPolicy baseline-deny",
        "shop/db-0: ingress admin, networkpolicy, baseline; egress admin",
        "default/debug: ingress none; egress none",
        "Cluster policies that select no pod (0):",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // A NetworkPolicy-only snapshot keeps the report as it was.
    let mut plain = Vec::new();
    write_coverage(
        &fixture_engine("cluster.yaml").coverage(),
        OutputFormat::Text,
        &mut plain,
    )
    .unwrap();
    assert!(!String::from_utf8(plain)
        .unwrap()
        .contains("Cluster policies"));
}

#[test]
fn cluster_policies_read_the_same_from_a_list_json_and_multi_document_yaml() {
    let text = std::fs::read_to_string(fixture("tiers.yaml")).unwrap();
    let list: Value = serde_yaml::from_str(&text).unwrap();
    // JSON (kubectl -o json), and multi-document YAML of the same items.
    let json_text = serde_json::to_string_pretty(&list).unwrap();
    let docs = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .fold(String::new(), |mut docs, item| {
            let _ = write!(docs, "---\n{}", serde_yaml::to_string(item).unwrap());
            docs
        });
    let flows = "{\"src\": \"default/debug\", \"dst\": \"shop/api-5c6b-xyz12\", \"port\": 8080}\n\
                 {\"src\": \"shop/frontend-7d9f-abcde\", \"dst\": \"shop/api-5c6b-xyz12\", \"port\": 8080}\n\
                 {\"src\": \"shop/api-5c6b-xyz12\", \"dst\": \"shop/db-0\", \"port\": 5432}\n";
    let answers = |t: &str| {
        let (inv, errors) = snapshot::parse(t, "test").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(inv.cluster_policies.cluster_network_policies.len(), 2);
        let (e, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        run_eval(&e, flows)
    };
    let from_list = answers(&text);
    assert_eq!(from_list[0]["ingress"]["tier"], "admin");
    assert_eq!(answers(&json_text), from_list);
    assert_eq!(answers(&docs), from_list);
}

#[test]
fn invalid_cluster_policies_are_reported_skipped_and_listed() {
    let extra = r"---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: bad-cidr}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Deny, to: [{networks: [10.0.0.0/40]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: not-a-number}
spec: {priority: high, subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: good}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}]}
---
apiVersion: example.com/v1
kind: ClusterNetworkPolicy
metadata: {name: another-groups-kind}
spec: {whatever: 1}
";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, small_snapshot(extra)).unwrap();
    let out = flowwatch()
        .args(["policy", "eval", "--snapshot"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"src\": \"x/a\", \"dst\": \"x/b\", \"port\": 80}\n{\"src\": \"x/b\", \"dst\": \"x/a\", \"port\": 80}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "warning: skipped ClusterNetworkPolicy bad-cidr: spec.egress[0].to[0].networks[0]: invalid CIDR \"10.0.0.0/40\"",
        "warning: skipped AdminNetworkPolicy not-a-number: spec.priority:",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The valid policy still decides; the invalid ones are named on every pod side.
    assert_eq!(lines[0]["ingress"]["tier"], "admin");
    assert_eq!(lines[0]["verdict"], "denied");
    assert_eq!(lines[1]["verdict"], "uncovered");
    assert_eq!(
        lines[1]["egress"]["skipped_policies"],
        json!([
            "ClusterNetworkPolicy bad-cidr",
            "AdminNetworkPolicy not-a-number"
        ])
    );
    let (inv, _) = snapshot::load_files(&[&path]).unwrap();
    let (e, _) = PolicyEngine::build(&inv, PolicyOptions::default());
    let c = e.coverage();
    assert_eq!(
        c.skipped_cluster_policies,
        vec![
            "ClusterNetworkPolicy bad-cidr",
            "AdminNetworkPolicy not-a-number"
        ]
    );
    let text = e
        .explain(
            &"x/a".parse().unwrap(),
            &"x/b".parse().unwrap(),
            80,
            flowwatch::model::Protocol::Tcp,
        )
        .unwrap()
        .to_string();
    assert!(
        text.contains("warning: ClusterNetworkPolicy bad-cidr is invalid and was skipped"),
        "{text}"
    );
}

#[test]
fn cni_specific_policies_are_counted_and_mark_the_sides_they_may_affect() {
    // A CiliumNetworkPolicy in x and a Calico NetworkPolicy (same kind name as the core one,
    // another group) in y; x/a is also selected by a core NetworkPolicy.
    let extra = r"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {namespace: x, name: l7}
spec: {endpointSelector: {}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {namespace: y, name: calico}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: a-ingress}
spec: {podSelector: {matchLabels: {pod: a}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z}
---
apiVersion: v1
kind: Pod
metadata: {namespace: z, name: c}
status: {podIP: 10.0.3.1}
";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, small_snapshot(extra)).unwrap();
    let run = |args: &[&str]| {
        let mut child = flowwatch()
            .args(["policy", "eval", "--snapshot"])
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"src\": \"x/b\", \"dst\": \"x/a\", \"port\": 80}\n{\"src\": \"z/c\", \"dst\": \"x/b\", \"port\": 80}\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, String::from_utf8(out.stderr).unwrap())
    };
    let (lines, stderr) = run(&[]);
    assert_eq!(
        stderr,
        "note: CNI-specific policies are not evaluated (1 CiliumNetworkPolicy, 1 projectcalico.org/NetworkPolicy); the sides of the pods they may select are marked cni_policy_present\n"
    );
    // x/a: denied by the core NetworkPolicy, but the Cilium policy of x may say otherwise.
    assert_eq!(lines[0]["verdict"], "denied");
    assert_eq!(lines[0]["ingress"]["cni_policy_present"], true);
    assert_eq!(lines[0]["ingress"]["reason"], "no_rule_matched");
    // x/b's sides are uncovered by the core kinds: unknown rather than uncovered.
    assert_eq!(lines[0]["egress"]["verdict"], "uncovered");
    assert_eq!(lines[0]["egress"]["reason"], "cni_policy_present");
    // z has no CNI policy: plain uncovered.
    assert_eq!(lines[1]["egress"]["reason"], "not_selected");
    assert!(lines[1]["egress"].get("cni_policy_present").is_none());
    assert_eq!(lines[1]["ingress"]["reason"], "cni_policy_present");

    // Declared irrelevant: no marks.
    let (lines, stderr) = run(&["--ignore-cni-policies"]);
    assert!(stderr.contains("declared irrelevant"), "{stderr}");
    assert_eq!(lines[0]["egress"]["reason"], "not_selected");
    assert!(lines[0]["ingress"].get("cni_policy_present").is_none());

    // The Calico policy was not read as a core NetworkPolicy; coverage counts both by kind.
    let (inv, errors) = snapshot::load_files(&[&path]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inv.network_policies.len(), 1);
    let (e, _) = PolicyEngine::build(&inv, PolicyOptions::default());
    let c = e.coverage();
    assert_eq!(
        c.cni_policies,
        [
            ("CiliumNetworkPolicy".to_string(), 1),
            ("projectcalico.org/NetworkPolicy".to_string(), 1)
        ]
        .into_iter()
        .collect()
    );
    let mut text = Vec::new();
    write_coverage(&c, OutputFormat::Text, &mut text).unwrap();
    assert!(String::from_utf8(text)
        .unwrap()
        .contains("CNI-specific policies (not evaluated) (2):\n  CiliumNetworkPolicy: 1\n"));

    // A cluster-wide CNI kind may select pods of every namespace.
    std::fs::write(
        &path,
        small_snapshot(
            "---\napiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: acnp}\nspec: {priority: 5}\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: z, name: c}\nstatus: {podIP: 10.0.3.1}\n",
        ),
    )
    .unwrap();
    let (lines, _) = run(&[]);
    assert_eq!(lines[1]["egress"]["reason"], "cni_policy_present");
    assert_eq!(lines[1]["ingress"]["reason"], "cni_policy_present");
}
