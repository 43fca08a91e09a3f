//! Policy engine benchmarks (filled in with the engine).
use criterion::{criterion_group, criterion_main, Criterion};

fn policy(_c: &mut Criterion) {}

criterion_group!(benches, policy);
criterion_main!(benches);
