//! docs/architecture.md stays a true map: every repository path it names exists.

use std::path::Path;

/// The backticked tokens of the document that look like repository paths.
fn named_paths(doc: &str) -> Vec<&str> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            [
                "flowwatch/",
                "flowwatch-",
                "xtask/",
                "deploy/",
                "docs/",
                "testinfra/",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .filter(|t| !t.contains(' '))
        .collect()
}

#[test]
fn every_path_the_architecture_map_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md"))
        .expect("docs/architecture.md is readable");
    let named = named_paths(&doc);
    assert!(named.len() > 30, "the map names too few paths: {named:?}");
    let missing: Vec<&&str> = named
        .iter()
        .filter(|p| !root.join(p.trim_end_matches('/')).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn the_path_check_sees_a_missing_module() {
    let named = named_paths("see `flowwatch/src/nowhere.rs` and `cargo xtask test`");
    assert_eq!(named, ["flowwatch/src/nowhere.rs"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(!root.join(named[0]).exists());
}
