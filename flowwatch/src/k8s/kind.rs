//! The kinds the agent watches, and their `kind` label.
//!
//! The kind is the metric catalogue's [`WatchedKind`]: one enum, so the `kind` label of every
//! family is the kind itself, not a mapping of it.

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

/// The kind's slot in per-kind arrays (declaration order: core kinds first).
pub(super) fn idx(kind: Kind) -> usize {
    kind as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    // The `kind` label's spelling in every family is checked by the catalogue's tests
    // (metrics/kube_families.rs); here, the per-kind arrays' layout.
    #[test]
    fn core_kinds_come_first_in_declaration_order() {
        assert_eq!(KINDS, Kind::ALL.len());
        for (i, kind) in Kind::CORE.iter().chain(&Kind::OPTIONAL).enumerate() {
            assert_eq!(
                idx(*kind),
                i,
                "{kind}: core kinds first, in declaration order"
            );
        }
    }
}
