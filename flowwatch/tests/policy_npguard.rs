//! Agreement with np-guard netpol-analyzer (v1.4.2, built from its Go module by
//! `cargo xtask k8s-bins`): on three repositories of manifests, every ordered pair of different
//! workloads is reachable on exactly the same protocols and ports by
//!
//! - netpol-analyzer's `k8snetpolicy list` (its connectivity of every workload pair);
//! - flowwatch's `policy diff` from the repository to the same repository without any
//!   NetworkPolicy: the rows are exactly the (pair, protocol, port range) the policies deny,
//!   so their complement is what they allow;
//! - flowwatch's `policy eval` on workload ends (`ns/KIND/name`), at every port where either
//!   side's answer could change (each end of every range of either tool, and the ports
//!   around them).
//!
//! Workloads and policies are read from the manifests by the test itself (serde_yaml), not by
//! either tool, so a workload neither tool reports cannot be missed. No disagreement is
//! tolerated: docs/policy.md ("Agreement with netpol-analyzer") has none to explain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const MAX_PORT: u16 = 65535;

/// Sorted, disjoint, non-adjacent inclusive port ranges.
type Ranges = Vec<(u16, u16)>;

/// (source, destination, protocol) -> allowed ports; a missing key allows nothing.
type Matrix = BTreeMap<(String, String, String), Ranges>;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn repositories() -> Vec<(&'static str, PathBuf)> {
    let root = repo_root();
    vec![
        ("shop", root.join("deploy/examples/shop/repo")),
        (
            "tenants",
            root.join("flowwatch/tests/fixtures/npguard/tenants"),
        ),
        ("ports", root.join("flowwatch/tests/fixtures/npguard/ports")),
    ]
}

fn normalize(mut ranges: Ranges) -> Ranges {
    ranges.sort_unstable();
    let mut out: Ranges = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn complement(ranges: &Ranges) -> Ranges {
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for &(lo, hi) in ranges {
        if u32::from(lo) > next {
            out.push((next as u16, lo - 1));
        }
        next = u32::from(hi) + 1;
    }
    if next <= u32::from(MAX_PORT) {
        out.push((next as u16, MAX_PORT));
    }
    out
}

fn contains(ranges: &Ranges, port: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
}

/// Every `*.yaml`/`*.yml` file under `dir`, each document parsed (Lists unfolded).
fn manifests(dir: &Path) -> Vec<Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            match value.get("items").and_then(Value::as_array) {
                Some(items) => docs.extend(items.iter().cloned()),
                None if value.is_object() => docs.push(value),
                None => {}
            }
        }
    }
    docs
}

fn kind_and_name(doc: &Value) -> (String, String, String) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    (
        s(doc.get("kind")),
        s(doc.pointer("/metadata/namespace")),
        s(doc.pointer("/metadata/name")),
    )
}

/// The workloads of a repository as flowwatch names them: `ns/kind/name`.
fn workloads(docs: &[Value]) -> Vec<String> {
    const KINDS: [&str; 7] = [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "Pod",
    ];
    let mut out: Vec<String> = docs
        .iter()
        .map(kind_and_name)
        .filter(|(kind, _, _)| KINDS.contains(&kind.as_str()))
        .map(|(kind, ns, name)| format!("{ns}/{}/{name}", kind.to_lowercase()))
        .collect();
    out.sort();
    out
}

/// `--delete NetworkPolicy/NS/NAME` for every NetworkPolicy of a repository.
fn delete_all_policies(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(kind_and_name)
        .filter(|(kind, _, _)| kind == "NetworkPolicy")
        .flat_map(|(kind, ns, name)| ["--delete".to_owned(), format!("{kind}/{ns}/{name}")])
        .collect()
}

/// netpol-analyzer's workload name `ns/name[Kind]` as flowwatch's `ns/kind/name`; `None` for
/// an IP-range peer (`0.0.0.0-255.255.255.255`).
fn npguard_workload(peer: &str) -> Option<String> {
    let (ns_name, kind) = peer.trim().strip_suffix(']')?.split_once('[')?;
    let (ns, name) = ns_name.split_once('/')?;
    Some(format!("{ns}/{}/{name}", kind.to_lowercase()))
}

/// A connection set as netpol-analyzer prints it: `All Connections`, `No Connections`, or
/// `TCP 53,8080-8090,UDP 53` (a protocol, then its ports or ranges; a protocol without ports
/// allows all of them).
fn npguard_connections(conn: &str) -> BTreeMap<String, Ranges> {
    let conn = conn.trim();
    let all = || vec![(1, MAX_PORT)];
    let mut out: BTreeMap<String, Ranges> = BTreeMap::new();
    if conn == "All Connections" {
        for p in PROTOCOLS {
            out.insert(p.to_owned(), all());
        }
        return out;
    }
    if conn == "No Connections" {
        return out;
    }
    let mut protocol: Option<String> = None;
    for token in conn.split([',', ' ', ';']).filter(|t| !t.is_empty()) {
        if PROTOCOLS.contains(&token) {
            protocol = Some(token.to_owned());
            out.entry(token.to_owned()).or_default();
            continue;
        }
        let p = protocol
            .clone()
            .unwrap_or_else(|| panic!("netpol-analyzer connection {conn:?}: port before protocol"));
        let (lo, hi) = token.split_once('-').unwrap_or((token, token));
        let parse = |s: &str| -> u16 {
            s.parse()
                .unwrap_or_else(|e| panic!("netpol-analyzer connection {conn:?}: {s:?}: {e}"))
        };
        out.entry(p).or_default().push((parse(lo), parse(hi)));
    }
    for ranges in out.values_mut() {
        if ranges.is_empty() {
            *ranges = all();
        }
        *ranges = normalize(std::mem::take(ranges));
    }
    out
}

/// netpol-analyzer's `list -o json` on a folder: the allowed connections of every pair of
/// different workloads (IP-range peers dropped).
fn npguard_matrix(bin: &Path, dir: &Path) -> Matrix {
    let out = Command::new(bin)
        .args(["list", "--dirpath"])
        .arg(dir)
        .args(["-o", "json"])
        .output()
        .expect("run k8snetpolicy");
    assert!(
        out.status.success(),
        "k8snetpolicy list --dirpath {}: {}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "k8snetpolicy list -o json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let mut matrix = Matrix::new();
    for row in rows.as_array().expect("a JSON array") {
        let field = |k: &str| row[k].as_str().unwrap_or_else(|| panic!("{row}: no {k}"));
        let (Some(src), Some(dst)) = (
            npguard_workload(field("src")),
            npguard_workload(field("dst")),
        ) else {
            continue;
        };
        if src == dst {
            continue;
        }
        for (protocol, ranges) in npguard_connections(field("conn")) {
            matrix.insert((src.clone(), dst.clone(), protocol), ranges);
        }
    }
    matrix
}

/// flowwatch's `policy diff` from the repository to the repository without its policies: the
/// `newly_allowed` rows are the denied ranges; their complement, per pair and protocol, is the
/// allowed matrix.
fn flowwatch_diff_matrix(dir: &Path, workloads: &[String], delete: &[String]) -> Matrix {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "diff", "--snapshot"])
        .arg(dir)
        .arg("--proposed")
        .arg(empty.path())
        .args(delete)
        .args(["-o", "json", "--fail-on", "would_break"])
        .output()
        .expect("run flowwatch policy diff");
    assert!(
        out.status.success(),
        "flowwatch policy diff on {}: {}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut denied: BTreeMap<(String, String, String), Ranges> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["change"], "newly_allowed", "{row}");
        let s = |k: &str| {
            row[k]
                .as_str()
                .unwrap_or_else(|| panic!("{row}: {k}"))
                .to_owned()
        };
        let port = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{row}: {k}")) as u16;
        denied
            .entry((s("src"), s("dst"), s("protocol")))
            .or_default()
            .push((port("port_from"), port("port_to")));
    }
    let mut matrix = Matrix::new();
    for src in workloads {
        for dst in workloads.iter().filter(|d| *d != src) {
            for protocol in PROTOCOLS {
                let key = (src.clone(), dst.clone(), protocol.to_owned());
                let allowed = complement(&normalize(denied.remove(&key).unwrap_or_default()));
                if !allowed.is_empty() {
                    matrix.insert(key, allowed);
                }
            }
        }
    }
    assert!(
        denied.is_empty(),
        "diff rows for unknown workloads: {denied:?}"
    );
    matrix
}

/// The ports where an answer may change: both ends of every range of either matrix and the
/// ports just outside them, plus the extremes.
fn probe_ports(a: &Matrix, b: &Matrix) -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([1, MAX_PORT]);
    for (lo, hi) in a.values().chain(b.values()).flatten().copied() {
        ports.extend([lo, hi, lo.saturating_sub(1).max(1), hi.saturating_add(1)]);
    }
    ports
}

/// flowwatch's `policy eval` verdicts on workload ends: reachable unless denied.
fn flowwatch_eval(
    dir: &Path,
    workloads: &[String],
    ports: &BTreeSet<u16>,
) -> BTreeMap<(String, String, String, u16), bool> {
    let mut input = String::new();
    let mut keys = Vec::new();
    for src in workloads {
        for dst in workloads.iter().filter(|d| *d != src) {
            for protocol in PROTOCOLS {
                for &port in ports {
                    input.push_str(
                        &serde_json::json!({"src": src, "dst": dst, "port": port, "protocol": protocol})
                            .to_string(),
                    );
                    input.push('\n');
                    keys.push((src.clone(), dst.clone(), protocol.to_owned(), port));
                }
            }
        }
    }
    let mut flows = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut flows, input.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "eval", "--snapshot"])
        .arg(dir)
        .arg("--flows")
        .arg(flows.path())
        .output()
        .expect("run flowwatch policy eval");
    assert!(
        out.status.success(),
        "flowwatch policy eval on {}: {}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), keys.len());
    keys.into_iter()
        .zip(answers)
        .map(|(key, line)| {
            let answer: Value = serde_json::from_str(line).unwrap();
            let verdict = answer["verdict"]
                .as_str()
                .unwrap_or_else(|| panic!("{line}"));
            (key, verdict != "denied")
        })
        .collect()
}

fn describe(m: &Matrix, key: &(String, String, String)) -> String {
    m.get(key)
        .map_or("nothing".to_owned(), |r| format!("{r:?}"))
}

#[test]
fn flowwatch_agrees_with_netpol_analyzer_on_every_workload_pair_and_port() {
    // Outside CI a missing binary skips with one line; under CI=true it fails.
    let bin = match flowwatch_testkit::netpol_analyzer::k8snetpolicy() {
        Ok(bin) => bin,
        Err(why) => {
            flowwatch_testkit::privileged::require("policy_npguard (netpol-analyzer)", Err(why));
            return;
        }
    };
    for (name, dir) in repositories() {
        let docs = manifests(&dir);
        let workloads = workloads(&docs);
        assert!(workloads.len() >= 4, "{name}: {workloads:?}");
        let reference = npguard_matrix(&bin, &dir);
        let diff = flowwatch_diff_matrix(&dir, &workloads, &delete_all_policies(&docs));

        // Every pair netpol-analyzer names is a workload of the repository.
        for (src, dst, _) in reference.keys() {
            assert!(
                workloads.contains(src) && workloads.contains(dst),
                "{name}: netpol-analyzer names {src} -> {dst}, not among {workloads:?}"
            );
        }
        let keys: BTreeSet<_> = reference.keys().chain(diff.keys()).cloned().collect();
        let disagreements: Vec<String> = keys
            .iter()
            .filter(|k| reference.get(*k) != diff.get(*k))
            .map(|k| {
                format!(
                    "{} -> {} {}: netpol-analyzer allows {}, flowwatch diff {}",
                    k.0,
                    k.1,
                    k.2,
                    describe(&reference, k),
                    describe(&diff, k)
                )
            })
            .collect();
        assert!(
            disagreements.is_empty(),
            "{name}: policy diff disagrees with netpol-analyzer:\n{}",
            disagreements.join("\n")
        );

        let ports = probe_ports(&reference, &diff);
        let mut disagreements = Vec::new();
        for ((src, dst, protocol, port), reachable) in flowwatch_eval(&dir, &workloads, &ports) {
            let key = (src, dst, protocol);
            let expected = reference.get(&key).is_some_and(|r| contains(r, port));
            if reachable != expected {
                disagreements.push(format!(
                    "{} -> {} {}/{port}: netpol-analyzer {}, flowwatch eval {}",
                    key.0,
                    key.1,
                    key.2,
                    if expected { "allows" } else { "denies" },
                    if reachable { "reachable" } else { "denied" }
                ));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{name}: policy eval disagrees with netpol-analyzer:\n{}",
            disagreements.join("\n")
        );
        eprintln!(
            "{name}: {} workloads, {} allowed (pair, protocol) entries, {} eval probes per pair and protocol: agree",
            workloads.len(),
            reference.len(),
            ports.len()
        );
    }
}

#[test]
fn netpol_analyzer_connection_strings_parse() {
    let c = npguard_connections("TCP 53,8080-8090,UDP 53");
    assert_eq!(c["TCP"], vec![(53, 53), (8080, 8090)]);
    assert_eq!(c["UDP"], vec![(53, 53)]);
    assert!(!c.contains_key("SCTP"));
    assert_eq!(npguard_connections("All Connections").len(), 3);
    assert!(npguard_connections("No Connections").is_empty());
    assert_eq!(
        npguard_workload("shop/web[Deployment]").as_deref(),
        Some("shop/deployment/web")
    );
    assert_eq!(npguard_workload("0.0.0.0-255.255.255.255"), None);
    assert_eq!(complement(&vec![(1, 10), (20, 65535)]), vec![(11, 19)]);
}
