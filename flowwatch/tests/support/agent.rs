//! agent test harness
