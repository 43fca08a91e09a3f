//! A node for one test: what it needs checked first, the agent's image built, the node up, the
//! test's scenario run, and afterwards, failed or not, the node torn down and checked gone
//! (processes, namespaces, mounts, links, cgroups, state, and nothing of the machine changed).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flowwatch_testnode::{leftovers, Binaries, HostSnapshot, Node, NodeOptions};

use super::image;
use crate::helm::helm;
use crate::privileged::root;

/// Root, the node's binaries (kube-router and Prometheus included), helm, the release agent.
pub fn available() -> Result<(), String> {
    root()?;
    let bins = Binaries::find().map_err(|e| format!("{e:#}"))?;
    if !bins.kube_router.is_file() {
        return Err(format!(
            "{} missing (cargo xtask k8s-bins)",
            bins.kube_router.display()
        ));
    }
    if !bins.prometheus.is_file() {
        return Err(format!(
            "{} missing (cargo xtask k8s-bins)",
            bins.prometheus.display()
        ));
    }
    helm()?;
    image::release_binary()?;
    Ok(())
}

/// Builds the agent's image, starts a node with it (`pod_addresses` as in [`NodeOptions`]),
/// runs `scenario` with the node and a work folder, then tears the node down and asserts that
/// nothing is left; a failed scenario's panic is raised after the teardown, with the node's
/// logs printed.
pub fn on_a_node(prefix: &str, pod_addresses: Option<u8>, scenario: impl FnOnce(&Node, &Path)) {
    let before = HostSnapshot::take().expect("host snapshot");
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let started = Instant::now();
    let archive = work.path().join("flowwatch-image.tar");
    image::build(&work.path().join("buildah"), &archive).expect("building the agent's image");
    // buildah's vfs storage is large and no longer needed.
    let _ = Command::new("buildah")
        .arg("--root")
        .arg(work.path().join("buildah/root"))
        .arg("--runroot")
        .arg(work.path().join("buildah/run"))
        .args(["--storage-driver", "vfs", "rmi", "--all", "--force"])
        .output();
    std::fs::remove_dir_all(work.path().join("buildah")).expect("removing buildah's storage");
    let image_time = started.elapsed();

    let started = Instant::now();
    let node = Node::up(&NodeOptions {
        images: vec![archive],
        pod_addresses,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let up_time = started.elapsed();
    eprintln!(
        "image built in {image_time:.1?}; node {} up in {up_time:.1?} ({:?})",
        node.name, node.timings
    );

    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(&node, work.path());
    }));
    let scenario_time = started.elapsed();
    if outcome.is_err() {
        eprintln!("node logs:\n{}", node.logs());
    }
    let (name, dir) = (node.name.clone(), node.dir.clone());
    let (netns, mntns) = node.namespace_inodes();
    let started = Instant::now();
    let down = node.down();
    eprintln!(
        "scenario {scenario_time:.1?}; node down in {:.1?}",
        started.elapsed()
    );
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    down.unwrap_or_else(|e| panic!("teardown: {e:#}"));
    let mut left = leftovers(&dir, &name);
    for (kind, inode) in [("net", netns), ("mnt", mntns)] {
        let procs = flowwatch_testnode::sys::processes_in_ns(kind, inode);
        if !procs.is_empty() {
            left.push(format!(
                "processes in the node's {kind} namespace: {procs:?}"
            ));
        }
    }
    assert!(left.is_empty(), "left on the machine: {left:?}");
    let changes = HostSnapshot::take()
        .expect("host snapshot")
        .changes_since(&before);
    assert!(
        changes.is_empty(),
        "the node changed the machine: {changes:?}"
    );
}
