//! Where flow-log lines go: standard output, or a file that rotates by size and keeps a number
//! of rotated files, is reopened when something else rotated or removed it (logrotate), and
//! never stops the agent: a line that cannot be written is dropped and counted by reason.
//!
//! Lines are written in batches (one poll's records) with one `write` per batch where it fits.
//! A batch cut short by an error (a full disk) is rolled back to its last complete line, so the
//! file holds only whole records and the count of dropped records is exact.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use crate::metrics::FlowLogDropReason as DropReason;

/// Size-based rotation of a file flow log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would take the file past this size; 0 never rotates.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` newest .. `<path>.<max_files>` oldest); 0 keeps none (the
    /// full file is removed).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 100 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// What one batch came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    pub dropped: u64,
    /// Why records were dropped (when `dropped > 0`).
    pub reason: Option<DropReason>,
    /// Rotations done for this batch.
    pub rotations: u64,
    /// The file was reopened because it had been renamed or removed.
    pub reopened: bool,
}

enum Target {
    Stdout,
    File {
        path: PathBuf,
        /// The open file and its (device, inode); `None` after a failed reopen.
        file: Option<(File, (u64, u64))>,
        rotation: Rotation,
    },
}

/// The flow log's output.
pub struct FlowLogWriter {
    target: Target,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn open_append(path: &Path) -> std::io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let id = identity(&file.metadata()?);
    Ok((file, id))
}

fn reason_of(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => DropReason::NoSpace,
        _ => DropReason::IoError,
    }
}

/// Writes `lines` (each ending in a newline) to `out` with as few writes as it takes; returns
/// how many whole lines were written and the error that stopped it, if any.
fn write_whole_lines(out: &mut impl Write, lines: &[String]) -> (usize, Option<std::io::Error>) {
    let buf: String = lines.concat();
    let bytes = buf.as_bytes();
    let mut off = 0;
    while off < bytes.len() {
        match out.write(&bytes[off..]) {
            Ok(0) => {
                off = complete_lines_len(lines, off);
                return (
                    count_lines(lines, off),
                    Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
                );
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (count_lines(lines, complete_lines_len(lines, off)), Some(e)),
        }
    }
    (lines.len(), None)
}

/// The length of the longest prefix of whole lines within `off` bytes.
fn complete_lines_len(lines: &[String], off: usize) -> usize {
    let mut len = 0;
    for l in lines {
        if len + l.len() > off {
            break;
        }
        len += l.len();
    }
    len
}

fn count_lines(lines: &[String], len: usize) -> usize {
    let mut total = 0;
    lines
        .iter()
        .take_while(|l| {
            total += l.len();
            total <= len
        })
        .count()
}

impl FlowLogWriter {
    /// Standard output (`-`).
    pub fn stdout() -> FlowLogWriter {
        FlowLogWriter {
            target: Target::Stdout,
        }
    }

    /// A file, created if missing and appended to; an error if it cannot be opened now (a
    /// misconfigured path is refused at startup; later failures only drop records).
    pub fn file(path: &Path, rotation: Rotation) -> std::io::Result<FlowLogWriter> {
        let file = open_append(path)?;
        Ok(FlowLogWriter {
            target: Target::File {
                path: path.to_path_buf(),
                file: Some(file),
                rotation,
            },
        })
    }

    /// Writes one batch of lines (each ending in a newline).
    pub fn write(&mut self, lines: &[String]) -> Written {
        let mut w = Written::default();
        if lines.is_empty() {
            return w;
        }
        match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                let (n, err) = write_whole_lines(&mut out, lines);
                let err = err.or_else(|| out.flush().err());
                w.records = n as u64;
                if let Some(e) = err {
                    w.dropped = (lines.len() - n) as u64;
                    w.reason = Some(reason_of(&e));
                }
            }
            Target::File {
                path,
                file,
                rotation,
            } => write_file(path, file, *rotation, lines, &mut w),
        }
        w
    }
}

fn write_file(
    path: &Path,
    file: &mut Option<(File, (u64, u64))>,
    rotation: Rotation,
    lines: &[String],
    w: &mut Written,
) {
    // Renamed or removed by someone else (logrotate without copytruncate, an operator):
    // reopen the path, so records go where the collectors look.
    let current = std::fs::metadata(path).ok().map(|m| identity(&m));
    if file.is_none() || current != file.as_ref().map(|(_, id)| *id) {
        w.reopened = file.is_some();
        if let Ok(f) = open_append(path) {
            *file = Some(f);
        } else {
            *file = None;
            w.dropped = lines.len() as u64;
            w.reason = Some(DropReason::OpenFailed);
            return;
        }
    }
    let mut i = 0;
    while i < lines.len() {
        let Some((f, _)) = file.as_mut() else { break };
        let meta = f.metadata();
        let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
        let regular = meta.as_ref().is_ok_and(std::fs::Metadata::is_file);
        let limited = rotation.max_bytes > 0 && regular;
        if limited && size > 0 && size + lines[i].len() as u64 > rotation.max_bytes {
            match rotate(path, rotation) {
                Ok(f) => {
                    *file = Some(f);
                    w.rotations += 1;
                    continue;
                }
                Err(e) => {
                    *file = None;
                    w.reason = Some(if reason_of(&e) == DropReason::NoSpace {
                        DropReason::NoSpace
                    } else {
                        DropReason::OpenFailed
                    });
                    break;
                }
            }
        }
        // As many lines as fit before the next rotation (at least one).
        let room = if limited {
            rotation.max_bytes.saturating_sub(size)
        } else {
            u64::MAX
        };
        let mut end = i + 1;
        let mut len = lines[i].len() as u64;
        while end < lines.len() && len + lines[end].len() as u64 <= room {
            len += lines[end].len() as u64;
            end += 1;
        }
        let (n, err) = write_whole_lines(f, &lines[i..end]);
        w.records += n as u64;
        if let Some(e) = err {
            // Cut the partial line a short write left behind (a regular file only).
            if regular {
                let whole: u64 = lines[i..i + n].iter().map(|l| l.len() as u64).sum();
                let _ = f.set_len(size + whole);
            }
            w.reason = Some(reason_of(&e));
            break;
        }
        i = end;
    }
    w.dropped = lines.len() as u64 - w.records;
    if w.dropped == 0 {
        w.reason = None;
    }
}

/// `<path>.1` .. `<path>.<n>`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Shifts the rotated files up by one (the oldest falls off), moves the log to `.1` and opens
/// a new one.
fn rotate(path: &Path, rotation: Rotation) -> std::io::Result<(File, (u64, u64))> {
    if rotation.max_files == 0 {
        std::fs::remove_file(path).or_else(ignore_missing)?;
    } else {
        for n in (1..rotation.max_files).rev() {
            std::fs::rename(rotated(path, n), rotated(path, n + 1)).or_else(ignore_missing)?;
        }
        std::fs::rename(path, rotated(path, 1)).or_else(ignore_missing)?;
    }
    open_append(path)
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let body = format!("{{\"n\":{i}");
                format!("{body}{}}}\n", " ".repeat(len - body.len() - 2))
            })
            .collect()
    }

    fn read_lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn whole_line_accounting() {
        let l = lines(3, 10);
        assert_eq!(complete_lines_len(&l, 0), 0);
        assert_eq!(complete_lines_len(&l, 9), 0);
        assert_eq!(complete_lines_len(&l, 10), 10);
        assert_eq!(complete_lines_len(&l, 25), 20);
        assert_eq!(count_lines(&l, 20), 2);
        assert_eq!(count_lines(&l, 30), 3);
    }

    #[test]
    fn rotates_by_size_and_keeps_the_retention_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut w = FlowLogWriter::file(
            &path,
            Rotation {
                max_bytes: 100,
                max_files: 2,
            },
        )
        .unwrap();
        // 10 lines of 40 bytes, one batch: 2 per file, so 5 files' worth.
        let out = w.write(&lines(10, 40));
        assert_eq!((out.records, out.dropped, out.rotations), (10, 0, 4));
        let kept: Vec<_> = [
            "flows.jsonl",
            "flows.jsonl.1",
            "flows.jsonl.2",
            "flows.jsonl.3",
        ]
        .iter()
        .map(|f| read_lines(&dir.path().join(f)).len())
        .collect();
        assert_eq!(kept, vec![2, 2, 2, 0], "the newest two rotated files only");
        assert!(read_lines(&path)[1].starts_with("{\"n\":9"));
        assert!(read_lines(&dir.path().join("flows.jsonl.2"))[0].starts_with("{\"n\":4"));
        for f in ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"] {
            assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() <= 100);
        }
        // No retention: the full file is removed.
        let mut w = FlowLogWriter::file(
            &path,
            Rotation {
                max_bytes: 100,
                max_files: 0,
            },
        )
        .unwrap();
        w.write(&lines(3, 40));
        assert_eq!(read_lines(&path).len(), 1);
        // max_bytes 0: never rotates.
        let other = dir.path().join("big.jsonl");
        let mut w = FlowLogWriter::file(
            &other,
            Rotation {
                max_bytes: 0,
                max_files: 1,
            },
        )
        .unwrap();
        assert_eq!(w.write(&lines(50, 40)).rotations, 0);
        assert_eq!(read_lines(&other).len(), 50);
    }

    #[test]
    fn reopens_a_log_renamed_or_removed_by_someone_else() {
        let base = tempfile::tempdir().unwrap();
        let logs = base.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let path = logs.join("flows.jsonl");
        let mut w = FlowLogWriter::file(&path, Rotation::default()).unwrap();
        assert!(!w.write(&lines(1, 20)).reopened);
        // logrotate (create mode): rename, then the agent's next write.
        std::fs::rename(&path, base.path().join("flows.jsonl-20261207")).unwrap();
        let out = w.write(&lines(2, 20));
        assert!(out.reopened && out.records == 2, "{out:?}");
        assert_eq!(read_lines(&path).len(), 2);
        assert_eq!(
            read_lines(&base.path().join("flows.jsonl-20261207")).len(),
            1
        );
        // Removed.
        std::fs::remove_file(&path).unwrap();
        let out = w.write(&lines(3, 20));
        assert!(out.reopened && out.records == 3, "{out:?}");
        assert_eq!(read_lines(&path).len(), 3);
        // The directory is gone: dropped, counted, and written again once it is back.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&logs).unwrap();
        let out = w.write(&lines(4, 20));
        assert_eq!(
            (out.records, out.dropped, out.reason),
            (0, 4, Some(DropReason::OpenFailed))
        );
        std::fs::create_dir(&logs).unwrap();
        let out = w.write(&lines(5, 20));
        assert_eq!((out.records, out.dropped), (5, 0));
        assert_eq!(read_lines(&path).len(), 5);
    }

    #[test]
    fn a_full_device_drops_and_counts_every_record_without_failing() {
        let mut w = FlowLogWriter::file(Path::new("/dev/full"), Rotation::default()).unwrap();
        let out = w.write(&lines(7, 30));
        assert_eq!(
            (out.records, out.dropped, out.reason),
            (0, 7, Some(DropReason::NoSpace))
        );
        // And again: still counted, never an error.
        assert_eq!(w.write(&lines(2, 30)).dropped, 2);
    }

    /// A writer that takes `room` bytes and then fails as a full disk does.
    struct FillsUp {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room - self.got.len());
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_counts_only_whole_lines() {
        let mut out = FillsUp {
            got: Vec::new(),
            room: 55,
        };
        let (n, err) = write_whole_lines(&mut out, &lines(4, 20));
        assert_eq!(n, 2);
        assert_eq!(reason_of(&err.unwrap()), DropReason::NoSpace);
    }
}
