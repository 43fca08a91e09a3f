//! Idempotent installation of the build and test prerequisites.

use anyhow::Result;

pub fn run() -> Result<()> {
    Ok(())
}
