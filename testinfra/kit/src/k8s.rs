//! Helpers shared by the `k8s_*` test targets: object builders and "eventually" waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::k8s::{ClusterView, ClusterWatch, WatchOptions};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The bound the issue sets for following a change.
pub const FOLLOW: Duration = Duration::from_secs(2);

/// Starts the watchers and waits for the first complete view.
pub async fn watch(client: Client, cancel: &CancellationToken) -> ClusterWatch {
    watch_with(client, WatchOptions::default(), cancel).await
}

pub async fn watch_with(
    client: Client,
    opts: WatchOptions,
    cancel: &CancellationToken,
) -> ClusterWatch {
    let w = ClusterWatch::start(client, opts, cancel.clone());
    assert!(
        w.wait_synced(Duration::from_secs(20)).await,
        "caches did not sync: {:?}",
        w.status().report()
    );
    w
}

/// Waits until `pred` holds for the published view; returns how long it took. Panics after
/// `timeout`, naming `what`.
pub async fn eventually(
    w: &ClusterWatch,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ClusterView) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut rx = w.subscribe();
    loop {
        let view: Arc<ClusterView> = rx.borrow_and_update().clone();
        if pred(&view) {
            return start.elapsed();
        }
        let left = timeout.saturating_sub(start.elapsed());
        assert!(
            !(left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err()),
            "{what}: not seen within {timeout:?} (generation {}, {:?}, owners {}, status {:?})",
            w.current().generation,
            flowwatch::k8s::counts(&w.current()),
            w.current().owners.len(),
            w.status().report()
        );
    }
}

pub fn pod_in<'a>(view: &'a ClusterView, ns: &str, name: &str) -> Option<&'a Pod> {
    view.inventory.pods.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
    })
}

pub fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

pub async fn create_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

pub async fn create_node(client: &Client, name: &str, ip: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}})),
    )
    .await
    .unwrap();
}

/// A pod scheduled to `node` with `ip` set through the status subresource, as a kubelet does.
pub async fn create_pod(
    client: &Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    owner: Option<serde_json::Value>,
    node: &str,
    ip: &str,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut meta = json!({"name": name, "labels": labels});
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    set_pod_ip(client, ns, name, ip).await
}

pub async fn set_pod_ip(client: &Client, ns: &str, name: &str, ip: &str) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap()
}

/// Deletes a pod at once (no kubelet runs to finish a graceful deletion).
pub async fn delete_pod(client: &Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.delete(
        name,
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

pub fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> serde_json::Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true})
}

/// The agent's RBAC objects as `deploy/` ships them.
pub struct Rbac {
    pub source: String,
    pub service_account: Option<ServiceAccount>,
    pub cluster_role: ClusterRole,
    pub binding: ClusterRoleBinding,
}

/// From the rendered `deploy/manifests/flowwatch.yaml` when it exists, else from the chart's
/// `templates/rbac.yaml` with its few template expressions substituted.
pub fn load_rbac() -> Rbac {
    let root = crate::paths::repo();
    let rendered = root.join("deploy/manifests/flowwatch.yaml");
    let (source, text) = if rendered.is_file() {
        let text = std::fs::read_to_string(&rendered).unwrap();
        (rendered.display().to_string(), text)
    } else {
        let template = root.join("deploy/helm/flowwatch/templates/rbac.yaml");
        let mut raw = std::fs::read_to_string(&template).unwrap();
        // template comments: {{- /* ... */}}
        while let Some(start) = raw.find("{{- /*") {
            let end = raw[start..]
                .find("*/}}")
                .map_or(raw.len(), |e| start + e + 4);
            raw.replace_range(start..end, "");
        }
        // The few template expressions of rbac.yaml, as `helm template flowwatch -n flowwatch`
        // would render them with serviceAccount.create=true.
        let text: String = raw
            .replace("{{ include \"flowwatch.fullname\" . }}", "flowwatch")
            .replace(
                "{{ include \"flowwatch.serviceAccountName\" . }}",
                "flowwatch",
            )
            .replace("{{ .Release.Namespace }}", "flowwatch")
            .lines()
            .filter(|l| !l.trim_start().starts_with("{{"))
            .flat_map(|l| [l, "\n"])
            .collect();
        let text = text
            .split("\n---")
            .map(|doc| {
                // `labels:` lost its helper-rendered body
                doc.replace("  labels:\n", "")
            })
            .collect::<Vec<_>>()
            .join("\n---");
        assert!(
            !text.contains("{{"),
            "{}: unrendered template left: {text}",
            template.display()
        );
        (template.display().to_string(), text)
    };
    let mut service_account = None;
    let mut cluster_role = None;
    let mut binding = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => panic!("{source}: {e}"),
        };
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match value["kind"].as_str() {
            Some("ServiceAccount") => {
                service_account = Some(serde_json::from_value(value).unwrap());
            }
            Some("ClusterRole") if name.contains("flowwatch") => {
                assert!(
                    cluster_role.is_none(),
                    "{source}: more than one flowwatch ClusterRole"
                );
                cluster_role = Some(serde_json::from_value(value).unwrap());
            }
            Some("ClusterRoleBinding") if name.contains("flowwatch") => {
                binding = Some(serde_json::from_value(value).unwrap());
            }
            _ => {}
        }
    }
    Rbac {
        cluster_role: cluster_role.unwrap_or_else(|| panic!("{source}: no ClusterRole")),
        binding: binding.unwrap_or_else(|| panic!("{source}: no ClusterRoleBinding")),
        service_account,
        source,
    }
}

/// Creates the shipped ServiceAccount, ClusterRole and ClusterRoleBinding (and the
/// ServiceAccount's namespace); returns (namespace, service account name).
pub async fn apply_shipped_rbac(admin: &Client) -> (String, String) {
    let rbac = load_rbac();
    let subject = rbac.binding.subjects.clone().unwrap().remove(0);
    let ns = subject.namespace.clone().expect("subject namespace");
    let name = subject.name.clone();
    if ns != "default" {
        create_namespace(admin, &ns, json!({})).await;
    }
    let sa = rbac.service_account.clone().unwrap_or_else(|| {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap()
    });
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &rbac.cluster_role)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &rbac.binding)
        .await
        .unwrap();
    (ns, name)
}

/// The CRD manifests of `flowwatch/tests/fixtures/crds`, by file name.
pub const CLUSTER_NETWORK_POLICY_CRD: &str = "clusternetworkpolicies.v1alpha2.yaml";
pub const ADMIN_NETWORK_POLICY_CRDS: &str = "adminnetworkpolicies.v1alpha1.yaml";
pub const CILIUM_NETWORK_POLICY_CRD: &str = "ciliumnetworkpolicies.yaml";

/// Creates the CRDs of a fixture file and waits until the API server serves them (their
/// `Established` condition, then the resource in discovery). Returns their names.
pub async fn install_crds(client: &Client, file: &str) -> Vec<String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = crate::paths::package()
        .join("tests/fixtures/crds")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let created = api
            .create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        names.push(created.metadata.name.unwrap_or_default());
    }
    for name in &names {
        let start = Instant::now();
        loop {
            let crd = api.get(name).await.unwrap();
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "CRD {name} not established"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    names
}

/// Deletes a CRD (and so every object of its kind) and waits until it is gone.
pub async fn delete_crd(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let start = Instant::now();
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "CRD {name} not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a custom object (cluster-scoped when the JSON has no namespace) from its JSON.
pub async fn create_custom(client: &Client, plural: &str, object: serde_json::Value) {
    let obj: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
    let types = obj.types.clone().expect("apiVersion and kind");
    let (group, version) = types.api_version.split_once('/').expect("group/version");
    let ar = kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: types.api_version.clone(),
        kind: types.kind.clone(),
        plural: plural.into(),
    };
    let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", types.kind, obj.metadata.name));
}
