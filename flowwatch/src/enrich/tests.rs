use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, NodeAddress, NodeStatus, Pod, PodIP, PodSpec, PodStatus,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::*;

const S: Nanos = 1_000_000_000;

fn pod(ns: &str, name: &str, uid: &str, ip: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            labels: Some(
                [("app", name), ("team", "blue"), ("secret-ish", "x")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

fn node(name: &str, ip: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, ip: &str, port: i32, port_name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pod_name(e: &Endpoint) -> Option<String> {
    e.pod().map(|p| format!("{}/{}", p.namespace, p.name))
}

fn inv(pods: Vec<Pod>) -> Inventory {
    Inventory {
        pods,
        nodes: vec![node("node-a", "192.168.50.10")],
        services: vec![service("shop", "web", "10.96.0.20", 80, "http")],
        ..Default::default()
    }
}

#[test]
fn a_pod_end_has_namespace_workload_node_and_only_allowlisted_labels() {
    let mut p = pod("shop", "web-7d9f8c-x1", "u1", "10.0.0.5", "node-a");
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-7d9f8c".into(),
        uid: "rs".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("pod-template-hash".into(), "7d9f8c".into());
    let opts = EnrichOptions {
        label_allowlist: vec!["team".into(), "missing".into()],
        ..Default::default()
    };
    let (index, report) = EndpointIndex::build(&inv(vec![p]), &OwnerIndex::default(), &opts, 0);
    assert!(report.errors.is_empty());
    let e = index.resolve(addr("10.0.0.5:8080"), Protocol::Tcp, 10);
    assert_eq!(
        e,
        Endpoint::Pod(PodEndpoint {
            namespace: "shop".into(),
            name: "web-7d9f8c-x1".into(),
            workload_kind: WorkloadKind::Deployment,
            workload_name: "web".into(),
            node: Some("node-a".into()),
            labels: [("team".to_string(), "blue".to_string())].into(),
        })
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["kind"], "pod");
    assert_eq!(json["workload_kind"], "Deployment");
    assert_eq!(json["labels"]["team"], "blue");
    assert!(json["labels"].get("app").is_none());
}

#[test]
fn no_labels_by_default() {
    let (index, _) = EndpointIndex::build(
        &inv(vec![pod("shop", "a", "u1", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    let e = index.resolve(addr("10.0.0.5:1"), Protocol::Tcp, 0);
    assert!(e.pod().unwrap().labels.is_empty());
    assert!(serde_json::to_value(&e).unwrap().get("labels").is_none());
}

#[test]
fn a_reused_ip_belongs_to_the_pod_that_held_it_when_the_flow_happened() {
    let mut index = EndpointIndex::new(EnrichOptions::default());
    let ip = addr("10.0.0.5:80");
    // t=0: pod a holds 10.0.0.5
    index.update(
        &inv(vec![pod("shop", "a", "ua", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        0,
    );
    // t=10s: a is deleted
    index.update(&inv(vec![]), &OwnerIndex::default(), 10 * S);
    // t=12s: b gets the same IP
    index.update(
        &inv(vec![pod("shop", "b", "ub", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        12 * S,
    );

    assert_eq!(
        pod_name(&index.resolve(ip, Protocol::Tcp, 5 * S)).as_deref(),
        Some("shop/a")
    );
    assert_eq!(
        pod_name(&index.resolve(ip, Protocol::Tcp, 13 * S)).as_deref(),
        Some("shop/b")
    );
    // a flow in the gap: b got the IP before the index saw it, a was already gone
    assert_eq!(
        pod_name(&index.resolve(ip, Protocol::Tcp, 11 * S)).as_deref(),
        Some("shop/b")
    );
    assert_eq!(index.stats().tenures, 2);

    // re-created with the same name but a new uid: a new tenure, the old one is closed
    index.update(
        &inv(vec![pod("shop", "b", "ub2", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        20 * S,
    );
    assert_eq!(index.stats().tenures, 3);

    // after the history, the old tenures are forgotten
    let later = 20 * S + EnrichOptions::default().history + S;
    index.update(
        &inv(vec![pod("shop", "b", "ub2", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        later,
    );
    assert_eq!(index.stats().tenures, 1);
}

#[test]
fn an_ip_with_no_holder_after_deletion_is_not_a_pod() {
    let mut index = EndpointIndex::new(EnrichOptions::default());
    index.update(
        &inv(vec![pod("shop", "a", "ua", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        0,
    );
    index.update(&inv(vec![]), &OwnerIndex::default(), 10 * S);
    let ip = addr("10.0.0.5:80");
    assert_eq!(
        pod_name(&index.resolve(ip, Protocol::Tcp, 9 * S)).as_deref(),
        Some("shop/a")
    );
    assert_eq!(
        index.resolve(ip, Protocol::Tcp, 11 * S),
        Endpoint::External {
            class: ExternalClass::Private,
            network: None
        }
    );
}

#[test]
fn relabeling_updates_the_current_holder() {
    let opts = EnrichOptions {
        label_allowlist: vec!["team".into()],
        ..Default::default()
    };
    let mut index = EndpointIndex::new(opts);
    let mut p = pod("shop", "a", "ua", "10.0.0.5", "node-a");
    index.update(&inv(vec![p.clone()]), &OwnerIndex::default(), 0);
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("team".into(), "red".into());
    index.update(&inv(vec![p]), &OwnerIndex::default(), S);
    let e = index.resolve(addr("10.0.0.5:1"), Protocol::Tcp, 2 * S);
    assert_eq!(e.pod().unwrap().labels["team"], "red");
    assert_eq!(index.stats().tenures, 1);
}

#[test]
fn finished_pods_release_their_ip() {
    let mut p = pod("shop", "job-1", "uj", "10.0.0.9", "node-a");
    p.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let (index, report) = EndpointIndex::build(
        &inv(vec![p]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    assert_eq!(report.pods, 0);
    assert!(index
        .resolve(addr("10.0.0.9:1"), Protocol::Tcp, 0)
        .pod()
        .is_none());
}

#[test]
fn node_and_host_network_pod() {
    let mut hp = pod(
        "kube-system",
        "node-exporter-abc",
        "uh",
        "192.168.50.10",
        "node-a",
    );
    let spec = hp.spec.as_mut().unwrap();
    spec.host_network = Some(true);
    spec.containers = vec![Container {
        name: "exporter".into(),
        ports: Some(vec![ContainerPort {
            container_port: 9100,
            ..Default::default()
        }]),
        ..Default::default()
    }];
    hp.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: "node-exporter".into(),
        uid: "ds".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    let (index, _) = EndpointIndex::build(
        &inv(vec![hp]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    match index.resolve(addr("192.168.50.10:9100"), Protocol::Tcp, 0) {
        Endpoint::HostNetworkPod(p) => {
            assert_eq!(p.name, "node-exporter-abc");
            assert_eq!(p.workload_kind, WorkloadKind::DaemonSet);
        }
        other => panic!("expected a host-network pod, got {other:?}"),
    }
    assert_eq!(
        index.resolve(addr("192.168.50.10:22"), Protocol::Tcp, 0),
        Endpoint::Node {
            name: "node-a".into()
        }
    );
    // UDP 9100 is not declared
    assert!(matches!(
        index.resolve(addr("192.168.50.10:9100"), Protocol::Udp, 0),
        Endpoint::Node { .. }
    ));
}

#[test]
fn a_cluster_ip_is_attributed_to_the_backend_that_served_it() {
    let (index, _) = EndpointIndex::build(
        &inv(vec![pod("shop", "web-1", "u1", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    let e = index.resolve_service(
        addr("10.96.0.20:80"),
        Some(addr("10.0.0.5:8080")),
        Protocol::Tcp,
        1,
    );
    match &e {
        Endpoint::Service {
            namespace,
            name,
            port,
            backend,
        } => {
            assert_eq!((namespace.as_str(), name.as_str()), ("shop", "web"));
            assert_eq!(port.as_deref(), Some("http"));
            assert_eq!(
                pod_name(backend.as_deref().unwrap()).as_deref(),
                Some("shop/web-1")
            );
        }
        other => panic!("expected a service, got {other:?}"),
    }
    assert_eq!(pod_name(&e).as_deref(), Some("shop/web-1"));
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["kind"], "service");
    assert_eq!(json["backend"]["kind"], "pod");
    // no translation known: the service without a backend
    let plain = index.resolve(addr("10.96.0.20:80"), Protocol::Tcp, 1);
    assert!(matches!(plain, Endpoint::Service { backend: None, .. }));
    // a non-service original destination resolves as itself
    assert_eq!(
        pod_name(&index.resolve_service(addr("10.0.0.5:8080"), None, Protocol::Tcp, 1)).as_deref(),
        Some("shop/web-1")
    );
}

#[test]
fn external_addresses_are_private_public_or_named() {
    let opts = EnrichOptions {
        named_networks: vec![
            "corp=10.200.0.0/16".parse().unwrap(),
            "corp-db=10.200.5.0/24".parse().unwrap(),
        ],
        ..Default::default()
    };
    let index = EndpointIndex::new(opts);
    let class = |s: &str| index.resolve(addr(s), Protocol::Tcp, 0);
    assert_eq!(
        class("10.200.5.7:5432"),
        Endpoint::External {
            class: ExternalClass::Named,
            network: Some("corp-db".into())
        }
    );
    assert_eq!(
        class("10.200.9.7:443"),
        Endpoint::External {
            class: ExternalClass::Named,
            network: Some("corp".into())
        }
    );
    for private in [
        "10.1.2.3:1",
        "172.16.0.1:1",
        "192.168.1.1:1",
        "100.64.0.1:1",
        "[fd00::1]:1",
        "[fe80::1]:1",
    ] {
        assert!(
            matches!(
                class(private),
                Endpoint::External {
                    class: ExternalClass::Private,
                    ..
                }
            ),
            "{private}"
        );
    }
    for public in ["8.8.8.8:53", "[2001:4860::8888]:53", "172.32.0.1:1"] {
        assert!(
            matches!(
                class(public),
                Endpoint::External {
                    class: ExternalClass::Public,
                    ..
                }
            ),
            "{public}"
        );
    }
    assert!("nocidr".parse::<NamedNetwork>().is_err());
    assert!("x=10.0.0.0/33".parse::<NamedNetwork>().is_err());
    assert!("=10.0.0.0/8".parse::<NamedNetwork>().is_err());
}

#[test]
fn ipv4_mapped_addresses_resolve_like_ipv4() {
    let (index, _) = EndpointIndex::build(
        &inv(vec![pod("shop", "a", "ua", "10.0.0.5", "node-a")]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    let e = index.resolve(addr("[::ffff:10.0.0.5]:80"), Protocol::Tcp, 0);
    assert_eq!(pod_name(&e).as_deref(), Some("shop/a"));
}

#[test]
fn bad_addresses_are_reported_by_object_and_field_and_the_rest_is_indexed() {
    let mut bad = pod("shop", "bad", "ub", "10.0.0.6", "node-a");
    bad.status.as_mut().unwrap().pod_ips = Some(vec![PodIP {
        ip: "10.0.0.300".into(),
    }]);
    let mut inventory = inv(vec![bad, pod("shop", "good", "ug", "10.0.0.7", "node-a")]);
    inventory.nodes.push(node("node-b", "not-an-ip"));
    inventory
        .services
        .push(service("shop", "headless", "None", 80, "http"));
    let (index, report) = EndpointIndex::build(
        &inventory,
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    let msgs: Vec<String> = report
        .errors
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with("Pod shop/bad: status.podIPs[0].ip: \"10.0.0.300\""),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("Node node-b: status.addresses[0].address"),
        "{msgs:?}"
    );
    // The bad pod keeps its readable primary address (as the policy engine reads it).
    assert_eq!(report.pods, 2);
    assert_eq!(
        pod_name(&index.resolve(addr("10.0.0.6:1"), Protocol::Tcp, 0)).as_deref(),
        Some("shop/bad")
    );
    assert_eq!(
        pod_name(&index.resolve(addr("10.0.0.7:1"), Protocol::Tcp, 0)).as_deref(),
        Some("shop/good")
    );
}

#[test]
fn of_two_pods_listing_one_ip_the_one_not_being_deleted_holds_it() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut old = pod("shop", "old", "uo", "10.0.0.5", "node-a");
    old.metadata.deletion_timestamp = Some(Time(k8s_openapi::chrono::DateTime::UNIX_EPOCH));
    let new = pod("shop", "new", "un", "10.0.0.5", "node-a");
    // Either inventory order: the pod being deleted never takes the address from the other.
    for pods in [
        vec![new.clone(), old.clone()],
        vec![old.clone(), new.clone()],
    ] {
        let (index, _) = EndpointIndex::build(
            &inv(pods),
            &OwnerIndex::default(),
            &EnrichOptions::default(),
            0,
        );
        assert_eq!(
            pod_name(&index.resolve(addr("10.0.0.5:80"), Protocol::Tcp, 0)).as_deref(),
            Some("shop/new")
        );
    }
    // Alone, a pod being deleted still holds its address (it may still be serving).
    let (index, _) = EndpointIndex::build(
        &inv(vec![old]),
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    assert_eq!(
        pod_name(&index.resolve(addr("10.0.0.5:80"), Protocol::Tcp, 0)).as_deref(),
        Some("shop/old")
    );
}

/// A Service `service(..)` that also holds `lb_ip` as a load-balancer ingress address.
fn load_balancer(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    lb_ip: &str,
    ports: &[(i32, &str, &str)],
) -> Service {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    let mut svc = service(ns, name, cluster_ip, 0, "");
    svc.spec.as_mut().unwrap().ports = Some(
        ports
            .iter()
            .map(|(port, proto, port_name)| ServicePort {
                name: Some((*port_name).into()),
                port: *port,
                protocol: Some((*proto).into()),
                ..Default::default()
            })
            .collect(),
    );
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(lb_ip.into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    svc
}

fn service_and_port(e: &Endpoint) -> (String, Option<String>) {
    match e {
        Endpoint::Service {
            namespace,
            name,
            port,
            ..
        } => (format!("{namespace}/{name}"), port.clone()),
        other => panic!("expected a service, got {other:?}"),
    }
}

#[test]
fn services_sharing_a_load_balancer_ip_are_told_apart_by_port_and_protocol() {
    // MetalLB's allow-shared-ip and k3s ServiceLB give one address to several Services, each
    // with its own ports (DNS over TCP and UDP on port 53 is the classic case).
    let mut inventory = inv(Vec::new());
    inventory.services = vec![
        load_balancer(
            "edge",
            "dns-tcp",
            "10.96.0.30",
            "203.0.113.7",
            &[(53, "TCP", "dns-tcp")],
        ),
        load_balancer(
            "edge",
            "dns-udp",
            "10.96.0.31",
            "203.0.113.7",
            &[(53, "UDP", "dns")],
        ),
        load_balancer(
            "edge",
            "web",
            "10.96.0.32",
            "203.0.113.7",
            &[(443, "TCP", "https")],
        ),
    ];
    let (index, report) = EndpointIndex::build(
        &inventory,
        &OwnerIndex::default(),
        &EnrichOptions::default(),
        0,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let at = |a: &str, proto| service_and_port(&index.resolve(addr(a), proto, 0));
    assert_eq!(
        at("203.0.113.7:443", Protocol::Tcp),
        ("edge/web".into(), Some("https".into()))
    );
    assert_eq!(
        at("203.0.113.7:53", Protocol::Tcp),
        ("edge/dns-tcp".into(), Some("dns-tcp".into()))
    );
    assert_eq!(
        at("203.0.113.7:53", Protocol::Udp),
        ("edge/dns-udp".into(), Some("dns".into()))
    );
    // the same with a translated destination known
    let e = index.resolve_service(addr("203.0.113.7:443"), None, Protocol::Tcp, 0);
    assert_eq!(
        service_and_port(&e),
        ("edge/web".into(), Some("https".into()))
    );
    // a port no Service declares: the address is still a Service's (the first in inventory
    // order), without a port name
    assert_eq!(
        at("203.0.113.7:8080", Protocol::Tcp),
        ("edge/dns-tcp".into(), None)
    );
    assert_eq!(
        index.stats().service_ips,
        4,
        "three ClusterIPs and one shared address"
    );
}
