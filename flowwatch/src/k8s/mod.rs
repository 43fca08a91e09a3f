//! Kubernetes edge: kube-rs watchers and reflectors that feed the inventory.
