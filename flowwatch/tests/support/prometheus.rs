//! prometheus test harness
