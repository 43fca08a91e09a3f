//! A pod's address given to another pod: y/b (whose only policy limits its egress to namespace
//! z) is deleted, and w/reused (another namespace, another label, a policy of its own: ingress
//! only from namespace z, egress only to namespace x) gets its address, the only one the node's
//! host-local range has free. Its traffic must be named after w/reused and judged by w/reused's
//! policy: every probe below has another verdict under y/b's identity.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flowwatch_testnode::Node;

use super::matrix::{self, Peer, PodRef, Policy, Probe, Rule};

pub const OLD: PodRef = PodRef { ns: "y", pod: "b" };
pub const NEW: PodRef = PodRef {
    ns: "w",
    pod: "reused",
};

pub fn new_pods_policy() -> Policy {
    Policy {
        name: "reused-from-z-to-x",
        namespace: NEW.ns,
        pod: NEW.pod,
        ingress: Some(vec![Rule {
            peers: vec![Peer::Namespace("z")],
            ports: vec![],
        }]),
        egress: Some(vec![Rule {
            peers: vec![Peer::Namespace("x")],
            ports: vec![],
        }]),
    }
}

/// The probes: from the new pod to x and z, to it from x and z, TCP and UDP. Under y/b's
/// identity each would be judged otherwise (y/b may reach only z, and no policy selects its
/// ingress).
pub fn probes() -> Vec<Probe> {
    let x_b = PodRef { ns: "x", pod: "b" };
    let z_a = PodRef { ns: "z", pod: "a" };
    let x_a = PodRef { ns: "x", pod: "a" };
    let mut out = Vec::new();
    for (from, to) in [(NEW, x_b), (NEW, z_a), (x_a, NEW), (z_a, NEW)] {
        for (port, protocol) in [(80, "TCP"), (81, "UDP")] {
            out.push(Probe {
                from,
                to,
                port,
                protocol,
            });
        }
    }
    out
}

/// Deletes y/b, starts w/reused with its policy, and returns the pods' addresses now (y/b's
/// address is w/reused's). Asserts that the address was reused.
pub fn replace_the_pod(node: &Node, ips: &BTreeMap<PodRef, String>) -> BTreeMap<PodRef, String> {
    let old_ip = ips[&OLD].clone();
    let started = Instant::now();
    node.kubectl(&[
        "delete",
        "pod",
        OLD.pod,
        "-n",
        OLD.ns,
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap_or_else(|e| panic!("deleting {OLD}: {e:#}"));
    node.apply(&matrix::manifest(&new_pods_policy()))
        .expect("the new pod's policy");
    node.apply(&matrix::pod_manifest(
        NEW,
        flowwatch_testnode::images::AGNHOST_IMAGE,
    ))
    .expect("the new pod");
    // Until the old pod's sandbox is torn down its address is taken, and kubelet retries.
    node.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        NEW.pod,
        "-n",
        NEW.ns,
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            node.kubectl(&["describe", "pod", NEW.pod, "-n", NEW.ns])
                .unwrap_or_default()
        )
    });
    let new_ip = node
        .kubectl(&[
            "get",
            "pod",
            NEW.pod,
            "-n",
            NEW.ns,
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .expect("pod ip");
    assert_eq!(
        new_ip, old_ip,
        "{NEW} got another address than {OLD} had: the node's pod range has more than one free"
    );
    // The pods that talked to the old pod still map the address to its MAC address: what
    // they send there is lost until their neighbour entry times out and is probed again (a
    // single UDP datagram, unlike a TCP SYN, is not sent again). Announce the new owner, as
    // CNIs that reuse addresses do (a gratuitous ARP updates existing entries).
    node.kubectl(&[
        "exec",
        "-n",
        NEW.ns,
        NEW.pod,
        "--",
        "/bin/busybox",
        "arping",
        "-U",
        "-c",
        "2",
        "-I",
        "eth0",
        &new_ip,
    ])
    .unwrap_or_else(|e| panic!("gratuitous ARP from {NEW}: {e:#}"));
    eprintln!(
        "{OLD} deleted, {NEW} Ready with its address {new_ip} after {:.1?}",
        started.elapsed()
    );
    let mut now = ips.clone();
    now.remove(&OLD);
    now.insert(NEW, new_ip);
    now
}

/// Waits until kube-router enforces the new pod's policy: the canary (namespace w, not z) can
/// no longer connect to it.
pub fn wait_until_enforced(node: &Node, ips: &BTreeMap<PodRef, String>) {
    let target = format!("{}:80", ips[&NEW]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if !matrix::connects(node, matrix::CANARY.ns, matrix::CANARY.pod, &target) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-router did not enforce {NEW}'s policy within 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
