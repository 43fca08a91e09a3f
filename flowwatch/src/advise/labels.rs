//! Which labels select a workload's pods (pure).
//!
//! Only labels the workload's author set and every replica keeps: controllers add labels that
//! change with each rollout or name one pod or one run (`pod-template-hash`,
//! `controller-revision-hash`, `job-name`, ...), and a selector on them would stop matching
//! the next replica. Of the stable labels, the fewest that tell the workload apart from the
//! other workloads of its namespace, preferring the conventional identity labels.

use super::cluster::Labels;

/// Labels a controller sets per revision, per pod or per run.
const UNSTABLE: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "job-name",
    "controller-uid",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// Prefixes of labels a controller sets (`batch.kubernetes.io/job-name`,
/// `batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-completion-index`).
const UNSTABLE_PREFIXES: &[&str] = &["batch.kubernetes.io/"];

/// The identity labels, most preferred first; other labels follow in key order.
const PREFERRED: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app",
    "k8s-app",
    "name",
    "component",
    "tier",
    "role",
];

/// Whether a label key is the author's and kept by every replica.
pub fn is_stable(key: &str) -> bool {
    !UNSTABLE.contains(&key) && !UNSTABLE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The stable labels of a label set.
pub fn stable(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| is_stable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `selector` (matchLabels) selects a pod with `labels`.
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The labels chosen for a workload, and the other workloads they select too (when no
/// subset of its stable labels tells them apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub labels: Labels,
    pub also_selects: Vec<String>,
}

/// Chooses the labels of `labels` (a workload's stable labels) that select none of `others`
/// (the other workloads of its namespace: a name and the label sets of its pods) if any
/// subset can: a single label when one suffices (the most preferred), else labels added in
/// order of preference while they exclude another workload.
pub fn choose(labels: &Labels, others: &[(String, &[Labels])]) -> Choice {
    let mut keys: Vec<&String> = PREFERRED
        .iter()
        .filter_map(|p| labels.get_key_value(*p).map(|(k, _)| k))
        .collect();
    keys.extend(labels.keys().filter(|k| !PREFERRED.contains(&k.as_str())));
    let matching = |selector: &Labels, among: &[(String, &[Labels])]| -> Vec<usize> {
        (0..among.len())
            .filter(|&i| among[i].1.iter().any(|set| selects(selector, set)))
            .collect()
    };
    let one = |k: &String| -> Labels { [(k.clone(), labels[k].clone())].into() };
    if let Some(k) = keys.iter().find(|k| matching(&one(k), others).is_empty()) {
        return Choice {
            labels: one(k),
            also_selects: Vec::new(),
        };
    }
    let mut chosen = Labels::new();
    let mut remaining: Vec<(String, &[Labels])> = others.to_vec();
    for k in keys {
        let mut with = chosen.clone();
        with.insert(k.clone(), labels[k].clone());
        let still = matching(&with, &remaining);
        if chosen.is_empty() || still.len() < remaining.len() {
            chosen = with;
            remaining = still.into_iter().map(|i| remaining[i].clone()).collect();
        }
        if remaining.is_empty() {
            break;
        }
    }
    let mut also_selects: Vec<String> = remaining.into_iter().map(|(name, _)| name).collect();
    also_selects.sort();
    Choice {
        labels: chosen,
        also_selects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn controller_labels_are_never_chosen() {
        for key in [
            "pod-template-hash",
            "controller-revision-hash",
            "job-name",
            "controller-uid",
            "batch.kubernetes.io/job-name",
            "batch.kubernetes.io/controller-uid",
            "statefulset.kubernetes.io/pod-name",
        ] {
            assert!(!is_stable(key), "{key}");
        }
        let job = stable(&labels(&[
            ("job-name", "migrate-28"),
            ("controller-uid", "u"),
            ("batch.kubernetes.io/job-name", "migrate-28"),
            ("app", "migrate"),
        ]));
        assert_eq!(job, labels(&[("app", "migrate")]));
    }

    #[test]
    fn one_label_when_it_suffices_the_most_preferred_first() {
        let web = labels(&[("app", "web"), ("tier", "frontend"), ("zone", "a")]);
        let api = [labels(&[("app", "api"), ("tier", "backend")])];
        let c = choose(&web, &[("shop/deployment/api".into(), &api)]);
        assert_eq!(c.labels, labels(&[("app", "web")]));
        assert!(c.also_selects.is_empty());
        // CoreDNS labelled only `k8s-app=kube-dns`: that label, whatever else is assumed.
        let dns = labels(&[("k8s-app", "kube-dns")]);
        assert_eq!(choose(&dns, &[]).labels, dns);
    }

    #[test]
    fn labels_are_added_until_the_others_are_told_apart_or_reported() {
        let a = labels(&[("app", "shop"), ("component", "web")]);
        let b = [labels(&[("app", "shop"), ("component", "api")])];
        let c = [labels(&[("app", "other"), ("component", "web")])];
        let choice = choose(&a, &[("b".into(), &b), ("c".into(), &c)]);
        assert_eq!(choice.labels, a);
        assert!(choice.also_selects.is_empty());
        // Identical labels: nothing tells them apart, and that is said.
        let twin = [a.clone()];
        let choice = choose(&a, &[("twin".into(), &twin)]);
        assert_eq!(choice.also_selects, ["twin"]);
        // No stable label at all: every pod of the namespace.
        let choice = choose(&Labels::new(), &[("b".into(), &b)]);
        assert!(choice.labels.is_empty());
        assert_eq!(choice.also_selects, ["b"]);
    }
}
