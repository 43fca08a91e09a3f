//! A bounded mutation campaign over the fuzz targets' harnesses on the stable toolchain
//! (`cargo xtask bench fuzz_stable`; FLOWWATCH_FUZZ_SECS per target, default 60;
//! FLOWWATCH_FUZZ_SEED for the random sequence). Not coverage-guided: each input is a seed of
//! `fuzz/corpus/<target>/` (or an earlier mutant) with a few random mutations: bytes flipped,
//! inserted, deleted or repeated, runs duplicated, two inputs spliced, YAML/JSON tokens and
//! extreme numbers inserted. It exists because the instrumented `cargo fuzz` build takes more
//! than an hour on a loaded 2-core machine; it finds what random mutation finds (panics, slow
//! inputs), not what coverage guidance would. A panic, or an input taking over 1 s, is written to
//! `target/fuzz-stable/<target>/` and fails the run; make it a regression seed in
//! `fuzz/corpus/<target>/` (see docs/fuzzing.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowwatch::fuzzing::{Fixture, TARGETS};

/// A small xorshift generator: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that reach past a parser's first checks.
const TOKENS: [&[u8]; 20] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b": ",
    b"\n- ",
    b"\n  ",
    b"\"",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1e400",
    b"null",
    b"&a *a",
    b"!!binary",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff\xfe",
    b"kind: List\nitems:\n",
    b"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n",
    b"matchExpressions: [{key: a, operator: In, values: [b]}]",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 if len > 0 => {
                // A run repeated: deep nesting, long lines.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                let run = input[i..i + n].to_vec();
                let times = 1 + rng.below(2_000);
                let at = rng.below(len + 1);
                input.splice(at..at, run.iter().copied().cycle().take(n * times));
            }
            4 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            5 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let digits = format!("{}", rng.next());
                input.splice(i..i, digits.bytes());
            }
        }
    }
    input.truncate(1 << 20);
}

fn corpus(root: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(target))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

fn main() {
    let secs: u64 = std::env::var("FLOWWATCH_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("FLOWWATCH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f10e_a7c4_0017);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixture = Fixture::new(include_str!("../tests/fixtures/policy/cluster.yaml"));
    let out = repo.join("target/fuzz-stable");
    // Panics are caught and counted; keep their messages short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut failed = false;
    for (target, harness) in TARGETS {
        let mut pool = corpus(&repo.join("fuzz/corpus"), target);
        if pool.is_empty() {
            pool.push(Vec::new());
        }
        let seeds = pool.len();
        let mut rng = Rng(seed ^ target.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let (start, mut runs, mut slowest) = (Instant::now(), 0u64, Duration::ZERO);
        let mut findings = 0;
        while start.elapsed() < Duration::from_secs(secs) {
            let mut input = pool[rng.below(pool.len())].clone();
            let other = pool[rng.below(pool.len())].clone();
            mutate(&mut rng, &mut input, &other);
            let t = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                harness(&fixture, &input);
            }));
            let took = t.elapsed();
            slowest = slowest.max(took);
            runs += 1;
            if outcome.is_err() || took > Duration::from_secs(1) {
                findings += 1;
                let dir = out.join(target);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!(
                    "{}-{runs}",
                    if outcome.is_err() { "crash" } else { "slow" }
                ));
                let _ = std::fs::write(&file, &input);
                eprintln!("{target}: finding in {} ({took:?})", file.display());
            } else if pool.len() < 2_000 && rng.below(50) == 0 {
                // Some mutants become parents: mutations compound.
                pool.push(input);
            }
        }
        failed |= findings > 0;
        println!(
            "fuzz_stable: {target}: {runs} inputs in {secs} s from {seeds} seeds; slowest {:.1} ms; findings {findings}",
            slowest.as_secs_f64() * 1e3
        );
    }
    if failed {
        eprintln!("fuzz_stable: findings written to {}", out.display());
        std::process::exit(1);
    }
}
