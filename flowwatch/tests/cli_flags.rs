//! `flowwatch run` refuses every flag value that cannot work, through the real binary: exit 1
//! and one line on stderr that says what is wrong and what would be right, before anything
//! starts (issue 17, item 5). A host name in `--listen` is resolved.

use std::process::Command;
use std::time::Duration;

use flowwatch_testkit::agent::{binary, free_port, run_to_exit};
use flowwatch_testkit::privileged::root_test;

/// Runs `flowwatch run` with `args` and returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let (status, stderr) = run_to_exit(
        Command::new(binary())
            .arg("run")
            .args(args)
            .env_remove("FLOWWATCH_LOG"),
    );
    (status.code(), stderr)
}

/// The value is refused: exit 1, one line, naming the flag and saying `expected`.
fn refused(args: &[&str], expected: &[&str]) {
    let (code, stderr) = run(args);
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(args[0]),
        "{args:?} names its flag: {stderr}"
    );
    for e in expected {
        assert!(
            lines[0].contains(e),
            "{args:?}: {e:?} missing from: {stderr}"
        );
    }
}

#[test]
fn an_empty_interface_list_is_refused_as_empty() {
    refused(&["--interfaces", ""], &["empty interface name", "veth*"]);
    refused(&["--interfaces", "veth*,,eth0"], &["empty interface name"]);
    refused(&["--interfaces", "!"], &["excludes nothing"]);
    refused(
        &["--interfaces", "an-interface-name-too-long"],
        &["at most 15 characters"],
    );
}

#[test]
fn a_cidr_prefix_out_of_range_says_the_range() {
    refused(
        &["--ignore-cidrs", "10.0.0.0/40"],
        &["prefix length 40", "out of range 0..=32", "IPv4"],
    );
    refused(&["--ignore-cidrs", "fd00::/200"], &["0..=128", "IPv6"]);
    refused(&["--ignore-cidrs", "10.0.0.300/8"], &["not an IP address"]);
}

#[test]
fn listen_addresses_that_cannot_work_are_refused_with_the_reason() {
    refused(&["--listen", "0.0.0.0"], &["no port", "0.0.0.0:9810"]);
    refused(&["--listen", "0.0.0.0:70000"], &["port", "0 to 65535"]);
    refused(
        &["--listen", "no-such-host.invalid:9810"],
        &["cannot resolve", "no-such-host.invalid"],
    );
}

#[test]
fn durations_outside_their_range_are_refused() {
    refused(&["--exit-after-secs", "0"], &["out of range 1..="]);
    refused(
        &["--series-ttl-secs", "18446744073709551615"],
        &["out of range 1..=2592000"],
    );
    refused(&["--series-ttl-secs", "0"], &["out of range"]);
    refused(&["--series-budget", "0"], &["out of range 1..="]);
    refused(&["--poll-interval-ms", "0"], &["10..=60000"]);
    refused(&["--idle-timeout-secs", "0"], &["1..=86400"]);
}

#[test]
fn label_allowlist_keys_are_label_keys() {
    refused(
        &["--label-allowlist", "app,bad key!"],
        &["invalid label key \"bad key!\"", "app.kubernetes.io/name"],
    );
}

#[test]
fn a_value_outside_the_possible_ones_names_them() {
    refused(
        &["--log-format", "xml"],
        &["possible values are text, json"],
    );
    refused(
        &["--kube-list-strategy", "fast"],
        &["possible values are auto, streaming, paged"],
    );
}

#[test]
fn a_negative_number_or_a_dashed_value_is_refused_in_one_line() {
    for flag in [
        "--poll-interval-ms",
        "--series-budget",
        "--flow-log-max-files",
    ] {
        let (code, stderr) = run(&[flag, "-1"]);
        assert_eq!(code, Some(1), "{flag}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flag}: not one line:\n{stderr}");
        assert!(
            lines[0].contains("no flag takes a negative number"),
            "{stderr}"
        );
    }
    // Any value with a leading dash: clap takes it for a flag; one line says how to give it.
    let (code, stderr) = run(&["--label-allowlist", "-a"]);
    assert_eq!(code, Some(1), "{stderr}");
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, 1, "{stderr}");
    assert!(stderr.contains("--flag=-a"), "{stderr}");
}

/// A host name is resolved: the agent serves on the address `localhost` resolves to.
#[test]
fn a_host_name_in_listen_is_resolved() {
    if !root_test("agent listening on a resolved host name") {
        return;
    }
    let port = free_port();
    let listen = format!("localhost:{port}");
    // The address the agent binds: the first `localhost` resolves to.
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .expect("resolving localhost")
        .next()
        .expect("localhost has an address");
    let mut child = Command::new(binary())
        .args([
            "run",
            "--interfaces",
            "fwnomatch*",
            "--exit-after-secs",
            "20",
        ])
        .args(["--listen", &listen])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning flowwatch");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut answered = None;
    while std::time::Instant::now() < deadline {
        if let Ok((status, _)) =
            flowwatch_testkit::prometheus::http_get(&resolved.to_string(), "/healthz", None)
        {
            answered = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, Some(200), "no /healthz on {listen}");
}
