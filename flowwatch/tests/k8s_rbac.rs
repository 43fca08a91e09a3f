//! The agent runs with the ServiceAccount and ClusterRole that `deploy/` ships: this proves
//! against a real kube-apiserver (RBAC on) that they are enough for every watch, and that they
//! grant nothing more than get/list/watch on what the agent reads (no secrets, no writes, no
//! subresources).
//!
//! The RBAC objects come from the rendered `deploy/manifests/flowwatch.yaml` when it exists,
//! else from `deploy/helm/flowwatch/templates/rbac.yaml` with its few template expressions
//! substituted.

use std::collections::BTreeSet;

use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::load_rbac;
use flowwatch_testkit::privileged;
use futures::{stream, StreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What the agent must be able to read: (group, resource).
const READS: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "namespaces"),
    ("", "nodes"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    // the optional kinds, read while served
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
    ("policy.networking.k8s.io", "adminnetworkpolicies"),
    ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
    ("cilium.io", "ciliumnetworkpolicies"),
    ("cilium.io", "ciliumclusterwidenetworkpolicies"),
    ("projectcalico.org", "networkpolicies"),
    ("projectcalico.org", "globalnetworkpolicies"),
    ("crd.projectcalico.org", "networkpolicies"),
    ("crd.projectcalico.org", "globalnetworkpolicies"),
    ("crd.antrea.io", "networkpolicies"),
    ("crd.antrea.io", "clusternetworkpolicies"),
];
const READ_VERBS: &[&str] = &["get", "list", "watch"];

#[test]
fn the_shipped_cluster_role_only_reads_what_the_agent_watches() {
    let rbac = load_rbac();
    let rules = rbac.cluster_role.rules.as_deref().unwrap_or_default();
    let mut granted = BTreeSet::new();
    for rule in rules {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert!(
            verbs.iter().all(|v| READ_VERBS.contains(v)),
            "{}: a rule grants more than get/list/watch: {rule:?}",
            rbac.source
        );
        assert!(
            rule.non_resource_urls.is_none(),
            "{}: non-resource URLs",
            rbac.source
        );
        assert!(
            rule.resource_names.is_none(),
            "{}: resourceNames",
            rbac.source
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                assert!(
                    READS.contains(&(g.as_str(), r.as_str())),
                    "{}: grants {g}/{r}, which the agent does not read",
                    rbac.source
                );
                granted.insert((g.clone(), r.clone()));
            }
        }
    }
    assert_eq!(granted.len(), READS.len(), "{}: {granted:?}", rbac.source);
    let subject = &rbac.binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(
        rbac.binding.role_ref.name,
        rbac.cluster_role.metadata.name.clone().unwrap()
    );
}

async fn allowed(
    admin: &Client,
    user: &str,
    groups: &[String],
    verb: &str,
    group: &str,
    resource: &str,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (resource.to_owned(), None),
    };
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let out = api.create(&PostParams::default(), &sar).await.unwrap();
    out.status.is_some_and(|s| s.allowed)
}

/// Every (group, resource or resource/subresource, verb) the server offers.
async fn everything(admin: &Client) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lists = vec![(
        String::new(),
        admin.list_core_api_resources("v1").await.unwrap(),
    )];
    for g in admin.list_api_groups().await.unwrap().groups {
        if let Some(v) = g.preferred_version {
            lists.push((
                g.name.clone(),
                admin
                    .list_api_group_resources(&v.group_version)
                    .await
                    .unwrap(),
            ));
        }
    }
    for (group, list) in lists {
        for r in list.resources {
            for verb in &r.verbs {
                out.push((group.clone(), r.name.clone(), verb.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_service_account_is_enough_and_nothing_more() {
    if !privileged::require("k8s RBAC least privilege", ApiServer::available()) {
        return;
    }
    let rbac = load_rbac();
    let api = ApiServer::start().await;
    let admin = api.admin_client().await;

    let subject = rbac.binding.subjects.clone().unwrap().remove(0);
    let ns = subject.namespace.clone().expect("subject namespace");
    let sa_name = subject.name.clone();
    if ns != "default" {
        flowwatch_testkit::k8s::create_namespace(&admin, &ns, json!({})).await;
    }
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa = rbac.service_account.clone().unwrap_or_else(|| {
        serde_json::from_value(json!({"metadata": {"name": sa_name, "namespace": ns}})).unwrap()
    });
    sas.create(&PostParams::default(), &sa).await.unwrap();
    // the baseline: another service account with no binding (what every authenticated
    // identity gets from the default roles)
    let other: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "baseline", "namespace": ns}})).unwrap();
    sas.create(&PostParams::default(), &other).await.unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &rbac.cluster_role)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &rbac.binding)
        .await
        .unwrap();

    // The cluster policy and a CNI policy CRD are served: their watches need the role too.
    for crds in [
        flowwatch_testkit::k8s::CLUSTER_NETWORK_POLICY_CRD,
        flowwatch_testkit::k8s::ADMIN_NETWORK_POLICY_CRDS,
        flowwatch_testkit::k8s::CILIUM_NETWORK_POLICY_CRD,
    ] {
        flowwatch_testkit::k8s::install_crds(&admin, crds).await;
    }

    // Enough: every watch of the agent syncs with the service account's token.
    let agent = api.client_for_service_account(&ns, &sa_name).await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let w = flowwatch_testkit::k8s::watch(agent.clone(), &cancel).await;
    assert!(w.status().is_synced(), "{:?}", w.status().report());
    assert_eq!(w.status().watch_errors(), 0, "{:?}", w.status().report());
    for kind in [
        flowwatch::k8s::Kind::ClusterNetworkPolicy,
        flowwatch::k8s::Kind::AdminNetworkPolicy,
        flowwatch::k8s::Kind::BaselineAdminNetworkPolicy,
        flowwatch::k8s::Kind::CiliumNetworkPolicy,
    ] {
        assert!(w.status().is_active(kind), "{kind:?} not watched");
    }
    flowwatch_testkit::k8s::create_namespace(&admin, "shop", json!({})).await;
    flowwatch_testkit::k8s::create_pod(
        &admin,
        "shop",
        "web",
        json!({}),
        None,
        "node-a",
        "10.244.0.9",
    )
    .await;
    flowwatch_testkit::k8s::eventually(
        &w,
        flowwatch_testkit::k8s::FOLLOW,
        "pod seen with the agent's identity",
        |v| flowwatch_testkit::k8s::pod_in(v, "shop", "web").is_some(),
    )
    .await;

    // Nothing more, with real requests: no secrets, no writes.
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), "shop");
    let err = secrets
        .list(&kube::api::ListParams::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    let nss: Api<Namespace> = Api::all(agent.clone());
    let ns_obj: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let err = nss
        .create(&PostParams::default(), &ns_obj)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");

    // Nothing more, exhaustively: for every resource, subresource and verb the server offers,
    // the agent is allowed exactly what the baseline is, plus get/list/watch on READS.
    let groups = || {
        vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_owned(),
        ]
    };
    let agent_user = format!("system:serviceaccount:{ns}:{sa_name}");
    let base_user = format!("system:serviceaccount:{ns}:baseline");
    let (agent_groups, base_groups) = (groups(), groups());
    let all = everything(&admin).await;
    assert!(
        all.len() > 100,
        "discovery found only {} entries",
        all.len()
    );
    let checks = stream::iter(all.iter().cloned())
        .map(|(group, resource, verb)| {
            let admin = admin.clone();
            let (au, ag, bu, bg) = (&agent_user, &agent_groups, &base_user, &base_groups);
            async move {
                let a = allowed(&admin, au, ag, &verb, &group, &resource).await;
                let b = allowed(&admin, bu, bg, &verb, &group, &resource).await;
                (group, resource, verb, a, b)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut extra = BTreeSet::new();
    for (group, resource, verb, agent_ok, base_ok) in checks {
        if agent_ok && !base_ok {
            extra.insert((group, resource, verb));
        }
    }
    // Only what this server serves can be checked: the core kinds and the CRDs installed above.
    let served: BTreeSet<(&str, &str)> = all
        .iter()
        .map(|(g, r, _)| (g.as_str(), r.as_str()))
        .collect();
    let expected: BTreeSet<(String, String, String)> = READS
        .iter()
        .filter(|gr| served.contains(*gr))
        .flat_map(|(g, r)| {
            READ_VERBS
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(
        extra, expected,
        "{}: the agent's identity is granted exactly get/list/watch on what it reads",
        rbac.source
    );
    eprintln!(
        "RBAC from {}: {} (resource, verb) pairs checked; extra grants = {}",
        rbac.source,
        all.len(),
        expected.len()
    );
}
