//! The fuzz targets' seed corpora on the stable toolchain (issue 17, item 6): every file of
//! `fuzz/corpus/<target>/` (seeds, and the inputs of crashes the fuzzer found, kept as
//! regressions) runs through the target's harness in `flowwatch::fuzzing`, the very function
//! `cargo xtask fuzz` runs under libFuzzer. A panic fails the test and names the file.

use std::path::{Path, PathBuf};

use flowwatch::fuzzing::{Fixture, TARGETS};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn fixture() -> Fixture {
    Fixture::new(include_str!("fixtures/policy/cluster.yaml"))
}

/// The files of one target's corpus, sorted.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_seed_corpus_and_every_corpus_a_target() {
    let targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    for target in &targets {
        assert!(
            !corpus(target).is_empty(),
            "fuzz/corpus/{target} has no seeds"
        );
    }
    let mut dirs: Vec<String> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut sorted = targets.clone();
    sorted.sort_unstable();
    assert_eq!(
        dirs, sorted,
        "fuzz/corpus folders and fuzzing::TARGETS differ"
    );
    // The fuzz crate builds one binary per target.
    let manifest =
        std::fs::read_to_string(corpus_root().join("../Cargo.toml")).expect("fuzz/Cargo.toml");
    for target in &targets {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
}

#[test]
fn every_seed_and_past_crash_runs_through_its_harness() {
    let fixture = fixture();
    let mut ran = 0;
    for (target, harness) in TARGETS {
        for file in corpus(target) {
            let data = std::fs::read(&file).expect("a corpus file");
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness(&fixture, &data)));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panicked on {}",
                file.display()
            );
            ran += 1;
        }
    }
    assert!(ran >= TARGETS.len(), "only {ran} corpus files ran");
}

#[test]
fn the_seeds_reach_past_the_decoders_first_checks() {
    // Seeds that the decoders reject at once would fuzz only the length checks: the kernel
    // records and the conntrack entry must decode.
    for file in corpus("kernel_event") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&file).unwrap();
        if !name.starts_with("short") && !name.starts_with("crash") {
            assert!(
                flowwatch::fuzzing::kernel_event(&data).is_ok(),
                "kernel_event seed {name} does not decode"
            );
        }
    }
    let entry = std::fs::read(corpus_root().join("conntrack_reply/entry-v4.bin")).unwrap();
    assert!(flowwatch::fuzzing::conntrack_reply(&entry).is_some());
}
