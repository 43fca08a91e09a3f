//! The state file of the known edges: `<state dir>/known-edges.json`, JSON with a version,
//! written whole to a temporary file and renamed over the old one (a crash leaves the old file
//! or the new one, never half of one), bounded in size. A file that cannot be used (corrupt,
//! truncated, too large, another version) is reported with the reason and the agent starts
//! with an empty set: never a crash. The shipped alert also asks Prometheus whether an edge was
//! seen before, so an empty set does not turn every edge into an alert.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Seen;
use crate::metrics::labels::{EdgeLabels, Port, ProtocolLabel, WorkloadKind};

/// The format written and the only one read.
pub const VERSION: u32 = 1;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "known-edges.json";

/// Bytes one edge may take in the file (names of up to 253 bytes, JSON escaping aside).
const BYTES_PER_EDGE: u64 = 1024;

/// Why a state file was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("{path}: {size} bytes, more than the {limit} this budget allows")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: version {found}, this agent reads version {VERSION}")]
    UnsupportedVersion { path: String, found: u64 },
    #[error("{path}: not a known-edges file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

/// The largest file accepted for a set of at most `max_edges` edges.
pub fn size_limit(max_edges: usize) -> u64 {
    (max_edges as u64).saturating_mul(BYTES_PER_EDGE) + 4096
}

#[derive(Serialize, Deserialize)]
struct Entry {
    src_namespace: String,
    src_workload: String,
    src_kind: String,
    dst_namespace: String,
    dst_workload: String,
    dst_kind: String,
    dst_port: u16,
    protocol: String,
    first_seen: u64,
    last_seen: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    edges: Vec<Entry>,
}

/// Only the version, read first: a file of another version is reported as such, not as corrupt.
#[derive(Deserialize)]
struct Versioned {
    version: u64,
}

/// The file's bytes for these edges (sorted, so the same set writes the same bytes).
pub fn encode<'a>(edges: impl Iterator<Item = (&'a EdgeLabels, &'a Seen)>) -> Vec<u8> {
    let mut entries: Vec<Entry> = edges
        .filter_map(|(e, s)| {
            let Port::Number(port) = e.dst_port else {
                return None;
            };
            Some(Entry {
                src_namespace: e.src_namespace.to_string(),
                src_workload: e.src_workload.to_string(),
                src_kind: e.src_kind.as_str().to_string(),
                dst_namespace: e.dst_namespace.to_string(),
                dst_workload: e.dst_workload.to_string(),
                dst_kind: e.dst_kind.as_str().to_string(),
                dst_port: port,
                protocol: e.protocol.as_str().to_string(),
                first_seen: s.first,
                last_seen: s.last,
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        (
            &a.src_namespace,
            &a.src_workload,
            &a.dst_namespace,
            &a.dst_workload,
        )
            .cmp(&(
                &b.src_namespace,
                &b.src_workload,
                &b.dst_namespace,
                &b.dst_workload,
            ))
            .then(a.dst_port.cmp(&b.dst_port))
            .then(a.protocol.cmp(&b.protocol))
            .then(a.src_kind.cmp(&b.src_kind))
            .then(a.dst_kind.cmp(&b.dst_kind))
    });
    let mut out = serde_json::to_vec(&File {
        version: VERSION,
        edges: entries,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

fn kind(s: &str) -> Option<WorkloadKind> {
    WorkloadKind::ALL.iter().copied().find(|k| k.as_str() == s)
}

fn protocol(s: &str) -> Option<ProtocolLabel> {
    ProtocolLabel::ALL.iter().copied().find(|p| p.as_str() == s)
}

/// The edges of a file's bytes; `path` names the file in errors.
pub fn decode(bytes: &[u8], path: &str, limit: u64) -> Result<Vec<(EdgeLabels, Seen)>, StateError> {
    if bytes.len() as u64 > limit {
        return Err(StateError::TooLarge {
            path: path.to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_string(),
        reason,
    };
    let versioned: Versioned = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if versioned.version != u64::from(VERSION) {
        return Err(StateError::UnsupportedVersion {
            path: path.to_string(),
            found: versioned.version,
        });
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    file.edges
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |name: &str, value: &str| {
                corrupt(format!("edges[{i}].{name}: {value:?} is not a valid value"))
            };
            let src_kind = kind(&e.src_kind).ok_or_else(|| field("src_kind", &e.src_kind))?;
            let dst_kind = kind(&e.dst_kind).ok_or_else(|| field("dst_kind", &e.dst_kind))?;
            let protocol = protocol(&e.protocol).ok_or_else(|| field("protocol", &e.protocol))?;
            if e.first_seen > e.last_seen {
                return Err(corrupt(format!(
                    "edges[{i}]: first_seen {} is after last_seen {}",
                    e.first_seen, e.last_seen
                )));
            }
            Ok((
                EdgeLabels {
                    src_namespace: e.src_namespace.into(),
                    src_workload: e.src_workload.into(),
                    src_kind,
                    dst_namespace: e.dst_namespace.into(),
                    dst_workload: e.dst_workload.into(),
                    dst_kind,
                    dst_port: Port::Number(e.dst_port),
                    protocol,
                },
                Seen {
                    first: e.first_seen,
                    last: e.last_seen,
                },
            ))
        })
        .collect()
}

/// The state file in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads the state file: `Ok(None)` when there is none yet (a first start).
pub fn load(path: &Path, limit: u64) -> Result<Option<Vec<(EdgeLabels, Seen)>>, StateError> {
    let name = path.display().to_string();
    let read_err = |e: std::io::Error| StateError::Read {
        path: name.clone(),
        reason: e.to_string(),
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // Never more than the limit (and one byte to tell it was exceeded) in memory.
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(StateError::TooLarge {
            path: name,
            size,
            limit,
        });
    }
    decode(&bytes, &name, limit).map(Some)
}

/// Writes `bytes` as the state file: a temporary file in the same directory, synced, renamed
/// over the old one, and the directory synced.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let name = path.display().to_string();
    let write_err = |what: &str, e: std::io::Error| StateError::Write {
        path: name.clone(),
        reason: format!("{what}: {e}"),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| write_err("create", e))?;
        f.write_all(bytes).map_err(|e| write_err("write", e))?;
        f.sync_all().map_err(|e| write_err("sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| write_err("rename", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            // The rename is durable once the directory is; a failure here loses at most it.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::first_seen::KnownEdges;

    fn known() -> KnownEdges {
        let mut k = KnownEdges::new(100, 100);
        let mut e = crate::first_seen::tests::edge(("shop", "web"), ("data", "postgres"), 5432);
        e.dst_kind = WorkloadKind::StatefulSet;
        k.observe(&e, 1000);
        let mut x = crate::first_seen::tests::edge(("shop", "web"), ("", "external"), 443);
        x.dst_kind = WorkloadKind::External;
        x.protocol = ProtocolLabel::Udp;
        k.observe(&x, 2000);
        k
    }

    #[test]
    fn a_saved_set_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(load(&path, size_limit(100)).unwrap(), None, "no file yet");
        let k = known();
        let bytes = encode(k.iter());
        assert_eq!(bytes, encode(k.iter()), "deterministic");
        save(&path, &bytes).unwrap();
        let mut loaded = load(&path, size_limit(100)).unwrap().unwrap();
        loaded.sort_by_key(|(_, s)| s.first);
        let mut want: Vec<_> = k.iter().map(|(e, s)| (e.clone(), *s)).collect();
        want.sort_by_key(|(_, s)| s.first);
        assert_eq!(loaded, want);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "no temporary file left"
        );
    }

    #[test]
    fn corrupt_truncated_too_large_and_other_versions_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let good = encode(known().iter());
        let name = path.display().to_string();
        for (bytes, want) in [
            (b"\x00\xffgarbage".to_vec(), "not a known-edges file"),
            (good[..good.len() / 2].to_vec(), "not a known-edges file"),
            (Vec::new(), "not a known-edges file"),
            (
                br#"{"version":2,"edges":[]}"#.to_vec(),
                "version 2, this agent reads version 1",
            ),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace("statefulset", "galaxy")
                    .into_bytes(),
                "edges[1].dst_kind: \"galaxy\" is not a valid value",
            ),
            (
                br#"{"version":1,"edges":[{"src_namespace":"a","src_workload":"b","src_kind":"pod","dst_namespace":"c","dst_workload":"d","dst_kind":"pod","dst_port":1,"protocol":"TCP","first_seen":5,"last_seen":4}]}"#.to_vec(),
                "first_seen 5 is after last_seen 4",
            ),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let err = load(&path, size_limit(100)).unwrap_err().to_string();
            assert!(err.starts_with(&name) && err.contains(want), "{err}");
        }
        std::fs::write(&path, &good).unwrap();
        let err = load(&path, 10).unwrap_err();
        assert!(
            matches!(err, StateError::TooLarge { size, limit: 10, .. } if size == good.len() as u64),
            "{err}"
        );
    }

    #[test]
    fn an_unwritable_directory_is_a_write_error_and_the_old_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, b"old").unwrap();
        let missing = dir.path().join("gone").join(FILE_NAME);
        let err = save(&missing, b"new").unwrap_err();
        assert!(matches!(err, StateError::Write { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
