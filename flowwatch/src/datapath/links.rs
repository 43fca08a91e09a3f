//! Which network interfaces are pod interfaces, and noticing when they come and go.
//!
//! A CNI creates the host end of a pod's veth when the pod starts and deletes it when the pod
//! goes. The agent subscribes to link notifications over netlink (RTMGRP_LINK) and, on any
//! notification, lists the interfaces again and reconciles: listing is cheap and cannot drift,
//! where decoding each message could miss one when the socket overflows.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};

/// Interface name patterns: exact names or globs with `*` (e.g. `veth*`, `cali*`); a pattern
/// starting with `!` excludes what it matches (`!vethwe-bridge`: a CNI's own veth, not a pod's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfacePatterns(Vec<String>);

impl InterfacePatterns {
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> InterfacePatterns {
        InterfacePatterns(
            patterns
                .into_iter()
                .map(Into::into)
                .filter(|p: &String| !p.is_empty())
                .collect(),
        )
    }

    pub fn matches(&self, name: &str) -> bool {
        let (excluded, included): (Vec<&String>, Vec<&String>) =
            self.0.iter().partition(|p| p.starts_with('!'));
        included.iter().any(|p| glob_match(p, name))
            && !excluded.iter().any(|p| glob_match(&p[1..], name))
    }

    /// Patterns that could never attach anything, said plainly: only exclusions, or a name
    /// that is also excluded.
    pub fn check(&self) -> Result<(), String> {
        if self.0.iter().all(|p| p.starts_with('!')) {
            return Err("no pattern to attach to: every one is an exclusion ('!...')".into());
        }
        match self.exact_names().find(|name| !self.matches(name)) {
            Some(name) => Err(format!("{name:?} is named and also excluded")),
            None => Ok(()),
        }
    }

    /// Patterns without a wildcard name one interface each, which must exist at startup.
    pub fn exact_names(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|p| !p.contains('*') && !p.starts_with('!'))
            .map(String::as_str)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(mut remaining) = name.strip_prefix(prefix) else {
                return false;
            };
            if !rest.contains('*') {
                return remaining.ends_with(rest) && remaining.len() >= rest.len();
            }
            // Several stars: try every split point (names are short).
            loop {
                if glob_match(rest, remaining) {
                    return true;
                }
                let mut chars = remaining.chars();
                if chars.next().is_none() {
                    return false;
                }
                remaining = chars.as_str();
            }
        }
    }
}

/// The interfaces of the agent's network namespace, name -> ifindex.
pub fn list_interfaces() -> std::io::Result<BTreeMap<String, u32>> {
    super::sys::interface_indexes()
}

/// A netlink socket subscribed to link changes. Readable when something changed.
pub struct LinkNotifications {
    socket: netlink_sys::Socket,
}

impl LinkNotifications {
    pub fn subscribe() -> std::io::Result<LinkNotifications> {
        const RTMGRP_LINK: u32 = 1;
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))?;
        socket.set_non_blocking(true)?;
        Ok(LinkNotifications { socket })
    }

    /// Reads and discards pending notifications until none is left; true if there were any
    /// (or the socket overflowed, which also means "look again"). Reading on after an error
    /// matters: the caller waits for the socket to become readable again, which a queue left
    /// non-empty would not signal.
    pub fn drain(&self) -> bool {
        let mut any = false;
        let mut buf = vec![0u8; 16 * 1024];
        // Bounded: a socket that keeps failing (not ENOBUFS, which clears once reported) must
        // not spin; a rescan recovers whatever was missed.
        for _ in 0..DRAIN_MAX_READS {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => return any,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return any,
                // A notification; or an error such as ENOBUFS (notifications were lost; a
                // rescan recovers). Keep reading.
                Ok(_) | Err(_) => any = true,
            }
        }
        any
    }
}

/// At most this many reads per drain (a node adding thousands of links at once is caught by
/// the rescan that a `true` triggers).
const DRAIN_MAX_READS: usize = 4096;

impl AsRawFd for LinkNotifications {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth1234"));
        assert!(glob_match("veth*", "veth"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("fw*h", "fw12h"));
        assert!(!glob_match("fw*h", "fw12x"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
    }

    #[test]
    fn patterns_separate_exact_names_from_globs() {
        let p = InterfacePatterns::new(["veth*", "eth1", ""]);
        assert!(p.matches("vethabc") && p.matches("eth1") && !p.matches("eth0"));
        assert_eq!(p.exact_names().collect::<Vec<_>>(), vec!["eth1"]);
    }

    #[test]
    fn the_defaults_take_pod_veths_and_leave_cni_infrastructure_alone() {
        let p = InterfacePatterns::new(crate::cli::DEFAULT_INTERFACES.split(','));
        for pod in [
            "veth1a2b3c",
            "cali12ab",
            "lxc9f00",
            "eni77",
            "gke1",
            "azv2",
            "vethwepl42",
        ] {
            assert!(p.matches(pod), "{pod}");
        }
        // Weave's bridge-to-datapath pair carries every pod's traffic a second time.
        for infra in [
            "vethwe-bridge",
            "vethwe-datapath",
            "eth0",
            "cni0",
            "cilium_host",
        ] {
            assert!(!p.matches(infra), "{infra}");
        }
        assert_eq!(
            p.exact_names().count(),
            0,
            "exclusions are not names to wait for"
        );
        assert_eq!(p.check(), Ok(()));
    }

    #[test]
    fn patterns_that_can_attach_nothing_are_refused() {
        assert!(InterfacePatterns::new(["!veth*"])
            .check()
            .unwrap_err()
            .contains("every one is an exclusion"));
        assert_eq!(
            InterfacePatterns::new(["eth1", "!eth*"]).check(),
            Err("\"eth1\" is named and also excluded".to_string())
        );
        assert_eq!(InterfacePatterns::new(["eth1", "!eth2"]).check(), Ok(()));
    }

    #[test]
    fn loopback_is_listed() {
        let all = list_interfaces().unwrap();
        assert!(all.contains_key("lo"), "{all:?}");
    }
}
