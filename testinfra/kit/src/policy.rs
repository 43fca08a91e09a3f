//! Shared fixtures for the policy tests: the upstream e2e suite's cluster shape (namespaces
//! x, y, z with pods a, b, c serving 80 and 81 over TCP, UDP and SCTP), policies written as
//! YAML, and full reachability matrices.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use flowwatch::inventory::{snapshot, Inventory, ObjectError};
use flowwatch::model::Protocol;
use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions, Verdict};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// `10.0.<ns>.<pod+10>`: x/a = 10.0.0.10, y/b = 10.0.1.11, ...
pub fn pod_ip(ns: &str, pod: &str) -> IpAddr {
    let n = NAMESPACES
        .iter()
        .position(|x| *x == ns)
        .expect("test namespace");
    let p = PODS.iter().position(|x| *x == pod).expect("test pod");
    format!("10.0.{n}.{}", p + 10).parse().unwrap()
}

/// `fd00::<ns>:<pod+10>`, the pods' second (IPv6) address.
pub fn pod_ip6(ns: &str, pod: &str) -> IpAddr {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap();
    let p = PODS.iter().position(|x| *x == pod).unwrap();
    format!("fd00::{n}:{}", p + 10).parse().unwrap()
}

/// Node `node-<i>` has address 192.168.0.<i>; pod a of every namespace runs on node-1, b on
/// node-2, c on node-3.
pub fn node_ip(node: &str) -> IpAddr {
    let i = NODES.iter().position(|x| *x == node).unwrap() + 1;
    format!("192.168.0.{i}").parse().unwrap()
}

/// The cluster as `kubectl get ... -o yaml` would print it (multi-document YAML).
pub fn world_yaml() -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n"
        )
        .unwrap();
    }
    for node in NODES {
        write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\nstatus:\n  addresses:\n  - {{type: Hostname, address: {node}}}\n  - {{type: InternalIP, address: {}}}\n",
            node_ip(node)
        )
        .unwrap();
    }
    for ns in NAMESPACES {
        for (i, pod) in PODS.iter().enumerate() {
            let mut ports = String::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    writeln!(
                        ports,
                        "      - {{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}",
                        proto.to_lowercase()
                    )
                    .unwrap();
                }
            }
            write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  namespace: {ns}\n  name: {pod}\n  labels: {{pod: {pod}}}\nspec:\n  nodeName: {}\n  containers:\n    - name: cont\n      ports:\n{ports}status:\n  phase: Running\n  podIP: {}\n  podIPs: [{{ip: {}}}, {{ip: {}}}]\n",
                NODES[i],
                pod_ip(ns, pod),
                pod_ip(ns, pod),
                pod_ip6(ns, pod)
            )
            .unwrap();
        }
    }
    y
}

/// One NetworkPolicy document; `spec` is YAML (flow style is handy: `{podSelector: {}}`).
pub fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: {ns}\n  name: {name}\nspec: {spec}\n"
    )
}

pub fn inventory(extra_yaml: &[String]) -> Inventory {
    let mut text = world_yaml();
    for e in extra_yaml {
        text.push_str(e);
    }
    let (inv, errors) = snapshot::parse(&text, "test").expect("test snapshot parses");
    assert_eq!(errors, vec![], "test snapshot objects decode");
    inv
}

/// The engine over the world plus `policies`; panics if any object is rejected.
pub fn engine(policies: &[String]) -> PolicyEngine {
    engine_with(policies, PolicyOptions::default())
}

pub fn engine_with(policies: &[String], options: PolicyOptions) -> PolicyEngine {
    let (engine, errors) = PolicyEngine::build(&inventory(policies), options);
    assert_eq!(
        errors,
        Vec::<ObjectError>::new(),
        "every test policy is valid"
    );
    engine
}

pub fn pod(s: &str) -> Peer {
    s.parse().unwrap()
}

/// Expected connectivity between every ordered pair of the 9 pods.
#[derive(Clone, Debug)]
pub struct Reach {
    m: BTreeMap<(String, String), bool>,
}

fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn matches(pattern: &str, pod: &str) -> bool {
    let (pn, pp) = pattern.split_once('/').unwrap();
    let (n, p) = pod.split_once('/').unwrap();
    (pn == "*" || pn == n) && (pp == "*" || pp == p)
}

impl Reach {
    pub fn all(allowed: bool) -> Reach {
        let mut m = BTreeMap::new();
        for f in all_pods() {
            for t in all_pods() {
                m.insert((f.clone(), t), allowed);
            }
        }
        Reach { m }
    }

    /// Sets every pair whose source matches `from` and destination matches `to`
    /// (`ns/pod` with `*` wildcards).
    pub fn set(mut self, from: &str, to: &str, allowed: bool) -> Reach {
        for ((f, t), v) in &mut self.m {
            if matches(from, f) && matches(to, t) {
                *v = allowed;
            }
        }
        self
    }
}

/// Checks the whole 9x9 matrix for `port`/`protocol`, through both entry points (pods by name
/// and by address, which must agree exactly). A pod can always reach itself (policies cannot
/// block loopback; the upstream suite expects the same), so the diagonal is expected allowed.
#[track_caller]
pub fn assert_reach(engine: &PolicyEngine, port: u16, protocol: Protocol, expected: &Reach) {
    let pods = all_pods();
    let mut wrong = Vec::new();
    let mut grid = String::new();
    write!(
        grid,
        "{port}/{protocol} (rows: from, cols: to; . allowed, X denied, ! wrong)\n     "
    )
    .unwrap();
    for t in &pods {
        write!(grid, "{t:>5}").unwrap();
    }
    grid.push('\n');
    for f in &pods {
        write!(grid, "{f:>5}").unwrap();
        for t in &pods {
            let by_name = engine
                .evaluate(&pod(f), &pod(t), port, protocol)
                .expect("known pods");
            let (fs, fp) = f.split_once('/').unwrap();
            let (ts, tp) = t.split_once('/').unwrap();
            let by_ip = engine.evaluate_ips(pod_ip(fs, fp), pod_ip(ts, tp), port, protocol);
            assert_eq!(by_name, by_ip, "{f} -> {t}: by name and by address differ");
            let got = by_name.verdict != Verdict::Denied;
            let want = f == t || expected.m[&(f.clone(), t.clone())];
            let cell = match (got == want, got) {
                (false, _) => "!",
                (true, true) => ".",
                (true, false) => "X",
            };
            write!(grid, "{cell:>5}").unwrap();
            if got != want {
                wrong.push(format!(
                    "{f} -> {t}: expected {}, got {by_name:?}",
                    if want { "reachable" } else { "denied" }
                ));
            }
        }
        grid.push('\n');
    }
    assert!(wrong.is_empty(), "{grid}\n{}", wrong.join("\n"));
}
