//! End to end: the real agent (`flowwatch run`), confined as the Helm chart confines it (root in
//! a private mount namespace with tracefs mounted for it, bounding set reduced to exactly
//! CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, no_new_privs), watching four pods (network namespaces
//! on a bridge) described by the demo snapshot, scraped by a real Prometheus during real TCP
//! traffic. Asserts through Prometheus's API that the uncovered, allowed, drifting and blocked
//! edges appear with their workloads and counts, that `promtool check metrics` accepts the real
//! agent's exposition, and that its health families are there with sane values. Also: without
//! any one of the three capabilities the agent refuses to start, naming the one missing.
//!
//! Needs root, `setpriv`, `unshare`, `nft`, `prometheus` and `promtool`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowwatch_testkit::netns::{Node, Pod};
use flowwatch_testkit::privileged::{command, require, root};
use flowwatch_testkit::prometheus::{self, http_get, Job, Prometheus};

const CHART_CAPS: [&str; 3] = ["bpf", "perfmon", "net_admin"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn available() -> bool {
    let what = "agent scraped by prometheus";
    require(what, root())
        && require(what, command("setpriv"))
        && require(what, command("unshare"))
        && require(what, command("nft"))
        && require(what, prometheus::available())
        && require(what, command("promtool"))
}

/// The agent as the chart runs it; killed on drop.
struct ConfinedAgent {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ConfinedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConfinedAgent {
    fn start(caps: &[&str], args: &[String]) -> ConfinedAgent {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("agent.log");
        let bounding = format!(
            "-all,{}",
            caps.iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        // A private mount namespace gets tracefs (the chart mounts the host's); then only the
        // chart's capabilities remain, and no_new_privs as allowPrivilegeEscalation: false.
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; \
             exec setpriv --bounding-set={bounding} --inh-caps=-all --no-new-privs -- {} run --mount-tracefs=false {}",
            env!("CARGO_BIN_EXE_flowwatch"),
            quoted.join(" ")
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("FLOWWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn unshare");
        ConfinedAgent {
            child,
            stderr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the process to exit; panics after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn without_any_one_of_the_charts_capabilities_the_agent_refuses_to_start() {
    if !available() {
        return;
    }
    for missing in CHART_CAPS {
        let caps: Vec<&str> = CHART_CAPS
            .iter()
            .copied()
            .filter(|c| *c != missing)
            .collect();
        let mut agent = ConfinedAgent::start(
            &caps,
            &[
                "--interfaces".into(),
                "lo".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
            ],
        );
        let status = agent.wait_exit(Duration::from_secs(30));
        let log = agent.log();
        assert!(
            !status.success(),
            "ran without CAP_{}:\n{log}",
            missing.to_uppercase()
        );
        assert!(
            log.contains("insufficient privileges")
                && log.contains(&format!("CAP_{}", missing.to_uppercase())),
            "without CAP_{} the error must name it:\n{log}",
            missing.to_uppercase()
        );
    }
}

fn serve(pod: &Pod, addr: SocketAddr, connections: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = pod.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).unwrap();
        tx.send(()).ok();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).ok();
                    c.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    let mut buf = [0u8; 64];
                    if let Ok(n) = c.read(&mut buf) {
                        let _ = c.write_all(&buf[..n]);
                    }
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    handle
}

fn connect(pod: &Pod, addr: SocketAddr, times: usize) -> usize {
    pod.run(move || {
        let mut ok = 0;
        for _ in 0..times {
            if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(1200)) {
                c.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let _ = c.write_all(b"hello");
                let mut buf = [0u8; 5];
                if c.read_exact(&mut buf).is_ok() {
                    ok += 1;
                }
            }
        }
        ok
    })
    .join()
    .unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed) in a text exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Every series of one family (`name{...}` or `name`) with its value.
fn series<'a>(body: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            Some((s, v.parse().ok()?))
        })
        .collect()
}

/// The health families the agent exposes during the traffic, from its real datapath, policy
/// engine and snapshot inventory.
fn check_health(body: &str, agent: &ConfinedAgent) {
    let get = |s: &str| {
        sample(body, s).unwrap_or_else(|| {
            panic!(
                "no series {s} in the agent's exposition:\n{body}\n---\n{}",
                agent.log()
            )
        })
    };
    let eq = |s: &str, want: f64| assert_eq!(get(s), want, "{s}\n{body}");
    // Datapath.
    for reason in ["ringbuf_full", "flow_map_full", "agent_flow_limit"] {
        eq(
            &format!("flowwatch_kernel_events_lost_total{{reason=\"{reason}\"}}"),
            0.0,
        );
    }
    eq("flowwatch_interfaces_attached", 4.0);
    let fill = get("flowwatch_kernel_map_fill_ratio{map=\"flows\"}");
    assert!((0.0..=1.0).contains(&fill), "flow map fill {fill}");
    assert_eq!(
        series(body, "flowwatch_kernel_map_fill_ratio").len(),
        1,
        "only the flow map has a fill ratio\n{body}"
    );
    // Policy engine: every connection of the test was evaluated, and timed.
    eq("flowwatch_policies_invalid", 0.0);
    eq("flowwatch_inventory_objects_skipped", 0.0);
    let evaluations = get("flowwatch_policy_evaluation_duration_seconds_count");
    assert!(
        evaluations >= 4.0,
        "policy evaluations timed: {evaluations}"
    );
    eq(
        "flowwatch_policy_evaluation_duration_seconds_bucket{le=\"+Inf\"}",
        evaluations,
    );
    let took = get("flowwatch_policy_evaluation_duration_seconds_sum");
    assert!(
        took > 0.0 && took / evaluations < 0.1,
        "{evaluations} evaluations took {took} s"
    );
    assert!(get("flowwatch_scrape_duration_seconds_count") >= 1.0);
    // Series budget: nothing folded, the four edges (at least) counted.
    let dropped = series(body, "flowwatch_series_dropped_total");
    assert_eq!(
        dropped.len(),
        flowwatch::metrics::FamilyName::ALL.len(),
        "{dropped:?}"
    );
    assert!(dropped.iter().all(|(_, v)| *v == 0.0), "{dropped:?}");
    assert!(get("flowwatch_series{family=\"connections\"}") >= 4.0);
    // Inventory (snapshot mode): loaded once, every kind synced, never stale.
    let staleness = series(body, "flowwatch_watch_staleness_seconds");
    assert_eq!(staleness.len(), 8, "{staleness:?}");
    assert!(staleness.iter().all(|(_, v)| *v == 0.0), "{staleness:?}");
    eq("flowwatch_kube_stale", 0.0);
    let synced = series(body, "flowwatch_kube_cache_synced");
    assert_eq!(synced.len(), 8, "{synced:?}");
    assert!(synced.iter().all(|(_, v)| *v == 1.0), "{synced:?}");
    eq("flowwatch_kube_objects{kind=\"Pod\"}", 4.0);
    eq("flowwatch_snapshot_reload_errors_total", 0.0);
    assert!(get("flowwatch_kube_views_total") >= 1.0);
    assert!(get("flowwatch_kube_last_sync_timestamp_seconds") > 1.6e9);
    // The build: version, the commit built from, and the hash of the eBPF object it loaded.
    let build = series(body, "flowwatch_build_info");
    let want = format!(
        "flowwatch_build_info{{version=\"{}\",commit=\"{}\",ebpf_object_sha256=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        env!("FLOWWATCH_GIT_COMMIT"),
        flowwatch::datapath::object_sha256()
    );
    assert_eq!(build, vec![(want.as_str(), 1.0)]);
    assert_ne!(
        env!("FLOWWATCH_GIT_COMMIT"),
        "unknown",
        "built in a git checkout"
    );
}

#[test]
fn prometheus_scrapes_the_confined_agent_during_real_traffic() {
    if !available() {
        return;
    }
    // Four pods, readdressed as the demo snapshot describes them, on this test's own subnet.
    let node = Node::new(4);
    let [a, b] = {
        let o = node.pods[0].ipv4.octets();
        [o[1], o[2]]
    };
    let ip = |last: u8| Ipv4Addr::new(10, a, b, last);
    for (pod, last) in node.pods.iter().zip([10u8, 20, 30, 40]) {
        pod.ip(&["addr", "flush", "dev", "eth0"]);
        pod.ip(&["addr", "add", &format!("{}/24", ip(last)), "dev", "eth0"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.yaml");
    let demo = std::fs::read_to_string(repo().join("deploy/demo/snapshot.yaml")).unwrap();
    assert!(
        demo.contains("10.213.0.10"),
        "the demo snapshot changed its addresses"
    );
    std::fs::write(
        &snapshot,
        demo.replace("10.213.0.", &format!("10.{a}.{b}.")),
    )
    .unwrap();
    let [web, api, postgres, report] = [0, 1, 2, 3].map(|i| &node.pods[i]);
    // postgres drops the report job's connections, as an enforcing CNI would.
    postgres.drop_incoming(&format!("ip saddr {} tcp dport 5432", ip(40)));

    let listen = format!("127.0.0.1:{}", flowwatch_testkit::agent::free_port());
    let agent = ConfinedAgent::start(
        &CHART_CAPS,
        &[
            "--interfaces".into(),
            node.interface_glob(),
            "--listen".into(),
            listen.clone(),
            "--poll-interval-ms".into(),
            "200".into(),
            "--snapshot".into(),
            snapshot.display().to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(&listen, "/readyz", None) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The running agent holds exactly the chart's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(
        u64::from_str_radix(cap_eff, 16).unwrap(),
        (1 << 39) | (1 << 38) | (1 << 12),
        "CapEff of the agent: {cap_eff}\n{status}"
    );

    let prom = Prometheus::start(
        &[Job::new("flowwatch", &[&listen])],
        &[repo().join("deploy/prometheus/flowwatch-rules.yaml")],
    );
    prom.wait_for("up{job=\"flowwatch\"}", Duration::from_secs(30), |r| {
        r.first().is_some_and(|s| s.value == 1.0)
    });

    let api_addr = SocketAddr::from((ip(20), 8080));
    let pg_addr = SocketAddr::from((ip(30), 5432));
    let servers = [serve(api, api_addr, 3), serve(postgres, pg_addr, 5)];
    assert_eq!(connect(web, api_addr, 3), 3, "web -> api");
    assert_eq!(connect(api, pg_addr, 3), 3, "api -> postgres");
    assert_eq!(
        connect(web, pg_addr, 2),
        2,
        "web -> postgres (denied, not enforced)"
    );
    assert_eq!(
        connect(report, pg_addr, 1),
        0,
        "report -> postgres (denied and dropped)"
    );
    for s in servers {
        let _ = s.join();
    }

    let q = |sel: &str| format!("sum by (verdict) (flowwatch_connections_total{{{sel}}})");
    let wait = |what: &str, promql: &str, want: f64| {
        let r = prom.wait_for(promql, Duration::from_secs(40), |r| {
            r.first().is_some_and(|s| s.value >= want)
        });
        eprintln!("{what}: {r:?}");
        r
    };
    let r = wait(
        "uncovered web -> api",
        &q("src_namespace=\"shop\",src_workload=\"web\",dst_namespace=\"shop\",dst_workload=\"api\",dst_port=\"8080\",protocol=\"TCP\",outcome=\"established\""),
        3.0,
    );
    assert_eq!(
        (r[0].label("verdict"), r[0].value),
        ("uncovered", 3.0),
        "{}",
        agent.log()
    );
    let r = wait(
        "allowed api -> postgres",
        &q("src_workload=\"api\",dst_namespace=\"data\",dst_workload=\"postgres\",dst_port=\"5432\",outcome=\"established\""),
        3.0,
    );
    assert_eq!((r[0].label("verdict"), r[0].value), ("allowed", 3.0));
    let r = wait(
        "drift web -> postgres",
        "sum by (ingress_verdict) (flowwatch_enforcement_drift_connections_total{src_workload=\"web\",dst_workload=\"postgres\"})",
        2.0,
    );
    assert_eq!((r[0].label("ingress_verdict"), r[0].value), ("denied", 2.0));
    let r = wait(
        "blocked report -> postgres",
        "sum by (verdict, src_namespace) (flowwatch_blocked_attempts_total{dst_workload=\"postgres\",dst_port=\"5432\"})",
        1.0,
    );
    assert_eq!(
        (r[0].label("verdict"), r[0].label("src_namespace")),
        ("denied", "jobs")
    );
    let r = wait(
        "uncovered family",
        "flowwatch_uncovered_connections_total{src_workload=\"web\",dst_workload=\"api\"}",
        3.0,
    );
    assert_eq!(r[0].label("scope"), "same_namespace");
    let r = prom.query("sum(flowwatch_flow_bytes_total{src_workload=\"web\",dst_workload=\"api\",direction=\"forward\"})").unwrap();
    assert!(
        r.first().is_some_and(|s| s.value > 0.0),
        "bytes web -> api: {r:?}"
    );
    // The agent's own health, from the real datapath.
    let r = prom.query("flowwatch_interfaces_attached").unwrap();
    assert_eq!(r[0].value, 4.0, "four pod interfaces attached");
    // The real agent's exposition passes promtool's lint, and its health families are there
    // with sane values.
    let body = prometheus::promtool_check_metrics("the confined agent", &listen);
    check_health(&body, &agent);
    // No label holds an address of the test's pods.
    let (_, series) = prom
        .get(&format!(
            "/api/v1/series?match[]={}",
            prometheus::urlencode("{__name__=~\"flowwatch_.*\"}")
        ))
        .unwrap();
    assert!(
        !series.contains(&format!("10.{a}.{b}.")),
        "a pod IP leaked into a label: {series}"
    );
    // The drift alert of the shipped rules is active for the real drift, one alert for the
    // namespace pair, with the edge in its per-edge recording rule.
    prom.wait_for(
        "ALERTS{alertname=\"FlowwatchEnforcementDrift\",src_namespace=\"shop\",dst_namespace=\"data\"}",
        Duration::from_secs(20),
        |r| !r.is_empty(),
    );
    let r = prom
        .query("flowwatch:edge_enforcement_drift_connections:alerting{src_namespace=\"shop\",dst_namespace=\"data\"}")
        .unwrap();
    assert_eq!(
        r.iter()
            .map(|s| (
                s.label("src_workload"),
                s.label("dst_workload"),
                s.label("dst_port")
            ))
            .collect::<Vec<_>>(),
        vec![("web", "postgres", "5432")]
    );
}
