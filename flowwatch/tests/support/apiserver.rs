//! apiserver test harness
