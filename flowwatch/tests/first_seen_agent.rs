//! First-seen edges end to end: the real agent (`flowwatch run --state-dir`) watching four
//! network-namespace pods named by a snapshot, scraped by a real Prometheus evaluating the
//! shipped rules (rendered from the chart with a short lookback and window).
//!
//! 1. A new workload pair, a new port between known workloads and a failed attempt each show
//!    up as a first-seen series at the next poll of the agent.
//! 2. 20 rollouts: every pod replaced by a pod with a new name (and a new ReplicaSet hash), two
//!    addresses handed to pods of the other workload, the database pod restarted under its
//!    name; every fifth rollout the agent is restarted on its state directory (SIGTERM, SIGKILL,
//!    a corrupt state file, SIGTERM). The same traffic each time: no edge is new, the
//!    first-seen timestamps do not move (but after the corrupt file), and `FlowwatchNewEdge`
//!    never fires.
//! 3. A new pair after all that: flagged at the next poll, and the alert fires for it alone.
//!
//! Needs root, `prometheus` and the chart's helm (`cargo xtask render-manifests` builds it).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::{free_port, Agent};
use flowwatch_testkit::first_seen::{
    family, metrics, new_pod_edges, sum, wait_metrics, FIRST_SEEN,
};
use flowwatch_testkit::netns::{Node, Pod};
use flowwatch_testkit::privileged::{require, root};
use flowwatch_testkit::prometheus::{self, http_get, Job, Prometheus};
use flowwatch_testkit::traffic::one_connection;

/// The rules' window and lookback in this test (the chart's defaults are 10m and 1d).
const WINDOW_SECS: u64 = 20;
const LOOKBACK: &str = "30s";
/// This test's alerts and new edges: every edge of it starts in namespace `app` (the machine's
/// other traffic, which the socket tracepoint sees too, is not this test's).
const ALERTS: &str = "ALERTS{alertname=\"FlowwatchNewEdge\",src_namespace=\"app\"}";
const NEW: &str = "flowwatch:edge:new{src_namespace=\"app\"}";

/// The pods of `web` and `worker` in rollout `gen`: they swap addresses on every rollout.
fn roles(gen: u32) -> (usize, usize) {
    if gen.is_multiple_of(2) {
        (0, 3)
    } else {
        (3, 0)
    }
}

/// One step of part 1: what it is, the edge it makes, its traffic.
type Step<'a> = (&'a str, String, Box<dyn Fn() + 'a>);

/// The snapshot of rollout `gen`: `web` and `worker` (Deployments) on pods 0 and 3, swapping
/// addresses on every rollout; `api` (Deployment) on pod 1; `db` (StatefulSet, pod `db-0`) on
/// pod 2; from rollout 8 a second `web` pod on pod 4. Every controlled pod gets a new name (and
/// its ReplicaSet a new hash) each time.
fn snapshot(node: &Node, gen: u32) -> String {
    let ip = |i: usize| node.pods[i].ipv4;
    let (web, worker) = roles(gen);
    let deployment = |name: &str, ip: Ipv4Addr, replica: &str| {
        let hash = format!("{:x}", 0x5d8c_7f00 + gen * 7919 + name.len() as u32);
        format!(
            r#"- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}-{hash}-{replica}{gen}x
    namespace: app
    uid: {name}-{replica}-{gen}
    labels: {{app: {name}, pod-template-hash: "{hash}"}}
    ownerReferences:
    - {{apiVersion: apps/v1, kind: ReplicaSet, name: {name}-{hash}, uid: rs-{name}-{gen}, controller: true}}
  spec: {{containers: [{{name: c, image: x}}]}}
  status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"#
        )
    };
    format!(
        r"apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: app, labels: {{kubernetes.io/metadata.name: app}}}}}}
- {{apiVersion: v1, kind: Namespace, metadata: {{name: data, labels: {{kubernetes.io/metadata.name: data}}}}}}
{}{}{}{}- apiVersion: v1
  kind: Pod
  metadata:
    name: db-0
    namespace: data
    uid: db-0-{gen}
    labels: {{app: db}}
    ownerReferences:
    - {{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: sts-db, controller: true}}
  spec: {{containers: [{{name: c, image: x}}]}}
  status: {{podIP: {db}, podIPs: [{{ip: {db}}}]}}
",
        deployment("web", ip(web), "q"),
        deployment("worker", ip(worker), "q"),
        deployment("api", ip(1), "q"),
        // A scale-up from rollout 8 on: a second web pod.
        if gen >= 8 {
            deployment("web", ip(4), "r")
        } else {
            String::new()
        },
        db = ip(2),
    )
}

/// Writes the snapshot atomically (the agent never reads half of it).
fn write_snapshot(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn ours(body: &str, name: &str) -> BTreeMap<String, f64> {
    flowwatch_testkit::first_seen::ours(body, name, "app")
}

fn first_seen(agent: &Agent) -> BTreeMap<String, f64> {
    ours(&metrics(agent), FIRST_SEEN)
}

/// The edge's labels as exposed (kinds: web, worker, api are Deployments, db a StatefulSet).
fn edge(src: &str, dst: &str, port: u16) -> String {
    let end = |w: &str| match w {
        "db" => ("data", "statefulset"),
        _ => ("app", "deployment"),
    };
    let (sns, sk) = end(src);
    let (dns, dk) = end(dst);
    format!(
        "src_namespace=\"{sns}\",src_workload=\"{src}\",src_kind=\"{sk}\",dst_namespace=\"{dns}\",dst_workload=\"{dst}\",dst_kind=\"{dk}\",dst_port=\"{port}\",protocol=\"TCP\""
    )
}

/// A refused attempt (nothing listens on the port): a failed connection.
fn refused(from: &Pod, addr: SocketAddr) {
    let connected = from
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
        .join()
        .unwrap();
    assert!(!connected, "{addr} accepted a connection");
}

/// The traffic of every rollout: web -> api:8080 and :9090, worker -> api:8080, and a refused
/// web -> db:5433; from rollout 8 also the second web pod -> api:8080. Returns the connections.
fn known_traffic(node: &Node, gen: u32) -> f64 {
    let (web, worker) = roles(gen);
    let p = &node.pods;
    let api = |port| SocketAddr::from((p[1].ipv4, port));
    one_connection(&p[web], &p[1], api(8080));
    one_connection(&p[web], &p[1], api(9090));
    one_connection(&p[worker], &p[1], api(8080));
    refused(&p[web], SocketAddr::from((p[2].ipv4, 5433)));
    if gen >= 8 {
        one_connection(&p[4], &p[1], api(8080));
        return 5.0;
    }
    4.0
}

fn start_agent(listen: &str, node: &Node, snapshot: &Path, state: &Path) -> Agent {
    Agent::start_as_deployed_on(
        listen,
        &[
            "--interfaces",
            &node.interface_glob(),
            "--poll-interval-ms",
            "200",
            "--snapshot",
            snapshot.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
}

fn wait_ready(agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(&agent.listen, "/readyz", None), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "agent not ready:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rules(dir: &Path) -> Option<PathBuf> {
    let helm = match flowwatch_testkit::helm::helm() {
        Ok(h) => h,
        Err(e) => {
            require("first-seen edges with the shipped rules", Err(e));
            return None;
        }
    };
    let set = format!(
        "prometheusRule.alerts.newEdge.lookback={LOOKBACK},prometheusRule.alerts.newEdge.window={WINDOW_SECS}s"
    );
    let text = flowwatch_testkit::helm::rules(&helm, &["--set", &set]).unwrap();
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    Some(path)
}

#[test]
fn new_pairs_and_ports_are_flagged_and_rollouts_and_agent_restarts_are_not() {
    let what = "first-seen edges (agent and prometheus)";
    if !(require(what, root()) && require(what, prometheus::available())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(rules) = rules(dir.path()) else {
        return;
    };
    let node = Node::new(5);
    let p = &node.pods;
    let snap = dir.path().join("snapshot.yaml");
    let state = dir.path().join("state");
    write_snapshot(&snap, &snapshot(&node, 0));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = start_agent(&listen, &node, &snap, &state);
    wait_ready(&agent);

    // 1. Each new edge is a series of its own at the next poll (200 ms; 2 s allowed).
    let one_poll = Duration::from_secs(2);
    let api = |port| SocketAddr::from((p[1].ipv4, port));
    let steps: [Step; 4] = [
        (
            "a new pair",
            edge("web", "api", 8080),
            Box::new(|| one_connection(&p[0], &p[1], api(8080))),
        ),
        (
            "a new port between known workloads",
            edge("web", "api", 9090),
            Box::new(|| one_connection(&p[0], &p[1], api(9090))),
        ),
        (
            "another workload to a known one",
            edge("worker", "api", 8080),
            Box::new(|| one_connection(&p[3], &p[1], api(8080))),
        ),
        (
            "a failed attempt",
            edge("web", "db", 5433),
            Box::new(|| refused(&p[0], SocketAddr::from((p[2].ipv4, 5433)))),
        ),
    ];
    for (n, (what, labels, traffic)) in steps.iter().enumerate() {
        let before = wall_secs();
        traffic();
        let body = wait_metrics(&agent, what, one_poll, |b| {
            family(b, FIRST_SEEN).contains_key(labels)
        });
        let at = ours(&body, FIRST_SEEN)[labels];
        assert!(
            (before as f64 - 1.0..=wall_secs() as f64 + 1.0).contains(&at),
            "{what}: first seen at {at}, traffic at {before}"
        );
        assert_eq!(
            new_pod_edges(&body),
            (n + 1) as f64,
            "{what}: {:#?}",
            ours(&body, FIRST_SEEN)
        );
    }
    let known = first_seen(&agent);
    assert_eq!(known.len(), 4, "{known:?}");

    // Prometheus with the shipped rules, from now on.
    let prom = Prometheus::start(&[Job::new("flowwatch", &[&listen])], &[rules]);
    prom.wait_for("up{job=\"flowwatch\"}", Duration::from_secs(30), |r| {
        r.first().is_some_and(|s| s.value == 1.0)
    });
    let churn_start = Instant::now();

    // 2. 20 rollouts, the agent restarted on every fifth.
    let mut relearned = BTreeMap::new();
    for gen in 1..=20u32 {
        let views = sum(&metrics(&agent), "flowwatch_kube_views_total");
        write_snapshot(&snap, &snapshot(&node, gen));
        let corrupt = gen == 15;
        if gen % 5 == 0 {
            if gen == 10 {
                // Killed: the state was saved when the edges were first seen.
                agent.kill9();
            } else {
                let (status, _) = agent.stop();
                assert!(status.success(), "{status}\n{}", agent.stderr());
            }
            if corrupt {
                // Quiet from here on because Prometheus saw the edges, not because the rules
                // lack their lookback.
                prom.wait_for(
                    &format!("present_over_time(flowwatch:rules_loaded[5m] offset {LOOKBACK})"),
                    Duration::from_secs(40),
                    |r| !r.is_empty(),
                );
                std::fs::write(
                    state.join("known-edges.json"),
                    b"{\"version\":1,\"edges\":[{\"src_na",
                )
                .unwrap();
            }
            agent = start_agent(&listen, &node, &snap, &state);
            wait_ready(&agent);
        } else {
            wait_metrics(&agent, "snapshot reload", Duration::from_secs(15), |b| {
                sum(b, "flowwatch_kube_views_total") > views
            });
        }
        let before = ours(&metrics(&agent), "flowwatch_connections_total")
            .values()
            .sum::<f64>();
        let connections = known_traffic(&node, gen);
        let body = wait_metrics(
            &agent,
            "the rollout's connections counted",
            Duration::from_secs(10),
            |b| {
                ours(b, "flowwatch_connections_total").values().sum::<f64>() >= before + connections
            },
        );
        let now_known = ours(&body, FIRST_SEEN);
        assert_eq!(
            now_known.keys().collect::<Vec<_>>(),
            known.keys().collect::<Vec<_>>(),
            "rollout {gen}: the same edges, no pod in them"
        );
        if gen < 15 {
            assert_eq!(now_known, known, "rollout {gen}: first seen as before");
            // The first agent counted the 4 edges; a restarted one counts none.
            let want = if gen < 5 { 4.0 } else { 0.0 };
            assert_eq!(new_pod_edges(&body), want, "rollout {gen}");
        } else {
            // A corrupt state file: counted, logged, and the agent starts with no known edges:
            // they are first seen again, once, and kept from then on (the restart at 20 too).
            if gen == 15 {
                relearned = now_known.clone();
            }
            assert_eq!(
                now_known, relearned,
                "rollout {gen}: first seen as at rollout 15"
            );
            let want = if gen < 20 { 4.0 } else { 0.0 };
            assert_eq!(new_pod_edges(&body), want, "rollout {gen}");
            assert_eq!(
                family(&body, "flowwatch_edge_state_errors_total")
                    .get("reason=\"corrupt\"")
                    .copied(),
                Some(if gen < 20 { 1.0 } else { 0.0 }),
                "rollout {gen}"
            );
            if gen == 15 {
                assert!(
                    agent.stderr().contains("known-edges state not used"),
                    "{}",
                    agent.stderr()
                );
                // The agents call them new (first seen within the window) ...
                prom.wait_for(
                    &format!("flowwatch:edge:first_seen{{src_namespace=\"app\"}} > time() - {WINDOW_SECS}"),
                    Duration::from_secs(10),
                    |r| r.len() == 4,
                );
                // ... and the rules stay quiet: Prometheus saw them within the lookback.
                let r = prom.query(&format!("{ALERTS} or {NEW}")).unwrap();
                assert!(r.is_empty(), "{r:?}");
            }
        }
    }
    // After the corrupt file the edges were first seen again at 15 and kept from then on.
    let after_corrupt = first_seen(&agent);
    assert!(after_corrupt
        .values()
        .all(|v| *v > known[&edge("web", "api", 8080)]));

    // No new-edge alert, nor any edge in the record, over the whole churn.
    let range = churn_start.elapsed().as_secs() + 5;
    let q = format!("max_over_time({ALERTS}[{range}s]) or max_over_time({NEW}[{range}s])");
    let r = prom.query(&q).unwrap();
    assert!(r.is_empty(), "{q}: {r:?}");

    // 3. A new pair: flagged at the next poll, and alerted alone (once the rules have their
    // lookback, which the churn took far longer than).
    prom.wait_for(
        &format!("present_over_time(flowwatch:rules_loaded[5m] offset {LOOKBACK})"),
        Duration::from_secs(40),
        |r| !r.is_empty(),
    );
    // Rollout 20 put worker on pod 3 (see `snapshot`).
    let db = SocketAddr::from((p[2].ipv4, 5432));
    one_connection(&p[3], &p[2], db);
    let labels = edge("worker", "db", 5432);
    wait_metrics(&agent, "the new pair", one_poll, |b| {
        family(b, FIRST_SEEN).contains_key(&labels)
    });
    let r = prom.wait_for(ALERTS, Duration::from_secs(WINDOW_SECS), |r| !r.is_empty());
    assert_eq!(
        r.iter()
            .map(|s| (
                s.label("src_namespace"),
                s.label("dst_namespace"),
                s.label("alertstate")
            ))
            .collect::<Vec<_>>(),
        vec![("app", "data", "firing")]
    );
    let r = prom.query(NEW).unwrap();
    assert_eq!(
        r.iter()
            .map(|s| (
                s.label("src_workload"),
                s.label("dst_workload"),
                s.label("dst_port")
            ))
            .collect::<Vec<_>>(),
        vec![("worker", "db", "5432")]
    );
    let (status, _) = agent.stop();
    assert!(status.success());
    let saved = std::fs::read_to_string(state.join("known-edges.json")).unwrap();
    assert!(
        saved.contains("\"version\":1") && saved.contains("\"dst_port\":5432"),
        "{saved}"
    );
}

fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
