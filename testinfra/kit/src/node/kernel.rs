//! What an agent holds in the kernel, asked of the kernel itself: the eBPF programs, links and
//! maps a process has open (its `/proc/<pid>/fdinfo`), the ones that exist at all, and the tcx
//! programs attached to each pod veth of the node (`BPF_PROG_QUERY` from inside the node's
//! network namespace). An agent replaced by another must leave none of its own behind, and
//! every veth must carry exactly one program each way, the new agent's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use aya::programs::{SchedClassifier, TcAttachType};
use flowwatch_testnode::sys::ThreadNetns;

/// The eBPF objects one process has open, by kernel id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub programs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }
}

/// Reads `/proc/<pid>/fdinfo/*`: a program's descriptor says `prog_id:`, a link's `link_id:`
/// (and its program's `prog_id:`), a map's `map_id:`.
pub fn held_by(pid: i32) -> Held {
    let mut held = Held::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return held;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u32>() else {
                continue;
            };
            match key.trim() {
                "prog_id" => held.programs.insert(id),
                "link_id" => held.links.insert(id),
                "map_id" => held.maps.insert(id),
                _ => false,
            };
        }
    }
    held
}

/// Of `held`, what still exists in the kernel (whoever holds it now).
pub fn still_loaded(held: &Held) -> Held {
    let programs: BTreeSet<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let links: BTreeSet<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .collect();
    let maps: BTreeSet<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    Held {
        programs: held.programs.intersection(&programs).copied().collect(),
        links: held.links.intersection(&links).copied().collect(),
        maps: held.maps.intersection(&maps).copied().collect(),
    }
}

/// The programs attached with tcx to each veth of the node: (ingress, egress) program ids.
pub fn tcx_on_veths(netns: &Path) -> BTreeMap<String, (Vec<u32>, Vec<u32>)> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(netns.file_name().expect("netns name"))
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .expect("ip link");
    assert!(out.status.success(), "ip link show type veth");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    // A thread of its own in the node's netns: interface names resolve there.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = ThreadNetns::enter(netns).expect("entering the node's netns");
            names
                .iter()
                .map(|name| {
                    let ids = |t| {
                        SchedClassifier::query_tcx(name, t)
                            .unwrap_or_else(|e| panic!("tcx query of {name}: {e}"))
                            .1
                            .iter()
                            .map(aya::programs::ProgramInfo::id)
                            .collect::<Vec<u32>>()
                    };
                    (
                        name.clone(),
                        (ids(TcAttachType::Ingress), ids(TcAttachType::Egress)),
                    )
                })
                .collect()
        })
        .join()
        .expect("tcx query thread")
    })
}

/// Asserts that every veth of the node carries exactly one program each way and that they are
/// the programs `agent` holds; returns the number of veths.
pub fn assert_attached_once_by(netns: &Path, agent: &Held, who: &str) -> usize {
    let veths = tcx_on_veths(netns);
    assert!(!veths.is_empty(), "the node has no pod veths");
    for (veth, (ingress, egress)) in &veths {
        assert!(
            ingress.len() == 1 && egress.len() == 1,
            "{veth}: tcx programs ingress {ingress:?}, egress {egress:?}: want exactly one each way"
        );
        for id in ingress.iter().chain(egress) {
            assert!(
                agent.programs.contains(id),
                "{veth}: program {id} is not {who}'s (it holds {:?})",
                agent.programs
            );
        }
    }
    veths.len()
}
