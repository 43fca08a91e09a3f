//! Deploy assets: render deploy/manifests from the Helm chart.

use anyhow::Result;

pub fn render_manifests() -> Result<()> {
    anyhow::bail!("not built yet")
}
