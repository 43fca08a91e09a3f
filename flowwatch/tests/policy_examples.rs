//! The walkthrough "Test a policy change before you merge it" of docs/policy.md, and the
//! examples of "Policies from traffic", stay true:
//! every command of its `console` blocks is run from the repository root, with this build's
//! `flowwatch` first on PATH, and must print exactly what the document shows.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (command, expected stdout) of every `$ ` line of the section's `console` blocks.
fn documented_commands(doc: &str, heading: &str) -> Vec<(String, String)> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/policy.md has no {heading:?}"));
    let section = &doc[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut commands: Vec<(String, String)> = Vec::new();
    let mut in_console = false;
    for line in section.lines() {
        if line == "```console" {
            in_console = true;
        } else if line == "```" {
            in_console = false;
        } else if in_console {
            if let Some(cmd) = line.strip_prefix("$ ") {
                commands.push((cmd.to_string(), String::new()));
            } else {
                let (_, out) = commands.last_mut().expect("output before any command");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    commands
}

#[test]
fn the_walkthrough_commands_print_what_the_docs_show() {
    run_documented("## Test a policy change before you merge it", 4);
}

#[test]
fn the_policies_from_traffic_examples_print_what_the_docs_show() {
    run_documented("## Policies from traffic", 2);
}

/// Runs every command of a section's `console` blocks (at least `least` of them) and compares
/// its stdout with the document.
fn run_documented(heading: &str, least: usize) {
    let doc = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
    let commands = documented_commands(&doc, heading);
    assert!(
        commands.len() >= least,
        "{heading} lost its commands: {commands:?}"
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_flowwatch")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (cmd, expected) in &commands {
        assert!(
            cmd.starts_with("flowwatch ") || cmd.contains("| flowwatch "),
            "{cmd}"
        );
        let out = Command::new("sh")
            .args(["-c", cmd])
            .current_dir(repo())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            *expected,
            "`{cmd}` printed something else (stderr: {})",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_example_change_is_caught_by_the_gate() {
    // The point of the example: the proposed change breaks the backup job, so the gate fails.
    let doc = std::fs::read_to_string(repo().join("docs/policy.md")).unwrap();
    let commands = documented_commands(&doc, "## Test a policy change before you merge it");
    let whatif = commands
        .iter()
        .find(|(cmd, _)| cmd.starts_with("flowwatch policy whatif"))
        .expect("the walkthrough runs whatif");
    assert!(
        whatif.1.contains("would_break    ops/cronjob/backup"),
        "{}",
        whatif.1
    );
    assert!(whatif.1.ends_with("exit status: 4\n"), "{}", whatif.1);
}
