//! A `NetworkPolicy` as authored, turned into matchers, with the API server's defaulting
//! (policyTypes, protocol) and validation applied. An invalid policy is rejected whole, as the
//! API server would reject it, with an error naming the field.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::ipblock::IpBlockMatcher;
use super::ports::PortMatcher;
use super::selector::Selector;
use crate::inventory::policy_types::DeclaredTypes;
use crate::inventory::ObjectError;

/// A validated policy.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub namespace: String,
    /// `namespace/name`, as verdicts name it.
    pub key: Arc<str>,
    pub pod_selector: Selector,
    /// `None` when Ingress is not among the (defaulted) policyTypes: the ingress rules, if
    /// any, are then ignored and the policy does not isolate for ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule. An empty list means "everything" (absent `from`/`to`/`ports`
/// and `[]` mean the same thing in the API).
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub peers: Vec<PeerMatcher>,
    pub ports: Vec<PortMatcher>,
}

#[derive(Clone, Debug)]
pub enum PeerMatcher {
    /// `podSelector` and/or `namespaceSelector` (both present means AND).
    Pods {
        namespaces: NamespaceScope,
        /// A missing `podSelector` selects every pod of the selected namespaces.
        pods: Selector,
        /// Position among every pod peer of the engine (the engine precomputes, per pod peer,
        /// the set of pod identities it selects).
        id: u32,
    },
    Block(IpBlockMatcher),
}

#[derive(Clone, Debug)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    Own,
    Selected(Selector),
}

/// Which direction a rule list governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl CompiledPolicy {
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Compiles one policy. `index` is its position in the inventory (to name it when it has no
/// name); `next_peer_id` numbers the pod peers across the whole engine.
pub fn compile_policy(
    np: &NetworkPolicy,
    index: usize,
    next_peer_id: &mut u32,
) -> Result<CompiledPolicy, ObjectError> {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = if name.is_empty() {
        format!("NetworkPolicy #{index}")
    } else {
        format!("NetworkPolicy {namespace}/{name}")
    };
    let fail = |field: String, message: String| ObjectError {
        object: object.clone(),
        field: Some(field),
        message,
    };
    if name.is_empty() {
        return Err(fail("metadata.name".into(), "missing".into()));
    }
    if namespace.is_empty() {
        return Err(fail("metadata.namespace".into(), "missing".into()));
    }
    let Some(spec) = &np.spec else {
        return Err(fail("spec".into(), "missing".into()));
    };
    let pod_selector = match &spec.pod_selector {
        None => Selector::everything(),
        Some(s) => compile_selector(s, "spec.podSelector").map_err(|(f, m)| fail(f, m))?,
    };

    let declared = DeclaredTypes::of(
        spec.policy_types
            .as_deref()
            .map(|types| types.iter().map(|t| Some(t.as_str()))),
        has_egress_rules(spec),
    );
    if let Some((i, other)) = declared.unknown {
        return Err(fail(
            format!("spec.policyTypes[{i}]"),
            format!(
                "unknown policy type {:?} (expected Ingress or Egress)",
                other.unwrap_or_default()
            ),
        ));
    }
    let (ingress_type, egress_type) = (declared.ingress, declared.egress);

    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        ingress.push(
            compile_rule(
                rule.from.as_deref(),
                rule.ports.as_deref(),
                &path,
                "from",
                next_peer_id,
            )
            .map_err(|(f, m)| fail(f, m))?,
        );
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        egress.push(
            compile_rule(
                rule.to.as_deref(),
                rule.ports.as_deref(),
                &path,
                "to",
                next_peer_id,
            )
            .map_err(|(f, m)| fail(f, m))?,
        );
    }

    Ok(CompiledPolicy {
        key: Arc::from(format!("{namespace}/{name}")),
        namespace,
        pod_selector,
        ingress: ingress_type.then_some(ingress),
        egress: egress_type.then_some(egress),
    })
}

/// The directions a policy governs by its (defaulted) policyTypes, read leniently so it can be
/// told for a policy rejected for another reason; an unknown type counts as both directions.
pub fn declared_directions(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &np.spec else {
        return (true, false);
    };
    DeclaredTypes::of(
        spec.policy_types
            .as_deref()
            .map(|types| types.iter().map(|t| Some(t.as_str()))),
        has_egress_rules(spec),
    )
    .lenient()
}

fn has_egress_rules(spec: &NetworkPolicySpec) -> bool {
    spec.egress.as_ref().is_some_and(|e| !e.is_empty())
}

type FieldError = (String, String);

fn compile_selector(s: &LabelSelector, path: &str) -> Result<Selector, FieldError> {
    Selector::compile(s).map_err(|e| (format!("{path}.{}", e.field), e.message))
}

fn compile_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    path: &str,
    peers_field: &str,
    next_peer_id: &mut u32,
) -> Result<Rule, FieldError> {
    let mut rule = Rule::default();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let path = format!("{path}.{peers_field}[{i}]");
        rule.peers.push(compile_peer(peer, &path, next_peer_id)?);
    }
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        let m = PortMatcher::compile(port)
            .map_err(|e| (format!("{path}.ports[{i}].{}", e.field), e.message))?;
        rule.ports.push(m);
    }
    Ok(rule)
}

fn compile_peer(
    peer: &NetworkPolicyPeer,
    path: &str,
    next_peer_id: &mut u32,
) -> Result<PeerMatcher, FieldError> {
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, has_selector) {
        (None, false) => Err((
            path.to_string(),
            "must specify a peer (podSelector, namespaceSelector or ipBlock)".into(),
        )),
        (Some(_), true) => Err((
            path.to_string(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        )),
        (Some(block), false) => {
            IpBlockMatcher::compile(&block.cidr, block.except.as_deref().unwrap_or_default())
                .map(PeerMatcher::Block)
                .map_err(|e| (format!("{path}.ipBlock.{}", e.field), e.message))
        }
        (None, true) => {
            let pods = match &peer.pod_selector {
                None => Selector::everything(),
                Some(s) => compile_selector(s, &format!("{path}.podSelector"))?,
            };
            let namespaces = match &peer.namespace_selector {
                None => NamespaceScope::Own,
                Some(s) => NamespaceScope::Selected(compile_selector(
                    s,
                    &format!("{path}.namespaceSelector"),
                )?),
            };
            let id = *next_peer_id;
            *next_peer_id += 1;
            Ok(PeerMatcher::Pods {
                namespaces,
                pods,
                id,
            })
        }
    }
}
