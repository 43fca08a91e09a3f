//! What a snapshot reload accepts: all or nothing.
//!
//! A reload replaces the last good inventory only when every configured path gives at least
//! what a cluster dump gives: each file is read consistently (its size and modification time
//! unchanged across the read), parses, and holds at least one Kubernetes document, that is an
//! object or a list with a `kind` (`kubectl get ... -o yaml` always prints one, even for no
//! objects); each directory holds at least one such file. Anything less (an empty file, a bare
//! YAML string, a directory with no snapshot file, a file that vanished) fails the reload: it is
//! counted in `flowwatch_snapshot_reload_errors_total`, logged with the path and the reason,
//! and the last good inventory stays in force.
//!
//! An intentionally empty cluster is a document that says so:
//!
//! ```yaml
//! apiVersion: v1
//! kind: List
//! items: []
//! ```
//!
//! Writers should replace a snapshot by renaming a complete file over it (`kubectl get ... >
//! snapshot.yaml.tmp && mv snapshot.yaml.tmp snapshot.yaml`): a reader then sees the old file or
//! the new one, never half of one. For writers that do not (`kubectl get ... > snapshot.yaml`),
//! the agent loads a changed file only once its size and modification time have stayed the
//! same for a poll, and a file that changes while it is read is read again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::inventory::snapshot::{self, SnapshotError};
use crate::inventory::{Inventory, ObjectError};

/// How often a file that changed while it was read is read again before the reload fails.
const READ_ATTEMPTS: usize = 3;

/// A file modified more recently than this may still be being written.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Why a reload was refused; the last good inventory stays in force. Each names the path at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no snapshot path given")]
    NoPath,
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the directory holds no snapshot file (*.yaml, *.yml, *.json)", path.display())]
    NoSnapshotFile { path: PathBuf },
    #[error(
        "{}: the file kept changing while it was read ({READ_ATTEMPTS} attempts); write it \
         elsewhere and rename it into place",
        path.display()
    )]
    KeptChanging { path: PathBuf },
    #[error(
        "{}: the file is empty (an empty cluster is written as a document: `kind: List` with \
         `items: []`)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "{}: holds no Kubernetes object or list (no document with a `kind`; an empty cluster \
         is written as `kind: List` with `items: []`)",
        path.display()
    )]
    NoObject { path: PathBuf },
    #[error(transparent)]
    Unreadable(#[from] SnapshotError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReloadError + '_ {
    move |source| ReloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a file is a snapshot file in a directory.
pub fn is_snapshot_file(p: &Path) -> bool {
    p.is_file()
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// The files a configured path stands for; a directory without snapshot files, or a path that
/// does not exist, is an error.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, ReloadError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_error(path))?
        .flatten()
        .map(|e| e.path())
        .filter(|f| is_snapshot_file(f))
        .collect();
    if files.is_empty() {
        return Err(ReloadError::NoSnapshotFile {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

fn stamp(meta: &std::fs::Metadata) -> (Option<SystemTime>, u64) {
    (meta.modified().ok(), meta.len())
}

/// Reads a file whose size and modification time are the same before and after the read;
/// retries a few times when a writer was busy with it.
pub fn read_consistent(path: &Path) -> Result<String, ReloadError> {
    for attempt in 0..READ_ATTEMPTS {
        let before = std::fs::metadata(path).map_err(io_error(path))?;
        let text =
            crate::inventory::limits::read_to_string_bounded(path).map_err(io_error(path))?;
        let after = std::fs::metadata(path).map_err(io_error(path))?;
        if stamp(&before) == stamp(&after) && text.len() as u64 == after.len() {
            return Ok(text);
        }
        std::thread::sleep(Duration::from_millis(50 << attempt));
    }
    Err(ReloadError::KeptChanging {
        path: path.to_path_buf(),
    })
}

/// Loads `paths` (files or directories) all or nothing, as described in the module docs.
/// Objects that do not decode are returned as errors (skipped; the rest is loaded).
pub fn load(paths: &[PathBuf]) -> Result<(Inventory, Vec<ObjectError>), ReloadError> {
    if paths.is_empty() {
        return Err(ReloadError::NoPath);
    }
    let mut files = Vec::new();
    for p in paths {
        files.extend(files_of(p)?);
    }
    let mut inventory = Inventory::default();
    let mut errors = Vec::new();
    for file in &files {
        let origin = file.display().to_string();
        let text = read_consistent(file)?;
        if text.trim_start_matches('\u{feff}').trim().is_empty() {
            return Err(ReloadError::Empty { path: file.clone() });
        }
        let documents = snapshot::add_text(&mut inventory, &mut errors, &text, &origin)?;
        if documents == 0 {
            return Err(ReloadError::NoObject { path: file.clone() });
        }
    }
    Ok((inventory, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error with its causes, as the agent logs it.
    fn text_of(e: &ReloadError) -> String {
        crate::error_chain::Chain(e).to_string()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: n\n";

    #[test]
    fn what_is_not_a_cluster_dump_fails_the_reload_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, reason) in [
            ("empty.yaml", "", "empty"),
            ("blank.yaml", "\n  \n", "empty"),
            ("bom.yaml", "\u{feff}", "empty"),
            ("string.yaml", "hello\n", "no Kubernetes object"),
            ("number.json", "42", "no Kubernetes object"),
            ("null.yaml", "---\n...\n", "no Kubernetes object"),
            (
                "nokind.yaml",
                "metadata:\n  name: x\n",
                "no Kubernetes object",
            ),
        ] {
            let p = write(dir.path(), name, text);
            let e = text_of(&load(&[p]).unwrap_err());
            assert!(e.contains(name) && e.contains(reason), "{name}: {e}");
        }
        let empty_dir = dir.path().join("nothing");
        std::fs::create_dir(&empty_dir).unwrap();
        write(&empty_dir, "notes.txt", "not a snapshot");
        let e = text_of(&load(&[empty_dir]).unwrap_err());
        assert!(e.contains("holds no snapshot file"), "{e}");
        let missing = load(&[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(
            matches!(&missing, ReloadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
        let e = text_of(&missing);
        assert!(
            e.contains("missing.yaml") && e.contains("No such file"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_list_is_an_intentionally_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "empty.yaml",
            "apiVersion: v1\nkind: List\nitems: []\n",
        );
        let (inv, errors) = load(&[p]).unwrap();
        assert!(inv.pods.is_empty() && errors.is_empty());
        let p = write(dir.path(), "empty.json", r#"{"kind":"PodList","items":[]}"#);
        assert!(load(&[p]).is_ok());
    }

    #[test]
    fn one_bad_file_fails_the_whole_reload() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", POD);
        write(dir.path(), "b.yaml", "");
        let e = text_of(&load(&[dir.path().to_path_buf()]).unwrap_err());
        assert!(e.contains("b.yaml"), "{e}");
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let (inv, _) = load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(inv.pods.len(), 1);
    }
}
