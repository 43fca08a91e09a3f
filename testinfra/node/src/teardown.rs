//! The node's record of what it made (its state file), the teardown that undoes it, and the
//! check that nothing is left.
//!
//! The state file is appended to as each thing is made, before the next: a node that dies
//! half-started is still torn down completely.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::node::KUBELET_SYSCTLS;
use crate::sys;

/// The state file: `key value` lines.
pub struct State {
    file: File,
}

impl State {
    pub fn create(dir: &Path, name: &str) -> Result<State> {
        let mut s = State {
            file: File::options()
                .create_new(true)
                .append(true)
                .open(dir.join("state"))
                .with_context(|| format!("{}/state", dir.display()))?,
        };
        s.record("name", name)?;
        let me = std::process::id() as i32;
        s.record(
            "owner",
            &format!("{me} {}", sys::start_time(me).unwrap_or_default()),
        )?;
        Ok(s)
    }

    pub fn open(dir: &Path) -> Result<State> {
        Ok(State {
            file: File::options()
                .append(true)
                .open(dir.join("state"))
                .with_context(|| format!("{}/state", dir.display()))?,
        })
    }

    pub fn record(&mut self, key: &str, value: &str) -> Result<()> {
        writeln!(self.file, "{key} {value}")?;
        self.file.sync_data()?;
        Ok(())
    }

    /// A started process: pid, start time (so a reused pid is never killed), and what it is.
    pub fn pid(&mut self, pid: i32, what: &str) -> Result<()> {
        let start = sys::start_time(pid).unwrap_or_default();
        self.record("pid", &format!("{pid} {start} {what}"))
    }
}

/// What a state file says.
#[derive(Debug, Default)]
struct Record {
    name: String,
    owner: Option<(i32, u64)>,
    netns: Option<PathBuf>,
    netns_inode: Option<u64>,
    mnt_inode: Option<u64>,
    cgroup: Option<String>,
    pids: Vec<(i32, u64, String)>,
}

fn read_record(dir: &Path) -> Result<Record> {
    let text = std::fs::read_to_string(dir.join("state"))
        .with_context(|| format!("{}/state", dir.display()))?;
    let mut r = Record::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let mut words = value.split_whitespace();
        match key {
            "name" => r.name = value.to_string(),
            "owner" => {
                let pid = words.next().and_then(|w| w.parse().ok());
                let start = words.next().and_then(|w| w.parse().ok());
                r.owner = pid.zip(start);
            }
            "netns" => r.netns = Some(PathBuf::from(value)),
            "netns_inode" => r.netns_inode = value.parse().ok(),
            "mnt_inode" => r.mnt_inode = value.parse().ok(),
            "cgroup" => r.cgroup = Some(value.to_string()),
            "pid" => {
                if let (Some(pid), Some(start)) = (
                    words.next().and_then(|w| w.parse().ok()),
                    words.next().and_then(|w| w.parse().ok()),
                ) {
                    r.pids
                        .push((pid, start, words.collect::<Vec<_>>().join(" ")));
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

fn same_process(pid: i32, start: u64) -> bool {
    sys::alive(pid) && sys::start_time(pid) == Some(start)
}

/// The first recorded component that is no longer running (the mount namespace holder and
/// one-shot helpers included), if any.
pub fn dead_components(dir: &Path) -> Option<String> {
    let r = read_record(dir).ok()?;
    r.pids
        .iter()
        .find(|(pid, start, _)| !same_process(*pid, *start))
        .map(|(pid, _, what)| format!("{what} (pid {pid})"))
}

/// Every process that belongs to the node now: recorded pids, anything in its network or mount
/// namespace (shims, CNI plugins, host-network containers), anything in its cgroups (pods).
fn node_processes(r: &Record) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for (pid, start, _) in &r.pids {
        if same_process(*pid, *start) {
            out.insert(*pid);
        }
    }
    if let Some(ino) = r.netns_inode {
        out.extend(sys::processes_in_ns("net", ino));
    }
    if let Some(ino) = r.mnt_inode {
        out.extend(sys::processes_in_ns("mnt", ino));
    }
    if let Some(cg) = &r.cgroup {
        for root in sys::cgroup_mounts() {
            out.extend(sys::cgroup_procs(&root.join(cg)));
        }
    }
    let me = std::process::id() as i32;
    out.retain(|p| *p != me && sys::alive(*p));
    out
}

/// Stops everything of the node in `dir` and removes what it made: processes (by pid, by
/// namespace, by cgroup), its mount namespace (with every mount in it), the netns (with its
/// links and iptables chains), the cgroups, the state folder. Then checks that nothing is left.
pub fn teardown(dir: &Path) -> Result<()> {
    let r = read_record(dir)?;
    // kubelet, kube-proxy and kube-router first (SIGTERM, briefly): nothing restarts pods or
    // rewrites rules while the rest goes.
    for (pid, start, what) in &r.pids {
        if ["kubelet", "kube-proxy", "kube-router"].contains(&what.as_str())
            && same_process(*pid, *start)
        {
            sys::kill(*pid, libc::SIGTERM);
        }
    }
    sys::wait_until(Duration::from_secs(3), || {
        r.pids.iter().all(|(pid, start, what)| {
            !["kubelet", "kube-proxy", "kube-router"].contains(&what.as_str())
                || !same_process(*pid, *start)
        })
    });
    // Then everything else, until nothing of the node runs.
    let gone = sys::wait_until(Duration::from_secs(20), || {
        let procs = node_processes(&r);
        for pid in &procs {
            sys::kill(*pid, libc::SIGKILL);
        }
        for (pid, _, _) in &r.pids {
            sys::reap(*pid);
        }
        procs.is_empty()
    });
    if !gone {
        bail!(
            "node {}: processes still running after SIGKILL: {:?}",
            r.name,
            node_processes(&r)
        );
    }
    if let Some(netns) = &r.netns {
        if netns.exists() {
            let name = netns.file_name().and_then(|n| n.to_str()).unwrap_or("");
            sys::run(Command::new("ip").args(["netns", "delete", name]))?;
        }
    }
    if let Some(cg) = &r.cgroup {
        for root in sys::cgroup_mounts() {
            let d = root.join(cg);
            // A killed task leaves its cgroup as it exits: retry briefly.
            let mut last = Ok(());
            sys::wait_until(Duration::from_secs(10), || {
                last = sys::remove_cgroup(&d);
                last.is_ok()
            });
            last.with_context(|| format!("removing cgroup {}", d.display()))?;
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    let left = leftovers(dir, &r.name);
    if !left.is_empty() {
        bail!("node {}: left after teardown: {}", r.name, left.join("; "));
    }
    Ok(())
}

/// What of the node named `name` (state in `dir`) is still on the machine: its state folder,
/// netns, cgroups, mounts that name it, processes in its namespaces. Empty when it is all gone.
/// (The netns and mount namespace inodes come from the state file while it exists.)
pub fn leftovers(dir: &Path, name: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(r) = read_record(dir) {
        let procs = node_processes(&r);
        if !procs.is_empty() {
            left.push(format!("processes {procs:?}"));
        }
    }
    if dir.exists() {
        left.push(format!("state folder {}", dir.display()));
    }
    if Path::new("/run/netns").join(name).exists() {
        left.push(format!("netns /run/netns/{name}"));
    }
    for root in sys::cgroup_mounts() {
        let d = root.join(format!("flowwatch-node-{name}"));
        if d.exists() {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir_s = dir.display().to_string();
    for line in mounts.lines() {
        if line.contains(&dir_s) || line.contains(&format!("/run/netns/{name} ")) {
            left.push(format!("mount {line}"));
        }
    }
    left
}

/// Tears down nodes whose owner process is gone and that were not started detached by
/// `cluster up` (those are the user's until `cluster down`).
pub fn reap_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let Ok(r) = read_record(&dir) else { continue };
        if dir.join("detached").exists() {
            continue;
        }
        if let Some((pid, start)) = r.owner {
            if !same_process(pid, start) {
                eprintln!(
                    "flowwatch-testnode: tearing down {} (its test process is gone)",
                    r.name
                );
                if let Err(e) = teardown(&dir) {
                    eprintln!("flowwatch-testnode: {e:#}");
                }
            }
        }
    }
}

/// What of the machine a node must leave as it was: the kernel tunables kubelet writes, the
/// root netns's links and its iptables chains, the mount table.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct HostSnapshot {
    pub sysctls: Vec<(String, String)>,
    pub links: BTreeSet<String>,
    /// Chains of the root netns whose names a node's components use (KUBE-*, CNI-*, ...):
    /// other tests on the machine may add chains of their own meanwhile.
    pub node_chains: BTreeSet<String>,
    pub mounts: BTreeSet<String>,
}

impl HostSnapshot {
    pub fn take() -> Result<HostSnapshot> {
        let mut sysctls = Vec::new();
        for s in KUBELET_SYSCTLS.iter().chain(
            [
                "net/netfilter/nf_conntrack_max",
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                "net/ipv4/ip_forward",
                "net/bridge/bridge-nf-call-iptables",
            ]
            .iter(),
        ) {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap_or_default();
            sysctls.push((s.to_string(), v.trim().to_string()));
        }
        let links = sys::run(Command::new("ip").args(["-o", "link", "show"]))?
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect();
        let save = sys::run(&mut Command::new("iptables-save"))?;
        let node_chains = save
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| c.starts_with("KUBE-") || c.starts_with("CNI-"))
            .map(str::to_string)
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .map(|l| {
                // mount id, parent id, dev, root, mount point: the id changes, the rest not.
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        Ok(HostSnapshot {
            sysctls,
            links,
            node_chains,
            mounts,
        })
    }

    /// What differs from `before`, in words.
    pub fn changes_since(&self, before: &HostSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, was), (_, now)) in before.sysctls.iter().zip(&self.sysctls) {
            if was != now {
                out.push(format!("sysctl {name}: {was} -> {now}"));
            }
        }
        for l in self.links.difference(&before.links) {
            // veths of other tests come and go; a node makes cni0/fwn0 and veths only inside.
            if l == "cni0" || l == "fwn0" || l.starts_with("kube-") {
                out.push(format!("link {l} in the root netns"));
            }
        }
        for c in self.node_chains.difference(&before.node_chains) {
            out.push(format!("iptables chain {c} in the root netns"));
        }
        for m in self.mounts.difference(&before.mounts) {
            if m.contains("flowwatch-node") || m.contains("/run/netns/fwnode") {
                out.push(format!("mount {m}"));
            }
        }
        out
    }
}
