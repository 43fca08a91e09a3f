//! Pods on one machine, as a CNI makes them: each pod is a network namespace whose `eth0` is
//! one end of a veth pair; the host end joins a per-test bridge in the root namespace.
//!
//! Every node owns a slot, a number that no other live node on the machine has, in whatever
//! process: the slot is an exclusive `flock` on a file in a machine-wide directory, which the
//! kernel releases when the owner dies. A node's names (`fw{tag}...`) and subnets derive from
//! its slot, so tests run in parallel, also alongside other test processes. Objects named after
//! a slot that nobody holds are leftovers of a killed process: whoever takes the slot removes
//! them first, and nothing of a live process is touched.
//!
//! Everything is removed on drop, also when the test panics: veths first (a namespace frees
//! them asynchronously, and a quick re-run would trip over leftovers), then namespaces, then the
//! bridge.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Slots map to IPv4 subnets `10.{100 + slot / 256}.{slot % 256}.0/24`, clear of the 10.0-10.10,
/// 10.96 (ClusterIPs) and 10.2xx addresses tests use as fake cluster addresses.
const SLOTS: u32 = 100 * 256;

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A node with a bridge and pods.
pub struct Node {
    /// Short unique tag (4 hex digits, the slot); the node's bridge is `fw{tag}br`, its pods'
    /// host interfaces `fw{tag}h{i}` and namespaces `fw{tag}p{i}`. Tests may add interfaces
    /// `fw{tag}h{i}` / `fw{tag}x{i}`: drop removes those too.
    pub tag: String,
    pub bridge: String,
    pub pods: Vec<Pod>,
    /// The slot's lock, held as long as the node lives (released after the cleanup in drop).
    _slot: File,
}

/// One pod: a network namespace with an address on the node's bridge.
pub struct Pod {
    pub netns: String,
    /// Host end of the pod's veth (what the agent attaches to).
    pub host_if: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Node {
    /// Creates a bridge and `pods` pods on it, each with an IPv4 and an IPv6 address.
    pub fn new(pods: usize) -> Node {
        let (n, lock) = claim_slot();
        let tag = format!("{n:04x}");
        let bridge = format!("fw{tag}br");
        let (a, b) = (100 + n / 256, n % 256);
        let mut node = Node {
            tag: tag.clone(),
            bridge: bridge.clone(),
            pods: Vec::new(),
            _slot: lock,
        };
        // Whatever carries this slot's names now was left by a process that died holding it.
        node.remove_all();
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        for i in 0..pods {
            let netns = format!("fw{tag}p{i}");
            let host_if = format!("fw{tag}h{i}");
            assert!(host_if.len() <= 15, "interface name {host_if} too long");
            let ipv4 = Ipv4Addr::new(10, a as u8, b as u8, i as u8 + 1);
            let ipv6: Ipv6Addr = format!("fd77:{n:x}::{:x}", i + 1).parse().unwrap();
            node.pods.push(Pod {
                netns,
                host_if,
                ipv4,
                ipv6,
            });
            node.plug(i);
        }
        node
    }

    /// Creates pod `i`'s namespace, veth and addresses.
    fn plug(&self, i: usize) {
        let pod = &self.pods[i];
        sh(&["ip", "netns", "add", &pod.netns]);
        sh(&[
            "ip",
            "link",
            "add",
            &pod.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.netns,
        ]);
        sh(&[
            "ip",
            "link",
            "set",
            &pod.host_if,
            "master",
            &self.bridge,
            "up",
        ]);
        pod.ip(&["addr", "add", &format!("{}/24", pod.ipv4), "dev", "eth0"]);
        pod.ip(&[
            "addr",
            "add",
            &format!("{}/64", pod.ipv6),
            "dev",
            "eth0",
            "nodad",
        ]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["link", "set", "lo", "up"]);
    }

    /// Deletes pod `i` (its veth, then its namespace, and every socket in it) and creates it
    /// again with the same names and addresses: a pod replaced by one that reuses its IP.
    pub fn recreate_pod(&self, i: usize) {
        let pod = &self.pods[i];
        sh(&["ip", "link", "del", &pod.host_if]);
        sh(&["ip", "netns", "del", &pod.netns]);
        self.plug(i);
    }

    /// The interface glob matching this node's pod interfaces.
    pub fn interface_glob(&self) -> String {
        format!("fw{}h*", self.tag)
    }

    /// Whether `name` is one of this node's: `fw{tag}` then `br`, or `h`/`x`/`p` and a number.
    /// (Names of other slots, and the 5-digit tags of older harness versions, never match.)
    fn owns(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&format!("fw{}", self.tag)) else {
            return false;
        };
        rest == "br"
            || rest
                .strip_prefix(['h', 'x', 'p'])
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|c| c.is_ascii_digit()))
    }

    /// Removes every interface and namespace carrying this node's names: veths first, then
    /// namespaces, then the bridge. Only called while holding the slot, so nothing here can
    /// belong to another live node.
    fn remove_all(&self) {
        let links: Vec<String> = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            // "7: fw0a1bh0@if2: <BROADCAST,..." -> "fw0a1bh0"
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .filter(|name| self.owns(name))
            .collect();
        let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| self.owns(name))
                    .collect()
            })
            .unwrap_or_default();
        for link in links.iter().filter(|l| **l != self.bridge) {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for netns in &namespaces {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
        if links.contains(&self.bridge) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .output();
        }
    }
}

/// Where the slot locks live: machine-wide (not per user or per clone), so every test process
/// on the machine sees the same slots.
fn slot_dir() -> PathBuf {
    let dir = if std::path::Path::new("/run/lock").is_dir() {
        PathBuf::from("/run/lock/flowwatch-test-nodes")
    } else {
        std::env::temp_dir().join("flowwatch-test-nodes")
    };
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Takes a free slot: an exclusive, non-blocking `flock` on its file. Starts at a random slot,
/// so concurrent processes rarely probe the same ones; every slot is tried at most once.
fn claim_slot() -> (u32, File) {
    let dir = slot_dir();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let start = (h.finish() % u64::from(SLOTS)) as u32;
    for k in 0..SLOTS {
        let n = (start + k) % SLOTS;
        let path = dir.join(format!("{n:04x}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: a valid fd; the lock belongs to this open file description, which the Node
        // keeps (O_CLOEXEC: children do not inherit it).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (n, file);
        }
    }
    panic!("all {SLOTS} test node slots in {} are taken", dir.display());
}

impl Drop for Node {
    fn drop(&mut self) {
        // Also what a test added under this node's names; the slot's lock goes after this.
        self.remove_all();
    }
}

/// Kernel counters of a pod, from its own /proc/net/snmp and /proc/net/snmp6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snmp {
    pub tcp_in_segs: u64,
    pub tcp_out_segs: u64,
    pub tcp_retrans_segs: u64,
    pub udp_in: u64,
    pub udp_out: u64,
    pub udp6_in: u64,
    pub udp6_out: u64,
}

impl Snmp {
    pub fn minus(self, before: Snmp) -> Snmp {
        Snmp {
            tcp_in_segs: self.tcp_in_segs - before.tcp_in_segs,
            tcp_out_segs: self.tcp_out_segs - before.tcp_out_segs,
            tcp_retrans_segs: self.tcp_retrans_segs - before.tcp_retrans_segs,
            udp_in: self.udp_in - before.udp_in,
            udp_out: self.udp_out - before.udp_out,
            udp6_in: self.udp6_in - before.udp6_in,
            udp6_out: self.udp6_out - before.udp6_out,
        }
    }
}

impl Pod {
    /// `ip -n <pod> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "-n", &self.netns];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `ip netns exec <pod> <args>`.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.netns];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Drops incoming packets matching `matcher` (nft syntax, e.g. `tcp dport 7000` or
    /// `ip saddr 10.0.0.4 tcp dport 5432`) in this pod, as an enforcing CNI would.
    pub fn drop_incoming(&self, matcher: &str) {
        self.exec(&["nft", "add", "table", "inet", "fwtest"]);
        self.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "fwtest",
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ]);
        let mut rule = vec!["nft", "add", "rule", "inet", "fwtest", "input"];
        rule.extend(matcher.split_whitespace());
        rule.push("drop");
        self.exec(&rule);
    }

    /// Runs `f` on a thread that has joined this pod's network namespace: sockets it opens
    /// live in the pod. (Network namespaces are per thread.)
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    pub fn snmp(&self) -> Snmp {
        let v4 =
            String::from_utf8_lossy(&self.exec(&["cat", "/proc/net/snmp"]).stdout).into_owned();
        let v6 =
            String::from_utf8_lossy(&self.exec(&["cat", "/proc/net/snmp6"]).stdout).into_owned();
        let table = |proto: &str, field: &str| -> u64 {
            let mut lines = v4.lines().filter(|l| l.starts_with(&format!("{proto}:")));
            let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
                panic!("no {proto} table in /proc/net/snmp")
            };
            let i = header
                .split_whitespace()
                .position(|h| h == field)
                .unwrap_or_else(|| panic!("no {proto} {field}"));
            values.split_whitespace().nth(i).unwrap().parse().unwrap()
        };
        let six = |field: &str| -> u64 {
            v6.lines()
                .find_map(|l| {
                    let mut parts = l.split_whitespace();
                    (parts.next() == Some(field)).then(|| parts.next().unwrap().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("no {field} in /proc/net/snmp6"))
        };
        Snmp {
            tcp_in_segs: table("Tcp", "InSegs"),
            tcp_out_segs: table("Tcp", "OutSegs"),
            tcp_retrans_segs: table("Tcp", "RetransSegs"),
            udp_in: table("Udp", "InDatagrams"),
            udp_out: table("Udp", "OutDatagrams"),
            udp6_in: six("Udp6InDatagrams"),
            udp6_out: six("Udp6OutDatagrams"),
        }
    }
}
