//! HTTP edge: /metrics, /healthz, /readyz.
