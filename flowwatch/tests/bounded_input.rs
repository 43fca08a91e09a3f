//! Every input is bounded (issue 17, item 3): pathological nesting is refused in linear time in
//! the snapshot loader and in `policy eval --flows`; an out-of-range number, nesting past the
//! limit and an invalid label key each skip only their object (named, with the field); flow-style
//! YAML gets a YAML error; a UTF-8 BOM is accepted; `--flows` lines are bounded (`/dev/zero` is a
//! clean error). Through the loader's API and through the real binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flowwatch::inventory::snapshot;

/// CPU time of the calling thread (immune to the machine's other load).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = thread_cpu();
    let out = f();
    (out, thread_cpu().checked_sub(start).unwrap())
}

const MB: usize = 1024 * 1024;

/// The 1 MB documents of the issue: nested lists and maps, as YAML and JSON, closed or not.
fn pathological() -> Vec<(&'static str, String)> {
    let half = MB / 2;
    vec![
        (
            "500k open [ (YAML)",
            format!("kind: List\nitems: {}", "[".repeat(MB)),
        ),
        (
            "500k open [ (JSON)",
            format!("{{\"kind\": \"List\", \"items\": {}", "[".repeat(MB)),
        ),
        (
            "{a: {a: ... (YAML)",
            format!("kind: Pod\nspec: {}", "{a: ".repeat(MB / 4)),
        ),
        (
            "{\"a\": {\"a\": ... (JSON)",
            format!(
                "{{\"kind\": \"Pod\", \"spec\": {}",
                "{\"a\": ".repeat(MB / 6)
            ),
        ),
        (
            "balanced [[...]] (JSON)",
            format!(
                "{{\"kind\": \"List\", \"items\": [{}1{}]}}",
                "[".repeat(half),
                "]".repeat(half)
            ),
        ),
        (
            "- - - - ... (YAML)",
            format!("kind: List\nitems:\n{}x\n", "- ".repeat(half)),
        ),
    ]
}

#[test]
fn a_pathological_megabyte_is_refused_in_under_100_ms() {
    for (what, text) in pathological() {
        let (result, took) = timed(|| snapshot::parse(&text, "bomb.yaml"));
        eprintln!(
            "{what}: {took:?}: {:?}",
            result.as_ref().map(|(_, e)| e.len()).map_err(|e| e
                .to_string()
                .chars()
                .take(120)
                .collect::<String>())
        );
        assert!(took < Duration::from_millis(100), "{what}: took {took:?}");
        if let Ok((inv, _)) = result {
            assert!(inv.pods.is_empty(), "{what}");
        }
    }
}

/// The issue's case: 40,000 deep (80 KB), which took 10 s to reject.
#[test]
fn forty_thousand_levels_are_refused_at_once() {
    let text = format!("kind: List\nitems: {}\n", "[".repeat(40_000));
    let (result, took) = timed(|| snapshot::parse(&text, "deep.yaml"));
    assert!(result.is_err());
    assert!(took < Duration::from_millis(100), "took {took:?}");
}

const NS: &str = "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n";

fn pod(name: &str, extra: &str) -> String {
    format!(
        "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {name}\n    namespace: shop\n    labels:\n      app: {name}\n  spec:\n    containers:\n    - name: c\n      image: x\n{extra}  status:\n    phase: Running\n    podIP: 10.0.0.{}\n",
        name.len()
    )
}

fn list(items: &[String]) -> String {
    format!("apiVersion: v1\nkind: List\nitems:\n{NS}{}", items.concat())
}

fn pods_named(text: &str) -> (Vec<String>, Vec<String>) {
    let (inv, errors) = snapshot::parse(text, "s.yaml").expect("the snapshot loads");
    let pods = inv
        .pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (pods, errors.iter().map(ToString::to_string).collect())
}

#[test]
fn a_number_beyond_64_bits_skips_only_its_object() {
    let bad = pod(
        "big",
        "      ports:\n      - containerPort: 123456789012345678901234567890\n",
    );
    let (pods, errors) = pods_named(&list(&[pod("web", ""), bad]));
    assert_eq!(pods, ["web"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Pod shop/big")
            && errors[0].contains("spec.containers[0].ports[0].containerPort")
            && errors[0].contains("out of range"),
        "{errors:?}"
    );
    // JSON too: a float beyond f64 failed the whole file.
    let json = r#"{"kind":"List","items":[
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}},
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b","labels":{"x":1e999}}}]}"#;
    let (inv, errors) = snapshot::parse(json, "s.json").unwrap();
    assert_eq!(inv.namespaces.len(), 1);
    assert!(errors[0].to_string().contains("Namespace b"), "{errors:?}");
}

#[test]
fn nesting_past_the_limit_skips_only_its_object() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bad = pod("deep", &format!("    nodeSelector: {{x: {deep}}}\n"));
    let (pods, errors) = pods_named(&list(&[pod("web", ""), bad]));
    assert_eq!(pods, ["web"]);
    assert!(
        errors.len() == 1
            && errors[0].contains("Pod shop/deep")
            && errors[0].contains("spec.nodeSelector.x")
            && errors[0].contains("nested deeper than"),
        "{errors:?}"
    );
}

#[test]
fn invalid_label_keys_and_values_skip_their_object_naming_the_field() {
    let bad_key = pod("web", "").replace("app: web", "\"bad key!\": web");
    let bad_value = pod("api", "").replace("app: api", "app: \"not ok\"");
    let (pods, errors) = pods_named(&list(&[bad_key, bad_value, pod("db", "")]));
    assert_eq!(pods, ["db"]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("Pod shop/web: metadata.labels: invalid label key \"bad key!\""),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("Pod shop/api: metadata.labels.app: invalid label value"),
        "{errors:?}"
    );
}

#[test]
fn flow_style_yaml_errors_are_yaml_errors_and_a_bom_is_accepted() {
    let e = snapshot::parse(
        "{kind: List, items: [{kind: Pod, metadata: {name: x}}",
        "f.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("YAML") && !e.contains("key must be a string"),
        "{e}"
    );
    let (inv, errors) =
        snapshot::parse(&format!("\u{feff}{}", list(&[pod("web", "")])), "bom.yaml").unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inv.pods.len(), 1);
    let (inv, _) = snapshot::parse(
        "\u{feff}{\"kind\":\"Namespace\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"a\"}}",
        "bom.json",
    )
    .unwrap();
    assert_eq!(inv.namespaces.len(), 1);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `flowwatch policy eval` on `snapshot` with `flows` (a path): (exit code, stdout, stderr).
fn eval(snapshot: &Path, flows: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "eval", "--snapshot"])
        .arg(snapshot)
        .args(["--flows", flows])
        .stdin(Stdio::null())
        .output()
        .expect("running flowwatch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flows_from_dev_zero_are_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let snap = write(dir.path(), "s.yaml", &list(&[pod("web", "")]));
    let start = std::time::Instant::now();
    let (code, _, stderr) = eval(&snap, "/dev/zero");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 1 is longer than 1048576 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("memory allocation") && !stderr.contains("backtrace"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_pathological_flow_line_is_answered_fast_and_the_next_lines_still_are() {
    let dir = tempfile::tempdir().unwrap();
    let snap = write(dir.path(), "s.yaml", &list(&[pod("web", "")]));
    let flows = dir.path().join("flows.jsonl");
    let mut f = std::fs::File::create(&flows).unwrap();
    writeln!(f, "{}", "[".repeat(MB - 1)).unwrap();
    writeln!(f, "{}", "{\"a\":".repeat(MB / 5)).unwrap();
    writeln!(
        f,
        r#"{{"src": "10.0.0.3", "dst": "10.0.0.3", "port": 80, "protocol": "TCP"}}"#
    )
    .unwrap();
    drop(f);
    let start = std::time::Instant::now();
    let (code, stdout, stderr) = eval(&snap, flows.to_str().unwrap());
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["error"].as_str().unwrap().contains("line 1"));
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    assert!(lines[2].get("verdict").is_some(), "{}", lines[2]);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_snapshot_of_a_pathological_megabyte_fails_policy_eval_fast() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, text)) in pathological().into_iter().enumerate().take(4) {
        let snap = write(dir.path(), &format!("bomb{i}.yaml"), &text);
        let start = std::time::Instant::now();
        let (code, _, stderr) = eval(&snap, "/dev/null");
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("nested deeper than 64 levels"),
            "{what}: {stderr}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
    }
}

#[test]
fn a_snapshot_from_dev_zero_is_a_clean_error() {
    let start = std::time::Instant::now();
    let (code, _, stderr) = eval(Path::new("/dev/zero"), "/dev/null");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/dev/zero") && stderr.contains("NUL byte"),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}
