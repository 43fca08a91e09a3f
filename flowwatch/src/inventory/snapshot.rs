//! Loading an [`super::Inventory`] from `kubectl get ... -o yaml|json` output.
