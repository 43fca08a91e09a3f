//! Label values and label sets. Every label value is either a bounded enum or a Kubernetes
//! name (namespace / workload) held by [`Name`]; never a pod IP or an ephemeral port.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::model::{Outcome, Protocol};
use crate::policy;

/// Writes `s` as a label value, escaping what the exposition formats require.
pub(crate) fn write_escaped(encoder: &mut LabelValueEncoder, s: &str) -> std::fmt::Result {
    if !s.contains(['\\', '"', '\n']) {
        return encoder.write_str(s);
    }
    for c in s.chars() {
        match c {
            '\\' => encoder.write_str("\\\\")?,
            '"' => encoder.write_str("\\\"")?,
            '\n' => encoder.write_str("\\n")?,
            c => encoder.write_char(c)?,
        }
    }
    Ok(())
}

/// A Kubernetes name used as a label value (namespace or workload). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn new(s: impl Into<Arc<str>>) -> Name {
        Name(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(Arc::from(s))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        write_escaped(encoder, &self.0)
    }
}

/// Implements `as_str`, `Display` and `EncodeLabelValue` for a label enum.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// A policy verdict, overall or for one side (see docs/policy.md, "Verdicts").
    Verdict {
        /// Governed by at least one policy, and allowed.
        Allowed => "allowed",
        /// Governed, and no policy allows it.
        Denied => "denied",
        /// No policy of this direction selects the pod (overall: no side is governed).
        Uncovered => "uncovered",
        /// The endpoint of this side is not a pod (node, host network, external address).
        NotApplicable => "not_applicable",
        /// Not judged: the destination is a Service whose backend the agent could not learn
        /// (policies apply to the backend pod, not to the Service address).
        Unknown => "unknown",
    }
}

// The label values of the policy engine's answers are the engine's own words: each mapping
// below is the one place a domain value becomes a label, and `domain_words_are_label_values`
// (metrics tests) checks the spellings agree.

impl From<policy::Verdict> for Verdict {
    fn from(v: policy::Verdict) -> Verdict {
        match v {
            policy::Verdict::Allowed => Verdict::Allowed,
            policy::Verdict::Denied => Verdict::Denied,
            policy::Verdict::Uncovered => Verdict::Uncovered,
        }
    }
}

impl From<policy::SideVerdict> for Verdict {
    fn from(v: policy::SideVerdict) -> Verdict {
        match v {
            policy::SideVerdict::Allowed => Verdict::Allowed,
            policy::SideVerdict::Denied => Verdict::Denied,
            policy::SideVerdict::Uncovered => Verdict::Uncovered,
            policy::SideVerdict::NotApplicable => Verdict::NotApplicable,
        }
    }
}

impl From<policy::Tier> for TierLabel {
    fn from(t: policy::Tier) -> TierLabel {
        match t {
            policy::Tier::Admin => TierLabel::Admin,
            policy::Tier::NetworkPolicy => TierLabel::NetworkPolicy,
            policy::Tier::Baseline => TierLabel::Baseline,
            policy::Tier::None => TierLabel::None,
        }
    }
}

label_enum! {
    /// The policy tier that decided a connection's overall verdict (the `tier` label): for a
    /// denied connection, the tier of the side that denies it (egress first: the packet meets
    /// it first); for an allowed one, the tier of the side that allows it (egress first);
    /// `none` when no tier decided (`uncovered`, `unknown`). See docs/policy.md, "Tiers".
    TierLabel {
        /// An Admin-tier ClusterNetworkPolicy or an AdminNetworkPolicy.
        Admin => "admin",
        /// NetworkPolicies.
        NetworkPolicy => "networkpolicy",
        /// A Baseline-tier ClusterNetworkPolicy or the BaselineAdminNetworkPolicy.
        Baseline => "baseline",
        None => "none",
    }
}

label_enum! {
    /// Whether CNI-specific policies (not evaluated: CiliumNetworkPolicy, Calico and Antrea
    /// policies) may select a pod of the connection and change what the evaluated policies
    /// say (the `cni_policy_present` label). Unless declared irrelevant.
    CniPresence {
        Yes => "true",
        No => "false",
    }
}

label_enum! {
    /// The CNI-specific policy kinds counted in `flowwatch_cni_policy_objects` (the kind names
    /// of `policy coverage`; Calico's and Antrea's `NetworkPolicy` carry their group).
    CniPolicyKind {
        CiliumNetworkPolicy => "CiliumNetworkPolicy",
        CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        CalicoNetworkPolicy => "projectcalico.org/NetworkPolicy",
        CalicoCrdNetworkPolicy => "crd.projectcalico.org/NetworkPolicy",
        /// Calico's, in either API group.
        GlobalNetworkPolicy => "GlobalNetworkPolicy",
        AntreaNetworkPolicy => "crd.antrea.io/NetworkPolicy",
        AntreaClusterNetworkPolicy => "crd.antrea.io/ClusterNetworkPolicy",
    }
}

label_enum! {
    /// What kind of thing an endpoint is. Pods are named by their top-level owner.
    WorkloadKind {
        Deployment => "deployment",
        StatefulSet => "statefulset",
        DaemonSet => "daemonset",
        /// A ReplicaSet without a Deployment.
        ReplicaSet => "replicaset",
        /// A Job without a CronJob.
        Job => "job",
        CronJob => "cronjob",
        /// A pod without a controller (named by the pod).
        Pod => "pod",
        /// A pod of a controller flowwatch does not know, such as an Argo Rollout or another
        /// custom resource (named `Kind/name`). A pod like the others; not `other`, which
        /// is the overflow bucket only.
        Custom => "custom",
        /// A node or a host-network pod (the node's address).
        Node => "node",
        /// An address outside the cluster.
        External => "external",
        /// A cluster address not (yet) known to the inventory.
        Unknown => "unknown",
        /// The budget's overflow bucket.
        Other => "other",
    }
}

/// A pod's workload kind as a label: controllers flowwatch does not know are `custom`, and a
/// ReplicationController counts as a ReplicaSet (both are pod sets without a rollout owner).
impl From<crate::enrich::WorkloadKind> for WorkloadKind {
    fn from(k: crate::enrich::WorkloadKind) -> WorkloadKind {
        use crate::enrich::WorkloadKind as K;
        match k {
            K::Deployment => WorkloadKind::Deployment,
            K::ReplicaSet | K::ReplicationController => WorkloadKind::ReplicaSet,
            K::StatefulSet => WorkloadKind::StatefulSet,
            K::DaemonSet => WorkloadKind::DaemonSet,
            K::Job => WorkloadKind::Job,
            K::CronJob => WorkloadKind::CronJob,
            K::Pod => WorkloadKind::Pod,
            K::Other => WorkloadKind::Custom,
        }
    }
}

label_enum! {
    /// The final outcome of a connection attempt (pending flows are not counted yet).
    OutcomeLabel {
        Established => "established",
        /// TCP attempt refused, reset, timed out or dropped.
        Failed => "failed",
        /// UDP/SCTP flow that never got a packet back.
        Unanswered => "unanswered",
    }
}

impl OutcomeLabel {
    /// `None` for [`Outcome::Pending`] (not an outcome yet) and [`Outcome::Midstream`] (not
    /// a new connection: only its traffic is counted).
    pub fn from_outcome(o: Outcome) -> Option<OutcomeLabel> {
        match o {
            Outcome::Pending | Outcome::Midstream => None,
            Outcome::Established => Some(OutcomeLabel::Established),
            Outcome::Failed => Some(OutcomeLabel::Failed),
            Outcome::Unanswered => Some(OutcomeLabel::Unanswered),
        }
    }
}

label_enum! {
    /// The transport protocol.
    ProtocolLabel {
        Tcp => "TCP",
        Udp => "UDP",
        Sctp => "SCTP",
    }
}

impl From<Protocol> for ProtocolLabel {
    fn from(p: Protocol) -> ProtocolLabel {
        match p {
            Protocol::Tcp => ProtocolLabel::Tcp,
            Protocol::Udp => ProtocolLabel::Udp,
            Protocol::Sctp => ProtocolLabel::Sctp,
        }
    }
}

label_enum! {
    /// Where an edge runs, so alerts can select cross-namespace traffic in one matcher.
    Scope {
        SameNamespace => "same_namespace",
        CrossNamespace => "cross_namespace",
        /// One end is not a pod (node, external, unknown).
        NonPod => "non_pod",
    }
}

label_enum! {
    /// Direction of bytes and packets relative to the connection's initiator.
    TrafficDirection {
        /// initiator -> responder
        Forward => "forward",
        /// responder -> initiator
        Reverse => "reverse",
    }
}

label_enum! {
    /// The kernel maps whose fill ratio is exported.
    KernelMap {
        /// The FLOWS hash map (the agent sets it on every poll).
        Flows => "flows",
        /// The EVENTS ring buffer: not set by the agent (it has no fill figure for it; an
        /// overflow shows in `kernel_events_lost_total`), so not in `docs/metrics.md`.
        Events => "events",
    }
}

label_enum! {
    /// The Kubernetes kinds the agent watches (`crate::k8s::Kind`): the `kind` label of
    /// `flowwatch_watch_staleness_seconds` and of the `flowwatch_kube_*` families (one label
    /// name and one spelling per dimension). The eight core kinds first, then the optional
    /// kinds, watched while the API server serves them.
    WatchedKind {
        Namespace => "Namespace",
        Node => "Node",
        Pod => "Pod",
        Service => "Service",
        EndpointSlice => "EndpointSlice",
        NetworkPolicy => "NetworkPolicy",
        ReplicaSet => "ReplicaSet",
        Job => "Job",
        // policy.networking.k8s.io (network-policy-api), evaluated
        ClusterNetworkPolicy => "ClusterNetworkPolicy",
        AdminNetworkPolicy => "AdminNetworkPolicy",
        BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        // CNI-specific policy kinds, counted only (metadata-only watches)
        CiliumNetworkPolicy => "CiliumNetworkPolicy",
        CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        CalicoNetworkPolicy => "CalicoNetworkPolicy",
        CalicoGlobalNetworkPolicy => "CalicoGlobalNetworkPolicy",
        CalicoCrdNetworkPolicy => "CalicoCrdNetworkPolicy",
        CalicoCrdGlobalNetworkPolicy => "CalicoCrdGlobalNetworkPolicy",
        AntreaNetworkPolicy => "AntreaNetworkPolicy",
        AntreaClusterNetworkPolicy => "AntreaClusterNetworkPolicy",
    }
}

label_enum! {
    /// Why flow data was lost (the `reason` label of `flowwatch_kernel_events_lost_total`):
    /// each reason counts in its own unit.
    LossReason {
        /// Events (socket state changes, new UDP/SCTP flows) the kernel ring buffer had no room
        /// for (STATS slots RINGBUF_FULL and RINGBUF_FULL_SOCKET).
        RingbufFull => "ringbuf_full",
        /// Packets of flows that were not in the kernel flow map and could not be inserted
        /// (STATS slot FLOWS_MAP_FULL): every packet of such a flow counts.
        FlowMapFull => "flow_map_full",
        /// Flow entries the agent refused at its own bound on flows in flight.
        AgentFlowLimit => "agent_flow_limit",
    }
}

label_enum! {
    /// Why flow-log records were dropped (the `reason` label of
    /// `flowwatch_flow_log_records_dropped_total`).
    FlowLogDropReason {
        /// The disk (or quota) is full.
        NoSpace => "no_space",
        /// Another write error.
        IoError => "io_error",
        /// The log file could not be (re)opened or rotated (its directory is gone, permissions).
        OpenFailed => "open_failed",
    }
}

label_enum! {
    /// The edge families the series budget governs (the `family` label of the budget metrics).
    FamilyName {
        Connections => "connections",
        Uncovered => "uncovered_connections",
        Drift => "enforcement_drift_connections",
        Blocked => "blocked_attempts",
        Bytes => "flow_bytes",
        Packets => "flow_packets",
        /// `flowwatch_edge_first_seen_timestamp_seconds`: the edges this node remembers
        /// (`crate::first_seen`), bounded by the same budget.
        EdgeFirstSeen => "edge_first_seen",
    }
}

label_enum! {
    /// Why the known-edges state file was not read or written (the `reason` label of
    /// `flowwatch_edge_state_errors_total`).
    EdgeStateError {
        /// Not JSON of the expected shape: truncated, garbage, an invalid value.
        Corrupt => "corrupt",
        /// Larger than the series budget allows.
        TooLarge => "too_large",
        /// Written by an agent of another format version.
        UnsupportedVersion => "unsupported_version",
        /// The file exists but cannot be read.
        ReadFailed => "read_failed",
        /// The file cannot be written (the agent keeps its set in memory and tries again).
        WriteFailed => "write_failed",
    }
}

/// A destination port, or the overflow bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Number(u16),
    Other,
}

impl EncodeLabelValue for Port {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self {
            Port::Number(n) => write!(encoder, "{n}"),
            Port::Other => encoder.write_str("other"),
        }
    }
}

/// One end of an edge: a workload in a namespace, or a non-pod endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeEnd {
    /// Empty for non-pod endpoints.
    pub namespace: Name,
    pub workload: Name,
    pub kind: WorkloadKind,
}

impl EdgeEnd {
    /// A pod's top-level owner (`kind` is one of the pod kinds).
    pub fn workload(
        namespace: impl Into<Name>,
        workload: impl Into<Name>,
        kind: WorkloadKind,
    ) -> EdgeEnd {
        EdgeEnd {
            namespace: namespace.into(),
            workload: workload.into(),
            kind,
        }
    }
    /// A node or a host-network pod: `namespace=""`, `workload="node"`.
    pub fn node() -> EdgeEnd {
        EdgeEnd::workload("", "node", WorkloadKind::Node)
    }
    /// An address outside the cluster: `namespace=""`, `workload="external"`.
    pub fn external() -> EdgeEnd {
        EdgeEnd::workload("", "external", WorkloadKind::External)
    }
    /// A cluster address the inventory does not know (yet): `workload="unknown"`.
    pub fn unknown() -> EdgeEnd {
        EdgeEnd::workload("", "unknown", WorkloadKind::Unknown)
    }
    /// Whether this end is a pod (has a namespace). `Other` is the overflow bucket: whatever
    /// it folded, it names no pod.
    pub fn is_pod(&self) -> bool {
        !matches!(
            self.kind,
            WorkloadKind::Node
                | WorkloadKind::External
                | WorkloadKind::Unknown
                | WorkloadKind::Other
        )
    }
}

/// One observed connection, enriched and evaluated: what the lead's agent hands to
/// [`crate::metrics::Metrics::record_flow`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowEdge {
    pub src: EdgeEnd,
    pub dst: EdgeEnd,
    /// The responder's (listening) port.
    pub dst_port: u16,
    pub protocol: Protocol,
    /// Overall verdict: denied if a side denies, uncovered if no side is governed, else allowed.
    pub verdict: Verdict,
    /// Egress side, evaluated on the source pod.
    pub egress: Verdict,
    /// Ingress side, evaluated on the destination pod.
    pub ingress: Verdict,
    /// The tier that decided the overall verdict.
    pub tier: TierLabel,
    /// CNI-specific policies may select a pod of this connection (either side).
    pub cni_policy_present: CniPresence,
}

impl FlowEdge {
    pub(crate) fn edge_labels(&self) -> EdgeLabels {
        EdgeLabels {
            src_namespace: self.src.namespace.clone(),
            src_workload: self.src.workload.clone(),
            src_kind: self.src.kind,
            dst_namespace: self.dst.namespace.clone(),
            dst_workload: self.dst.workload.clone(),
            dst_kind: self.dst.kind,
            dst_port: Port::Number(self.dst_port),
            protocol: self.protocol.into(),
        }
    }

    pub(crate) fn scope(&self) -> Scope {
        if !self.src.is_pod() || !self.dst.is_pod() {
            Scope::NonPod
        } else if self.src.namespace == self.dst.namespace {
            Scope::SameNamespace
        } else {
            Scope::CrossNamespace
        }
    }
}

/// The labels naming an edge; shared (flattened) by every edge family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EdgeLabels {
    pub src_namespace: Name,
    pub src_workload: Name,
    pub src_kind: WorkloadKind,
    pub dst_namespace: Name,
    pub dst_workload: Name,
    pub dst_kind: WorkloadKind,
    pub dst_port: Port,
    pub protocol: ProtocolLabel,
}

/// How much of an edge the budget folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Keep both namespaces; workloads, kinds and port become `other`.
    Namespace,
    /// Everything but the protocol becomes `other`.
    All,
}

impl EdgeLabels {
    pub(crate) fn folded(&self, fold: Fold) -> EdgeLabels {
        let other = Name::from("other");
        let (src_ns, dst_ns) = match fold {
            Fold::Namespace => (self.src_namespace.clone(), self.dst_namespace.clone()),
            Fold::All => (other.clone(), other.clone()),
        };
        EdgeLabels {
            src_namespace: src_ns,
            src_workload: other.clone(),
            src_kind: WorkloadKind::Other,
            dst_namespace: dst_ns,
            dst_workload: other,
            dst_kind: WorkloadKind::Other,
            dst_port: Port::Other,
            protocol: self.protocol,
        }
    }
}

/// Label sets of the edge families: each one flattens [`EdgeLabels`] and adds bounded enums.
pub(crate) trait HasEdge:
    Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static
{
    fn edge(&self) -> &EdgeLabels;
    fn with_edge(&self, edge: EdgeLabels) -> Self;
}

macro_rules! edge_label_set {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        pub struct $name {
            #[prometheus(flatten)]
            pub edge: EdgeLabels,
            $(pub $field: $ty),*
        }
        impl HasEdge for $name {
            fn edge(&self) -> &EdgeLabels { &self.edge }
            fn with_edge(&self, edge: EdgeLabels) -> Self {
                $name { edge, $($field: self.$field),* }
            }
        }
    };
}

edge_label_set! {
    /// `flowwatch_connections_total`
    ConnectionLabels { verdict: Verdict, egress_verdict: Verdict, ingress_verdict: Verdict, outcome: OutcomeLabel, tier: TierLabel }
}
edge_label_set! {
    /// `flowwatch_uncovered_connections_total`
    UncoveredLabels { scope: Scope, outcome: OutcomeLabel }
}
edge_label_set! {
    /// `flowwatch_enforcement_drift_connections_total`
    DriftLabels { scope: Scope, egress_verdict: Verdict, ingress_verdict: Verdict, tier: TierLabel, cni_policy_present: CniPresence }
}
edge_label_set! {
    /// `flowwatch_blocked_attempts_total`
    BlockedLabels { scope: Scope, verdict: Verdict, egress_verdict: Verdict, ingress_verdict: Verdict, outcome: OutcomeLabel, tier: TierLabel }
}
edge_label_set! {
    /// `flowwatch_flow_bytes_total`, `flowwatch_flow_packets_total`
    TrafficLabels { verdict: Verdict, direction: TrafficDirection }
}

/// `{family}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: FamilyName,
}

/// `{kind}` of the CNI policy objects
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniKindLabels {
    pub kind: CniPolicyKind,
}

/// `{map}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MapLabels {
    pub map: KernelMap,
}

/// `{kind}`: the watched kind, in `watch_staleness_seconds` and every `kube_*` family
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: WatchedKind,
}

/// `{reason}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LossLabels {
    pub reason: LossReason,
}

/// `{reason}` of the known-edges state file
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EdgeStateLabels {
    pub reason: EdgeStateError,
}

/// `{scope}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: Scope,
}

/// `{reason}` of the flow log
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FlowLogDropLabels {
    pub reason: FlowLogDropReason,
}

/// `{version, commit, ebpf_object_sha256}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
    pub ebpf_object_sha256: String,
}
