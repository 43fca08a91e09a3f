//! How the CLI names flow ends: a pod (`ns/pod`), a workload (`ns/KIND/name`, or `ns/name`
//! when exactly one pod or workload of the namespace has that name), or an address; and ports
//! by number or by name.
//!
//! A workload is the pod that stands for it (a manifest's Deployment, ...; see
//! `inventory::workloads`) or, in a `kubectl get pods` snapshot, one live pod it runs (its
//! replicas share labels and named ports, so any one of them gets the same verdict).

use std::collections::{BTreeSet, HashMap};

use crate::inventory::owners::{workload_of, OwnerIndex, WorkloadKind};
use crate::inventory::workloads::{kind_name, kind_names, stand_in_of};
use crate::inventory::Inventory;
use crate::model::Protocol;
use crate::policy::{Peer, PolicyEngine};

/// Names to peers, for one engine.
#[derive(Debug, Default)]
pub struct Resolver {
    /// (namespace, kind, name) -> the pod that stands for the workload.
    workloads: HashMap<(String, String, String), String>,
    /// (namespace, name) -> the workloads or pods of that name, as `ns/kind/name`.
    by_name: HashMap<(String, String), BTreeSet<String>>,
    /// `namespace/pod` -> `namespace/kind/name` of the workload that runs it (pods with a
    /// known controller only).
    owner_of: HashMap<String, String>,
}

impl Resolver {
    /// From the engine's pods: workload stand-ins and pods by name.
    pub fn from_engine(engine: &PolicyEngine) -> Resolver {
        let mut r = Resolver::default();
        for pod in engine.pods() {
            match stand_in_of(pod.name) {
                Some((kind, name)) => r.add(pod.namespace, kind, name, pod.name),
                None => r.add(pod.namespace, "pod", pod.name, pod.name),
            }
        }
        r
    }

    /// Adds the workloads of the inventory's pods (ownerReferences, as the agent names
    /// them), for snapshots of a running cluster that list pods but not their controllers.
    /// Stand-ins keep precedence; a live pod is chosen over a terminated one.
    pub fn with_owners(mut self, inventory: &Inventory) -> Resolver {
        let owners = OwnerIndex::default();
        let mut owned = Vec::new();
        for pod in &inventory.pods {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            if stand_in_of(name).is_some() {
                continue;
            }
            let terminated = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            let w = workload_of(pod, &owners);
            let kind = match w.kind {
                WorkloadKind::Pod | WorkloadKind::Other => continue,
                WorkloadKind::ReplicationController => "replicaset",
                other => kind_name(other.as_str()).unwrap_or("pod"),
            };
            owned.push((terminated, ns, kind, w.name, name));
        }
        // Live pods first: the first one added stands for its workload.
        owned.sort_by_key(|o| o.0);
        for (_, ns, kind, workload, pod) in owned {
            self.add(ns, kind, &workload, pod);
            self.owner_of
                .insert(format!("{ns}/{pod}"), format!("{ns}/{kind}/{workload}"));
        }
        self
    }

    fn add(&mut self, ns: &str, kind: &str, name: &str, pod: &str) {
        let key = (ns.to_string(), kind.to_string(), name.to_string());
        self.workloads.entry(key).or_insert_with(|| pod.to_string());
        self.by_name
            .entry((ns.to_string(), name.to_string()))
            .or_default()
            .insert(format!("{ns}/{kind}/{name}"));
    }

    /// Pods (`namespace/pod`) by their workload, replicas folded: `ns/kind/name (N pods)`
    /// for a workload with several listed, else the name (a stand-in's `ns/kind/name` is its
    /// own), in order.
    pub fn by_workload(&self, pods: &[String]) -> Vec<String> {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for pod in pods {
            let name = self.owner_of.get(pod).map_or(pod.as_str(), String::as_str);
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        let mut out: Vec<String> = counts
            .into_iter()
            .map(|(name, n)| match n {
                1 => name.to_string(),
                n => format!("{name} ({n} pods)"),
            })
            .collect();
        out.sort();
        out
    }

    /// The pod standing for a workload (`kind` as the CLI names it: `deployment`, `pod`, ...).
    pub fn workload(&self, ns: &str, kind: &str, name: &str) -> Option<Peer> {
        self.workloads
            .get(&(ns.to_string(), kind.to_string(), name.to_string()))
            .map(|pod| Peer::Pod {
                namespace: ns.to_string(),
                name: pod.clone(),
            })
    }

    /// Every workload (and bare pod) known, as (namespace, kind, name), sorted.
    pub fn workloads(&self) -> Vec<(&str, &str, &str)> {
        let mut out: Vec<_> = self
            .workloads
            .keys()
            .map(|(ns, kind, name)| (ns.as_str(), kind.as_str(), name.as_str()))
            .collect();
        out.sort_unstable();
        out
    }

    /// `ns/pod`, `ns/KIND/name`, `ns/name` or an address.
    pub fn peer(&self, s: &str) -> Result<Peer, String> {
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Peer::Ip(ip));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [ns, kind, name] if !ns.is_empty() && !name.is_empty() => {
                let kind = kind.to_ascii_lowercase();
                if kind != "pod" && !kind_names().any(|k| k == kind) {
                    return Err(format!(
                        "{s:?}: unknown kind {kind:?} (expected pod, {})",
                        kind_names().collect::<Vec<_>>().join(", ")
                    ));
                }
                self.workload(ns, &kind, name)
                    .ok_or_else(|| format!("unknown {kind} {ns}/{name}"))
            }
            [ns, name] if !ns.is_empty() && !name.is_empty() => {
                let candidates = self
                    .by_name
                    .get(&(ns.to_string(), name.to_string()))
                    .map(|c| c.iter().collect::<Vec<_>>())
                    .unwrap_or_default();
                match candidates[..] {
                    // Not known: as a pod name, the engine reports it ("unknown pod").
                    [] => Ok(Peer::Pod {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    }),
                    [one] => self.peer(one),
                    _ => Err(format!(
                        "{ns}/{name} is ambiguous: {}; name one as namespace/kind/name",
                        candidates
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            _ => Err(format!(
                "{s:?} is neither \"namespace/pod\", \"namespace/kind/name\" nor an IP address"
            )),
        }
    }
}

/// A port given by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    /// `8080` or `redis` (a container port name).
    pub fn parse(s: &str) -> Result<PortRef, String> {
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
            return s
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(PortRef::Number)
                .ok_or_else(|| format!("{s:?} is not a port number (1-65535)"));
        }
        crate::policy::validate_port_name(s)
            .map(|()| PortRef::Name(s.to_string()))
            .map_err(|e| format!("{s:?} is neither a port number nor a port name: {e}"))
    }

    /// The number, resolving a name on the destination as a NetworkPolicy does.
    pub fn resolve(
        &self,
        engine: &PolicyEngine,
        dst: &Peer,
        protocol: Protocol,
    ) -> Result<u16, String> {
        match self {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(name) => engine
                .resolve_named_port(dst, name, protocol)
                .ok_or_else(|| format!("no container port named {name:?} ({protocol}) on {dst}")),
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}
