//! The addresses of pods and nodes, and which pod an address belongs to, read one way for
//! both readers of the inventory: the enrichment index (names in records and metrics) and the
//! policy engine (verdicts). Two rules would let a record name one pod while its verdict
//! judged another after an address is reused.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::{object_name, ObjectError};

/// `text` as an address (surrounding spaces ignored, IPv4-mapped IPv6 as IPv4), or an error
/// naming `object` and `field`.
pub fn parse_address(
    text: &str,
    object: impl FnOnce() -> String,
    field: String,
    errors: &mut Vec<ObjectError>,
) -> Option<IpAddr> {
    if let Ok(ip) = text.trim().parse::<IpAddr>() {
        Some(ip.to_canonical())
    } else {
        errors.push(ObjectError {
            object: object(),
            field: Some(field),
            message: format!("{text:?} is not an IP address"),
        });
        None
    }
}

/// A pod's addresses: `status.podIP` (the primary) first, then the rest of `status.podIPs`,
/// each once; an entry that is not an address is reported and skipped.
pub fn pod_addresses(pod: &Pod, errors: &mut Vec<ObjectError>) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let name = || {
        object_name(
            "Pod",
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref().unwrap_or("<unnamed>"),
        )
    };
    let primary = status
        .pod_ip
        .as_deref()
        .map(|ip| ("status.podIP".to_string(), ip));
    let listed = status
        .pod_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()));
    let mut ips = Vec::new();
    let mut read: Vec<&str> = Vec::new();
    for (field, text) in primary.into_iter().chain(listed) {
        // `status.podIPs[0]` repeats `status.podIP`: one address, read (or reported) once.
        if text.trim().is_empty() || read.contains(&text.trim()) {
            continue;
        }
        read.push(text.trim());
        if let Some(ip) = parse_address(text, name, field, errors) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    ips
}

/// A pod that has finished (phase Succeeded or Failed): its status keeps its address, but the
/// address is free for another pod.
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod claiming an address another pod holds takes it over. A pod being deleted
/// (whose replacement may already have its address) never takes it from one that is not;
/// otherwise the later pod in inventory order holds it.
pub fn takes_address(claimant_deleting: bool, holder_deleting: bool) -> bool {
    !claimant_deleting || holder_deleting
}

/// A node's addresses by type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// `InternalIP`: where pods and host-network pods of the node are reached.
    pub internal: Vec<IpAddr>,
    /// `ExternalIP`.
    pub external: Vec<IpAddr>,
}

/// A node's `InternalIP` and `ExternalIP` addresses (others, such as `Hostname`, are not
/// addresses); an entry that is not an address is reported and skipped.
pub fn node_addresses(node: &Node, errors: &mut Vec<ObjectError>) -> NodeAddresses {
    let name = node.metadata.name.as_deref().unwrap_or("<unnamed>");
    let mut out = NodeAddresses::default();
    let listed = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten());
    for (i, a) in listed.enumerate() {
        let into = match a.type_.as_str() {
            "InternalIP" => &mut out.internal,
            "ExternalIP" => &mut out.external,
            _ => continue,
        };
        let field = format!("status.addresses[{i}].address");
        if let Some(ip) = parse_address(
            &a.address,
            || object_name("Node", None, name),
            field,
            errors,
        ) {
            if !into.contains(&ip) {
                into.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        let mut v = json!({"metadata": {"namespace": "shop", "name": "web-1"}});
        v["status"] = status;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_primary_address_first_then_the_others_once() {
        let mut errors = Vec::new();
        let p = pod(json!({
            "podIP": " 10.0.0.5 ",
            "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}, {"ip": "::ffff:10.0.0.6"}],
        }));
        let ips = pod_addresses(&p, &mut errors);
        let want: Vec<IpAddr> = ["10.0.0.5", "fd00::5", "10.0.0.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        assert!(errors.is_empty());
    }

    #[test]
    fn a_bad_entry_is_named_and_skipped() {
        let mut errors = Vec::new();
        let p = pod(json!({"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "bogus"}]}));
        assert_eq!(pod_addresses(&p, &mut errors).len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "Pod shop/web-1");
        assert_eq!(errors[0].field.as_deref(), Some("status.podIPs[1].ip"));
        assert_eq!(errors[0].message, "\"bogus\" is not an IP address");
    }

    #[test]
    fn a_bad_primary_address_repeated_in_the_list_is_reported_once() {
        let mut errors = Vec::new();
        let p = pod(json!({"podIP": "10.0.0.010", "podIPs": [{"ip": "10.0.0.010"}]}));
        assert!(pod_addresses(&p, &mut errors).is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some("status.podIP"));
    }

    #[test]
    fn a_pod_being_deleted_never_takes_an_address_from_a_live_one() {
        assert!(!takes_address(true, false));
        assert!(takes_address(false, true));
        assert!(takes_address(false, false));
        assert!(takes_address(true, true));
    }

    #[test]
    fn node_addresses_by_type() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "nope"},
            ]},
        }))
        .unwrap();
        let mut errors = Vec::new();
        let a = node_addresses(&node, &mut errors);
        assert_eq!(a.internal, vec!["192.168.1.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.external, vec!["203.0.113.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "Node n1");
        assert_eq!(
            errors[0].field.as_deref(),
            Some("status.addresses[3].address")
        );
    }
}
