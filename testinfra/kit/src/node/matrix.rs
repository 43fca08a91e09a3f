//! The connectivity matrix of the upstream NetworkPolicy e2e suite (`test/e2e/network/netpol`):
//! namespaces x, y, z with pods a, b, c, each serving TCP and UDP on ports 80 and 81 (agnhost
//! `serve-hostname`, as upstream), probed from every pod to every other pod. The policies are
//! given as data, rendered to manifests, and judged here by a plain reading of the
//! NetworkPolicy rules they use: that is the truth the agent's metrics are compared with (and,
//! with an enforcer, the probes' own outcomes check it too).

use std::fmt;
use std::fmt::Write as _;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
pub const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub ns: &'static str,
    pub pod: &'static str,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

pub fn pods() -> Vec<PodRef> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| PodRef { ns, pod }))
        .collect()
}

/// One probe: from a pod to another pod's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub from: PodRef,
    pub to: PodRef,
    pub port: u16,
    pub protocol: &'static str,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}:{}/{}",
            self.from, self.to, self.port, self.protocol
        )
    }
}

/// Every probe of the matrix. A pod's traffic to itself never leaves its network namespace
/// (and NetworkPolicy always allows it), so, unlike upstream, the diagonal is left out.
pub fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for from in pods() {
        for to in pods() {
            if from == to {
                continue;
            }
            for port in PORTS {
                for protocol in PROTOCOLS {
                    out.push(Probe {
                        from,
                        to,
                        port,
                        protocol,
                    });
                }
            }
        }
    }
    out
}

/// A peer of a rule: every pod of one namespace, or (None) every pod of the policy's own.
#[derive(Clone, Debug)]
pub enum Peer {
    Namespace(&'static str),
    SameNamespacePods,
}

/// One rule: peers (empty: all sources/destinations) and ports (empty: all).
#[derive(Clone, Debug)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<(&'static str, u16)>,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub name: &'static str,
    pub namespace: &'static str,
    /// The `pod` label of the pods it selects.
    pub pod: &'static str,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// The policies of the test: one per namespace, of three kinds (ingress from a namespace on
/// one port, egress to a namespace, ingress by port or from the own namespace), so the matrix
/// holds uncovered, allowed and denied edges, denied by ingress, by egress and by both.
pub fn policies() -> Vec<Policy> {
    vec![
        Policy {
            name: "a-ingress-from-y-tcp-80",
            namespace: "x",
            pod: "a",
            ingress: Some(vec![Rule {
                peers: vec![Peer::Namespace("y")],
                ports: vec![("TCP", 80)],
            }]),
            egress: None,
        },
        Policy {
            name: "b-egress-to-z",
            namespace: "y",
            pod: "b",
            ingress: None,
            egress: Some(vec![Rule {
                peers: vec![Peer::Namespace("z")],
                ports: vec![],
            }]),
        },
        Policy {
            name: "c-ingress-udp-81-or-own-namespace",
            namespace: "z",
            pod: "c",
            ingress: Some(vec![
                Rule {
                    peers: vec![],
                    ports: vec![("UDP", 81)],
                },
                Rule {
                    peers: vec![Peer::SameNamespacePods],
                    ports: vec![],
                },
            ]),
            egress: None,
        },
    ]
}

pub fn manifest(p: &Policy) -> String {
    let rules = |rules: &[Rule], key: &str| -> String {
        let mut s = String::new();
        for r in rules {
            s.push_str("  - {");
            let mut parts = Vec::new();
            if !r.peers.is_empty() {
                let peers: Vec<String> = r
                    .peers
                    .iter()
                    .map(|peer| match peer {
                        Peer::Namespace(ns) => format!(
                            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: \"{ns}\"}}}}}}"
                        ),
                        Peer::SameNamespacePods => "{podSelector: {}}".to_string(),
                    })
                    .collect();
                parts.push(format!("{key}: [{}]", peers.join(", ")));
            }
            if !r.ports.is_empty() {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|(proto, port)| format!("{{protocol: {proto}, port: {port}}}"))
                    .collect();
                parts.push(format!("ports: [{}]", ports.join(", ")));
            }
            s.push_str(&parts.join(", "));
            s.push_str("}\n");
        }
        s
    };
    let mut types = Vec::new();
    let mut body = String::new();
    if let Some(r) = &p.ingress {
        types.push("Ingress");
        body.push_str("  ingress:\n");
        body.push_str(&rules(r, "from"));
    }
    if let Some(r) = &p.egress {
        types.push("Egress");
        body.push_str("  egress:\n");
        body.push_str(&rules(r, "to"));
    }
    format!(
        // Names are quoted: YAML 1.1 reads a bare `y` as a boolean.
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\n  namespace: \"{}\"\nspec:\n  podSelector: {{matchLabels: {{pod: \"{}\"}}}}\n  policyTypes: [{}]\n{}",
        p.name,
        p.namespace,
        p.pod,
        types.join(", "),
        body
    )
}

/// The verdict of one side, as the agent's labels name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Allowed,
    Denied,
    Uncovered,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Allowed => "allowed",
            Side::Denied => "denied",
            Side::Uncovered => "uncovered",
        }
    }
}

fn rule_admits(rule: &Rule, policy_ns: &str, peer: PodRef, port: u16, protocol: &str) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|p| match p {
            Peer::Namespace(ns) => peer.ns == *ns,
            Peer::SameNamespacePods => peer.ns == policy_ns,
        });
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|(proto, p)| *proto == protocol && *p == port);
    peer_ok && port_ok
}

/// Egress verdict on `probe.from`, ingress verdict on `probe.to`: a side no policy of that
/// direction selects is uncovered; a selected side is allowed when any rule of any selecting
/// policy admits the probe, else denied.
pub fn truth(probe: &Probe, policies: &[Policy]) -> (Side, Side) {
    let side = |pod: PodRef, peer: PodRef, ingress: bool| {
        let selecting: Vec<&Vec<Rule>> = policies
            .iter()
            .filter(|p| p.namespace == pod.ns && p.pod == pod.pod)
            .filter_map(|p| {
                if ingress {
                    p.ingress.as_ref()
                } else {
                    p.egress.as_ref()
                }
            })
            .collect();
        if selecting.is_empty() {
            return Side::Uncovered;
        }
        let admitted = selecting.iter().any(|rules| {
            rules
                .iter()
                .any(|r| rule_admits(r, pod.ns, peer, probe.port, probe.protocol))
        });
        if admitted {
            Side::Allowed
        } else {
            Side::Denied
        }
    };
    (
        side(probe.from, probe.to, false),
        side(probe.to, probe.from, true),
    )
}

pub fn overall(egress: Side, ingress: Side) -> Side {
    match (egress, ingress) {
        (Side::Denied, _) | (_, Side::Denied) => Side::Denied,
        (Side::Uncovered, Side::Uncovered) => Side::Uncovered,
        _ => Side::Allowed,
    }
}

/// The pod manifest: one container serving TCP and UDP on 80 and 81 with agnhost, under
/// busybox's shell (one container per pod keeps the node's work small).
pub fn pod_manifest(p: PodRef, image: &str) -> String {
    let servers = PORTS
        .iter()
        .flat_map(|port| {
            [
                format!("/agnhost serve-hostname --http=false --udp --port {port} &"),
                format!("/agnhost serve-hostname --http=false --tcp --port {port} &"),
            ]
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: "{pod}"
  namespace: "{ns}"
  labels: {{pod: "{pod}"}}
spec:
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers:
  - name: servers
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{servers} wait"]
    readinessProbe:
      tcpSocket: {{port: 81}}
      periodSeconds: 2
"#,
        pod = p.pod,
        ns = p.ns,
    )
}

/// The pod outside the matrix (namespace w) whose probes tell when the enforcer is in force.
pub const CANARY: PodRef = PodRef {
    ns: "w",
    pod: "canary",
};

/// Whether `pod` of namespace `ns` (a pod name, or `deploy/NAME` as kubectl exec takes it)
/// connects to `target` (`ip:port`, TCP) within a second.
pub fn connects(node: &flowwatch_testnode::Node, ns: &str, pod: &str, target: &str) -> bool {
    match node.kubectl(&[
        "exec",
        "-n",
        ns,
        pod,
        "--",
        "/agnhost",
        "connect",
        target,
        "--timeout=1s",
    ]) {
        Ok(_) => true,
        // agnhost's words for a connection that did not happen (not an exec failure).
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                ["TIMEOUT", "REFUSED", "OTHER"]
                    .iter()
                    .any(|w| e.contains(w)),
                "the probe from {ns}/{pod} failed to run: {e}"
            );
            false
        }
    }
}

/// The probes from one pod, as a shell script run in it (`kubectl exec`): one line per probe,
/// `<ip> <port> <protocol> ok|fail`, eight probes at a time (each is one connection attempt,
/// with a three-second timeout: on a loaded machine a one-second one let allowed connections
/// fail without any enforcer).
pub fn probe_script(targets: &[(String, u16, &str)]) -> String {
    let mut s = String::new();
    for batch in targets.chunks(8) {
        for (ip, port, proto) in batch {
            let p = proto.to_lowercase();
            let _ = writeln!(
                s,
                "(if /agnhost connect {ip}:{port} --timeout=3s --protocol={p} 2>/dev/null; then echo '{ip} {port} {proto} ok'; else echo '{ip} {port} {proto} fail'; fi) &"
            );
        }
        s.push_str("wait\n");
    }
    s
}

#[test]
fn the_truth_of_a_few_edges() {
    let pol = policies();
    let pr =
        |f: (&'static str, &'static str), t: (&'static str, &'static str), port, protocol| Probe {
            from: PodRef { ns: f.0, pod: f.1 },
            to: PodRef { ns: t.0, pod: t.1 },
            port,
            protocol,
        };
    // y/a -> x/a TCP 80: ingress allowed (from y, TCP 80), egress uncovered.
    assert_eq!(
        truth(&pr(("y", "a"), ("x", "a"), 80, "TCP"), &pol),
        (Side::Uncovered, Side::Allowed)
    );
    // y/a -> x/a UDP 80: ingress denied.
    assert_eq!(
        truth(&pr(("y", "a"), ("x", "a"), 80, "UDP"), &pol),
        (Side::Uncovered, Side::Denied)
    );
    // y/b -> x/a TCP 80: egress denied (not z), ingress allowed.
    assert_eq!(
        truth(&pr(("y", "b"), ("x", "a"), 80, "TCP"), &pol),
        (Side::Denied, Side::Allowed)
    );
    // y/b -> z/c TCP 80: egress allowed, ingress denied (not UDP 81, not from z).
    assert_eq!(
        truth(&pr(("y", "b"), ("z", "c"), 80, "TCP"), &pol),
        (Side::Allowed, Side::Denied)
    );
    // y/b -> z/c UDP 81: both allowed.
    assert_eq!(
        truth(&pr(("y", "b"), ("z", "c"), 81, "UDP"), &pol),
        (Side::Allowed, Side::Allowed)
    );
    // z/a -> z/c: own namespace, allowed; x/b -> y/c: uncovered.
    assert_eq!(
        truth(&pr(("z", "a"), ("z", "c"), 80, "TCP"), &pol),
        (Side::Uncovered, Side::Allowed)
    );
    assert_eq!(
        truth(&pr(("x", "b"), ("y", "c"), 81, "UDP"), &pol),
        (Side::Uncovered, Side::Uncovered)
    );
    assert_eq!(probes().len(), 9 * 8 * 4);
    let m = manifest(&pol[2]);
    assert!(m.contains("policyTypes: [Ingress]"), "{m}");
    assert!(m.contains("- {ports: [{protocol: UDP, port: 81}]}"), "{m}");
    assert!(m.contains("- {from: [{podSelector: {}}]}"), "{m}");
}
