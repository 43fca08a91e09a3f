//! The flow log as an operator meets it: every record matches the versioned JSON Schema
//! (docs/flow-record.schema.json, checked with an independent validator), records the agent
//! cannot write (a full disk: a tmpfs this test mounts) are counted by reason and the agent
//! goes on, writing again once there is room; a log renamed by logrotate is reopened; and
//! SIGTERM with the disk full still exits 0 after counting what it could not write.
//!
//! The agent tests need root (pods, eBPF, mount); the schema test of records built through the
//! public API needs only python3-jsonschema.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowwatch::aggregate::{EndReason, FinishedFlow};
use flowwatch::flowlog::{FlowRecord, WallClock, SCHEMA_VERSION};
use flowwatch::model::{Flow, FlowKey, Outcome, Protocol};
use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::{sh, Node, Pod};
use flowwatch_testkit::privileged::{self, require};
use serde_json::Value;

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/flow-record.schema.json")
}

/// Records of every shape the agent writes, built as the agent builds them: pod to pod with
/// verdicts (allowed and denied), to a Service, to the node, to outside addresses, and without
/// an inventory.
fn records_of_every_shape() -> Vec<Value> {
    let (inventory, _) = flowwatch::inventory::snapshot::parse(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/snapshot.yaml"),
        )
        .unwrap(),
        "demo",
    )
    .unwrap();
    let mut classifier = flowwatch::classify::Classifier::new(
        flowwatch::enrich::EnrichOptions {
            named_networks: vec!["corp-vpn=10.200.0.0/16".parse().unwrap()],
            label_allowlist: vec!["app".into()],
            ..Default::default()
        },
        flowwatch::policy::PolicyOptions::default(),
    );
    classifier.update(&inventory, &flowwatch::enrich::OwnerIndex::default(), 1, 0);
    let clock = WallClock::new(std::time::SystemTime::now(), 0);
    let mut out = Vec::new();
    for (src, dst, proto, outcome, reason) in [
        (
            "10.213.0.10:40000",
            "10.213.0.30:5432",
            Protocol::Tcp,
            Outcome::Established,
            EndReason::Closed,
        ),
        (
            "10.213.0.40:40001",
            "10.213.0.30:5432",
            Protocol::Tcp,
            Outcome::Failed,
            EndReason::Failed,
        ),
        (
            "10.213.0.10:40002",
            "10.96.0.20:80",
            Protocol::Tcp,
            Outcome::Established,
            EndReason::Closed,
        ),
        (
            "10.213.0.20:40003",
            "10.213.0.254:10250",
            Protocol::Tcp,
            Outcome::Established,
            EndReason::Idle,
        ),
        (
            "10.213.0.20:40004",
            "1.1.1.1:53",
            Protocol::Udp,
            Outcome::Unanswered,
            EndReason::Idle,
        ),
        (
            "10.213.0.20:40005",
            "10.200.3.4:443",
            Protocol::Tcp,
            Outcome::Midstream,
            EndReason::Shutdown,
        ),
        (
            "[fd00::1]:40006",
            "[fd00::2]:9000",
            Protocol::Sctp,
            Outcome::Pending,
            EndReason::Reused,
        ),
    ] {
        let mut flow = Flow::new(
            FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: proto,
            },
            1_000_000_000,
        );
        flow.outcome = outcome;
        flow.seen_at_client = true;
        let finished = FinishedFlow { flow, reason };
        let mut plain = FlowRecord::new(&finished, clock);
        plain.node = Some("node-a".into());
        out.push(serde_json::from_str(&plain.to_json_line()).unwrap());
        if let Some((class, _)) = classifier.classify(&finished.flow, None) {
            let record = FlowRecord::new(&finished, clock).classified(&class);
            out.push(serde_json::from_str(&record.to_json_line()).unwrap());
        }
    }
    out
}

#[test]
fn records_of_every_shape_match_the_json_schema_and_violations_are_caught() {
    if !require(
        "flow record schema",
        flowwatch_testkit::jsonschema::available(),
    ) {
        return;
    }
    let records = records_of_every_shape();
    let kinds: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|r| r["dst"]["kind"].as_str().map(str::to_string))
        .collect();
    assert!(
        ["pod", "service", "node", "external"]
            .iter()
            .all(|k| kinds.contains(*k)),
        "shapes covered: {kinds:?}"
    );
    assert!(records.iter().any(|r| r["ingress"]["verdict"] == "denied"));
    assert!(records
        .iter()
        .all(|r| r["schema_version"] == SCHEMA_VERSION));
    flowwatch_testkit::jsonschema::validate(&schema(), &records).unwrap_or_else(|e| panic!("{e}"));
    // The schema is not a rubber stamp: a renamed field, a bad enum value, a missing version.
    let mut bad = records[0].clone();
    bad["src"]["workload"] = bad["src"]["workload_name"].take();
    let mut wrong_outcome = records[0].clone();
    wrong_outcome["outcome"] = "maybe".into();
    let mut unversioned = records[0].clone();
    unversioned
        .as_object_mut()
        .unwrap()
        .remove("schema_version");
    for r in [bad, wrong_outcome, unversioned] {
        assert!(
            flowwatch_testkit::jsonschema::validate(&schema(), std::slice::from_ref(&r)).is_err(),
            "accepted {r}"
        );
    }
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "flowwatch-test",
            dir.path().to_str().unwrap(),
        ]);
        Tmpfs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path("filler")).unwrap();
        let chunk = [0u8; 1024];
        for _ in 0..1_000_000 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        // Nothing else fits now.
        assert!(std::fs::write(self.path("probe"), [0u8; 4096]).is_err());
        let _ = std::fs::remove_file(self.path("probe"));
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Not `sh`: a panic while dropping during a failed test's unwinding would abort.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `n` UDP flows from `client` to `server` (one datagram each, from its own port; nobody
/// answers, so each ends as `unanswered` after the idle timeout).
fn udp_flows(client: &Pod, server: &Pod, port: u16, n: usize) {
    let target = SocketAddr::new(server.ipv4.into(), port);
    client
        .run(move || {
            for _ in 0..n {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.send_to(b"flow", target).unwrap();
            }
        })
        .join()
        .unwrap();
}

fn dropped(agent: &Agent, reason: &str) -> f64 {
    agent
        .metric(&format!(
            "flowwatch_flow_log_records_dropped_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(-1.0)
}

fn wait_until(what: &str, timeout: Duration, agent: &Agent, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines_to(path: &Path, dst: &Pod, port: u16) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .filter(|r| r["dst"]["ip"] == dst.ipv4.to_string() && r["dst"]["port"] == port)
        .collect()
}

#[test]
fn a_full_disk_drops_and_counts_records_then_writing_resumes_and_logrotate_is_followed() {
    if !privileged::root_test("flow log on a full disk") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let fs = Tmpfs::mount("64k");
    let log = fs.path("flows.jsonl");
    let agent = Agent::start_with_flow_log_at(
        &log,
        &[
            "--interfaces",
            &node.interface_glob(),
            "--idle-timeout-secs",
            "1",
        ],
    );
    fs.fill();
    // Full: records are dropped as no_space, and the agent goes on. (Other tests' connections
    // on this machine may have left records in the log already: the rest of its last page
    // still takes a few records, so there are more flows than a page holds.)
    udp_flows(client, server, 7001, 40);
    wait_until(
        "records counted as dropped",
        Duration::from_secs(20),
        &agent,
        || dropped(&agent, "no_space") >= 20.0,
    );
    assert!(lines_to(&log, server, 7001).len() < 20);
    assert!(
        agent.stderr().contains("flow log records dropped"),
        "{}",
        agent.stderr()
    );
    // Room again: the next records are written, whole.
    fs.free();
    udp_flows(client, server, 7002, 3);
    wait_until("3 records written", Duration::from_secs(20), &agent, || {
        lines_to(&log, server, 7002).len() == 3
    });
    assert!(agent.stderr().contains("flow log writable again"));
    assert_eq!(dropped(&agent, "io_error"), 0.0);
    // logrotate (create mode) renames the file: the agent writes to a new one at the path.
    std::fs::rename(&log, fs.path("flows.jsonl.1")).unwrap();
    udp_flows(client, server, 7003, 2);
    wait_until(
        "records in the reopened file",
        Duration::from_secs(20),
        &agent,
        || lines_to(&log, server, 7003).len() == 2,
    );
    assert_eq!(agent.metric("flowwatch_flow_log_reopens_total"), Some(1.0));
    assert_eq!(lines_to(&fs.path("flows.jsonl.1"), server, 7002).len(), 3);
    assert!(agent.metric("flowwatch_flow_log_records_total").unwrap() >= 5.0);
    // Every record written is schema-valid.
    if require(
        "flow record schema",
        flowwatch_testkit::jsonschema::available(),
    ) {
        let mut all = lines_to(&log, server, 7003);
        all.extend(lines_to(&fs.path("flows.jsonl.1"), server, 7002));
        flowwatch_testkit::jsonschema::validate(&schema(), &all).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn sigterm_with_the_disk_full_counts_what_it_could_not_write_and_exits_0() {
    if !privileged::root_test("SIGTERM on a full disk") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let fs = Tmpfs::mount("64k");
    let log = fs.path("flows.jsonl");
    // Flows stay in flight until the shutdown flush writes them.
    let mut agent = Agent::start_with_flow_log_at(
        &log,
        &[
            "--interfaces",
            &node.interface_glob(),
            "--idle-timeout-secs",
            "600",
        ],
    );
    // More records than the rest of the log's last page can take (other tests' connections on
    // this machine may have started it).
    udp_flows(client, server, 7100, 40);
    // A poll has read the flows from the kernel.
    wait_until("the flows tracked", Duration::from_secs(20), &agent, || {
        agent
            .metric("flowwatch_kernel_map_fill_ratio{map=\"flows\"}")
            .is_some_and(|v| v > 0.0)
    });
    // A few more polls (200 ms each), so the agent holds all of them.
    std::thread::sleep(Duration::from_millis(600));
    fs.fill();
    let (status, _) = agent.stop();
    let stderr = agent.stderr();
    assert!(status.success(), "exit {status}:\n{stderr}");
    let closed = stderr
        .lines()
        .find(|l| l.contains("flow log closed"))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    let dropped: u64 = closed
        .split("dropped=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{closed}"));
    let written = lines_to(&log, server, 7100).len() as u64;
    assert!(dropped >= 20 && written < 20, "{closed}");
}
