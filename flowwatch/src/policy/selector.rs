//! Label selectors (`matchLabels` + `matchExpressions`), compiled once and validated the way
//! the API server validates them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use crate::inventory::index::Labels;

/// A compiled label selector. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// `matchLabels`: every pair must be present.
    pairs: Vec<(String, String)>,
    /// `matchExpressions`: every requirement must hold.
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Requirement {
    In(String, Vec<String>),
    /// Also matches objects that do not have the key at all.
    NotIn(String, Vec<String>),
    Exists(String),
    /// Matches objects that do not have the key.
    DoesNotExist(String),
}

/// What is wrong with a selector, relative to the selector's own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// The path below the selector, e.g. `matchExpressions[1].operator`.
    pub field: String,
    pub message: String,
}

impl Selector {
    /// The selector that selects everything (`{}`, or a missing `podSelector` in a spec).
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn compile(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let pairs = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut requirements = Vec::new();
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let values = expr.values.clone().unwrap_or_default();
            let err = |field: &str, message: String| SelectorError {
                field: format!("matchExpressions[{i}].{field}"),
                message,
            };
            if expr.key.is_empty() {
                return Err(err("key", "must not be empty".into()));
            }
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(err(
                        "values",
                        format!("must be non-empty for operator {}", expr.operator),
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(err(
                        "values",
                        format!("must be empty for operator {}", expr.operator),
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(err(
                        "operator",
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            requirements.push(requirement);
        }
        Ok(Selector {
            pairs,
            requirements,
        })
    }

    /// True when the selector selects every object (no constraint at all).
    pub fn is_everything(&self) -> bool {
        self.pairs.is_empty() && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.pairs
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| {
                values
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect()
            }),
        }
    }

    fn compile(exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::compile(&LabelSelector {
            match_expressions: Some(exprs),
            match_labels: None,
        })
        .unwrap()
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = Selector::compile(&LabelSelector::default()).unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = Selector::compile(&LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "front")])),
            match_expressions: None,
        })
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn operators_follow_the_api_semantics() {
        let in_ = compile(vec![expr("env", "In", &["a", "b"])]);
        assert!(in_.matches(&labels(&[("env", "a")])));
        assert!(!in_.matches(&labels(&[("env", "c")])));
        assert!(!in_.matches(&labels(&[])));

        let not_in = compile(vec![expr("env", "NotIn", &["a"])]);
        assert!(!not_in.matches(&labels(&[("env", "a")])));
        assert!(not_in.matches(&labels(&[("env", "b")])));
        assert!(not_in.matches(&labels(&[])), "NotIn matches a missing key");

        let exists = compile(vec![expr("env", "Exists", &[])]);
        assert!(exists.matches(&labels(&[("env", "")])));
        assert!(!exists.matches(&labels(&[])));

        let absent = compile(vec![expr("env", "DoesNotExist", &[])]);
        assert!(absent.matches(&labels(&[])));
        assert!(!absent.matches(&labels(&[("env", "x")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = Selector::compile(&LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![expr("env", "NotIn", &["prod"])]),
        })
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let bad = |e| {
            Selector::compile(&LabelSelector {
                match_expressions: Some(vec![expr("k", "In", &["v"]), e]),
                match_labels: None,
            })
            .unwrap_err()
        };
        let e = bad(expr("k", "Equals", &["v"]));
        assert_eq!(e.field, "matchExpressions[1].operator");
        assert!(e.message.contains("Equals"));
        assert_eq!(
            bad(expr("k", "In", &[])).field,
            "matchExpressions[1].values"
        );
        assert_eq!(
            bad(expr("k", "Exists", &["v"])).field,
            "matchExpressions[1].values"
        );
        assert_eq!(
            bad(expr("", "Exists", &[])).field,
            "matchExpressions[1].key"
        );
    }
}
