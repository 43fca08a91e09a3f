//! Service ports to the backends' target ports (pure).
//!
//! A flow record names a connection to a Service by the address and port the client dialled
//! (the Service port, before the node's NAT) and adds the backend pod it reached, without the
//! port: policies, though, select the backend and name its *target* port (a Service `80` in
//! front of a container port `8080` is allowed by a rule for `8080`). The snapshot's Services
//! say which target port each Service port has: a number, or a container port name resolved
//! on the backend's workload. The agent's edge metrics already count the target port.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::EdgeEnd;
use crate::inventory::owners::{workload_of, OwnerIndex, WorkloadKind};
use crate::inventory::workloads::{kind_name, stand_in_of};
use crate::inventory::Inventory;
use crate::model::Protocol;

/// A Service port's target: a number, or a container port's name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Number(u16),
    Name(String),
}

/// The target ports of a snapshot's Services, and the named container ports of its workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTargets {
    /// (namespace, service, port, protocol) -> target.
    services: HashMap<(String, String, u16, Protocol), Target>,
    /// (workload end, port name, protocol) -> number.
    named: HashMap<(EdgeEnd, String, Protocol), u16>,
}

impl ServiceTargets {
    /// From the Services and pods (workload stand-ins included) of an inventory.
    pub fn of(inventory: &Inventory) -> ServiceTargets {
        let mut t = ServiceTargets::default();
        for svc in &inventory.services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let protocol = protocol_of(p.protocol.as_deref());
                // An unset targetPort is the Service port.
                let target = match &p.target_port {
                    None => Target::Number(port),
                    Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                        Ok(n) if n != 0 => Target::Number(n),
                        _ => continue,
                    },
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) if n != 0 => Target::Number(n),
                        _ => Target::Name(s.clone()),
                    },
                };
                t.services
                    .insert((ns.clone(), name.clone(), port, protocol), target);
            }
        }
        let owners = OwnerIndex::default();
        for pod in &inventory.pods {
            let Some(end) = workload_end_of_pod(pod, &owners) else {
                continue;
            };
            let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
            for c in containers {
                for p in c.ports.iter().flatten() {
                    let (Some(name), Ok(number)) = (&p.name, u16::try_from(p.container_port))
                    else {
                        continue;
                    };
                    let protocol = protocol_of(p.protocol.as_deref());
                    t.named
                        .entry((end.clone(), name.clone(), protocol))
                        .or_insert(number);
                }
            }
        }
        t
    }

    /// The port a connection to Service `namespace/service` on `port` reached on `backend`;
    /// `None` when the snapshot does not have the Service port (or the name on the backend).
    pub fn target(
        &self,
        namespace: &str,
        service: &str,
        port: u16,
        protocol: Protocol,
        backend: &EdgeEnd,
    ) -> Option<u16> {
        match self
            .services
            .get(&(namespace.to_string(), service.to_string(), port, protocol))?
        {
            Target::Number(n) => Some(*n),
            Target::Name(name) => self
                .named
                .get(&(backend.clone(), name.clone(), protocol))
                .copied(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A port's protocol as the API defaults it (TCP when unset; an unknown one, which the API
/// server rejects, as TCP too).
fn protocol_of(protocol: Option<&str>) -> Protocol {
    protocol
        .and_then(|p| p.parse::<Protocol>().ok())
        .unwrap_or(Protocol::Tcp)
}

/// The workload end a pod stands for or belongs to (`None` for a pod of an unknown
/// controller): a stand-in's own kind and name, else its controller's, as the agent names it.
pub fn workload_end_of_pod(pod: &Pod, owners: &OwnerIndex) -> Option<EdgeEnd> {
    let ns = pod.metadata.namespace.as_deref()?;
    let name = pod.metadata.name.as_deref()?;
    if let Some((kind, workload)) = stand_in_of(name) {
        return Some(EdgeEnd::Workload {
            namespace: ns.to_string(),
            kind: kind.to_string(),
            name: workload.to_string(),
        });
    }
    let w = workload_of(pod, owners);
    let kind = match w.kind {
        WorkloadKind::Other => return None,
        WorkloadKind::Pod => "pod",
        WorkloadKind::ReplicationController => "replicaset",
        other => kind_name(other.as_str())?,
    };
    Some(EdgeEnd::Workload {
        namespace: ns.to_string(),
        kind: kind.to_string(),
        name: w.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::snapshot;

    #[test]
    fn a_service_port_leads_to_its_numeric_or_named_target_port() {
        let (mut inventory, errors) = snapshot::parse(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop, name: web}\n\
             spec:\n  ports:\n  - {port: 80, targetPort: http}\n  - {port: 81, targetPort: 9000}\n  \
             - {port: 53, protocol: UDP}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {namespace: shop, name: web}\n\
             spec:\n  template:\n    spec:\n      containers:\n      - name: c\n        \
             ports: [{name: http, containerPort: 8080}]\n",
            "t",
        )
        .unwrap();
        crate::inventory::sources::with_workloads_as_pods(&mut inventory);
        assert!(errors.is_empty(), "{errors:?}");
        let t = ServiceTargets::of(&inventory);
        let web = EdgeEnd::Workload {
            namespace: "shop".into(),
            kind: "deployment".into(),
            name: "web".into(),
        };
        assert_eq!(t.target("shop", "web", 80, Protocol::Tcp, &web), Some(8080));
        assert_eq!(t.target("shop", "web", 81, Protocol::Tcp, &web), Some(9000));
        assert_eq!(t.target("shop", "web", 53, Protocol::Udp, &web), Some(53));
        // Not the Service's port or protocol, or a name the backend does not have.
        assert_eq!(t.target("shop", "web", 82, Protocol::Tcp, &web), None);
        assert_eq!(t.target("shop", "web", 80, Protocol::Udp, &web), None);
        let other = EdgeEnd::Workload {
            namespace: "shop".into(),
            kind: "deployment".into(),
            name: "api".into(),
        };
        assert_eq!(t.target("shop", "web", 80, Protocol::Tcp, &other), None);
    }
}
