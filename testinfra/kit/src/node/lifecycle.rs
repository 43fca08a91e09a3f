//! The agent's life on the node: its pod deleted under traffic (the DaemonSet makes another)
//! and a rolling update by `helm upgrade`. Each time the new agent must take over completely:
//! the old process gone with every eBPF program, link and map it held, every pod veth carrying
//! exactly one program each way and those the new agent's, counting resumed, and a known number
//! of connections counted exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flowwatch_testnode::Node;

use super::kernel::{self, Held};
use super::matrix::PodRef;
use super::metrics::Sample;

/// One running agent: its pod and its process.
#[derive(Clone, Debug)]
pub struct Agent {
    pub pod: String,
    pub pid: i32,
}

impl Agent {
    pub fn held(&self) -> Held {
        kernel::held_by(self.pid)
    }
}

/// The agent's process in the pod with `uid`: a `flowwatch` process whose cgroup is the pod's
/// (cgroupfs names it `pod<uid>`) under the node's.
pub fn agent_pid_in(node: &Node, uid: &str) -> Option<i32> {
    let node_cgroup = format!("flowwatch-node-{}", node.name);
    let pod_cgroups = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    flowwatch_testnode::sys::pids().into_iter().find(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        comm.trim() == "flowwatch"
            && cg.contains(&node_cgroup)
            && pod_cgroups.iter().any(|p| cg.contains(p.as_str()))
            && flowwatch_testnode::sys::alive(*pid)
    })
}

/// The Ready agent pod other than `not` (a pod name), with its process; waits up to 120 s.
pub fn ready_agent(node: &Node, not: Option<&str>) -> Agent {
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let listing = node
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "flowwatch",
                "-l",
                "app.kubernetes.io/name=flowwatch",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])
            .unwrap_or_default();
        for line in listing.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // name uid Ready (a pod being deleted has a deletionTimestamp: four fields).
            if let [name, uid, "True"] = f[..] {
                if Some(name) == not {
                    continue;
                }
                if let Some(pid) = agent_pid_in(node, uid) {
                    return Agent {
                        pod: name.to_string(),
                        pid,
                    };
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no Ready agent pod besides {not:?} within 120 s: {listing}\n{}",
            node.kubectl(&["describe", "pods", "-n", "flowwatch"])
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The sum of `flowwatch_connections_total` on one edge (any verdict and outcome).
pub fn edge_total(samples: &[Sample], from: PodRef, to: PodRef, port: u16) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == "flowwatch_connections_total"
                && s.label("src_namespace") == from.ns
                && s.label("src_workload") == from.pod
                && s.label("dst_namespace") == to.ns
                && s.label("dst_workload") == to.pod
                && s.label("dst_port") == port.to_string()
                && s.label("protocol") == "TCP"
        })
        .map(|s| s.value)
        .sum()
}

/// The old agent is gone with everything it held in the kernel, and the new one is attached to
/// every pod veth exactly once (and says so in `flowwatch_interfaces_attached`).
pub fn assert_taken_over(node: &Node, old: &Agent, old_held: &Held, new: &Agent, what: &str) {
    assert_ne!(old.pid, new.pid, "{what}: the same agent process");
    assert!(
        flowwatch_testnode::sys::wait_until(Duration::from_secs(30), || {
            !flowwatch_testnode::sys::alive(old.pid)
        }),
        "{what}: the old agent (pid {}) still runs",
        old.pid
    );
    // The kernel frees a program, link or map when its last reference goes, after an RCU grace
    // period: a moment, not more.
    let mut left = Held::default();
    let gone = flowwatch_testnode::sys::wait_until(Duration::from_secs(15), || {
        left = kernel::still_loaded(old_held);
        left.is_empty()
    });
    assert!(
        gone,
        "{what}: the old agent's eBPF objects are still loaded: {left:?}"
    );
    // The new agent attaches to the veths it finds at start and reports how many.
    let veths = kernel::tcx_on_veths(&node.netns_path()).len();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let attached = super::chart::scrape(node, &new.pod)
            .iter()
            .find(|s| s.name == "flowwatch_interfaces_attached")
            .map(|s| s.value);
        if attached == Some(veths as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the new agent reports {attached:?} interfaces attached, the node has {veths} veths"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let n = kernel::assert_attached_once_by(&node.netns_path(), &new.held(), "the new agent");
    eprintln!(
        "{what}: agent pid {} -> {}; the old one's {} programs, {} links, {} maps gone; {n} veths, one program each way, the new agent's",
        old.pid,
        new.pid,
        old_held.programs.len(),
        old_held.links.len(),
        old_held.maps.len()
    );
}

/// `count` connections from `from` to `to:port`, each awaited, are counted exactly `count`
/// times by `agent` (nothing twice, nothing lost), and stay so a few seconds later.
pub fn assert_counted_once(
    node: &Node,
    agent: &Agent,
    ips: &BTreeMap<PodRef, String>,
    edge: (PodRef, PodRef, u16),
    count: usize,
) {
    let (from, to, port) = edge;
    let before = edge_total(&super::chart::scrape(node, &agent.pod), from, to, port);
    let target = format!("{}:{port}", ips[&to]);
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do /agnhost connect {target} --timeout=2s || exit 1; i=$((i+1)); done"
    );
    node.kubectl(&[
        "exec", "-n", from.ns, from.pod, "--", "/bin/sh", "-c", &script,
    ])
    .unwrap_or_else(|e| panic!("{count} connections {from} -> {target}: {e:#}"));
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut got;
    loop {
        got = edge_total(&super::chart::scrape(node, &agent.pod), from, to, port) - before;
        if got >= count as f64 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    got = edge_total(&super::chart::scrape(node, &agent.pod), from, to, port) - before;
    assert_eq!(
        got, count as f64,
        "{from} -> {to}:{port}: {count} connections, counted {got} times by agent {}",
        agent.pod
    );
}

/// Connections from `from` to `to:port` every 200 ms in the background (a `kubectl exec` loop
/// that stops when told, or after 600 rounds), for an agent replaced while traffic flows.
pub struct Traffic<'scope, 'n> {
    node: &'n Node,
    from: PodRef,
    handle: Option<std::thread::ScopedJoinHandle<'scope, String>>,
}

const STOP_FILE: &str = "/stop-background-traffic";

impl<'scope, 'n: 'scope> Traffic<'scope, 'n> {
    pub fn start(
        node: &'n Node,
        from: PodRef,
        target: &str,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) -> Traffic<'scope, 'n> {
        let script = format!(
            "rm -f {STOP_FILE}; i=0; while [ ! -e {STOP_FILE} ] && [ $i -lt 600 ]; do /agnhost connect {target} --timeout=1s >/dev/null 2>&1; /bin/busybox sleep 0.2; i=$((i+1)); done; echo $i"
        );
        let handle = scope.spawn(move || {
            node.kubectl(&[
                "exec", "-n", from.ns, from.pod, "--", "/bin/sh", "-c", &script,
            ])
            .unwrap_or_else(|e| format!("failed: {e:#}"))
        });
        Traffic {
            node,
            from,
            handle: Some(handle),
        }
    }

    /// Stops the loop; returns how many rounds it ran.
    pub fn stop(mut self) -> usize {
        self.signal();
        let out = self
            .handle
            .take()
            .expect("running")
            .join()
            .expect("traffic thread");
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("background traffic from {}: {out}", self.from))
    }

    fn signal(&self) {
        let _ = self.node.kubectl(&[
            "exec",
            "-n",
            self.from.ns,
            self.from.pod,
            "--",
            "/bin/sh",
            "-c",
            &format!(": > {STOP_FILE}"),
        ]);
    }
}

impl Drop for Traffic<'_, '_> {
    fn drop(&mut self) {
        // A failing test stops the loop too (the scope then joins the thread).
        if self.handle.is_some() {
            self.signal();
        }
    }
}

const X_A: PodRef = PodRef { ns: "x", pod: "a" };
const X_B: PodRef = PodRef { ns: "x", pod: "b" };

/// The agent's pod deleted while x/a connects to x/b:80 five times a second: the DaemonSet
/// starts another, which takes over (see [`assert_taken_over`]), counts the ongoing traffic,
/// and counts five new connections to x/b:81 exactly five times.
pub fn the_agent_pod_deleted_under_traffic(node: &Node, ips: &BTreeMap<PodRef, String>) -> Agent {
    let old = ready_agent(node, None);
    let old_held = old.held();
    kernel::assert_attached_once_by(&node.netns_path(), &old_held, "the agent");
    let target = format!("{}:80", ips[&X_B]);
    std::thread::scope(|s| {
        let traffic = Traffic::start(node, X_A, &target, s);
        let counted_by =
            |agent: &Agent| edge_total(&super::chart::scrape(node, &agent.pod), X_A, X_B, 80);
        let at_start = counted_by(&old);
        wait(
            Duration::from_mins(1),
            "the old agent counts the traffic",
            || counted_by(&old) > at_start,
        );
        let started = Instant::now();
        node.kubectl(&[
            "delete",
            "pod",
            &old.pod,
            "-n",
            "flowwatch",
            "--wait=true",
            "--timeout=90s",
        ])
        .unwrap_or_else(|e| panic!("deleting the agent's pod: {e:#}"));
        let new = ready_agent(node, Some(&old.pod));
        eprintln!(
            "agent pod {} deleted, {} Ready after {:.1?}",
            old.pod,
            new.pod,
            started.elapsed()
        );
        assert_taken_over(node, &old, &old_held, &new, "agent pod deleted");
        wait(
            Duration::from_mins(1),
            "the new agent counts the ongoing traffic",
            || counted_by(&new) > 0.0,
        );
        let rounds = traffic.stop();
        eprintln!("background traffic: {rounds} connections");
        // The last background connection is over before the exact count starts.
        std::thread::sleep(Duration::from_secs(2));
        assert_counted_once(node, &new, ips, (X_A, X_B, 81), 5);
        new
    })
}

/// `helm upgrade` with a new pod annotation: the DaemonSet rolls its pod (maxSurge 0: the old
/// one goes first), and the new agent takes over as when its pod was deleted.
pub fn a_rolling_update(
    node: &Node,
    work: &std::path::Path,
    ips: &BTreeMap<PodRef, String>,
    old: &Agent,
) -> Agent {
    let old_held = old.held();
    let generation = |n: &Node| {
        n.kubectl(&[
            "get",
            "daemonset",
            "flowwatch",
            "-n",
            "flowwatch",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .expect("daemonset generation")
    };
    let before = generation(node);
    let started = Instant::now();
    let out = super::chart::helm_cmd(node, work)
        .args(["upgrade", "flowwatch"])
        .arg(crate::helm::chart())
        .args(["--namespace", "flowwatch", "--reuse-values"])
        .args(["--set", "podAnnotations.flowwatch-test/rollout=second"])
        .args(["--wait", "--timeout", "180s"])
        .output()
        .expect("helm upgrade");
    assert!(
        out.status.success(),
        "helm upgrade: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    node.kubectl(&[
        "rollout",
        "status",
        "daemonset/flowwatch",
        "-n",
        "flowwatch",
        "--timeout=120s",
    ])
    .unwrap_or_else(|e| panic!("rollout: {e:#}"));
    assert_ne!(
        generation(node),
        before,
        "helm upgrade changed the DaemonSet"
    );
    let new = ready_agent(node, Some(&old.pod));
    let annotation = node
        .kubectl(&[
            "get",
            "pod",
            &new.pod,
            "-n",
            "flowwatch",
            "-o",
            "jsonpath={.metadata.annotations.flowwatch-test/rollout}",
        ])
        .expect("annotation");
    assert_eq!(
        annotation, "second",
        "the new pod is of the upgraded template"
    );
    eprintln!(
        "rolling update: {} -> {} in {:.1?}",
        old.pod,
        new.pod,
        started.elapsed()
    );
    assert_taken_over(node, old, &old_held, &new, "rolling update");
    assert_counted_once(node, &new, ips, (X_A, X_B, 81), 5);
    new
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    assert!(
        flowwatch_testnode::sys::wait_until(timeout, &mut ok),
        "{what}: not within {timeout:?}"
    );
}
