//! The rule for tests that need root or kernel features: outside CI they may skip with one
//! line saying why; under `CI=true` a skip is a failure.

/// True when the test may run. Prints the reason and returns false when it must skip;
/// panics under `CI=true`, where nothing may skip.
pub fn require(what: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "{what}: cannot run under CI=true: {why}"
            );
            eprintln!("SKIP {what}: {why}");
            // libtest hides a passing test's output: `cargo xtask test` counts skips from this
            // file instead, so a run without root does not read as a clean one.
            if let Some(path) = std::env::var_os("FLOWWATCH_SKIP_LOG") {
                use std::io::Write;
                if let Ok(mut log) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    let _ = writeln!(log, "{what}: {why}");
                }
            }
            false
        }
    }
}

/// Root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN) is needed to create namespaces and load programs.
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("needs root (network namespaces, eBPF)".into())
    }
}

/// A command on PATH.
pub fn command(name: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!(
            "`{name}` not found on PATH (run `cargo xtask setup`)"
        ))
    }
}

/// Skip-or-fail helper: `if !privileged::root_test("name") { return; }`.
pub fn root_test(what: &str) -> bool {
    require(what, root())
}
