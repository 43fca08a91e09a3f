//! What the offline CLI reads: snapshot files and folders of manifests (a Git repository),
//! with workloads standing for their pods.
//!
//! A folder is read recursively: every `*.yaml`, `*.yml` and `*.json` file under it, in
//! sorted path order (so merged results, and which copy of an object listed twice wins, do
//! not depend on the file system's order). Hidden files and folders (`.git`, `.github`) are
//! skipped. A file that is not YAML or JSON fails the load, whether named or found in a
//! folder: a policy it may hold would be missing from every verdict.

use std::path::{Path, PathBuf};

use super::snapshot::{self, SnapshotError};
use super::{Inventory, ObjectError};

/// The files `paths` stand for: files as given, folders expanded recursively.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| io_error(path, source))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SnapshotError> {
    let entries = std::fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Follows symbolic links, as `kubectl apply -R` does.
        let meta = std::fs::metadata(&path).map_err(|source| io_error(&path, source))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if meta.is_file() && is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn io_error(path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads files and folders into one inventory whose pods include the stand-ins of its
/// workloads (see [`super::workloads`]). Objects that could not be used are returned.
pub fn load(paths: &[PathBuf]) -> Result<(Inventory, Vec<ObjectError>), SnapshotError> {
    let files = expand(paths)?;
    let (mut inventory, errors) = snapshot::load_files(&files)?;
    with_workloads_as_pods(&mut inventory);
    Ok((inventory, errors))
}

/// Moves the workloads' stand-in pods into `pods`, where the policy engine sees them.
pub fn with_workloads_as_pods(inventory: &mut Inventory) {
    let workloads = std::mem::take(&mut inventory.workloads);
    inventory.pods.extend(workloads);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_read_recursively_in_sorted_order_without_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/nested")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        for f in [
            "b/nested/z.yml",
            "b/m.json",
            "a/x.yaml",
            "top.yaml",
            "README.md",
            ".git/config.yaml",
            ".hidden.yaml",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let files = expand(&[root.to_path_buf()]).unwrap();
        let rel: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["a/x.yaml", "b/m.json", "b/nested/z.yml", "top.yaml"]);
        assert!(matches!(
            expand(&[root.join("missing")]),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn workloads_become_pods_of_namespaces_that_may_exist_only_in_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.yaml"),
            "kind: Deployment\napiVersion: apps/v1\nmetadata: {namespace: shop, name: web}\n\
             spec: {template: {metadata: {labels: {app: web}}}}\n---\n\
             kind: List\nitems:\n- kind: StatefulSet\n  metadata: {namespace: data, name: db}\n  \
             spec: {template: {metadata: {labels: {app: db}}}}\n",
        )
        .unwrap();
        let (inv, errors) = load(&[dir.path().to_path_buf()]).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(inv.workloads.is_empty());
        let names: Vec<_> = inv
            .pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["deployment/web", "statefulset/db"]);
    }
}
