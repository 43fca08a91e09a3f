//! The application whose traffic `policy advise` learns from in `tests/node_advise.rs`: a
//! few workloads in three namespaces, with the two cases policy generators get wrong (the DNS
//! pods labelled only `k8s-app=kube-dns`, as CoreDNS is in many clusters; a host-network pod as
//! a server and as a client), a Service whose port differs from its named target port, a
//! workload that talks to nobody, and ports nobody uses. Given as data: the manifests, the
//! traffic recorded, and every connection a pod can try (which of them the advice must allow,
//! which it must deny) are derived from it.

use std::collections::BTreeSet;
use std::fmt;

/// One workload and what it serves: (protocol, port, container port name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub ns: &'static str,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: &'static str,
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub serves: &'static [(&'static str, u16, &'static str)],
    pub host_network: bool,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

pub const WEB: Workload = Workload {
    ns: "shop",
    kind: "Deployment",
    name: "web",
    labels: &[("app", "web"), ("tier", "frontend")],
    serves: &[("TCP", 8080, "http")],
    host_network: false,
};
/// Serves 9090 too, which nobody uses.
pub const API: Workload = Workload {
    ns: "shop",
    kind: "Deployment",
    name: "api",
    labels: &[("app", "api"), ("tier", "backend")],
    serves: &[("TCP", 8080, "http"), ("TCP", 9090, "metrics")],
    host_network: false,
};
/// Talks to nobody and nobody talks to it: the advice gives it nothing but the default deny.
pub const WORKER: Workload = Workload {
    ns: "shop",
    kind: "Deployment",
    name: "worker",
    labels: &[("app", "worker"), ("tier", "backend")],
    serves: &[("TCP", 8080, "http")],
    host_network: false,
};
/// Serves 6379 too, which nobody uses.
pub const DB: Workload = Workload {
    ns: "data",
    kind: "StatefulSet",
    name: "db",
    labels: &[("app", "db")],
    serves: &[("TCP", 5432, "postgres"), ("TCP", 6379, "redis")],
    host_network: false,
};
/// The cluster DNS as many clusters run it: its pods labelled only `k8s-app=kube-dns` (the
/// Deployment adds `pod-template-hash`), no `app`, no `app.kubernetes.io/name`.
pub const DNS: Workload = Workload {
    ns: "kube-system",
    kind: "Deployment",
    name: "coredns",
    labels: &[("k8s-app", "kube-dns")],
    serves: &[("UDP", 53, "dns"), ("TCP", 53, "dns-tcp")],
    host_network: false,
};
/// A host-network DaemonSet (a node exporter): it serves on the node's address and connects
/// to pods from it.
pub const NODE_AGENT: Workload = Workload {
    ns: "infra",
    kind: "DaemonSet",
    name: "node-agent",
    labels: &[("app", "node-agent")],
    serves: &[("TCP", 9100, "metrics")],
    host_network: true,
};

pub const WORKLOADS: [Workload; 6] = [WEB, API, WORKER, DB, DNS, NODE_AGENT];
pub const NAMESPACES: [&str; 3] = ["shop", "data", "infra"];

/// A Service: (namespace, name, selected workload, [(protocol, port, target port name)]).
pub struct Service {
    pub ns: &'static str,
    pub name: &'static str,
    pub selects: Workload,
    pub ports: &'static [(&'static str, u16, &'static str)],
}

pub const SERVICES: [Service; 2] = [
    // Port 80 in front of the named target port `http` (8080): the advice must allow 8080.
    Service {
        ns: "shop",
        name: "api",
        selects: API,
        ports: &[("TCP", 80, "http")],
    },
    Service {
        ns: "kube-system",
        name: "kube-dns",
        selects: DNS,
        ports: &[("UDP", 53, "dns"), ("TCP", 53, "dns-tcp")],
    },
];

/// How a connection addresses its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// The pod's own address (the host-network pod's: the node's).
    Pod,
    /// A Service's ClusterIP (index into [`SERVICES`]), translated by kube-proxy.
    Service(usize),
}

/// A destination: a workload's port, as dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub to: Workload,
    pub via: Via,
    pub protocol: &'static str,
    /// The port dialled.
    pub port: u16,
    /// The port the pod serves it on.
    pub target_port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Via::Pod => write!(f, "{}:{}/{}", self.to, self.port, self.protocol),
            Via::Service(i) => write!(
                f,
                "service {}/{}:{}/{} (-> {}:{})",
                SERVICES[i].ns,
                SERVICES[i].name,
                self.port,
                self.protocol,
                self.to,
                self.target_port
            ),
        }
    }
}

/// One connection attempt from a workload's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Probe {
    pub from: Workload,
    pub target: Target,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.target)
    }
}

impl Probe {
    /// What a NetworkPolicy judges: the two workloads, the protocol and the pod's port.
    pub fn pair(&self) -> (Workload, Workload, &'static str, u16) {
        (
            self.from,
            self.target.to,
            self.target.protocol,
            self.target.target_port,
        )
    }
}

fn pod_port(w: Workload, protocol: &'static str, port: u16) -> Target {
    assert!(
        w.serves
            .iter()
            .any(|(p, n, _)| *p == protocol && *n == port),
        "{w} does not serve {port}/{protocol}"
    );
    Target {
        to: w,
        via: Via::Pod,
        protocol,
        port,
        target_port: port,
    }
}

fn service_port(index: usize, protocol: &str, port: u16) -> Target {
    let s = &SERVICES[index];
    let (protocol, port, name) = s
        .ports
        .iter()
        .copied()
        .find(|(p, n, _)| *p == protocol && *n == port)
        .unwrap_or_else(|| panic!("service {} has no {port}/{protocol}", s.name));
    let (_, target_port, _) = s
        .selects
        .serves
        .iter()
        .copied()
        .find(|(p, _, n)| *p == protocol && *n == name)
        .unwrap_or_else(|| panic!("{} has no port named {name}", s.selects));
    Target {
        to: s.selects,
        via: Via::Service(index),
        protocol,
        port,
        target_port,
    }
}

/// The traffic recorded (and replayed): DNS over UDP and TCP through the `kube-dns` Service,
/// web to api through its Service (port 80, served on 8080), api to the database's pod, api to
/// the host-network server, and the host-network pod to web.
pub fn observed() -> Vec<Probe> {
    vec![
        Probe {
            from: WEB,
            target: service_port(0, "TCP", 80),
        },
        Probe {
            from: WEB,
            target: service_port(1, "UDP", 53),
        },
        Probe {
            from: WEB,
            target: service_port(1, "TCP", 53),
        },
        Probe {
            from: API,
            target: service_port(1, "UDP", 53),
        },
        Probe {
            from: API,
            target: pod_port(DB, "TCP", 5432),
        },
        Probe {
            from: API,
            target: pod_port(NODE_AGENT, "TCP", 9100),
        },
        Probe {
            from: NODE_AGENT,
            target: pod_port(WEB, "TCP", 8080),
        },
    ]
}

/// The pairs and ports the advice means to allow: the observed ones, and DNS over the other
/// protocol of what was seen (a resolver falls back to TCP for large answers).
pub fn allowed() -> BTreeSet<(Workload, Workload, &'static str, u16)> {
    let mut out = BTreeSet::new();
    for p in observed() {
        let (from, to, protocol, port) = p.pair();
        out.insert((from, to, protocol, port));
        if port == 53 {
            out.insert((
                from,
                to,
                if protocol == "UDP" { "TCP" } else { "UDP" },
                port,
            ));
        }
    }
    out
}

/// Every destination: each port of each workload at its pod (or node) address, and each
/// Service port.
pub fn targets() -> Vec<Target> {
    let mut out: Vec<Target> = WORKLOADS
        .iter()
        .flat_map(|w| w.serves.iter().map(|(p, n, _)| pod_port(*w, p, *n)))
        .collect();
    for (i, s) in SERVICES.iter().enumerate() {
        out.extend(s.ports.iter().map(|(p, n, _)| service_port(i, p, *n)));
    }
    out
}

/// Every connection the pod-network workloads can try to another workload (a pod's traffic
/// to itself is never judged), each with whether the advice allows it. The host-network pod
/// is no source here: its traffic leaves from the node, which NetworkPolicy enforcers always
/// admit to the node's own pods (kube-router does, as most do); its observed edge is replayed.
pub fn matrix() -> Vec<(Probe, bool)> {
    let allowed = allowed();
    let mut out = Vec::new();
    for from in WORKLOADS.iter().filter(|w| !w.host_network) {
        for target in targets() {
            if target.to == *from {
                continue;
            }
            let probe = Probe {
                from: *from,
                target,
            };
            out.push((probe, allowed.contains(&probe.pair())));
        }
    }
    out
}

/// The manifest of one workload: one replica, one agnhost container serving each port
/// (`serve-hostname`, TCP or UDP: a UDP datagram gets the hostname back), Ready when its first
/// TCP port accepts.
pub fn manifest(w: &Workload, image: &str) -> String {
    let servers: Vec<String> = w
        .serves
        .iter()
        .map(|(protocol, port, _)| {
            format!(
                "/agnhost serve-hostname --http=false --{} --port {port} &",
                protocol.to_lowercase()
            )
        })
        .collect();
    let ports: Vec<String> = w
        .serves
        .iter()
        .map(|(protocol, port, name)| {
            format!("{{name: {name}, containerPort: {port}, protocol: {protocol}}}")
        })
        .collect();
    let ready = w
        .serves
        .iter()
        .find(|(p, _, _)| *p == "TCP")
        .map(|(_, port, _)| *port)
        .expect("a TCP port to probe");
    let labels: Vec<String> = w
        .labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    let labels = labels.join(", ");
    let (replicas, service_name) = match w.kind {
        "DaemonSet" => ("", String::new()),
        "StatefulSet" => ("  replicas: 1\n", format!("  serviceName: {}\n", w.name)),
        _ => ("  replicas: 1\n", String::new()),
    };
    format!(
        r#"apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
  namespace: {ns}
spec:
{replicas}{service_name}  selector:
    matchLabels: {{{labels}}}
  template:
    metadata:
      labels: {{{labels}}}
    spec:
      hostNetwork: {host_network}
      terminationGracePeriodSeconds: 0
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: servers
        image: {image}
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "{servers} wait"]
        ports: [{ports}]
        readinessProbe:
          tcpSocket: {{port: {ready}}}
          periodSeconds: 2
"#,
        kind = w.kind,
        name = w.name,
        ns = w.ns,
        host_network = w.host_network,
        servers = servers.join(" "),
        ports = ports.join(", "),
    )
}

/// Namespaces, workloads and Services, one multi-document manifest.
pub fn manifests(image: &str) -> String {
    let mut docs: Vec<String> = NAMESPACES
        .iter()
        .map(|ns| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"))
        .collect();
    docs.extend(WORKLOADS.iter().map(|w| manifest(w, image)));
    for s in &SERVICES {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|(protocol, port, target)| {
                format!(
                    "{{name: {target}, protocol: {protocol}, port: {port}, targetPort: {target}}}"
                )
            })
            .collect();
        let selector: Vec<String> = s
            .selects
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  selector: {{{}}}\n  ports: [{}]\n",
            s.name,
            s.ns,
            selector.join(", "),
            ports.join(", ")
        ));
    }
    docs.join("---\n")
}

/// `kubectl exec`'s name for the workload's (only) pod: `deployment/web`.
pub fn exec_name(w: &Workload) -> String {
    format!("{}/{}", w.kind.to_lowercase(), w.name)
}

#[test]
fn the_matrix_allows_exactly_the_observed_pairs_and_dns_both_ways() {
    let m = matrix();
    let allowed: Vec<String> = m
        .iter()
        .filter(|(_, a)| *a)
        .map(|(p, _)| p.to_string())
        .collect();
    // Observed, or the same pair and port at another address, or DNS's other protocol.
    assert_eq!(
        allowed,
        [
            "shop/web -> shop/api:8080/TCP",
            "shop/web -> kube-system/coredns:53/UDP",
            "shop/web -> kube-system/coredns:53/TCP",
            "shop/web -> service shop/api:80/TCP (-> shop/api:8080)",
            "shop/web -> service kube-system/kube-dns:53/UDP (-> kube-system/coredns:53)",
            "shop/web -> service kube-system/kube-dns:53/TCP (-> kube-system/coredns:53)",
            "shop/api -> data/db:5432/TCP",
            "shop/api -> kube-system/coredns:53/UDP",
            "shop/api -> kube-system/coredns:53/TCP",
            "shop/api -> infra/node-agent:9100/TCP",
            "shop/api -> service kube-system/kube-dns:53/UDP (-> kube-system/coredns:53)",
            "shop/api -> service kube-system/kube-dns:53/TCP (-> kube-system/coredns:53)",
        ]
    );
    // 5 sources, 12 targets, less each source's own (web 1; api 3: two ports and its Service;
    // worker 1; db 2; coredns 4: two ports and two Service ports).
    assert_eq!(m.len(), 5 * 12 - (1 + 3 + 1 + 2 + 4));
    let m = manifests("img");
    assert!(m.contains("labels: {k8s-app: \"kube-dns\"}"), "{m}");
    assert!(
        m.contains("{name: http, protocol: TCP, port: 80, targetPort: http}"),
        "{m}"
    );
    assert!(m.contains("hostNetwork: true"), "{m}");
}
