//! Cluster-scoped policies in one model: `ClusterNetworkPolicy` (v1alpha2) and the v1alpha1
//! `AdminNetworkPolicy` / `BaselineAdminNetworkPolicy` translated into tiered policies with
//! ordered rules (`Allow` is `Accept`; the BANP `default` is a Baseline policy after every
//! Baseline ClusterNetworkPolicy). Validation follows the published CRDs: an object the API
//! server would reject is skipped whole and reported with the field; what the API itself says
//! to do with a peer of unknown shape ("fail closed") is done and reported; `domainNames`
//! peers cannot be decided from addresses and are reported and never match.

use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

use super::compile::Direction;
use super::selector::Selector;
use crate::inventory::cluster_policy::{
    AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy,
};
use crate::inventory::cluster_policy::{
    AdminNetworkPolicyPort, AdminNetworkPolicyRule, AdminNetworkPolicySpec,
    ClusterNetworkPolicyProtocol, ClusterNetworkPolicyRule, DestinationPort, PolicyPeer, Subject,
};
use crate::inventory::ObjectError;
use crate::model::Protocol;

/// The tiers of the evaluation order, and `none` (no tier decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Admin,
    #[serde(rename = "networkpolicy")]
    NetworkPolicy,
    Baseline,
    None,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::NetworkPolicy => "networkpolicy",
            Tier::Baseline => "baseline",
            Tier::None => "none",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of policy object a decision comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    NetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            PolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

/// A rule's action in the one model (`Allow` of v1alpha1 is `Accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// A rule as verdicts name it: its `name`, or its index when it has none.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RuleId {
    Name(#[serde(serialize_with = "super::verdict::serialize_arc_str")] Arc<str>),
    Index(usize),
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleId::Name(n) => write!(f, "{n:?}"),
            RuleId::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// Which of the two cluster tiers a policy is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterTier {
    Admin,
    Baseline,
}

/// A validated cluster-scoped policy.
#[derive(Clone, Debug)]
pub struct TierPolicy {
    pub kind: PolicyKind,
    pub name: Arc<str>,
    pub tier: ClusterTier,
    /// 0..=1000; the BaselineAdminNetworkPolicy, which has none, gets 1001 (after the
    /// Baseline ClusterNetworkPolicies).
    pub priority: u32,
    /// Subject: pods of the namespaces `subject_namespaces` selects that `subject_pods` selects
    /// (`everything` for a `namespaces` subject).
    pub subject_namespaces: Selector,
    pub subject_pods: Selector,
    pub ingress: Vec<TierRule>,
    pub egress: Vec<TierRule>,
}

impl TierPolicy {
    pub fn rules(&self, dir: Direction) -> &[TierRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Evaluation order inside a tier: priority, then name, then kind (ClusterNetworkPolicy
    /// before AdminNetworkPolicy), so policies of equal priority are ordered the same way on
    /// every run.
    pub fn order_key(&self) -> (ClusterTier, u32, &str, PolicyKind) {
        (self.tier, self.priority, &self.name, self.kind)
    }
}

#[derive(Clone, Debug)]
pub struct TierRule {
    pub index: usize,
    pub name: Option<Arc<str>>,
    pub action: Action,
    /// Never empty: a rule without peers is rejected.
    pub peers: Vec<TierPeer>,
    /// Empty: every port and protocol.
    pub ports: Vec<TierPort>,
    /// The API's "fail closed" for a Deny or Pass rule with a peer of unknown shape: the rule
    /// is a Deny of everything (`action` is then `Deny`).
    pub deny_all: bool,
}

impl TierRule {
    pub fn id(&self) -> RuleId {
        match &self.name {
            Some(n) => RuleId::Name(n.clone()),
            None => RuleId::Index(self.index),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TierPeer {
    /// `namespaces` (pods = everything) or `pods`; `id` numbers the pod peers of the engine's
    /// cluster policies (each has a precomputed set of identities).
    Pods {
        namespaces: Selector,
        pods: Selector,
        id: u32,
    },
    /// `nodes`: the addresses of the nodes the selector selects; `id` numbers node peers.
    Nodes { selector: Selector, id: u32 },
    /// `networks`: any address in one of the CIDRs (pod and node addresses included).
    Networks(Vec<IpNet>),
    /// `domainNames`: not decidable from addresses; never matches (reported).
    DomainNames(Vec<String>),
    /// A peer with none of the known fields in an Accept rule: matches nothing ("fail closed").
    Unknown,
}

/// One entry of `protocols` (v1alpha2) or `ports` (v1alpha1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierPort {
    /// Every port of the protocol (v1alpha2 `tcp: {}`, accepted with a warning).
    Any(Protocol),
    /// Inclusive; `lo > hi` (accepted by the v1alpha1 API) matches nothing.
    Range(Protocol, u16, u16),
    /// A container port name on the destination pod, with that port's own protocol.
    Named(Arc<str>),
}

impl std::fmt::Display for TierPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierPort::Any(p) => write!(f, "any port/{p}"),
            TierPort::Range(p, lo, hi) if lo == hi => write!(f, "{lo}/{p}"),
            TierPort::Range(p, lo, hi) => write!(f, "{lo}-{hi}/{p}"),
            TierPort::Named(n) => write!(f, "named port {n:?}"),
        }
    }
}

/// Numbers the pod and node peers across the engine.
#[derive(Debug, Default)]
pub struct PeerIds {
    pub pods: u32,
    pub nodes: u32,
}

/// What compiling one object gave: the policy (or why it was rejected) and warnings about
/// parts that are evaluated in a documented, restricted way.
pub struct Compiled {
    pub policy: Result<TierPolicy, ObjectError>,
    pub warnings: Vec<ObjectError>,
}

struct Ctx<'a> {
    object: String,
    kind: PolicyKind,
    ids: &'a mut PeerIds,
    warnings: Vec<ObjectError>,
}

type FieldError = (String, String);

impl Ctx<'_> {
    fn warn(&mut self, field: String, message: String) {
        self.warnings.push(ObjectError {
            object: self.object.clone(),
            field: Some(field),
            message,
        });
    }

    fn finish(self, policy: Result<TierPolicy, FieldError>) -> Compiled {
        let object = self.object;
        Compiled {
            policy: policy.map_err(|(field, message)| ObjectError {
                object,
                field: Some(field),
                message,
            }),
            warnings: self.warnings,
        }
    }
}

pub fn compile_cnp(p: &ClusterNetworkPolicy, index: usize, ids: &mut PeerIds) -> Compiled {
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut ctx = Ctx {
        object: object_name("ClusterNetworkPolicy", &name, index),
        kind: PolicyKind::ClusterNetworkPolicy,
        ids,
        warnings: Vec::new(),
    };
    let policy = (|| {
        let spec = require_named(&name, p.spec.as_ref())?;
        let tier = match spec.tier.as_deref() {
            Some("Admin") => ClusterTier::Admin,
            Some("Baseline") => ClusterTier::Baseline,
            Some(other) => {
                return Err((
                    "spec.tier".into(),
                    format!("unknown tier {other:?} (expected Admin or Baseline)"),
                ))
            }
            None => return Err(("spec.tier".into(), "missing".into())),
        };
        let priority = priority(spec.priority)?;
        let (subject_namespaces, subject_pods) = subject(spec.subject.as_ref())?;
        let mut rules = [Vec::new(), Vec::new()];
        for (d, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let list = match dir {
                Direction::Ingress => &spec.ingress,
                Direction::Egress => &spec.egress,
            };
            for (i, r) in list.iter().flatten().enumerate() {
                rules[d].push(cnp_rule(&mut ctx, dir, i, r)?);
            }
        }
        let [ingress, egress] = rules;
        Ok(TierPolicy {
            kind: PolicyKind::ClusterNetworkPolicy,
            name: Arc::from(name.as_str()),
            tier,
            priority,
            subject_namespaces,
            subject_pods,
            ingress,
            egress,
        })
    })();
    ctx.finish(policy)
}

pub fn compile_anp(p: &AdminNetworkPolicy, index: usize, ids: &mut PeerIds) -> Compiled {
    let name = p.metadata.name.clone().unwrap_or_default();
    let ctx = Ctx {
        object: object_name("AdminNetworkPolicy", &name, index),
        kind: PolicyKind::AdminNetworkPolicy,
        ids,
        warnings: Vec::new(),
    };
    compile_v1alpha1(ctx, &name, p.spec.as_ref())
}

pub fn compile_banp(p: &BaselineAdminNetworkPolicy, index: usize, ids: &mut PeerIds) -> Compiled {
    let name = p.metadata.name.clone().unwrap_or_default();
    let ctx = Ctx {
        object: object_name("BaselineAdminNetworkPolicy", &name, index),
        kind: PolicyKind::BaselineAdminNetworkPolicy,
        ids,
        warnings: Vec::new(),
    };
    if !name.is_empty() && name != "default" {
        return ctx.finish(Err((
            "metadata.name".into(),
            "must be \"default\" (the API server admits only one BaselineAdminNetworkPolicy)"
                .into(),
        )));
    }
    compile_v1alpha1(ctx, &name, p.spec.as_ref())
}

fn compile_v1alpha1(mut ctx: Ctx, name: &str, spec: Option<&AdminNetworkPolicySpec>) -> Compiled {
    let banp = ctx.kind == PolicyKind::BaselineAdminNetworkPolicy;
    let policy = (|| {
        let spec = require_named(name, spec)?;
        let priority = if banp { 1001 } else { priority(spec.priority)? };
        let (subject_namespaces, subject_pods) = subject(spec.subject.as_ref())?;
        let mut rules = [Vec::new(), Vec::new()];
        for (d, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let list = match dir {
                Direction::Ingress => &spec.ingress,
                Direction::Egress => &spec.egress,
            };
            for (i, r) in list.iter().flatten().enumerate() {
                rules[d].push(anp_rule(&mut ctx, dir, i, r)?);
            }
        }
        let [ingress, egress] = rules;
        Ok(TierPolicy {
            kind: ctx.kind,
            name: Arc::from(name),
            tier: if banp {
                ClusterTier::Baseline
            } else {
                ClusterTier::Admin
            },
            priority,
            subject_namespaces,
            subject_pods,
            ingress,
            egress,
        })
    })();
    ctx.finish(policy)
}

fn object_name(kind: &str, name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{kind} #{index}")
    } else {
        crate::inventory::object_name(kind, None, name)
    }
}

fn require_named<'s, T>(name: &str, spec: Option<&'s T>) -> Result<&'s T, FieldError> {
    if name.is_empty() {
        return Err(("metadata.name".into(), "missing".into()));
    }
    spec.ok_or_else(|| ("spec".into(), "missing".into()))
}

fn priority(p: Option<i64>) -> Result<u32, FieldError> {
    match p {
        None => Err(("spec.priority".into(), "missing".into())),
        Some(p) => u32::try_from(p)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| ("spec.priority".into(), format!("{p} is not in 0..1000"))),
    }
}

fn selector(s: &LabelSelector, path: &str) -> Result<Selector, FieldError> {
    Selector::compile(s).map_err(|e| (format!("{path}.{}", e.field), e.message))
}

fn opt_selector(s: Option<&LabelSelector>, path: &str) -> Result<Selector, FieldError> {
    s.map_or(Ok(Selector::everything()), |s| selector(s, path))
}

fn subject(s: Option<&Subject>) -> Result<(Selector, Selector), FieldError> {
    let s = s.ok_or_else(|| ("spec.subject".to_string(), "missing".to_string()))?;
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok((
            selector(ns, "spec.subject.namespaces")?,
            Selector::everything(),
        )),
        (None, Some(p)) => Ok((
            opt_selector(
                p.namespace_selector.as_ref(),
                "spec.subject.pods.namespaceSelector",
            )?,
            opt_selector(p.pod_selector.as_ref(), "spec.subject.pods.podSelector")?,
        )),
        _ => Err((
            "spec.subject".into(),
            "exactly one of namespaces and pods must be set".into(),
        )),
    }
}

fn action(text: Option<&str>, kind: PolicyKind, path: &str) -> Result<Action, FieldError> {
    let v1alpha1 = kind != PolicyKind::ClusterNetworkPolicy;
    let banp = kind == PolicyKind::BaselineAdminNetworkPolicy;
    match text {
        Some("Accept") if !v1alpha1 => Ok(Action::Accept),
        Some("Allow") if v1alpha1 => Ok(Action::Accept),
        Some("Deny") => Ok(Action::Deny),
        Some("Pass") if !banp => Ok(Action::Pass),
        None => Err((format!("{path}.action"), "missing".into())),
        Some(other) => Err((
            format!("{path}.action"),
            format!(
                "unknown action {other:?} (expected {})",
                match kind {
                    PolicyKind::BaselineAdminNetworkPolicy => "Allow or Deny",
                    PolicyKind::AdminNetworkPolicy => "Allow, Deny or Pass",
                    _ => "Accept, Deny or Pass",
                }
            ),
        )),
    }
}

fn cnp_rule(
    ctx: &mut Ctx,
    dir: Direction,
    index: usize,
    r: &ClusterNetworkPolicyRule,
) -> Result<TierRule, FieldError> {
    let path = format!("spec.{}[{index}]", dir.as_str());
    let action = action(r.action.as_deref(), ctx.kind, &path)?;
    let mut ports = Vec::new();
    if let Some(list) = &r.protocols {
        if list.is_empty() {
            return Err((format!("{path}.protocols"), "must not be empty".into()));
        }
        for (i, p) in list.iter().enumerate() {
            ports.push(cnp_protocol(ctx, p, &format!("{path}.protocols[{i}]"))?);
        }
    }
    rule(
        ctx,
        dir,
        index,
        r.name.as_deref(),
        action,
        peers_of(dir, r.from.as_deref(), r.to.as_deref()),
        ports,
        &path,
    )
}

fn anp_rule(
    ctx: &mut Ctx,
    dir: Direction,
    index: usize,
    r: &AdminNetworkPolicyRule,
) -> Result<TierRule, FieldError> {
    let path = format!("spec.{}[{index}]", dir.as_str());
    let action = action(r.action.as_deref(), ctx.kind, &path)?;
    let mut ports = Vec::new();
    if let Some(list) = &r.ports {
        if list.is_empty() {
            return Err((format!("{path}.ports"), "must not be empty".into()));
        }
        for (i, p) in list.iter().enumerate() {
            ports.push(anp_port(ctx, p, &format!("{path}.ports[{i}]"))?);
        }
    }
    rule(
        ctx,
        dir,
        index,
        r.name.as_deref(),
        action,
        peers_of(dir, r.from.as_deref(), r.to.as_deref()),
        ports,
        &path,
    )
}

fn peers_of<'a>(
    dir: Direction,
    from: Option<&'a [PolicyPeer]>,
    to: Option<&'a [PolicyPeer]>,
) -> (&'static str, Option<&'a [PolicyPeer]>) {
    match dir {
        Direction::Ingress => ("from", from),
        Direction::Egress => ("to", to),
    }
}

#[allow(clippy::too_many_arguments)]
fn rule(
    ctx: &mut Ctx,
    dir: Direction,
    index: usize,
    name: Option<&str>,
    mut action: Action,
    (field, peers): (&'static str, Option<&[PolicyPeer]>),
    ports: Vec<TierPort>,
    path: &str,
) -> Result<TierRule, FieldError> {
    let peers = match peers {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err((
                format!("{path}.{field}"),
                "must list at least one peer".into(),
            ))
        }
    };
    let mut compiled = Vec::with_capacity(peers.len());
    let mut deny_all = false;
    let mut non_pod_peer = false;
    for (i, peer) in peers.iter().enumerate() {
        let ppath = format!("{path}.{field}[{i}]");
        let p = compile_peer(ctx, dir, action, peer, &ppath)?;
        if let TierPeer::Unknown = p {
            if action != Action::Accept {
                deny_all = true;
            }
        }
        non_pod_peer |= matches!(
            p,
            TierPeer::Nodes { .. } | TierPeer::Networks(_) | TierPeer::DomainNames(_)
        );
        compiled.push(p);
    }
    if non_pod_peer && ports.iter().any(|p| matches!(p, TierPort::Named(_))) {
        return Err((
            path.to_string(),
            "networks/nodes/domainNames peers cannot be used with named ports".into(),
        ));
    }
    if deny_all {
        action = Action::Deny;
    }
    Ok(TierRule {
        index,
        name: name.filter(|n| !n.is_empty()).map(Arc::from),
        action,
        peers: compiled,
        ports,
        deny_all,
    })
}

fn compile_peer(
    ctx: &mut Ctx,
    dir: Direction,
    action: Action,
    peer: &PolicyPeer,
    path: &str,
) -> Result<TierPeer, FieldError> {
    let set = [
        peer.namespaces.is_some(),
        peer.pods.is_some(),
        peer.nodes.is_some(),
        peer.networks.is_some(),
        peer.domain_names.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set > 1 {
        return Err((
            path.to_string(),
            "exactly one of namespaces, pods, nodes, networks and domainNames may be set".into(),
        ));
    }
    if dir == Direction::Ingress {
        for (f, present) in [
            ("nodes", peer.nodes.is_some()),
            ("networks", peer.networks.is_some()),
            ("domainNames", peer.domain_names.is_some()),
        ] {
            if present {
                return Err((
                    format!("{path}.{f}"),
                    "only egress peers can have this field".into(),
                ));
            }
        }
    }
    if let Some(ns) = &peer.namespaces {
        let namespaces = selector(ns, &format!("{path}.namespaces"))?;
        return Ok(pods_peer(ctx, namespaces, Selector::everything()));
    }
    if let Some(p) = &peer.pods {
        let namespaces = opt_selector(
            p.namespace_selector.as_ref(),
            &format!("{path}.pods.namespaceSelector"),
        )?;
        let pods = opt_selector(p.pod_selector.as_ref(), &format!("{path}.pods.podSelector"))?;
        return Ok(pods_peer(ctx, namespaces, pods));
    }
    if let Some(nodes) = &peer.nodes {
        let selector = selector(nodes, &format!("{path}.nodes"))?;
        let id = ctx.ids.nodes;
        ctx.ids.nodes += 1;
        return Ok(TierPeer::Nodes { selector, id });
    }
    if let Some(networks) = &peer.networks {
        if networks.is_empty() {
            return Err((format!("{path}.networks"), "must not be empty".into()));
        }
        let mut nets = Vec::with_capacity(networks.len());
        for (i, n) in networks.iter().enumerate() {
            let field = format!("{path}.networks[{i}]");
            let net = match n.trim().parse::<IpNet>() {
                Ok(net) => net,
                // A bare address: the API server wants a prefix; read it as the one address.
                Err(_) => match n.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => {
                        ctx.warn(
                            field,
                            format!("{n:?} has no prefix length (the API server requires one): read as that one address"),
                        );
                        IpNet::from(ip.to_canonical())
                    }
                    Err(_) => return Err((field, format!("invalid CIDR {n:?}"))),
                },
            };
            nets.push(net);
        }
        return Ok(TierPeer::Networks(nets));
    }
    if let Some(names) = &peer.domain_names {
        if ctx.kind == PolicyKind::BaselineAdminNetworkPolicy {
            return Err((
                format!("{path}.domainNames"),
                "a BaselineAdminNetworkPolicy has no domainNames peers".into(),
            ));
        }
        ctx.warn(
            format!("{path}.domainNames"),
            "domain names cannot be decided from addresses: this peer is not evaluated and never matches".into(),
        );
        return Ok(TierPeer::DomainNames(names.clone()));
    }
    ctx.warn(
        path.to_string(),
        match action {
            Action::Accept => "a peer with no known field (a newer API version?): fail closed, this peer matches nothing".into(),
            _ => "a peer with no known field (a newer API version?): fail closed, the rule denies everything".into(),
        },
    );
    Ok(TierPeer::Unknown)
}

fn pods_peer(ctx: &mut Ctx, namespaces: Selector, pods: Selector) -> TierPeer {
    let id = ctx.ids.pods;
    ctx.ids.pods += 1;
    TierPeer::Pods {
        namespaces,
        pods,
        id,
    }
}

fn port_number(n: i64, field: String) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| (field, format!("{n} is not a port number (1-65535)")))
}

fn cnp_protocol(
    ctx: &mut Ctx,
    p: &ClusterNetworkPolicyProtocol,
    path: &str,
) -> Result<TierPort, FieldError> {
    let set = [
        p.tcp.is_some(),
        p.udp.is_some(),
        p.sctp.is_some(),
        p.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err((
            path.to_string(),
            "exactly one of tcp, udp, sctp and destinationNamedPort must be set".into(),
        ));
    }
    if let Some(name) = &p.destination_named_port {
        if name.is_empty() {
            return Err((
                format!("{path}.destinationNamedPort"),
                "must not be empty".into(),
            ));
        }
        return Ok(TierPort::Named(Arc::from(name.as_str())));
    }
    let (protocol, field, ports) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => (Protocol::Tcp, "tcp", t),
        (_, Some(u), _) => (Protocol::Udp, "udp", u),
        (_, _, Some(s)) => (Protocol::Sctp, "sctp", s),
        _ => unreachable!("one field is set"),
    };
    let path = format!("{path}.{field}");
    match &ports.destination_port {
        None => {
            ctx.warn(
                path,
                "no destinationPort (the API server requires one): read as every port of the protocol"
                    .into(),
            );
            Ok(TierPort::Any(protocol))
        }
        Some(dp) => cnp_port(protocol, dp, &format!("{path}.destinationPort")),
    }
}

fn cnp_port(protocol: Protocol, p: &DestinationPort, path: &str) -> Result<TierPort, FieldError> {
    match (p.number, &p.range) {
        (Some(n), None) => {
            let n = port_number(n, format!("{path}.number"))?;
            Ok(TierPort::Range(protocol, n, n))
        }
        (None, Some(r)) => {
            let start = r
                .start
                .ok_or_else(|| (format!("{path}.range.start"), "missing".to_string()))?;
            let end = r
                .end
                .ok_or_else(|| (format!("{path}.range.end"), "missing".to_string()))?;
            let lo = port_number(start, format!("{path}.range.start"))?;
            let hi = port_number(end, format!("{path}.range.end"))?;
            if lo >= hi {
                return Err((
                    format!("{path}.range"),
                    format!("start {lo} must be less than end {hi}"),
                ));
            }
            Ok(TierPort::Range(protocol, lo, hi))
        }
        _ => Err((
            path.to_string(),
            "exactly one of number and range must be set".into(),
        )),
    }
}

fn v1_protocol(p: Option<&str>, field: String) -> Result<Protocol, FieldError> {
    match p {
        None | Some("" | "TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err((
            field,
            format!("unsupported protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn anp_port(ctx: &mut Ctx, p: &AdminNetworkPolicyPort, path: &str) -> Result<TierPort, FieldError> {
    match (&p.port_number, &p.named_port, &p.port_range) {
        (Some(n), None, None) => {
            let path = format!("{path}.portNumber");
            let protocol = v1_protocol(n.protocol.as_deref(), format!("{path}.protocol"))?;
            let port = n
                .port
                .ok_or_else(|| (format!("{path}.port"), "missing".to_string()))?;
            let port = port_number(port, format!("{path}.port"))?;
            Ok(TierPort::Range(protocol, port, port))
        }
        (None, Some(name), None) => {
            if name.is_empty() {
                return Err((format!("{path}.namedPort"), "must not be empty".into()));
            }
            Ok(TierPort::Named(Arc::from(name.as_str())))
        }
        (None, None, Some(r)) => {
            let path = format!("{path}.portRange");
            let protocol = v1_protocol(r.protocol.as_deref(), format!("{path}.protocol"))?;
            let start = r
                .start
                .ok_or_else(|| (format!("{path}.start"), "missing".to_string()))?;
            let end = r
                .end
                .ok_or_else(|| (format!("{path}.end"), "missing".to_string()))?;
            let lo = port_number(start, format!("{path}.start"))?;
            let hi = port_number(end, format!("{path}.end"))?;
            if lo > hi {
                ctx.warn(
                    path,
                    format!("start {lo} is above end {hi}: the range matches no port"),
                );
            }
            Ok(TierPort::Range(protocol, lo, hi))
        }
        _ => Err((
            path.to_string(),
            "exactly one of portNumber, namedPort and portRange must be set".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cnp(spec: serde_json::Value) -> Compiled {
        let mut v = json!({"metadata": {"name": "p"}});
        v["spec"] = spec;
        let p: ClusterNetworkPolicy = serde_json::from_value(v).unwrap();
        compile_cnp(&p, 0, &mut PeerIds::default())
    }

    fn anp(kind: &str, name: &str, spec: serde_json::Value) -> Compiled {
        let mut v = json!({"metadata": {"name": name}});
        v["spec"] = spec;
        let mut ids = PeerIds::default();
        if kind == "ANP" {
            compile_anp(&serde_json::from_value(v).unwrap(), 0, &mut ids)
        } else {
            compile_banp(&serde_json::from_value(v).unwrap(), 0, &mut ids)
        }
    }

    fn err(c: Compiled) -> (String, String) {
        let e = c.policy.unwrap_err();
        (e.field.unwrap(), e.message)
    }

    #[test]
    fn a_full_cnp_compiles_with_rule_order_names_and_ports() {
        let c = cnp(json!({"tier": "Admin", "priority": 7,
            "subject": {"namespaces": {"matchLabels": {"a": "b"}}},
            "ingress": [{"name": "one", "action": "Deny", "from": [{"namespaces": {}}]},
                        {"action": "Accept", "from": [{"pods": {"podSelector": {}}}],
                         "protocols": [{"udp": {"destinationPort": {"number": 53}}},
                                       {"tcp": {"destinationPort": {"range": {"start": 80, "end": 90}}}},
                                       {"destinationNamedPort": "web"}]}],
            "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}, {"nodes": {}}]}]}));
        assert!(c.warnings.is_empty());
        let p = c.policy.unwrap();
        assert_eq!((p.tier, p.priority), (ClusterTier::Admin, 7));
        assert_eq!(p.ingress.len(), 2);
        assert_eq!(p.ingress[0].id(), RuleId::Name("one".into()));
        assert_eq!(p.ingress[1].id(), RuleId::Index(1));
        assert_eq!(
            p.ingress[1].ports,
            vec![
                TierPort::Range(Protocol::Udp, 53, 53),
                TierPort::Range(Protocol::Tcp, 80, 90),
                TierPort::Named("web".into())
            ]
        );
        assert_eq!(p.egress[0].action, Action::Pass);
        assert_eq!(p.egress[0].peers.len(), 2);
    }

    #[test]
    fn v1alpha1_allow_is_accept_and_protocol_defaults_to_tcp() {
        let p = anp("ANP", "a", json!({"priority": 1, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
            "egress": [{"action": "Allow", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                        "ports": [{"portNumber": {"port": 80}}, {"portRange": {"protocol": "UDP", "start": 1, "end": 5}}, {"namedPort": "dns"}]}]}))
        .policy
        .unwrap();
        assert_eq!(p.tier, ClusterTier::Admin);
        let r = &p.egress[0];
        assert_eq!(r.action, Action::Accept);
        assert_eq!(
            r.ports,
            vec![
                TierPort::Range(Protocol::Tcp, 80, 80),
                TierPort::Range(Protocol::Udp, 1, 5),
                TierPort::Named("dns".into())
            ]
        );
        let b = anp(
            "BANP",
            "default",
            json!({"subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
        )
        .policy
        .unwrap();
        assert_eq!((b.tier, b.priority), (ClusterTier::Baseline, 1001));
    }

    #[test]
    fn invalid_objects_name_the_field() {
        let subject = json!({"namespaces": {}});
        assert_eq!(
            err(cnp(json!({"priority": 1, "subject": subject}))).0,
            "spec.tier"
        );
        assert_eq!(
            err(cnp(
                json!({"tier": "Tenant", "priority": 1, "subject": subject})
            ))
            .0,
            "spec.tier"
        );
        assert_eq!(
            err(cnp(
                json!({"tier": "Admin", "priority": 1001, "subject": subject})
            ))
            .0,
            "spec.priority"
        );
        assert_eq!(
            err(cnp(json!({"tier": "Admin", "priority": 1, "subject": {}}))).0,
            "spec.subject"
        );
        let rule = |r: serde_json::Value| {
            err(cnp(
                json!({"tier": "Admin", "priority": 1, "subject": subject, "egress": [r]}),
            ))
            .0
        };
        assert_eq!(
            rule(json!({"action": "Allow", "to": [{"namespaces": {}}]})),
            "spec.egress[0].action"
        );
        assert_eq!(rule(json!({"action": "Deny"})), "spec.egress[0].to");
        assert_eq!(
            rule(json!({"action": "Deny", "to": [{"namespaces": {}, "nodes": {}}]})),
            "spec.egress[0].to[0]"
        );
        assert_eq!(
            rule(json!({"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]})),
            "spec.egress[0].to[0].networks[0]"
        );
        assert_eq!(
            rule(json!({"action": "Deny", "to": [{"namespaces": {}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]})),
            "spec.egress[0].protocols[0].tcp.destinationPort.range"
        );
        assert_eq!(
            rule(
                json!({"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                "protocols": [{"destinationNamedPort": "web"}]})
            ),
            "spec.egress[0]"
        );
        let ingress = err(cnp(
            json!({"tier": "Admin", "priority": 1, "subject": subject,
            "ingress": [{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]}),
        ));
        assert_eq!(ingress.0, "spec.ingress[0].from[0].networks");
        assert_eq!(
            err(anp("BANP", "other", json!({"subject": subject}))).0,
            "metadata.name"
        );
        assert_eq!(
            err(anp(
                "BANP",
                "default",
                json!({"subject": subject,
                "egress": [{"action": "Pass", "to": [{"namespaces": {}}]}]})
            ))
            .0,
            "spec.egress[0].action"
        );
        assert_eq!(
            err(anp(
                "ANP",
                "a",
                json!({"priority": 1, "subject": subject,
                "egress": [{"action": "Allow", "to": [{"namespaces": {}}],
                            "ports": [{"portNumber": {"protocol": "ICMP", "port": 1}}]}]})
            ))
            .0,
            "spec.egress[0].ports[0].portNumber.protocol"
        );
    }

    #[test]
    fn unknown_peers_fail_closed_and_domain_names_are_reported() {
        let c = cnp(
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
            "egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
                       {"action": "Accept", "to": [{}]},
                       {"action": "Pass", "to": [{"future": {}}]}]}),
        );
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert_eq!(
            c.warnings[0].field.as_deref(),
            Some("spec.egress[0].to[0].domainNames")
        );
        let p = c.policy.unwrap();
        assert!(matches!(p.egress[0].peers[0], TierPeer::DomainNames(_)));
        assert!(!p.egress[1].deny_all);
        assert_eq!(p.egress[1].action, Action::Accept);
        assert!(p.egress[2].deny_all);
        assert_eq!(p.egress[2].action, Action::Deny);
    }
}
