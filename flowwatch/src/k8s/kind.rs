//! The kinds the agent watches, and their `kind` label.
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

use crate::metrics::WatchedResource;

/// The kinds flowwatch watches: the eight core kinds, always, and the optional kinds (see
/// [`optional`]) while the API server serves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelValue)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    ReplicaSet,
    Job,
    // policy.networking.k8s.io (network-policy-api), evaluated
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    // CNI-specific policy kinds, counted only (metadata-only watches)
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    CalicoNetworkPolicy,
    CalicoGlobalNetworkPolicy,
    CalicoCrdNetworkPolicy,
    CalicoCrdGlobalNetworkPolicy,
    AntreaNetworkPolicy,
    AntreaClusterNetworkPolicy,
}

impl Kind {
    /// The core kinds: watched always, and the agent is not ready until each has listed.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::ReplicaSet,
        Kind::Job,
    ];

    /// The kinds watched only while their CRD (or aggregated API) is served.
    pub const OPTIONAL: [Kind; 11] = [
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
        Kind::CalicoNetworkPolicy,
        Kind::CalicoGlobalNetworkPolicy,
        Kind::CalicoCrdNetworkPolicy,
        Kind::CalicoCrdGlobalNetworkPolicy,
        Kind::AntreaNetworkPolicy,
        Kind::AntreaClusterNetworkPolicy,
    ];

    /// Every kind, core first.
    pub const EVERY: [Kind; KINDS] = {
        let mut all = [Kind::Namespace; KINDS];
        let mut i = 0;
        while i < KINDS {
            all[i] = if i < 8 {
                Kind::ALL[i]
            } else {
                Kind::OPTIONAL[i - 8]
            };
            i += 1;
        }
        all
    };

    /// Whether this is one of the core kinds.
    pub fn is_core(self) -> bool {
        idx(self) < Kind::ALL.len()
    }
}

/// How many kinds there are.
pub(super) const KINDS: usize = 19;

/// The `kind` label of `flowwatch_watch_staleness_seconds` for each watched kind (the same
/// value as the `kind` label of the `flowwatch_kube_*` families).
impl From<Kind> for WatchedResource {
    fn from(kind: Kind) -> WatchedResource {
        match kind {
            Kind::Namespace => WatchedResource::Namespaces,
            Kind::Node => WatchedResource::Nodes,
            Kind::Pod => WatchedResource::Pods,
            Kind::Service => WatchedResource::Services,
            Kind::EndpointSlice => WatchedResource::EndpointSlices,
            Kind::NetworkPolicy => WatchedResource::NetworkPolicies,
            Kind::ReplicaSet => WatchedResource::ReplicaSets,
            Kind::Job => WatchedResource::Jobs,
            Kind::ClusterNetworkPolicy => WatchedResource::ClusterNetworkPolicies,
            Kind::AdminNetworkPolicy => WatchedResource::AdminNetworkPolicies,
            Kind::BaselineAdminNetworkPolicy => WatchedResource::BaselineAdminNetworkPolicies,
            Kind::CiliumNetworkPolicy => WatchedResource::CiliumNetworkPolicies,
            Kind::CiliumClusterwideNetworkPolicy => {
                WatchedResource::CiliumClusterwideNetworkPolicies
            }
            Kind::CalicoNetworkPolicy => WatchedResource::CalicoNetworkPolicies,
            Kind::CalicoGlobalNetworkPolicy => WatchedResource::CalicoGlobalNetworkPolicies,
            Kind::CalicoCrdNetworkPolicy => WatchedResource::CalicoCrdNetworkPolicies,
            Kind::CalicoCrdGlobalNetworkPolicy => WatchedResource::CalicoCrdGlobalNetworkPolicies,
            Kind::AntreaNetworkPolicy => WatchedResource::AntreaNetworkPolicies,
            Kind::AntreaClusterNetworkPolicy => WatchedResource::AntreaClusterNetworkPolicies,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

pub(super) fn idx(kind: Kind) -> usize {
    kind as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::SyncStatus;

    #[test]
    fn every_kind_has_the_same_kind_label_value_in_every_family() {
        let labels: std::collections::BTreeSet<&str> = Kind::EVERY
            .iter()
            .map(|k| WatchedResource::from(*k).as_str())
            .collect();
        assert_eq!(labels.len(), Kind::EVERY.len());
        assert_eq!(labels.len(), WatchedResource::ALL.len());
        // The kube_* families' `kind` value of each kind is the staleness family's.
        let status = SyncStatus::default();
        let mut registry = prometheus_client::registry::Registry::default();
        status.register(&mut registry);
        for kind in Kind::EVERY {
            status.objects.get_or_create(&KindLabels { kind }).set(1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for kind in Kind::EVERY {
            let want = format!(
                "kube_objects{{kind=\"{}\"}} 1",
                WatchedResource::from(kind).as_str()
            );
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
    }
}
