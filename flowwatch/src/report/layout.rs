//! Where each end of the graph sits (pure, deterministic): one column group per namespace,
//! sorted by name, with its workloads sorted by kind and name, at most [`MAX_ROWS`] to a
//! column (a large namespace takes several columns side by side); then nodes, then external
//! addresses. Gaps between columns leave room for the edges' curves. No force simulation:
//! the same ends always land on the same spot, and a reader finds a namespace by name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::whatif::EdgeEnd;

/// A node box's size, and the distance between rows and columns.
pub const NODE_W: u32 = 190;
pub const NODE_H: u32 = 26;
pub const ROW: u32 = 36;
pub const COL_GAP: u32 = 90;
/// The most boxes in one column.
pub const MAX_ROWS: usize = 14;
/// Above the first row: the group's title.
pub const HEADER: u32 = 44;
pub const MARGIN: u32 = 20;
/// The most characters a box shows (the full name is in its tooltip).
pub const LABEL_CHARS: usize = 28;
/// Below the frames: the lane where edges that would cross a frame run.
pub const LANE: u32 = 50;

/// The group of the ends that are node addresses, and of the other addresses.
pub const NODES_GROUP: &str = "nodes";
pub const EXTERNAL_GROUP: &str = "external";

/// One box of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// `n0`, `n1`, ... in placement order.
    pub id: String,
    /// The end's full name (`namespace/kind/name`, or the address).
    pub name: String,
    /// What the box shows (without the namespace, which the group's title says).
    pub label: String,
    pub x: u32,
    pub y: u32,
}

/// One namespace (or the nodes, or the external addresses): a titled frame around its boxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub title: String,
    /// A namespace (not nodes or external addresses).
    pub namespace: bool,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub boxes: Vec<Placed>,
    pub groups: Vec<Group>,
    pub width: u32,
    pub height: u32,
    /// The middle of the lane below the frames.
    pub lane_y: u32,
    index: BTreeMap<EdgeEnd, usize>,
}

impl Layout {
    /// Whether a frame lies between the columns at `x1` and `x2` (an edge straight across
    /// would run behind its boxes).
    pub fn frame_between(&self, x1: u32, x2: u32) -> bool {
        let (lo, hi) = (x1.min(x2), x1.max(x2));
        self.groups.iter().any(|g| g.x > lo && g.x + g.w < hi)
    }

    /// The box of an end.
    pub fn of(&self, end: &EdgeEnd) -> Option<&Placed> {
        self.index.get(end).map(|i| &self.boxes[*i])
    }
}

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Places `ends`; `nodes` names the addresses that are nodes.
pub fn layout(ends: &BTreeSet<EdgeEnd>, nodes: &BTreeMap<IpAddr, String>) -> Layout {
    // (order: namespaces, nodes, external; title) -> its ends (name, label, end), in order.
    type Members = Vec<(String, String, EdgeEnd)>;
    let mut groups: BTreeMap<(u8, String), Members> = BTreeMap::new();
    for end in ends {
        let (key, label) = match end {
            EdgeEnd::Workload {
                namespace,
                kind,
                name,
            } => ((0, namespace.clone()), format!("{kind}/{name}")),
            EdgeEnd::Address(ip) => match nodes.get(ip) {
                Some(node) => ((1, NODES_GROUP.to_string()), format!("{node} {ip}")),
                None => ((2, EXTERNAL_GROUP.to_string()), ip.to_string()),
            },
        };
        groups
            .entry(key)
            .or_default()
            .push((end.to_string(), label, end.clone()));
    }
    let mut out = Layout::default();
    let mut x = MARGIN;
    let mut tallest = 0u32;
    for ((order, title), members) in groups {
        let columns = members.len().div_ceil(MAX_ROWS).max(1);
        let rows = members.len().min(MAX_ROWS) as u32;
        let group_x = x;
        for (i, (name, label, end)) in members.into_iter().enumerate() {
            let col = (i / MAX_ROWS) as u32;
            let row = (i % MAX_ROWS) as u32;
            out.index.insert(end, out.boxes.len());
            out.boxes.push(Placed {
                id: format!("n{}", out.boxes.len()),
                name,
                label: shorten(&label, LABEL_CHARS),
                x: group_x + 10 + col * (NODE_W + 30),
                y: MARGIN + HEADER + row * ROW,
            });
        }
        let w = columns as u32 * (NODE_W + 30) - 10;
        let h = HEADER + rows * ROW;
        out.groups.push(Group {
            title,
            namespace: order == 0,
            x: group_x,
            y: MARGIN,
            w,
            h,
        });
        tallest = tallest.max(h);
        x += w + COL_GAP;
    }
    // Room on the right of the last frame for the loops of edges within it.
    out.width = x + MARGIN;
    out.lane_y = MARGIN + tallest + LANE / 2;
    out.height = MARGIN * 2 + tallest + LANE;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ns: &str, name: &str) -> EdgeEnd {
        EdgeEnd::Workload {
            namespace: ns.into(),
            kind: "deployment".into(),
            name: name.into(),
        }
    }

    #[test]
    fn namespaces_are_columns_in_order_and_addresses_come_last() {
        let ip: IpAddr = "192.168.0.1".parse().unwrap();
        let ext: IpAddr = "203.0.113.9".parse().unwrap();
        let ends: BTreeSet<EdgeEnd> = [
            workload("shop", "web"),
            workload("data", "db"),
            workload("shop", "api"),
            EdgeEnd::Address(ext),
            EdgeEnd::Address(ip),
        ]
        .into();
        let nodes = [(ip, "node-a".to_string())].into();
        let l = layout(&ends, &nodes);
        let titles: Vec<&str> = l.groups.iter().map(|g| g.title.as_str()).collect();
        assert_eq!(titles, ["data", "shop", "nodes", "external"]);
        let api = l.of(&workload("shop", "api")).unwrap();
        let web = l.of(&workload("shop", "web")).unwrap();
        assert_eq!((api.x, api.label.as_str()), (web.x, "deployment/api"));
        assert!(api.y < web.y);
        assert_eq!(
            l.of(&EdgeEnd::Address(ip)).unwrap().label,
            "node-a 192.168.0.1"
        );
        assert!(l.of(&workload("data", "db")).unwrap().x < api.x);
        assert_eq!(l, layout(&ends, &nodes), "deterministic");
        assert!(l
            .boxes
            .iter()
            .all(|b| b.x + NODE_W <= l.width && b.y + NODE_H <= l.height));
    }

    #[test]
    fn a_large_namespace_wraps_into_columns_and_long_names_are_cut() {
        let ends: BTreeSet<EdgeEnd> = (0..=(MAX_ROWS * 2))
            .map(|i| workload("big", &format!("w{i:02}-{}", "x".repeat(40))))
            .collect();
        let l = layout(&ends, &BTreeMap::new());
        let xs: BTreeSet<u32> = l.boxes.iter().map(|b| b.x).collect();
        assert_eq!(xs.len(), 3);
        assert_eq!(l.groups[0].h, HEADER + MAX_ROWS as u32 * ROW);
        assert!(l
            .boxes
            .iter()
            .all(|b| b.label.chars().count() <= LABEL_CHARS));
        assert!(l.boxes[0].label.ends_with('…'));
        assert!(l.boxes.iter().all(|b| b.x + NODE_W <= l.width));
    }
}
