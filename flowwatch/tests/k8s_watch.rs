//! The watchers against a real kube-apiserver: the inventory follows every change within 2 s,
//! and the enrichment index built from it names pods, workloads, nodes and services.

use std::time::Instant;

use flowwatch::enrich::{Endpoint, EndpointIndex, EnrichOptions, WorkloadKind};
use flowwatch::model::Protocol;
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::privileged;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn available(what: &str) -> bool {
    privileged::require(what, ApiServer::available())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_follows_creates_relabels_and_deletes_within_two_seconds() {
    if !available("k8s inventory follows changes") {
        return;
    }
    let api = ApiServer::start().await;
    let client = api.admin_client().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let w = watch(client.clone(), &cancel).await;
    assert!(w.status().is_synced());
    assert!(!w.status().is_stale());

    let mut took = Vec::new();
    // namespace
    create_namespace(&client, "shop", json!({"team": "a"})).await;
    took.push(
        eventually(&w, FOLLOW, "namespace created", |v| {
            v.inventory
                .namespaces
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("shop"))
        })
        .await,
    );
    // node
    create_node(&client, "node-a", "192.168.77.10").await;
    took.push(
        eventually(&w, FOLLOW, "node with its address", |v| {
            v.inventory.nodes.iter().any(|n| {
                n.metadata.name.as_deref() == Some("node-a")
                    && n.status
                        .as_ref()
                        .and_then(|s| s.addresses.as_ref())
                        .is_some_and(|a| a[0].address == "192.168.77.10")
            })
        })
        .await,
    );
    // pod create, with its IP set through the status subresource
    create_pod(
        &client,
        "shop",
        "web-1",
        json!({"app": "web"}),
        None,
        "node-a",
        "10.244.1.5",
    )
    .await;
    took.push(
        eventually(&w, FOLLOW, "pod with its IP", |v| {
            pod_in(v, "shop", "web-1").is_some_and(|p| {
                p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some("10.244.1.5")
            })
        })
        .await,
    );
    // the stored pod is trimmed
    let view = w.current();
    let stored = pod_in(&view, "shop", "web-1").unwrap();
    assert!(stored.metadata.managed_fields.is_none());
    let container = &stored.spec.as_ref().unwrap().containers[0];
    assert!(container.image.is_none(), "image is not kept");
    assert_eq!(
        container.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("http")
    );

    // relabel the pod
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "shop");
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web-v2"}}})),
    )
    .await
    .unwrap();
    took.push(
        eventually(&w, FOLLOW, "pod relabeled", |v| {
            pod_in(v, "shop", "web-1").is_some_and(|p| label(p, "app") == Some("web-v2"))
        })
        .await,
    );
    // relabel the namespace
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await
    .unwrap();
    took.push(
        eventually(&w, FOLLOW, "namespace relabeled", |v| {
            v.inventory.namespaces.iter().any(|n| {
                n.metadata.name.as_deref() == Some("shop")
                    && n.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("team"))
                        .map(String::as_str)
                        == Some("b")
            })
        })
        .await,
    );
    // add and remove a policy
    let netpols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "shop");
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny-web"},
        "spec": {"podSelector": {"matchLabels": {"app": "web-v2"}}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    netpols.create(&PostParams::default(), &np).await.unwrap();
    took.push(
        eventually(&w, FOLLOW, "policy added", |v| {
            v.inventory
                .network_policies
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some("deny-web"))
        })
        .await,
    );
    netpols
        .delete("deny-web", &DeleteParams::default())
        .await
        .unwrap();
    took.push(
        eventually(&w, FOLLOW, "policy removed", |v| {
            v.inventory.network_policies.is_empty()
        })
        .await,
    );
    // service + endpoint slice
    let svcs: Api<Service> = Api::namespaced(client.clone(), "shop");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web-v2"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    took.push(
        eventually(&w, FOLLOW, "service with its ClusterIP", |v| {
            v.inventory.services.iter().any(|s| {
                s.metadata.name.as_deref() == Some("web")
                    && s.spec
                        .as_ref()
                        .and_then(|s| s.cluster_ip.as_deref())
                        .is_some()
            })
        })
        .await,
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    took.push(
        eventually(&w, FOLLOW, "endpoint slice", |v| {
            v.inventory.endpoint_slices.len() == 1
        })
        .await,
    );
    // delete the pod
    delete_pod(&client, "shop", "web-1").await;
    took.push(
        eventually(&w, FOLLOW, "pod deleted", |v| {
            pod_in(v, "shop", "web-1").is_none()
        })
        .await,
    );

    assert!(!w.status().is_stale());
    assert_eq!(w.status().rejected(), 0);
    let worst = took.iter().max().unwrap();
    eprintln!(
        "inventory followed {} changes; slowest {worst:?}; all {took:?}",
        took.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_ends_are_named_from_the_live_cluster() {
    if !available("k8s enrichment from the live cluster") {
        return;
    }
    let api = ApiServer::start().await;
    let client = api.admin_client().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let w = watch(client.clone(), &cancel).await;
    let t0 = Instant::now();
    let now = || t0.elapsed().as_nanos() as u64;

    create_namespace(&client, "shop", json!({})).await;
    create_node(&client, "node-a", "192.168.77.10").await;

    // Deployment -> ReplicaSet -> Pod, with ownerReferences as the controllers write them
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}});
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let dep = deps.create(&PostParams::default(), &dep).await.unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "shop");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-5c7b9", "ownerReferences": [owner("apps/v1", "Deployment", "web",
            dep.metadata.uid.as_deref().unwrap())]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
    // no pod-template-hash label: only the ReplicaSet watch can name the Deployment
    create_pod(
        &client,
        "shop",
        "web-5c7b9-x1",
        json!({"app": "web", "tier": "front"}),
        Some(owner(
            "apps/v1",
            "ReplicaSet",
            "web-5c7b9",
            rs.metadata.uid.as_deref().unwrap(),
        )),
        "node-a",
        "10.244.1.5",
    )
    .await;

    // CronJob -> Job -> Pod
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), "shop");
    let job_template = json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "c", "image": "registry.invalid/c:1"}]}}}});
    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "backup"},
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": job_template}
    }))
    .unwrap();
    let cj = cjs.create(&PostParams::default(), &cj).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    let mut job: Job = serde_json::from_value(json!({
        "metadata": {"name": "backup-29000000", "ownerReferences": [owner("batch/v1", "CronJob", "backup",
            cj.metadata.uid.as_deref().unwrap())]},
        "spec": job_template["spec"]
    }))
    .unwrap();
    job.metadata.labels = None;
    let job = jobs.create(&PostParams::default(), &job).await.unwrap();
    create_pod(
        &client,
        "shop",
        "backup-29000000-abcde",
        json!({}),
        Some(owner(
            "batch/v1",
            "Job",
            "backup-29000000",
            job.metadata.uid.as_deref().unwrap(),
        )),
        "node-a",
        "10.244.1.6",
    )
    .await;
    // StatefulSet pod and a bare pod
    create_pod(
        &client,
        "shop",
        "db-0",
        json!({}),
        Some(owner("apps/v1", "StatefulSet", "db", "uid-db")),
        "node-a",
        "10.244.1.7",
    )
    .await;
    create_pod(
        &client,
        "shop",
        "debug",
        json!({}),
        None,
        "node-a",
        "10.244.1.8",
    )
    .await;
    // a Service in front of the web pod
    let svcs: Api<Service> = Api::namespaced(client.clone(), "shop");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();

    eventually(&w, FOLLOW, "all objects", |v| {
        let with_ip = v
            .inventory
            .pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
        with_ip.count() == 4
            && v.owners.len() >= 2
            && v.inventory
                .services
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some("web"))
    })
    .await;

    let opts = EnrichOptions {
        label_allowlist: vec!["tier".into()],
        named_networks: vec!["corp=172.20.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let view = w.current();
    let (mut index, report) = EndpointIndex::build(&view.inventory, &view.owners, &opts, now());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let at = now();
    let resolve = |ip: &str, port: u16| {
        index.resolve(format!("{ip}:{port}").parse().unwrap(), Protocol::Tcp, at)
    };
    let workload = |e: &Endpoint| {
        let p = e.pod().unwrap_or_else(|| panic!("not a pod: {e:?}"));
        (p.workload_kind, p.workload_name.clone())
    };
    let web = resolve("10.244.1.5", 8080);
    assert_eq!(workload(&web), (WorkloadKind::Deployment, "web".into()));
    let p = web.pod().unwrap();
    assert_eq!(p.node.as_deref(), Some("node-a"));
    assert_eq!(p.labels.len(), 1, "only the allowlisted label");
    assert_eq!(p.labels["tier"], "front");
    assert_eq!(
        workload(&resolve("10.244.1.6", 1)),
        (WorkloadKind::CronJob, "backup".into())
    );
    assert_eq!(
        workload(&resolve("10.244.1.7", 1)),
        (WorkloadKind::StatefulSet, "db".into())
    );
    assert_eq!(
        workload(&resolve("10.244.1.8", 1)),
        (WorkloadKind::Pod, "debug".into())
    );
    assert_eq!(
        resolve("192.168.77.10", 22),
        Endpoint::Node {
            name: "node-a".into()
        }
    );
    assert!(matches!(
        resolve("172.20.1.1", 443),
        Endpoint::External { ref network, .. } if network.as_deref() == Some("corp")
    ));
    // ClusterIP -> the backend that served the connection (the translated destination that
    // kube-proxy's DNAT produced, as conntrack reports it)
    let through = index.resolve_service(
        format!("{cluster_ip}:80").parse().unwrap(),
        Some("10.244.1.5:8080".parse().unwrap()),
        Protocol::Tcp,
        at,
    );
    match &through {
        Endpoint::Service {
            name,
            port,
            backend,
            ..
        } => {
            assert_eq!(name, "web");
            assert_eq!(port.as_deref(), Some("http"));
            assert_eq!(
                backend
                    .as_ref()
                    .and_then(|b| b.pod())
                    .map(|p| p.name.as_str()),
                Some("web-5c7b9-x1")
            );
        }
        other => panic!("expected the service, got {other:?}"),
    }

    // IP reuse through the API: the web pod goes, a new pod gets its address
    let before_delete = now();
    delete_pod(&client, "shop", "web-5c7b9-x1").await;
    eventually(&w, FOLLOW, "pod deleted", |v| {
        pod_in(v, "shop", "web-5c7b9-x1").is_none()
    })
    .await;
    let view = w.current();
    index.update(&view.inventory, &view.owners, now());
    create_pod(
        &client,
        "shop",
        "intruder",
        json!({}),
        None,
        "node-a",
        "10.244.1.5",
    )
    .await;
    // the pod is created and then given its IP in a second call, as a kubelet does: wait for
    // the watch to see the address, not just the pod
    eventually(&w, FOLLOW, "new holder with its IP", |v| {
        pod_in(v, "shop", "intruder")
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.pod_ip.as_deref())
            == Some("10.244.1.5")
    })
    .await;
    let view = w.current();
    index.update(&view.inventory, &view.owners, now());
    let ip = "10.244.1.5:8080".parse().unwrap();
    let old = index.resolve(ip, Protocol::Tcp, before_delete);
    assert_eq!(old.pod().map(|p| p.name.as_str()), Some("web-5c7b9-x1"));
    let new = index.resolve(ip, Protocol::Tcp, now());
    assert_eq!(new.pod().map(|p| p.name.as_str()), Some("intruder"));
}
