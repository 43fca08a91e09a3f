//go:build tools

// Package tools pins np-guard netpol-analyzer, the reference the policy agreement test
// (flowwatch/tests/policy_npguard.rs) compares flowwatch's offline policy CLI with. Test
// infrastructure only: the product has no Go. `cargo xtask k8s-bins` builds its `k8snetpolicy`
// command into the cache.
package tools

import _ "github.com/np-guard/netpol-analyzer/cmd/netpolicy"
