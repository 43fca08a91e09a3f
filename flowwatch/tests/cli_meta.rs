//! `flowwatch version` and `flowwatch completions SHELL`.

use std::process::Command;

fn flowwatch(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn version_names_the_release_the_commit_and_the_ebpf_object() {
    let (code, text) = flowwatch(&["version"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], format!("flowwatch {}", env!("CARGO_PKG_VERSION")));
    let commit = lines[1].strip_prefix("commit: ").expect("a commit line");
    // Built from this checkout: its HEAD (the test binary and flowwatch are built together).
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert!(
            commit == head || commit == format!("{head}-dirty"),
            "{commit} is not HEAD {head}"
        ),
        None => assert!(!commit.is_empty(), "{text}"),
    }
    let hash = lines[2]
        .strip_prefix("ebpf object: sha256:")
        .expect("an ebpf object line");
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(hash
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // The object is the one the agent loads: the same every time.
    assert_eq!(flowwatch(&["version"]).1, text);
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    let (code, bash) = flowwatch(&["completions", "bash"]);
    assert_eq!(code, Some(0));
    for word in [
        "policy",
        "whatif",
        "diff",
        "coverage",
        "--fail-on-gaps",
        "--proposed",
    ] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    let (code, zsh) = flowwatch(&["completions", "zsh"]);
    assert_eq!(code, Some(0));
    assert!(
        zsh.starts_with("#compdef flowwatch"),
        "{}",
        &zsh[..40.min(zsh.len())]
    );
    let (code, fish) = flowwatch(&["completions", "fish"]);
    assert_eq!(code, Some(0));
    assert!(fish.contains("complete -c flowwatch"));
    let (code, _) = flowwatch(&["completions", "tcsh"]);
    assert_eq!(code, Some(1), "an unknown shell is a usage error");
}
