//! A real, single Kubernetes node for flowwatch's tests and for `cargo xtask cluster up|down`.
//! Test infrastructure only: not part of the product.
//!
//! Everything runs inside a network namespace of its own that has **no default route**: the node
//! address, the pod network and the Service range exist only there, so nothing the node or its
//! pods send can leave the machine. The components that write to fixed host paths (containerd,
//! kubelet, kube-proxy, ...) also share a private mount namespace where `/run`, `/var/lib` and
//! `/var/log` are fresh tmpfs, tracefs is mounted, and the kernel tunables kubelet writes at start
//! (`kernel.panic`, `vm.overcommit_memory`, ...) are plain files bound over `/proc/sys`: the
//! node changes nothing of the machine.
//!
//! Teardown ([`teardown`]) works from the state file the node writes as it starts, so it also
//! cleans up after a crashed test or a `cluster up` whose shell is gone, and [`leftovers`] checks
//! that nothing is left: processes, mounts, links, the netns, cgroups, the state folder.

pub mod bins;
pub mod images;
pub mod node;
pub mod sys;
pub mod teardown;

pub use bins::Binaries;
pub use node::{Node, NodeOptions};
pub use teardown::{leftovers, teardown, HostSnapshot};
