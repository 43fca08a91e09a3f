//! Which workload a pod belongs to, from its ownerReferences (pure).
//!
//! A pod's controller owner is one hop from most workloads (StatefulSet, DaemonSet, Job,
//! ReplicationController) but two from a Deployment (Pod → ReplicaSet → Deployment) and from a
//! CronJob (Pod → Job → CronJob). The second hop is read from an [`OwnerIndex`]: the agent
//! watches ReplicaSets and Jobs and keeps only their name and controller owner (about 150 bytes
//! each, no spec or status). When the index does not know the ReplicaSet (snapshot mode, or a
//! ReplicaSet not yet seen), the Deployment is inferred from the naming convention the
//! Deployment controller follows: the ReplicaSet is `<deployment>-<pod-template-hash>` and the
//! pod carries the `pod-template-hash` label.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;

/// The kind of workload that runs a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
    /// A pod with no controller.
    Pod,
    /// A controller flowwatch does not know (e.g. a custom resource); the name is `Kind/name`.
    Other,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Other => "Other",
        }
    }

    /// A workload kind as the CLI names it (`deployment`, see [`super::workloads`]); `None`
    /// for a kind that is no [`WorkloadKind`] (`podtemplate`).
    pub fn from_kind_name(name: &str) -> Option<WorkloadKind> {
        Some(match name {
            "deployment" => WorkloadKind::Deployment,
            "replicaset" => WorkloadKind::ReplicaSet,
            "statefulset" => WorkloadKind::StatefulSet,
            "daemonset" => WorkloadKind::DaemonSet,
            "job" => WorkloadKind::Job,
            "cronjob" => WorkloadKind::CronJob,
            _ => return None,
        })
    }
}

/// A workload: kind and name (in the pod's namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

/// Controller owners (kind, name) by namespace, then name: looked up by borrowed names, so
/// naming the workload of each of 10,000 pods allocates only the answer.
type Owners = HashMap<String, HashMap<String, Option<(String, String)>>>;

/// The controller owner (kind, name) of each ReplicaSet and Job, by (namespace, name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerIndex {
    replica_sets: Owners,
    jobs: Owners,
}

impl OwnerIndex {
    pub fn from_objects<'a>(
        replica_sets: impl IntoIterator<Item = &'a ReplicaSet>,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> OwnerIndex {
        let mut index = OwnerIndex::default();
        for rs in replica_sets {
            insert(&mut index.replica_sets, &rs.metadata);
        }
        for job in jobs {
            insert(&mut index.jobs, &job.metadata);
        }
        index
    }

    pub fn len(&self) -> usize {
        [&self.replica_sets, &self.jobs]
            .iter()
            .flat_map(|owners| owners.values())
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn insert(into: &mut Owners, meta: &ObjectMeta) {
    if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
        let owner = owner_of(meta);
        into.entry(ns.clone())
            .or_default()
            .insert(name.clone(), owner);
    }
}

fn lookup<'a>(owners: &'a Owners, ns: &str, name: &str) -> Option<&'a Option<(String, String)>> {
    owners.get(ns)?.get(name)
}

fn owner_of(meta: &ObjectMeta) -> Option<(String, String)> {
    controller(meta.owner_references.as_deref()?).map(|o| (o.kind.clone(), o.name.clone()))
}

/// The controller owner. Only it manages the object (Kubernetes allows one at most); other
/// owners (`controller` false or unset) only tie its lifetime to theirs for garbage
/// collection, so an object with none has no workload above it.
fn controller(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true))
}

/// The workload of a pod.
pub fn workload_of(pod: &Pod, owners: &OwnerIndex) -> Workload {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let Some(owner) = meta.owner_references.as_deref().and_then(controller) else {
        return Workload {
            kind: WorkloadKind::Pod,
            name: meta.name.clone().unwrap_or_default(),
        };
    };
    let name = owner.name.as_str();
    let workload = |kind, name: &str| Workload {
        kind,
        name: name.to_owned(),
    };
    match owner.kind.as_str() {
        "ReplicaSet" => match lookup(&owners.replica_sets, namespace, name) {
            Some(Some((kind, dep))) if kind == "Deployment" => {
                workload(WorkloadKind::Deployment, dep)
            }
            Some(Some((kind, other))) => Workload {
                kind: WorkloadKind::Other,
                name: format!("{kind}/{other}"),
            },
            Some(None) => workload(WorkloadKind::ReplicaSet, name),
            None => deployment_by_convention(pod, name),
        },
        "Job" => match lookup(&owners.jobs, namespace, name) {
            Some(Some((kind, cron))) if kind == "CronJob" => workload(WorkloadKind::CronJob, cron),
            _ => workload(WorkloadKind::Job, name),
        },
        "StatefulSet" => workload(WorkloadKind::StatefulSet, name),
        "DaemonSet" => workload(WorkloadKind::DaemonSet, name),
        "ReplicationController" => workload(WorkloadKind::ReplicationController, name),
        other => Workload {
            kind: WorkloadKind::Other,
            name: format!("{other}/{name}"),
        },
    }
}

/// `<deployment>-<pod-template-hash>` → Deployment `<deployment>` when the pod's
/// `pod-template-hash` label is that suffix; else the ReplicaSet itself.
fn deployment_by_convention(pod: &Pod, rs: &str) -> Workload {
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    if let Some(hash) = hash {
        if let Some(dep) = rs
            .strip_suffix(hash.as_str())
            .and_then(|r| r.strip_suffix('-'))
        {
            if !dep.is_empty() {
                return Workload {
                    kind: WorkloadKind::Deployment,
                    name: dep.to_owned(),
                };
            }
        }
    }
    Workload {
        kind: WorkloadKind::ReplicaSet,
        name: rs.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(controller),
            ..Default::default()
        }
    }

    fn meta(name: &str, owners: Vec<OwnerReference>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            owner_references: (!owners.is_empty()).then_some(owners),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn pod(owners: Vec<OwnerReference>, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: meta("p", owners, labels),
            ..Default::default()
        }
    }

    fn w(kind: WorkloadKind, name: &str) -> Workload {
        Workload {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn deployment_through_its_replica_set() {
        let rs = ReplicaSet {
            metadata: meta("web-abc", vec![owned("Deployment", "web", true)], &[]),
            ..Default::default()
        };
        let owners = OwnerIndex::from_objects([&rs], []);
        let p = pod(vec![owned("ReplicaSet", "web-abc", true)], &[]);
        assert_eq!(workload_of(&p, &owners), w(WorkloadKind::Deployment, "web"));
    }

    #[test]
    fn deployment_by_naming_convention_when_the_replica_set_is_unknown() {
        let p = pod(
            vec![owned("ReplicaSet", "web-7d9f8c", true)],
            &[("pod-template-hash", "7d9f8c")],
        );
        let none = OwnerIndex::default();
        assert_eq!(workload_of(&p, &none), w(WorkloadKind::Deployment, "web"));
        // without the label, or with another suffix, it stays a ReplicaSet
        let p = pod(vec![owned("ReplicaSet", "web-7d9f8c", true)], &[]);
        assert_eq!(
            workload_of(&p, &none),
            w(WorkloadKind::ReplicaSet, "web-7d9f8c")
        );
        let p = pod(
            vec![owned("ReplicaSet", "web-7d9f8c", true)],
            &[("pod-template-hash", "zzz")],
        );
        assert_eq!(
            workload_of(&p, &none),
            w(WorkloadKind::ReplicaSet, "web-7d9f8c")
        );
    }

    #[test]
    fn a_bare_replica_set_known_to_have_no_owner() {
        let rs = ReplicaSet {
            metadata: meta("web-7d9f8c", vec![], &[]),
            ..Default::default()
        };
        let owners = OwnerIndex::from_objects([&rs], []);
        // the index wins over the convention
        let p = pod(
            vec![owned("ReplicaSet", "web-7d9f8c", true)],
            &[("pod-template-hash", "7d9f8c")],
        );
        assert_eq!(
            workload_of(&p, &owners),
            w(WorkloadKind::ReplicaSet, "web-7d9f8c")
        );
    }

    #[test]
    fn cron_job_through_its_job_and_a_plain_job() {
        let job = Job {
            metadata: meta(
                "backup-2900000",
                vec![owned("CronJob", "backup", true)],
                &[],
            ),
            ..Default::default()
        };
        let owners = OwnerIndex::from_objects([], [&job]);
        let p = pod(vec![owned("Job", "backup-2900000", true)], &[]);
        assert_eq!(workload_of(&p, &owners), w(WorkloadKind::CronJob, "backup"));
        let p = pod(vec![owned("Job", "migrate", true)], &[]);
        assert_eq!(workload_of(&p, &owners), w(WorkloadKind::Job, "migrate"));
    }

    #[test]
    fn one_hop_workloads_bare_pods_and_unknown_controllers() {
        let none = OwnerIndex::default();
        for (kind, expect) in [
            ("StatefulSet", WorkloadKind::StatefulSet),
            ("DaemonSet", WorkloadKind::DaemonSet),
            ("ReplicationController", WorkloadKind::ReplicationController),
        ] {
            let p = pod(vec![owned(kind, "x", true)], &[]);
            assert_eq!(workload_of(&p, &none), w(expect, "x"));
        }
        assert_eq!(
            workload_of(&pod(vec![], &[]), &none),
            w(WorkloadKind::Pod, "p")
        );
        let p = pod(vec![owned("Rollout", "canary", true)], &[]);
        assert_eq!(
            workload_of(&p, &none),
            w(WorkloadKind::Other, "Rollout/canary")
        );
    }

    #[test]
    fn the_controller_owner_wins_over_other_owners() {
        let p = pod(
            vec![
                owned("ConfigMap", "cfg", false),
                owned("StatefulSet", "db", true),
            ],
            &[],
        );
        assert_eq!(
            workload_of(&p, &OwnerIndex::default()),
            w(WorkloadKind::StatefulSet, "db")
        );
    }

    #[test]
    fn owners_that_are_not_the_controller_do_not_make_a_workload() {
        let none = OwnerIndex::default();
        // `controller: false`, or unset (it defaults to false), is not a controller.
        let mut unset = owned("StatefulSet", "db", false);
        unset.controller = None;
        for owners in [vec![owned("StatefulSet", "db", false)], vec![unset]] {
            assert_eq!(
                workload_of(&pod(owners, &[]), &none),
                w(WorkloadKind::Pod, "p")
            );
        }
        // The same for the second hop: a ReplicaSet whose only owner is not its controller
        // is a workload of its own.
        let rs = ReplicaSet {
            metadata: meta("web-abc", vec![owned("Deployment", "web", false)], &[]),
            ..Default::default()
        };
        let owners = OwnerIndex::from_objects([&rs], []);
        let p = pod(vec![owned("ReplicaSet", "web-abc", true)], &[]);
        assert_eq!(
            workload_of(&p, &owners),
            w(WorkloadKind::ReplicaSet, "web-abc")
        );
    }
}
