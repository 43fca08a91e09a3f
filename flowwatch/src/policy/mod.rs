//! The NetworkPolicy engine: per-direction verdicts with reasons (pure, no I/O).
