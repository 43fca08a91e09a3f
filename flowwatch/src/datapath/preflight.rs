//! Checks before loading anything into the kernel, so a missing privilege or feature is one
//! clear sentence instead of an `EPERM` from deep inside a syscall.

use std::path::{Path, PathBuf};

use super::DatapathError;

/// Capabilities the agent uses (bit numbers from linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The agent needs CAP_BPF and CAP_PERFMON (load programs, attach the tracepoint) and
/// CAP_NET_ADMIN (tcx links); CAP_SYS_ADMIN covers all three on its own.
pub fn check_capabilities() -> Result<(), DatapathError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| DatapathError::Privileges(format!("cannot read /proc/self/status: {e}")))?;
    let effective = parse_cap_eff(&status)
        .ok_or_else(|| DatapathError::Privileges("no CapEff line in /proc/self/status".into()))?;
    missing_capabilities(effective).map_err(DatapathError::Privileges)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn missing_capabilities(effective: u64) -> Result<(), String> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(*cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (run as root with them, or add them to the container's capabilities)",
            missing.join(", ")
        ))
    }
}

/// Linux 6.6 brought tcx, whose links are owned by file descriptors: when the agent dies, even
/// by SIGKILL, the kernel detaches its programs. flowwatch relies on that and does not fall back
/// to netlink TC filters, which would outlive it.
pub fn check_kernel_version(release: &str) -> Result<(), DatapathError> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) >= (6, 6) {
        Ok(())
    } else {
        Err(DatapathError::KernelFeature(format!(
            "kernel {release} has no tcx links (needs Linux >= 6.6)"
        )))
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEPOINT_FORMAT: &str = "events/sock/inet_sock_set_state/format";

/// Makes sure tracefs is available, mounting it when allowed and missing.
pub fn ensure_tracefs(mount_if_missing: bool) -> Result<PathBuf, DatapathError> {
    let root = PathBuf::from(TRACEFS);
    if root.join("events").is_dir() {
        return Ok(root);
    }
    let debug = PathBuf::from("/sys/kernel/debug/tracing");
    if debug.join("events").is_dir() {
        return Ok(debug);
    }
    let hint = format!(
        "tracefs is not mounted at {TRACEFS}: mount it with `mount -t tracefs nodev {TRACEFS}` \
         (in Kubernetes, mount the host's {TRACEFS} into the pod)"
    );
    if !mount_if_missing {
        return Err(DatapathError::Tracefs(hint));
    }
    super::sys::mount_tracefs(&root)
        .map_err(|e| DatapathError::Tracefs(format!("{hint}; mounting failed: {e}")))?;
    tracing::info!(path = TRACEFS, "mounted tracefs");
    Ok(root)
}

/// The kernel program reads the tracepoint record at fixed offsets; refuse to attach if this
/// kernel lays it out differently rather than report garbage.
pub fn verify_tracepoint_format(tracefs: &Path) -> Result<(), DatapathError> {
    let path = tracefs.join(TRACEPOINT_FORMAT);
    let format = std::fs::read_to_string(&path).map_err(|e| {
        DatapathError::KernelFeature(format!(
            "tracepoint sock/inet_sock_set_state is not available ({}: {e})",
            path.display()
        ))
    })?;
    check_format(&format).map_err(DatapathError::KernelFeature)
}

/// The fields and offsets `flowwatch-ebpf` reads.
const EXPECTED_FIELDS: [(&str, usize); 10] = flowwatch_common::inet_sock_set_state::FIELDS;

fn check_format(format: &str) -> Result<(), String> {
    for (name, offset) in EXPECTED_FIELDS {
        let found = format.lines().find_map(|line| {
            let decl = line.trim().strip_prefix("field:")?;
            let (decl, rest) = decl.split_once(';')?;
            let field = decl
                .split_whitespace()
                .last()?
                .split('[')
                .next()?
                .to_string();
            if field != name {
                return None;
            }
            let off = rest.trim().strip_prefix("offset:")?.split(';').next()?;
            off.trim().parse::<usize>().ok()
        });
        match found {
            Some(o) if o == offset => {}
            Some(o) => {
                return Err(format!(
                    "tracepoint sock/inet_sock_set_state: field {name} at offset {o}, expected {offset}"
                ))
            }
            None => {
                return Err(format!(
                    "tracepoint sock/inet_sock_set_state has no field {name}"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: inet_sock_set_state
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn accepts_the_known_layout() {
        assert_eq!(check_format(FORMAT_6_18), Ok(()));
    }

    #[test]
    fn rejects_a_moved_or_missing_field_naming_it() {
        let moved = FORMAT_6_18.replace("offset:24;", "offset:28;");
        assert!(check_format(&moved)
            .unwrap_err()
            .contains("field sport at offset 28"));
        let missing = FORMAT_6_18.replace("saddr_v6", "src_v6");
        assert!(check_format(&missing)
            .unwrap_err()
            .contains("no field saddr_v6"));
    }

    #[test]
    fn kernel_versions() {
        assert!(check_kernel_version("6.18.44-fc").is_ok());
        assert!(check_kernel_version("6.6.0").is_ok());
        let err = check_kernel_version("5.15.0-91-generic")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs Linux >= 6.6"), "{err}");
    }

    #[test]
    fn capabilities() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x01ff_ffff_ffff)
        );
        assert!(missing_capabilities(0x01ff_ffff_ffff).is_ok());
        let only_net_admin = 1u64 << CAP_NET_ADMIN;
        let err = missing_capabilities(only_net_admin).unwrap_err();
        assert!(err.contains("CAP_BPF, CAP_PERFMON"), "{err}");
        assert!(
            missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN))
                .is_ok()
        );
    }
}
