//! `cargo xtask cluster up|down`: the tests' real node (`testinfra/node`), by hand.
//!
//! `up` builds what is missing, starts the node detached (it outlives the command) and prints
//! its kubeconfig; the API server is reachable only inside the node's network namespace, so run
//! clients there: `ip netns exec flowwatch-dev kubectl --kubeconfig <path> get pods -A`.
//! `down` stops every process and removes every mount, link, namespace, cgroup and folder.

use anyhow::{Context, Result};
use clap::Subcommand;
use flowwatch_testnode::{node, Node, NodeOptions};

use crate::{k8s, setup};

/// The name of the hand-run node (its netns is `/run/netns/flowwatch-dev`).
pub const NAME: &str = "flowwatch-dev";

#[derive(Subcommand, Clone, Copy)]
pub enum Action {
    /// Start the node and print its kubeconfig.
    Up,
    /// Tear it down.
    Down,
}

pub fn run(action: Action) -> Result<()> {
    let dir = node::state_base().join(NAME);
    match action {
        Action::Up => {
            setup::for_tests()?;
            k8s::build_binaries()?;
            k8s::build_node_binaries()?;
            let started = std::time::Instant::now();
            let node = Node::up(&NodeOptions {
                name: Some(NAME.into()),
                detached: true,
                images: Vec::new(),
                pod_addresses: None,
            })?;
            let kubeconfig = node.kubeconfig();
            eprintln!(
                "node {NAME} Ready in {:.1?}; kubeconfig {} (use it inside the node's netns):\n  \
                 ip netns exec {NAME} {} --kubeconfig {} get nodes\n\
                 tear down with `cargo xtask cluster down`",
                started.elapsed(),
                kubeconfig.display(),
                node.bins.kubectl.display(),
                kubeconfig.display()
            );
            print!(
                "{}",
                std::fs::read_to_string(&kubeconfig).context("reading the kubeconfig")?
            );
            Ok(())
        }
        Action::Down => {
            let started = std::time::Instant::now();
            if !dir.exists() {
                eprintln!("no node {NAME} is up ({} does not exist)", dir.display());
                return Ok(());
            }
            flowwatch_testnode::teardown(&dir)?;
            eprintln!("node {NAME} removed in {:.1?}", started.elapsed());
            Ok(())
        }
    }
}
