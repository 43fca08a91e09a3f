//go:build tools

// Package tools pins upstream Prometheus, built with Kubernetes service discovery (Debian's
// prometheus is built without it), so the node test scrapes the agent through pod and endpoint
// discovery as a user's Prometheus would. Test infrastructure only: the product has no Go.
// `cargo xtask k8s-bins` builds its `prometheus` command into the cache with the build tags
// `remove_all_sd,enable_kubernetes_sd` (only the Kubernetes discovery compiled in).
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
