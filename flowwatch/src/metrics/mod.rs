//! The metric catalogue: every Prometheus family flowwatch exports, with bounded labels (pure).
