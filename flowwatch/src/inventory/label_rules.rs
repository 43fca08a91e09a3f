//! Label keys and values checked as the API server checks them, so a snapshot cannot hold an
//! object the cluster would have refused (and a policy cannot select on a label no pod can
//! carry): a key is an optional DNS-subdomain prefix and `/`, then a name of at most 63
//! characters (alphanumerics, `-`, `_`, `.`, starting and ending with an alphanumeric); a value
//! is empty or follows the name rule.

use serde_json::Value;

/// Why `key` is not a valid label key.
pub fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix)
            .map_err(|why| format!("invalid label key {key:?}: prefix {why}"))?;
    }
    check_name(name).map_err(|why| format!("invalid label key {key:?}: name {why}"))
}

/// Why `value` is not a valid label value.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|why| format!("invalid label value {value:?}: {why}"))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "must be at most 63 characters (has {})",
            name.len()
        ));
    }
    let b = name.as_bytes();
    let ok_inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
        || !b.iter().all(ok_inner)
    {
        return Err(
            "must hold only alphanumerics, '-', '_' and '.', and start and end with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("must be at most 253 characters (has {})", s.len()));
    }
    for part in s.split('.') {
        let b = part.as_bytes();
        let ok = !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !ok {
            return Err(format!(
                "{s:?} must be a DNS subdomain (lowercase alphanumerics, '-' and '.')"
            ));
        }
    }
    Ok(())
}

/// A map of labels (`metadata.labels`, `matchLabels`, a Service's `selector`) at `field`.
fn check_map(map: &Value, field: &str) -> Result<(), (String, String)> {
    let Value::Object(map) = map else {
        return Ok(()); // not a map: decoding reports it
    };
    for (k, v) in map {
        check_key(k).map_err(|m| (field.to_string(), m))?;
        if let Value::String(v) = v {
            check_value(v).map_err(|m| (format!("{field}.{k}"), m))?;
        }
    }
    Ok(())
}

/// Every label selector under `v` (`matchLabels`, `matchExpressions`), at `field`.
fn check_selectors(v: &Value, field: &str) -> Result<(), (String, String)> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let path = if field.is_empty() {
                    k.clone()
                } else {
                    format!("{field}.{k}")
                };
                match k.as_str() {
                    "matchLabels" => check_map(child, &path)?,
                    "matchExpressions" => check_expressions(child, &path)?,
                    _ => check_selectors(child, &path)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_selectors(item, &format!("{field}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_expressions(v: &Value, field: &str) -> Result<(), (String, String)> {
    let Value::Array(exprs) = v else {
        return Ok(());
    };
    for (i, e) in exprs.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if let Some(Value::String(key)) = e.get("key") {
            check_key(key).map_err(|m| (format!("{at}.key"), m))?;
        }
        let set_based = matches!(
            e.get("operator").and_then(Value::as_str),
            Some("In" | "NotIn")
        );
        if let (true, Some(Value::Array(values))) = (set_based, e.get("values")) {
            for (j, value) in values.iter().enumerate() {
                if let Value::String(value) = value {
                    check_value(value).map_err(|m| (format!("{at}.values[{j}]"), m))?;
                }
            }
        }
    }
    Ok(())
}

/// The labels and label selectors of an object of `kind` flowwatch uses, checked; the first
/// invalid one as (field, message).
pub fn check_object(
    kind: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<(), (String, String)> {
    if !matches!(
        kind,
        "Namespace" | "Node" | "Pod" | "Service" | "EndpointSlice" | "NetworkPolicy"
    ) {
        return Ok(());
    }
    if let Some(labels) = obj.get("metadata").and_then(|m| m.get("labels")) {
        check_map(labels, "metadata.labels")?;
    }
    let spec = obj.get("spec");
    match (kind, spec) {
        ("NetworkPolicy", Some(spec)) => check_selectors(spec, "spec"),
        ("Service", Some(spec)) => match spec.get("selector") {
            Some(selector) => check_map(selector, "spec.selector"),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_api_server_rules() {
        for good in ["app", "app.kubernetes.io/name", "a", "A_b-c.d", "x.y/Z9"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "bad key!",
            "",
            "-app",
            "app-",
            "Example.com/app",
            "/app",
            "a/",
            "a/b/c",
            &"k".repeat(64),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&format!("{}/a", "p".repeat(254))).is_err());
    }

    #[test]
    fn values_may_be_empty_and_otherwise_follow_the_name_rule() {
        for good in ["", "web", "v1.2_3-x"] {
            assert!(check_value(good).is_ok(), "{good}");
        }
        for bad in ["a b", "-x", &"v".repeat(64), "ünïcode"] {
            assert!(check_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_name_the_field_that_is_wrong() {
        let pod = serde_json::json!({"metadata": {"labels": {"bad key!": "x"}}});
        let (field, message) = check_object("Pod", pod.as_object().unwrap()).unwrap_err();
        assert_eq!(field, "metadata.labels");
        assert!(message.contains("bad key!"), "{message}");
        let np = serde_json::json!({"spec": {"ingress": [{"from": [{"podSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", "not ok"]}]}}]}]}});
        let (field, _) = check_object("NetworkPolicy", np.as_object().unwrap()).unwrap_err();
        assert_eq!(
            field,
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values[1]"
        );
        let cm = serde_json::json!({"metadata": {"labels": {"bad key!": "x"}}});
        assert!(check_object("ConfigMap", cm.as_object().unwrap()).is_ok());
    }
}
