//! Where the workspace is.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `testinfra/kit`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testinfra/kit lives in the workspace")
        .to_path_buf()
}

/// The flowwatch package's directory (its `tests/fixtures`).
pub fn package() -> PathBuf {
    repo().join("flowwatch")
}
