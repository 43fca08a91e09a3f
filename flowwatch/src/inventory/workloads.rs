//! Workloads as a Git repository holds them (Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! Job, CronJob, PodTemplate), each turned into the one pod that stands for all of its pods
//! (pure).
//!
//! Policies select pods by their labels, namespace and named ports, which the pod template
//! fixes for every replica; a workload is therefore judged as one pod with its template's
//! labels and container ports, in its namespace, with no address and no node. The stand-in
//! is named `kind/name` (`deployment/web`): a `/` is not allowed in a real pod's name, so it
//! never collides with one, and `namespace/kind/name` is how the CLI names it.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::ObjectError;

/// Workload kinds read from snapshots: the object kind, how the CLI names it, and where its
/// pod template is.
const KINDS: &[(&str, &str, &[&str])] = &[
    ("Deployment", "deployment", &["spec", "template"]),
    ("StatefulSet", "statefulset", &["spec", "template"]),
    ("DaemonSet", "daemonset", &["spec", "template"]),
    ("ReplicaSet", "replicaset", &["spec", "template"]),
    ("Job", "job", &["spec", "template"]),
    (
        "CronJob",
        "cronjob",
        &["spec", "jobTemplate", "spec", "template"],
    ),
    ("PodTemplate", "podtemplate", &["template"]),
];

/// The kinds, as the CLI names them (`deployment`, ...), in the order of `KINDS`.
pub fn kind_names() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|(_, slug, _)| *slug)
}

/// The CLI's name of a workload kind (`Deployment` -> `deployment`); `None` for other kinds.
pub fn kind_name(kind: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(kind))
        .map(|(_, slug, _)| *slug)
}

/// Whether `kind` is a workload kind the loader turns into a stand-in pod.
pub fn is_workload_kind(kind: &str) -> bool {
    KINDS.iter().any(|(k, _, _)| *k == kind)
}

/// The stand-in pod's name for a workload: `kind/name`.
pub fn stand_in_name(kind_name: &str, name: &str) -> String {
    format!("{kind_name}/{name}")
}

/// Whether a pod is a workload's stand-in; its (kind, name) when it is.
pub fn stand_in_of(pod_name: &str) -> Option<(&str, &str)> {
    pod_name.split_once('/')
}

/// The pod that stands for a workload object (`map` is the raw object, of kind `kind`).
/// Errors name the object and the field (`spec.template.spec.containers[0].ports[0].containerPort`).
pub fn stand_in(kind: &str, map: &serde_json::Map<String, Value>) -> Result<Pod, ObjectError> {
    let (kind, slug, path) = KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .copied()
        .ok_or_else(|| ObjectError {
            object: kind.to_string(),
            field: Some("kind".into()),
            message: "not a workload kind".into(),
        })?;
    let meta_str = |f: &str| {
        map.get("metadata")
            .and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (namespace, name) = match (meta_str("namespace"), meta_str("name")) {
        (Some(ns), Some(name)) => (ns, name),
        (None, Some(name)) => {
            return Err(ObjectError {
                object: format!("{kind} {name}"),
                field: Some("metadata.namespace".into()),
                message: "missing (set it in the manifest: policies select pods per namespace)"
                    .into(),
            })
        }
        _ => {
            return Err(ObjectError {
                object: format!("{kind} (unnamed)"),
                field: Some("metadata.name".into()),
                message: "missing".into(),
            })
        }
    };
    let object = format!("{kind} {namespace}/{name}");
    let mut template = Some(&Value::Object(map.clone()));
    for segment in path {
        template = template
            .and_then(|v| v.get(*segment))
            .filter(|v| !v.is_null());
    }
    let template_path = path.join(".");
    let Some(template) = template else {
        return Err(ObjectError {
            object,
            field: Some(template_path),
            message: "missing".into(),
        });
    };
    let template: PodTemplateSpec =
        super::decode_field(template.clone()).map_err(|(inner, message)| ObjectError {
            object: object.clone(),
            field: Some(match inner {
                None => template_path.clone(),
                Some(inner) => format!("{template_path}.{inner}"),
            }),
            message,
        })?;
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if kind == "Job" {
        // The Job controller labels its pods with the job's name (and the user cannot set it
        // otherwise), so policies may select them by it.
        labels.insert("job-name".into(), name.to_string());
        labels.insert("batch.kubernetes.io/job-name".into(), name.to_string());
    }
    Ok(Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_string()),
            name: Some(stand_in_name(slug, name)),
            labels: Some(labels),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> serde_json::Map<String, Value> {
        match serde_yaml::from_str::<Value>(yaml).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_deployment_stands_for_its_pods() {
        let pod = stand_in(
            "Deployment",
            &object(
                "kind: Deployment\nmetadata: {namespace: shop, name: web, labels: {ignored: x}}\n\
                 spec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      \
                 containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]\n",
            ),
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("deployment/web"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            pod.metadata.labels.unwrap(),
            [("app".to_string(), "web".to_string())].into()
        );
        let ports = pod.spec.unwrap().containers[0].ports.clone().unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert!(pod.status.is_none(), "a workload has no address");
    }

    #[test]
    fn a_cronjob_template_is_under_its_job_template_and_jobs_get_their_name_label() {
        let pod = stand_in(
            "CronJob",
            &object(
                "metadata: {namespace: ops, name: backup}\nspec:\n  schedule: '@daily'\n  \
                 jobTemplate:\n    spec:\n      template:\n        metadata: {labels: {app: backup}}\n        \
                 spec: {containers: [{name: c}]}\n",
            ),
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("cronjob/backup"));
        assert_eq!(pod.metadata.labels.unwrap()["app"], "backup");
        let job = stand_in(
            "Job",
            &object("metadata: {namespace: ops, name: migrate}\nspec: {template: {spec: {containers: [{name: c}]}}}\n"),
        )
        .unwrap();
        assert_eq!(job.metadata.labels.unwrap()["job-name"], "migrate");
        let template = stand_in(
            "PodTemplate",
            &object(
                "metadata: {namespace: ops, name: t}\ntemplate: {metadata: {labels: {a: b}}}\n",
            ),
        )
        .unwrap();
        assert_eq!(template.metadata.name.as_deref(), Some("podtemplate/t"));
    }

    #[test]
    fn bad_workloads_are_named_with_their_field() {
        let e = stand_in(
            "StatefulSet",
            &object("metadata: {namespace: data, name: db}\nspec: {}\n"),
        )
        .unwrap_err();
        assert_eq!(e.object, "StatefulSet data/db");
        assert_eq!(e.field.as_deref(), Some("spec.template"));
        let e = stand_in(
            "Deployment",
            &object(
                "metadata: {namespace: shop, name: web}\nspec: {template: {spec: {containers: \
                 [{name: c, ports: [{containerPort: high}]}]}}}\n",
            ),
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.template.spec.containers[0].ports[0].containerPort")
        );
        let e = stand_in("DaemonSet", &object("metadata: {name: agent}\n")).unwrap_err();
        assert_eq!(e.object, "DaemonSet agent");
        assert_eq!(e.field.as_deref(), Some("metadata.namespace"));
    }

    #[test]
    fn kinds_are_named_as_the_cli_names_them() {
        assert_eq!(kind_name("StatefulSet"), Some("statefulset"));
        assert_eq!(kind_name("statefulset"), Some("statefulset"));
        assert_eq!(kind_name("Service"), None);
        assert_eq!(stand_in_of("deployment/web"), Some(("deployment", "web")));
        assert_eq!(stand_in_of("web-0"), None);
    }
}
