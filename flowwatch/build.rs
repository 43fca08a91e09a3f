//! Builds the kernel programs (flowwatch-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `datapath` embeds it.

fn main() {
    // build-std on a stable toolchain: RUSTC_BOOTSTRAP is set for this build script's own
    // children only (the nested cargo that builds the eBPF crate), never for the agent itself.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build forwards every line the nested cargo prints as a build warning; keep only real
    // diagnostics.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let package = aya_build::Package {
        name: "flowwatch-ebpf",
        root_dir: "../flowwatch-ebpf",
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom("stable")) {
        // One clear line instead of a build-script backtrace; the usual causes first.
        eprintln!(
            "error: building the eBPF programs failed: {e:#}\n\
             hint: run `cargo xtask setup` (installs bpf-linker with LLVM 22 and rust-src)"
        );
        std::process::exit(1);
    }
}
