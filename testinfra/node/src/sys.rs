//! Small system helpers: commands, namespaces, processes, cgroups.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A command on PATH (or in /usr/sbin, /sbin, which a non-login shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces a child joins before it runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Join {
    pub net: Option<RawFd>,
    pub mnt: Option<RawFd>,
    /// SIGKILL when the spawning thread ends (tests); off for `cluster up`, whose node outlives
    /// the command that started it.
    pub die_with_parent: bool,
}

/// Makes `cmd` join the namespaces of `join` (and start a session of its own, so a terminal's
/// Ctrl-C or the test's process group do not reach it).
pub fn enter(cmd: &mut Command, join: Join) {
    // SAFETY: only async-signal-safe calls (setns, setsid, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = join.net {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = join.mnt {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::setsid();
            if join.die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// The inode of a namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`): namespaces are
/// the same when their inodes are.
pub fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every live process (not a zombie) whose namespace of `kind` (`net`, `mnt`) has `inode`.
pub fn processes_in_ns(kind: &str, inode: u64) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| ns_inode(&PathBuf::from(format!("/proc/{pid}/ns/{kind}"))) == Some(inode))
        .collect()
}

pub fn pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` is alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The start time of a process (clock ticks since boot): with the pid, it names one process
/// even after the pid is reused.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
    reap(pid);
}

/// Collects `pid`'s exit status if it is our child (no zombie left behind); ignored otherwise.
pub fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid that may not be our child only returns ECHILD.
    unsafe {
        libc::waitpid(pid, &raw mut status, libc::WNOHANG);
    }
}

/// Waits until `done` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mounted cgroup v1 hierarchies (and the v2 one of a hybrid setup), by mount point.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect()
}

/// Every process in a cgroup folder or below.
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_procs(&e.path()));
            }
        }
    }
    out
}

/// Removes a cgroup folder and its children, deepest first (cgroupfs removes only empty groups,
/// with `rmdir`).
pub fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An open namespace file, kept so children can join it.
pub struct NsFile(File);

impl NsFile {
    pub fn open(path: &Path) -> Result<NsFile> {
        Ok(NsFile(File::open(path).with_context(|| {
            format!("opening namespace {}", path.display())
        })?))
    }
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    pub fn inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.0.metadata().ok().map(|m| m.ino())
    }
}

/// Moves the calling thread into a network namespace until the guard drops (then back). Threads
/// and processes the thread starts meanwhile are born in it: a test's API clients, kubectl, helm.
pub struct ThreadNetns {
    original: File,
}

impl ThreadNetns {
    pub fn enter(netns: &Path) -> Result<ThreadNetns> {
        let original = File::open("/proc/thread-self/ns/net").context("own netns")?;
        let target = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        // SAFETY: setns on valid fds; affects only the calling thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns {}: {}",
                netns.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(ThreadNetns { original })
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET);
        }
    }
}
