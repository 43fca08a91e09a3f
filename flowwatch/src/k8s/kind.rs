//! The kinds the agent watches, and their `kind` label.
//!
//! The kind is the metric catalogue's [`WatchedKind`]: one enum, so the `kind` label of every
//! family is the kind itself, not a mapping of it.

use prometheus_client::encoding::EncodeLabelSet;

pub use crate::metrics::WatchedKind as Kind;

impl Kind {
    /// The core kinds: watched always, and the agent is not ready until each has listed.
    pub const CORE: [Kind; 8] = [
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

    /// Whether this is one of the core kinds.
    pub fn is_core(self) -> bool {
        idx(self) < Kind::CORE.len()
    }
}

/// How many kinds there are.
pub(super) const KINDS: usize = Kind::CORE.len() + Kind::OPTIONAL.len();

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

/// The kind's slot in per-kind arrays (declaration order: core kinds first).
pub(super) fn idx(kind: Kind) -> usize {
    kind as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::SyncStatus;

    #[test]
    fn every_kind_has_the_same_kind_label_value_in_every_family() {
        assert_eq!(KINDS, Kind::ALL.len());
        for (i, kind) in Kind::CORE.iter().chain(&Kind::OPTIONAL).enumerate() {
            assert_eq!(
                idx(*kind),
                i,
                "{kind}: core kinds first, in declaration order"
            );
        }
        // The kube_* families' `kind` value of each kind is the staleness family's.
        let status = SyncStatus::default();
        let mut registry = prometheus_client::registry::Registry::default();
        status.register(&mut registry);
        for &kind in Kind::ALL {
            status.objects.get_or_create(&KindLabels { kind }).set(1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for &kind in Kind::ALL {
            let want = format!("kube_objects{{kind=\"{}\"}} 1", kind.as_str());
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
    }
}
