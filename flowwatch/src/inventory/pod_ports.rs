//! A pod's container ports, read once for both readers of the inventory: the named ports a
//! NetworkPolicy resolves on its destination, and the ports by which the enrichment index
//! recognises a host-network pod on its node's address.

use k8s_openapi::api::core::v1::Pod;

use super::ObjectError;
use crate::model::Protocol;

/// A named container port of a pod (`spec.containers[].ports[]` with a `name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// The API server's rule for port names (IANA_SVC_NAME): 1-15 characters of `a-z0-9-`, at
/// least one letter, no leading, trailing or doubled hyphen.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {name:?} (1-15 characters of a-z, 0-9 and '-', with a letter)"
        ))
    }
}

/// The named container ports of `pod` (called `object` in errors), sorted and each once. An
/// entry with an unusable number, name or protocol is reported and left out; unnamed ports
/// are not listed (only names matter to policies).
pub fn named_ports(pod: &Pod, object: &str, errors: &mut Vec<ObjectError>) -> Vec<NamedPort> {
    let mut ports = Vec::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for (ci, container) in containers.enumerate() {
        for (pi, p) in container.ports.iter().flatten().enumerate() {
            let field = |f: &str| Some(format!("spec.containers[{ci}].ports[{pi}].{f}"));
            let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p != 0) else {
                errors.push(ObjectError {
                    object: object.to_owned(),
                    field: field("containerPort"),
                    message: format!("{} is not a port number", p.container_port),
                });
                continue;
            };
            if let Err(message) = validate_port_name(pname) {
                errors.push(ObjectError {
                    object: object.to_owned(),
                    field: field("name"),
                    message,
                });
                continue;
            }
            let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
                Ok(proto) => proto,
                Err(message) => {
                    errors.push(ObjectError {
                        object: object.to_owned(),
                        field: field("protocol"),
                        message,
                    });
                    continue;
                }
            };
            ports.push(NamedPort {
                name: pname.to_string(),
                port,
                protocol,
            });
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

/// Every port a pod's containers declare, container and host port alike, with its protocol
/// (TCP when unset or unreadable: the entries were already judged by [`named_ports`]). A
/// host-network pod shares its node's address; these ports tell its traffic from the node's.
pub fn declared_ports(pod: &Pod) -> Vec<(u16, Protocol)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            let proto = p
                .protocol
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(Protocol::Tcp);
            for port in [Some(p.container_port), p.host_port].into_iter().flatten() {
                if let Ok(port) = u16::try_from(port) {
                    out.push((port, proto));
                }
            }
        }
    }
    out
}
