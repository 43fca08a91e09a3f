//! The workload graph as inline SVG (pure): a frame per namespace, a box per workload or
//! address, and a curve per source, destination and verdict class, coloured (and dashed, for
//! readers who do not tell the colours apart) by the class. Each curve's tooltip lists its
//! ports and connections. Built in Rust, so the page shows the graph without its script.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::escape::text;
use super::layout::{Layout, Placed, COL_GAP, NODE_H, NODE_W};
use super::{EdgeClass, Report, ReportEdge};
use crate::whatif::EdgeEnd;

/// The graph of `report`, placed by `layout`.
pub fn graph(report: &Report, layout: &Layout) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg id=\"graph\" role=\"img\" aria-label=\"observed workload graph\" width=\"{w}\" \
         height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n<defs>\n",
        w = layout.width,
        h = layout.height
    );
    for class in EdgeClass::ALL {
        let _ = writeln!(
            out,
            "<marker id=\"arrow-{c}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" \
             markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
             <path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker>",
            c = class.as_str(),
            colour = class.colour()
        );
    }
    out.push_str("</defs>\n");
    for g in &layout.groups {
        let _ = writeln!(
            out,
            "<g class=\"group{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"8\"/>\
             <text class=\"group-title\" x=\"{}\" y=\"{}\">{}</text></g>",
            if g.namespace { " namespace" } else { "" },
            g.x,
            g.y,
            g.w,
            g.h,
            g.x + 10,
            g.y + 24,
            text(&g.title)
        );
    }
    edges(&mut out, report, layout);
    for b in &layout.boxes {
        let _ = writeln!(
            out,
            "<g class=\"node\" id=\"{id}\" data-name=\"{name}\" tabindex=\"0\"><title>{name}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"4\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{label}</text></g>",
            id = b.id,
            name = text(&b.name),
            x = b.x,
            y = b.y,
            tx = b.x + 8,
            ty = b.y + 17,
            label = text(&b.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One curve per (source, destination, class), drawn under the boxes.
fn edges(out: &mut String, report: &Report, layout: &Layout) {
    let mut curves: BTreeMap<(&EdgeEnd, &EdgeEnd), BTreeMap<EdgeClass, Vec<&ReportEdge>>> =
        BTreeMap::new();
    for e in &report.edges {
        curves
            .entry((&e.key.src, &e.key.dst))
            .or_default()
            .entry(e.class)
            .or_default()
            .push(e);
    }
    for ((src, dst), classes) in curves {
        let (Some(s), Some(d)) = (layout.of(src), layout.of(dst)) else {
            continue;
        };
        for (k, (class, list)) in classes.into_iter().enumerate() {
            let ports: BTreeSet<String> = list
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}: {} connections, {} established",
                        e.key.port, e.key.protocol, e.count.connections, e.count.established
                    )
                })
                .collect();
            let title = format!(
                "{src} -> {dst} ({})\n{}",
                class.label(),
                ports.into_iter().collect::<Vec<_>>().join("\n")
            );
            let _ = writeln!(
                out,
                "<g class=\"edge verdict-{c}\" data-verdict=\"{c}\" data-src=\"{}\" \
                 data-dst=\"{}\"><title>{}</title><path d=\"{}\" marker-end=\"url(#arrow-{c})\"/></g>",
                s.id,
                d.id,
                text(&title),
                path(s, d, k as i32, layout),
                c = class.as_str()
            );
        }
    }
}

/// The curve from box `s` to box `d`; `k` spreads the curves of one pair apart.
fn path(s: &Placed, d: &Placed, k: i32, layout: &Layout) -> String {
    let (w, h) = (NODE_W as i32, NODE_H as i32);
    let (sx, sy, dx, dy) = (s.x as i32, s.y as i32, d.x as i32, d.y as i32);
    let spread = 7 * k;
    if s.id == d.id {
        // A workload's replicas to each other: a loop on the box's right.
        let (x, y) = (sx + w, sy + 6 + spread / 2);
        return format!(
            "M{x},{y} C{},{},{},{},{x},{}",
            x + 40 + spread,
            y - 14,
            x + 40 + spread,
            y + 22,
            y + 12
        );
    }
    if sx == dx {
        // Same column: out of the right side and back in, bowed by the distance.
        // Within the gap to the next column (or the margin after the last).
        let bow = (40 + (sy - dy).abs() / 5 + spread + if sy < dy { 0 } else { 18 })
            .min(COL_GAP as i32 - 12);
        let (x, y1, y2) = (sx + w, sy + h / 2 - 4 + k, dy + h / 2 + 4 + k);
        return format!("M{x},{y1} C{},{y1},{},{y2},{x},{y2}", x + bow, x + bow);
    }
    let (x1, x2) = if dx > sx { (sx + w, dx) } else { (sx, dx + w) };
    let (y1, y2) = (sy + h / 2 + spread / 2, dy + h / 2 + spread / 2);
    if layout.frame_between(x1 as u32, x2 as u32) {
        // Frames in between: down into the lane below them, along it, and up again.
        let lane = layout.lane_y as i32 + spread - 8 + (x1 + x2).rem_euclid(17);
        let out = if dx > sx { 40 } else { -40 };
        return format!(
            "M{x1},{y1} C{},{y1},{},{lane},{},{lane} L{},{lane} C{},{lane},{},{y2},{x2},{y2}",
            x1 + out,
            x1 + out,
            x1 + 2 * out,
            x2 - 2 * out,
            x2 - out,
            x2 - out
        );
    }
    let mid = i32::midpoint(x1, x2);
    format!(
        "M{x1},{y1} C{mid},{},{mid},{},{x2},{y2}",
        y1 + spread,
        y2 + spread
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::report::layout::layout;
    use crate::whatif::{EdgeCount, EdgeKey};

    fn end(ns: &str, name: &str) -> EdgeEnd {
        EdgeEnd::Workload {
            namespace: ns.into(),
            kind: "deployment".into(),
            name: name.into(),
        }
    }

    fn edge(src: EdgeEnd, dst: EdgeEnd, port: u16, class: EdgeClass) -> ReportEdge {
        ReportEdge {
            key: EdgeKey {
                src,
                dst,
                port,
                protocol: Protocol::Tcp,
            },
            count: EdgeCount {
                connections: 2,
                established: 1,
            },
            class,
            why: String::new(),
        }
    }

    #[test]
    fn one_curve_per_pair_and_class_with_escaped_names() {
        let evil = end("x", "<script>alert(1)</script>");
        let report = Report {
            edges: vec![
                edge(end("a", "web"), end("b", "api"), 80, EdgeClass::Allowed),
                edge(end("a", "web"), end("b", "api"), 81, EdgeClass::Allowed),
                edge(end("a", "web"), end("b", "api"), 82, EdgeClass::Blocked),
                edge(evil.clone(), end("a", "web"), 80, EdgeClass::Uncovered),
            ],
            ..Report::default()
        };
        let ends = report
            .edges
            .iter()
            .flat_map(|e| [e.key.src.clone(), e.key.dst.clone()])
            .collect();
        let l = layout(&ends, &BTreeMap::new());
        let svg = graph(&report, &l);
        assert_eq!(svg.matches("class=\"edge ").count(), 3);
        assert_eq!(svg.matches("data-verdict=\"allowed\"").count(), 1);
        assert!(svg.contains("80/TCP: 2 connections, 1 established\n81/TCP"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert_eq!(svg, graph(&report, &l), "deterministic");
    }
}
