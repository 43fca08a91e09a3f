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

/// The source files of the modules the map's "Pure" paragraph names: a `mod.rs` stands for
/// its whole folder, a `name.rs` for itself and its `name/` folder.
fn pure_sources(doc: &str, root: &Path) -> Vec<std::path::PathBuf> {
    let start = doc
        .find("\nPure (")
        .expect("the map has its Pure paragraph");
    let paragraph = &doc[start..];
    let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
    let mut files = Vec::new();
    for named in named_paths(paragraph) {
        let path = root.join(named);
        let folder = if path.file_name().is_some_and(|n| n == "mod.rs") {
            path.parent().map(Path::to_path_buf)
        } else {
            files.push(path.clone());
            Some(path.with_extension(""))
        };
        if let Some(folder) = folder.filter(|f| f.is_dir()) {
            collect_rs(&folder, &mut files);
        }
    }
    files.sort();
    files.dedup();
    files
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a module folder is readable") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The runtime crates the pure core must not reach (the edges' crates).
const EDGE_CRATES: [&str; 8] = [
    "tokio",
    "tokio_util",
    "aya",
    "kube",
    "axum",
    "hyper",
    "hyper_util",
    "tower",
];

/// The edge crates a source file names as paths (`tokio::`, `use aya::...`).
fn edge_crates_named(source: &str) -> Vec<&'static str> {
    EDGE_CRATES
        .iter()
        .filter(|krate| {
            let path = format!("{krate}::");
            source.match_indices(&path).any(|(at, _)| {
                // Not the tail of a longer name (`my_tokio::`) or of a local path
                // (`crate::metrics::kube::`).
                let before = source[..at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            })
        })
        .copied()
        .collect()
}

#[test]
fn the_pure_core_names_no_runtime_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md"))
        .expect("docs/architecture.md is readable");
    let files = pure_sources(&doc, &root);
    assert!(files.len() > 40, "too few pure files found: {files:?}");
    let impure: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let source = std::fs::read_to_string(f).expect("a source file is readable");
            let named = edge_crates_named(&source);
            (!named.is_empty()).then(|| format!("{} uses {named:?}", f.display()))
        })
        .collect();
    assert!(
        impure.is_empty(),
        "the pure core reaches the edges: {impure:#?}"
    );
}

#[test]
fn the_purity_check_sees_a_runtime_crate_and_not_a_look_alike() {
    assert_eq!(edge_crates_named("use tokio::sync::Mutex;"), ["tokio"]);
    assert_eq!(
        edge_crates_named("let c = kube::Client::try_default();"),
        ["kube"]
    );
    assert_eq!(
        edge_crates_named("    aya::maps::HashMap::try_from(m)"),
        ["aya"]
    );
    assert!(edge_crates_named("pub use kube_families::KubeFamilies;").is_empty());
    assert!(edge_crates_named("use crate::metrics::kube_families::X; k8s_openapi::api").is_empty());
}
