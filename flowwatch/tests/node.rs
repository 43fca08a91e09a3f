//! flowwatch as it ships, on a real Kubernetes node: the image built from `deploy/Containerfile`,
//! installed by `helm install` of `deploy/helm/flowwatch` (only the image overridden) on a node
//! of etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, the bridge CNI
//! and kube-proxy (`testinfra/node`, in a network namespace of its own without a default route).
//!
//! * The agent's pod becomes Ready with the chart's own securityContext, and the running agent's
//!   effective capabilities are exactly the chart's three.
//! * The upstream NetworkPolicy e2e matrix (namespaces x, y, z; pods a, b, c; TCP and UDP on 80
//!   and 81), probed from every pod to every other pod, twice: without an enforcer (the bridge
//!   CNI ignores policies: every denied connection succeeds and must be counted as enforcement
//!   drift), then with kube-router's NetworkPolicy firewall (denied connections fail and must be
//!   counted as blocked attempts, with no drift). The agent's metrics must agree with the truth
//!   on every edge, exactly.
//! * kubelet's probes from the bridge's address are the node's (allowed, never drift); a
//!   ClusterIP connection is named to its backend; a deleted pod's address reused by a pod of
//!   another namespace, label and policy is named and judged as the new pod.
//! * The agent's pod deleted under traffic, then a rolling update (`helm upgrade`): each time
//!   the new agent takes over (the old one's eBPF programs, links and maps gone, one tcx program
//!   each way on every veth, the new agent's) and counts exactly.
//! * Upstream Prometheus finds the agent through Kubernetes discovery (the chart's Service
//!   annotations, its pods) and its queries return the agent's counts.
//! * Afterwards nothing of the node is left on the machine (checked here).
//!
//! Needs root, the binaries of `cargo xtask k8s-bins` (Prometheus included), the Debian packages
//! of `cargo xtask setup`, helm, and the release binary (`cargo xtask test` provides all of
//! them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use flowwatch_testkit::node::chart::scrape;
use flowwatch_testkit::node::lifecycle::{self, Agent};
use flowwatch_testkit::node::matrix::{self, overall, PodRef, Policy, Probe, Side};
use flowwatch_testkit::node::metrics::Sample;
use flowwatch_testkit::node::{chart, harness, prometheus, reuse};
use flowwatch_testkit::privileged::require;
use flowwatch_testnode::sys::{enter, Join};
use flowwatch_testnode::Node;

/// The effective, permitted and bounding capability sets the chart gives the agent: NET_ADMIN
/// (12), PERFMON (38), BPF (39), nothing else.
const CHART_CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);

#[test]
fn the_chart_on_a_real_node_agrees_with_the_policies_edge_by_edge() {
    if !require("flowwatch on a real node", harness::available()) {
        return;
    }
    harness::on_a_node(
        "flowwatch-node-test-",
        // Exactly the matrix's pods and the canary: a deleted pod's address is the only one
        // free, so the next pod gets it (the address reuse below).
        Some(matrix::pods().len() as u8 + 1),
        scenario,
    );
}

fn scenario(node: &Node, work: &std::path::Path) {
    chart::install(node, work, &[]);
    let agent_pod = lifecycle::ready_agent(node, None).pod;
    check_the_agents_privileges(node);
    check_the_service_account(node);

    let ips = start_the_matrix_pods(node);
    for p in matrix::policies() {
        node.apply(&matrix::manifest(&p)).expect("policy");
    }
    // The agent judges with the policies it knows: wait until it has all three.
    wait_for(
        node,
        &agent_pod,
        "the agent's view of the 3 policies",
        |s| {
            s.iter().any(|s| {
                s.name == "flowwatch_kube_objects"
                    && s.label("kind") == "NetworkPolicy"
                    && s.value == 3.0
            })
        },
    );

    // Round 1: the bridge CNI enforces nothing.
    let before = scrape(node, &agent_pod);
    let results = run_probes(node, &matrix::probes(), &ips);
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(p, _)| p.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "without an enforcer every probe connects; these did not: {failed:?}"
    );
    let (pods, policies) = (matrix::pods(), matrix::policies());
    compare_edges(
        node,
        &agent_pod,
        &before,
        &results,
        "no enforcer",
        (&pods, &policies),
    );

    // Round 2: kube-router's NetworkPolicy firewall.
    node.start_kube_router().unwrap_or_else(|e| panic!("{e:#}"));
    wait_until_enforced(node, &ips);
    let before = scrape(node, &agent_pod);
    let results = run_probes(node, &matrix::probes(), &ips);
    assert_enforced_as_judged(&results, &policies);
    compare_edges(
        node,
        &agent_pod,
        &before,
        &results,
        "kube-router",
        (&pods, &policies),
    );

    kubelets_probes_are_the_nodes(node, &agent_pod);
    a_cluster_ip_connection_is_named_to_its_backend(node, &agent_pod);

    // What else a real node shows (for docs/capture.md): the edges outside the matrix.
    let mut others: Vec<String> = scrape(node, &agent_pod)
        .iter()
        .filter(|s| {
            s.name == "flowwatch_connections_total" && probe_of(s, &matrix::pods()).is_none()
        })
        .map(|s| {
            format!(
                "{} {}/{}({}) -> {}/{}({}):{}/{} {} {}",
                s.value,
                s.label("src_namespace"),
                s.label("src_workload"),
                s.label("src_kind"),
                s.label("dst_namespace"),
                s.label("dst_workload"),
                s.label("dst_kind"),
                s.label("dst_port"),
                s.label("protocol"),
                s.label("verdict"),
                s.label("outcome")
            )
        })
        .collect();
    others.sort();
    eprintln!("edges outside the matrix:\n{}", others.join("\n"));

    let ips = a_reused_address_names_the_new_pod(node, &agent_pod, &ips);

    // The agent replaced: its pod deleted under traffic, then a rolling update.
    let agent = lifecycle::the_agent_pod_deleted_under_traffic(node, &ips);
    let agent = lifecycle::a_rolling_update(node, work, &ips, &agent);

    // Prometheus finds the agent through Kubernetes discovery and scrapes what it counted.
    prometheus::start(node, work);
    prometheus::wait_for_the_agent_targets(node, &agent.pod);
    a_prometheus_query_sees_the_agents_counts(node, &agent);
}

/// kubelet probes the pods (readiness on TCP 81 every 2 s) from the pod network's gateway, the
/// bridge's address, which no Node object lists: the agent knows it as its node's own (it is an
/// address of its network namespace), so the probes are the node's, allowed as own-node
/// traffic even into x/a (whose policy admits only y on TCP 80), and never enforcement drift.
fn kubelets_probes_are_the_nodes(node: &Node, agent_pod: &str) {
    let samples = scrape(node, agent_pod);
    let pods = matrix::pods();
    let to_matrix = |s: &&Sample| {
        pods.iter()
            .any(|p| p.ns == s.label("dst_namespace") && p.pod == s.label("dst_workload"))
    };
    let from_outside: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "flowwatch_connections_total" && s.label("src_workload") == "external"
        })
        .filter(to_matrix)
        .collect();
    assert!(
        from_outside.is_empty(),
        "connections from an outside address to the matrix pods (the bridge's?): {from_outside:?}"
    );
    let probes_of_x_a: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "flowwatch_connections_total"
                && s.label("src_workload") == "node"
                && s.label("dst_namespace") == "x"
                && s.label("dst_workload") == "a"
                && s.label("dst_port") == "81"
        })
        .collect();
    // Probes before x/a's policy existed are uncovered; none is denied.
    assert!(
        probes_of_x_a
            .iter()
            .any(|s| s.label("verdict") == "allowed")
            && probes_of_x_a.iter().all(|s| s.label("verdict") != "denied"),
        "kubelet's probes of x/a:81 as the node's, allowed: {probes_of_x_a:?}"
    );
    let drift_from_non_pods: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "flowwatch_enforcement_drift_connections_total"
                && ["node", "external"].contains(&s.label("src_workload"))
        })
        .collect();
    assert!(
        drift_from_non_pods.is_empty(),
        "enforcement drift from the node or outside: {drift_from_non_pods:?}"
    );
    eprintln!(
        "kubelet's probes of x/a:81: {} connections, the node's, {} of them allowed",
        probes_of_x_a.iter().map(|s| s.value).sum::<f64>(),
        probes_of_x_a
            .iter()
            .filter(|s| s.label("verdict") == "allowed")
            .map(|s| s.value)
            .sum::<f64>()
    );
}

/// With kube-router enforcing, exactly the connections the policies deny fail.
fn assert_enforced_as_judged(results: &BTreeMap<Probe, bool>, policies: &[Policy]) {
    let disagree: Vec<String> = results
        .iter()
        .filter(|(p, ok)| {
            let (eg, ing) = matrix::truth(p, policies);
            **ok == (overall(eg, ing) == Side::Denied)
        })
        .map(|(p, ok)| format!("{p}: connected={ok}"))
        .collect();
    assert!(
        disagree.is_empty(),
        "kube-router and the policies' truth disagree: {disagree:?}"
    );
}

/// y/b's address given to w/reused (see `flowwatch_testkit::node::reuse`): the probes to and from the new
/// pod, enforced by kube-router, and counted under its name and its policy's verdicts, edge by
/// edge; nothing counted on y/b. Returns the pods' addresses now.
fn a_reused_address_names_the_new_pod(
    node: &Node,
    agent_pod: &str,
    ips: &BTreeMap<PodRef, String>,
) -> BTreeMap<PodRef, String> {
    let ips = reuse::replace_the_pod(node, ips);
    let mut policies = matrix::policies();
    policies.push(reuse::new_pods_policy());
    // y/b stays among the judged pods: a connection counted under its name is a wrong one.
    let mut pods = matrix::pods();
    pods.push(reuse::NEW);
    let api_pods = node
        .kubectl(&["get", "pods", "--all-namespaces", "-o", "name"])
        .expect("pods")
        .lines()
        .count() as f64;
    wait_for(node, agent_pod, "the agent's view of the new pod", |s| {
        let objects = |kind: &str| {
            s.iter()
                .find(|s| s.name == "flowwatch_kube_objects" && s.label("kind") == kind)
                .map(|s| s.value)
        };
        objects("NetworkPolicy") == Some(4.0) && objects("Pod") == Some(api_pods)
    });
    reuse::wait_until_enforced(node, &ips);
    // The canary's last attempts end and are counted (outside the judged pods) first.
    std::thread::sleep(Duration::from_secs(3));
    let before = scrape(node, agent_pod);
    let results = run_probes(node, &reuse::probes(), &ips);
    assert_enforced_as_judged(&results, &policies);
    compare_edges(
        node,
        agent_pod,
        &before,
        &results,
        "reused address",
        (&pods, &policies),
    );
    ips
}

/// Prometheus' view equals the agent's own: the five connections x/a -> x/b:81 the last agent
/// counted (`lifecycle::a_rolling_update`), under both discovery jobs.
fn a_prometheus_query_sees_the_agents_counts(node: &Node, agent: &Agent) {
    let edge = r#"src_namespace="x",src_workload="a",dst_namespace="x",dst_workload="b",dst_port="81",protocol="TCP""#;
    let own = lifecycle::edge_total(
        &scrape(node, &agent.pod),
        PodRef { ns: "x", pod: "a" },
        PodRef { ns: "x", pod: "b" },
        81,
    );
    assert_eq!(own, 5.0, "the agent's own count of x/a -> x/b:81");
    for job in prometheus::JOBS {
        let promql = format!("sum(flowwatch_connections_total{{job=\"{job}\",{edge}}})");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = prometheus::query(node, &promql);
            let value = got.first().map(|(_, v)| *v);
            if value == Some(own) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {got:?}, the agent says {own}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    eprintln!("Prometheus (Kubernetes discovery, both jobs) sees the agent's counts");
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map_or_else(
            || panic!("{key} missing in /proc/<pid>/status"),
            |v| v.trim().to_string(),
        )
}

fn check_the_agents_privileges(node: &Node) {
    let pid = lifecycle::ready_agent(node, None).pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let v = u64::from_str_radix(&status_field(&status, set), 16).expect("hex");
        assert_eq!(
            v, CHART_CAPS,
            "{set} of the agent is {v:#x}, the chart gives exactly NET_ADMIN, PERFMON, BPF ({CHART_CAPS:#x})"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status_field(&status, set), 16).unwrap(),
            0,
            "{set}"
        );
    }
    assert_eq!(
        status_field(&status, "NoNewPrivs"),
        "1",
        "allowPrivilegeEscalation: false"
    );
    assert_eq!(
        status_field(&status, "Seccomp"),
        "2",
        "seccomp RuntimeDefault (a filter)"
    );
    assert!(status_field(&status, "Uid").starts_with("0\t"), "uid 0");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let mount = |point: &str| {
        mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(point))
            .unwrap_or_else(|| panic!("no mount at {point} in the agent's mount namespace"))
            .to_string()
    };
    let options = |line: &str| line.split_whitespace().nth(5).unwrap_or("").to_string();
    assert!(
        options(&mount("/")).split(',').any(|o| o == "ro"),
        "read-only root: {}",
        mount("/")
    );
    let tracefs = mount("/sys/kernel/tracing");
    assert!(
        options(&tracefs).split(',').any(|o| o == "ro") && tracefs.contains(" - tracefs "),
        "tracefs read-only: {tracefs}"
    );
}

/// What the agent's ServiceAccount may do, asked of the API server as that account.
fn check_the_service_account(node: &Node) {
    let sa = "system:serviceaccount:flowwatch:flowwatch";
    for (verb, resource, expect) in [
        ("watch", "pods", "yes"),
        ("list", "networkpolicies.networking.k8s.io", "yes"),
        ("list", "endpointslices.discovery.k8s.io", "yes"),
        ("get", "secrets", "no"),
        ("create", "pods", "no"),
        ("delete", "networkpolicies.networking.k8s.io", "no"),
    ] {
        let out = node
            .kubectl_cmd()
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--all-namespaces",
                "--as",
                sa,
            ])
            .output()
            .expect("kubectl auth can-i");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "can {sa} {verb} {resource}?"
        );
    }
}

/// Namespaces x, y, z with pods a, b, c; returns each pod's IP.
fn start_the_matrix_pods(node: &Node) -> BTreeMap<PodRef, String> {
    let image = flowwatch_testnode::images::AGNHOST_IMAGE;
    let mut manifest = String::new();
    for ns in matrix::NAMESPACES.iter().chain(["w"].iter()) {
        let _ = write!(
            manifest,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{ns}\"\n---\n"
        );
    }
    for p in matrix::pods() {
        manifest.push_str(&matrix::pod_manifest(p, image));
        manifest.push_str("---\n");
    }
    // A canary outside the matrix, to see when the enforcer is in force.
    manifest.push_str(&matrix::pod_manifest(
        PodRef {
            ns: "w",
            pod: "canary",
        },
        image,
    ));
    let started = Instant::now();
    // The namespaces' ServiceAccounts come from the controller-manager, asynchronously.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match node.apply(&manifest) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{e:#}"),
        }
    }
    for ns in matrix::NAMESPACES.iter().chain(["w"].iter()) {
        node.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "-n",
            ns,
            "--timeout=180s",
        ])
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{}",
                node.kubectl(&["describe", "pods", "-n", ns])
                    .unwrap_or_default()
            )
        });
    }
    eprintln!("matrix pods Ready in {:.1?}", started.elapsed());
    let mut ips = BTreeMap::new();
    for p in matrix::pods() {
        let ip = node
            .kubectl(&[
                "get",
                "pod",
                p.pod,
                "-n",
                p.ns,
                "-o",
                "jsonpath={.status.podIP}",
            ])
            .expect("pod ip");
        assert!(ip.starts_with("10.244.0."), "{p}: {ip}");
        ips.insert(p, ip);
    }
    ips
}

/// Every probe of the matrix, each exactly once: the pods probe in parallel, each its own
/// targets one after the other (`kubectl exec` of one script).
fn run_probes(
    node: &Node,
    probes: &[Probe],
    ips: &BTreeMap<PodRef, String>,
) -> BTreeMap<Probe, bool> {
    let started = Instant::now();
    let by_ip: BTreeMap<&str, PodRef> = ips.iter().map(|(p, ip)| (ip.as_str(), *p)).collect();
    let results = std::thread::scope(|s| {
        let from: std::collections::BTreeSet<PodRef> = probes.iter().map(|p| p.from).collect();
        let handles: Vec<_> = from
            .into_iter()
            .map(|from| {
                let targets: Vec<(String, u16, &str)> = probes
                    .iter()
                    .filter(|p| p.from == from)
                    .map(|p| (ips[&p.to].clone(), p.port, p.protocol))
                    .collect();
                let script = matrix::probe_script(&targets);
                s.spawn(move || {
                    let out = node
                        .kubectl(&[
                            "exec", "-n", from.ns, from.pod, "--", "/bin/sh", "-c", &script,
                        ])
                        .unwrap_or_else(|e| panic!("probes from {from}: {e:#}"));
                    (from, targets.len(), out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect::<Vec<_>>()
    });
    let mut out = BTreeMap::new();
    for (from, expected, text) in results {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected, "probes from {from}: {text}");
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            let to = by_ip[f[0]];
            let probe = Probe {
                from,
                to,
                port: f[1].parse().unwrap(),
                protocol: if f[2] == "TCP" { "TCP" } else { "UDP" },
            };
            out.insert(probe, f[3] == "ok");
        }
    }
    assert_eq!(out.len(), probes.len());
    eprintln!(
        "{} probes in {:.1?} ({} connected)",
        out.len(),
        started.elapsed(),
        out.values().filter(|ok| **ok).count()
    );
    out
}

/// kube-router programs its rules a moment after it starts: the canary (namespace w, outside
/// the matrix) probes x/a, which admits only namespace y, until that fails.
fn wait_until_enforced(node: &Node, ips: &BTreeMap<PodRef, String>) {
    let target = &ips[&PodRef { ns: "x", pod: "a" }];
    let started = Instant::now();
    loop {
        if !matrix::connects(
            node,
            matrix::CANARY.ns,
            matrix::CANARY.pod,
            &format!("{target}:80"),
        ) {
            eprintln!("kube-router enforcing after {:.1?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "kube-router did not enforce within 90 s:\n{}",
            std::fs::read_to_string(node.log_path("kube-router")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for(node: &Node, agent_pod: &str, what: &str, ok: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        if ok(&scrape(node, agent_pod)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const EDGE_FAMILIES: [&str; 4] = [
    "flowwatch_connections_total",
    "flowwatch_uncovered_connections_total",
    "flowwatch_enforcement_drift_connections_total",
    "flowwatch_blocked_attempts_total",
];

/// The probe an edge series belongs to, if it is one of the matrix's (bare pods: the workload
/// is the pod).
fn probe_of(s: &Sample, pods: &[PodRef]) -> Option<Probe> {
    let pod = |ns: &str, name: &str| pods.iter().copied().find(|p| p.ns == ns && p.pod == name);
    let from = pod(s.label("src_namespace"), s.label("src_workload"))?;
    let to = pod(s.label("dst_namespace"), s.label("dst_workload"))?;
    let protocol = match s.label("protocol") {
        "TCP" => "TCP",
        "UDP" => "UDP",
        _ => return None,
    };
    Some(Probe {
        from,
        to,
        port: s.label("dst_port").parse().ok()?,
        protocol,
    })
}

/// Per probe and family: the counted series (labels other than the edge's) and their
/// increase since `before`.
type Counted = BTreeMap<(Probe, &'static str), BTreeMap<String, f64>>;

fn counted(before: &[Sample], after: &[Sample], pods: &[PodRef]) -> Counted {
    let key = |s: &Sample| {
        let mut l = s.labels.clone();
        for k in [
            "src_namespace",
            "src_workload",
            "src_kind",
            "dst_namespace",
            "dst_workload",
            "dst_kind",
            "dst_port",
            "protocol",
        ] {
            l.remove(k);
        }
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut was: BTreeMap<(String, BTreeMap<String, String>), f64> = BTreeMap::new();
    for s in before {
        was.insert((s.name.clone(), s.labels.clone()), s.value);
    }
    let mut out = Counted::new();
    for s in after {
        let Some(family) = EDGE_FAMILIES.iter().find(|f| **f == s.name) else {
            continue;
        };
        let Some(probe) = probe_of(s, pods) else {
            continue;
        };
        let delta = s.value
            - was
                .get(&(s.name.clone(), s.labels.clone()))
                .copied()
                .unwrap_or(0.0);
        if delta != 0.0 {
            *out.entry((probe, *family))
                .or_default()
                .entry(key(s))
                .or_default() += delta;
        }
    }
    out
}

/// What the agent must have counted for each probe, given whether it connected.
fn expected(results: &BTreeMap<Probe, bool>, policies: &[Policy]) -> Counted {
    let mut out = Counted::new();
    for (probe, connected) in results {
        let (eg, ing) = matrix::truth(probe, policies);
        let verdict = overall(eg, ing);
        let outcome = match (connected, probe.protocol) {
            (true, _) => "established",
            (false, "TCP") => "failed",
            (false, _) => "unanswered",
        };
        let scope = if probe.from.ns == probe.to.ns {
            "same_namespace"
        } else {
            "cross_namespace"
        };
        // The matrix has NetworkPolicies only: they decide whatever is not uncovered.
        let tier = if verdict == Side::Uncovered {
            "none"
        } else {
            "networkpolicy"
        };
        let mut put = |family: &'static str, labels: String| {
            out.entry((*probe, family)).or_default().insert(labels, 1.0);
        };
        put(
            "flowwatch_connections_total",
            format!(
                "egress_verdict={},ingress_verdict={},outcome={outcome},tier={tier},verdict={}",
                eg.label(),
                ing.label(),
                verdict.label()
            ),
        );
        match (verdict, *connected) {
            (Side::Uncovered, _) => put(
                "flowwatch_uncovered_connections_total",
                format!("outcome={outcome},scope={scope}"),
            ),
            (Side::Denied, true) => put(
                "flowwatch_enforcement_drift_connections_total",
                format!(
                    "cni_policy_present=false,egress_verdict={},ingress_verdict={},scope={scope},tier={tier}",
                    eg.label(),
                    ing.label()
                ),
            ),
            _ => {}
        }
        if !connected && verdict != Side::Uncovered {
            put(
                "flowwatch_blocked_attempts_total",
                format!(
                    "egress_verdict={},ingress_verdict={},outcome={outcome},scope={scope},tier={tier},verdict={}",
                    eg.label(),
                    ing.label(),
                    verdict.label()
                ),
            );
        }
    }
    out
}

/// Waits until the agent has counted as many matrix connections as there were probes, then
/// compares every edge exactly, and again a few seconds later (nothing counted twice).
fn compare_edges(
    node: &Node,
    agent_pod: &str,
    before: &[Sample],
    results: &BTreeMap<Probe, bool>,
    round: &str,
    judged: (&[PodRef], &[Policy]),
) {
    let (pods, policies) = judged;
    let want = expected(results, policies);
    let started = Instant::now();
    let total = |c: &Counted| -> f64 {
        c.iter()
            .filter(|((_, f), _)| *f == "flowwatch_connections_total")
            .flat_map(|(_, v)| v.values())
            .sum()
    };
    let mut got;
    loop {
        got = counted(before, &scrape(node, agent_pod), pods);
        if total(&got) >= results.len() as f64 || started.elapsed() > Duration::from_mins(2) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "{round}: {} of {} connections counted after {:.1?}",
        total(&got),
        results.len(),
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    got = counted(before, &scrape(node, agent_pod), pods);
    let mut diffs = Vec::new();
    let keys: std::collections::BTreeSet<_> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let (w, g) = (want.get(k), got.get(k));
        if w != g {
            diffs.push(format!("{} {}: want {w:?}, got {g:?}", k.0, k.1));
        }
    }
    let summary = |c: &Counted| {
        let mut by: BTreeMap<&str, f64> = BTreeMap::new();
        for ((_, f), v) in c {
            *by.entry(f).or_default() += v.values().sum::<f64>();
        }
        by
    };
    eprintln!("{round}: expected {:?}", summary(&want));
    assert!(
        diffs.is_empty(),
        "{round}: {} of {} edge/family entries disagree:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

/// One connection from x/a to a ClusterIP Service (port 8080) whose only backend is z/b:80,
/// through kube-proxy's iptables DNAT: the agent counts it once, on the edge x/a -> z/b port
/// 80 (the backend's port), judged as that edge (uncovered), and never as a Service address.
fn a_cluster_ip_connection_is_named_to_its_backend(node: &Node, agent_pod: &str) {
    node.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-b\n  namespace: \"z\"\nspec:\n  selector: {pod: \"b\"}\n  ports:\n  - {protocol: TCP, port: 8080, targetPort: 80}\n",
    )
    .expect("service");
    let ip = node
        .kubectl(&[
            "get",
            "service",
            "svc-b",
            "-n",
            "z",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("cluster ip");
    // kube-proxy has programmed the Service's backend, and the agent knows the Service and its
    // EndpointSlice, before the one connection.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let mut save = Command::new("iptables-save");
        enter(
            &mut save,
            Join {
                mnt: None,
                ..node.join()
            },
        );
        let rules = flowwatch_testnode::sys::run(&mut save).unwrap_or_default();
        let programmed = rules
            .lines()
            .any(|l| l.contains("KUBE-SEP") && l.contains("z/svc-b") && l.contains("DNAT"));
        let known = scrape(node, agent_pod).iter().any(|s| {
            s.name == "flowwatch_kube_objects"
                && s.label("kind") == "EndpointSlice"
                && s.value >= 1.0
        });
        if programmed && known {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kube-proxy did not program svc-b within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = scrape(node, agent_pod);
    node.kubectl(&[
        "exec",
        "-n",
        "x",
        "a",
        "--",
        "/agnhost",
        "connect",
        &format!("{ip}:8080"),
        "--timeout=2s",
    ])
    .unwrap_or_else(|e| panic!("x/a -> svc-b {ip}:8080: {e:#}"));
    let edge = Probe {
        from: PodRef { ns: "x", pod: "a" },
        to: PodRef { ns: "z", pod: "b" },
        port: 80,
        protocol: "TCP",
    };
    let deadline = Instant::now() + Duration::from_mins(1);
    let got = loop {
        let after = scrape(node, agent_pod);
        let got = counted(&before, &after, &matrix::pods());
        let from_x_a: f64 = after
            .iter()
            .filter(|s| {
                s.name == "flowwatch_connections_total"
                    && s.label("src_namespace") == "x"
                    && s.label("src_workload") == "a"
            })
            .map(|s| s.value)
            .sum::<f64>()
            - before
                .iter()
                .filter(|s| {
                    s.name == "flowwatch_connections_total"
                        && s.label("src_namespace") == "x"
                        && s.label("src_workload") == "a"
                })
                .map(|s| s.value)
                .sum::<f64>();
        if from_x_a >= 1.0 || Instant::now() > deadline {
            assert_eq!(from_x_a, 1.0, "x/a's connections since the Service probe");
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let conn = got.get(&(edge, "flowwatch_connections_total"));
    let want: BTreeMap<String, f64> = [(
        "egress_verdict=uncovered,ingress_verdict=uncovered,outcome=established,tier=none,verdict=uncovered"
            .to_string(),
        1.0,
    )]
    .into();
    assert_eq!(
        conn,
        Some(&want),
        "the Service connection on the backend's edge: {got:?}"
    );
    eprintln!("ClusterIP {ip}:8080 counted once on x/a -> z/b:80");
}
