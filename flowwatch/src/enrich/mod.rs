//! Enrichment: IP address -> pod, workload, node, service or external network (pure).
