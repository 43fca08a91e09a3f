//! The report as one self-contained HTML page (pure): the style sheet and the small script
//! are inline and named by hash in the page's Content-Security-Policy ([`super::csp`]), the
//! graph is inline SVG ([`super::svg`]); nothing is loaded from anywhere. Without its script
//! the page shows everything; the script only adds highlighting a workload's edges on hover
//! and hiding verdict classes from the legend.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::escape::text;
use super::layout::layout;
use super::{csp, svg, EdgeClass, Report};
use crate::whatif::EdgeEnd;

/// The style sheet: colours per class come from [`EdgeClass::colour`].
fn style() -> String {
    let mut css = String::from(
        "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;background:#fafafa}\
header,section{padding:12px 28px}header{background:#24292f;color:#fff}\
h1{margin:0;font-size:22px}h2{font-size:18px;margin:8px 0}.source{margin:4px 0 0;color:#d0d7de}\
.graph-scroll{overflow:auto;border:1px solid #d0d7de;background:#fff;max-height:80vh}\
.group rect{fill:#f6f8fa;stroke:#d0d7de}.group.namespace rect{fill:#eef4fb;stroke:#9ab}\
.group-title{font-weight:600;font-size:14px;fill:#24292f}\
.node rect{fill:#fff;stroke:#57606a}.node text{font-size:12px;fill:#1f2328}\
.node:hover rect,.node:focus rect{stroke-width:2.5;stroke:#0969da}\
.edge path{fill:none;stroke-width:2;opacity:.85}.edge:hover path{stroke-width:4}\
.edge.faded{opacity:.08}\
table{border-collapse:collapse;background:#fff;margin:6px 0}\
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}\
#legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:6px 18px}\
#legend label{cursor:pointer}.swatch{display:inline-block;vertical-align:middle}\
.badge{font-weight:600}pre{background:#f6f8fa;padding:8px;overflow:auto;margin:4px 0}\
details{margin:2px 0}summary{cursor:pointer;font-family:ui-monospace,monospace}\
code,.mono{font-family:ui-monospace,monospace}meter{width:120px}\
",
    );
    for class in EdgeClass::ALL {
        let (c, colour) = (class.as_str(), class.colour());
        let dash = match class {
            EdgeClass::DeniedEstablished => "stroke-dasharray:8 4;",
            EdgeClass::Blocked => "stroke-dasharray:2 4;",
            EdgeClass::Unresolved => "stroke-dasharray:1 6;",
            _ => "",
        };
        let _ = write!(
            css,
            ".edge.verdict-{c} path,.swatch.verdict-{c} line{{stroke:{colour};stroke-width:2.5;{dash}}}\
             .badge.verdict-{c}{{color:{colour}}}body.hide-{c} .verdict-{c}{{display:none}}"
        );
    }
    css
}

/// Hover or focus a workload: only its edges stay strong. A legend checkbox hides a class.
const SCRIPT: &str = r"(function () {
  var svg = document.getElementById('graph');
  function focus(id) {
    var edges = svg.querySelectorAll('.edge');
    for (var i = 0; i < edges.length; i++) {
      var on = !id || edges[i].getAttribute('data-src') === id || edges[i].getAttribute('data-dst') === id;
      edges[i].classList.toggle('faded', !on);
    }
  }
  if (svg) {
    var nodes = svg.querySelectorAll('.node');
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].addEventListener('mouseenter', function () { focus(this.id); });
      nodes[i].addEventListener('focus', function () { focus(this.id); });
      nodes[i].addEventListener('mouseleave', function () { focus(null); });
      nodes[i].addEventListener('blur', function () { focus(null); });
    }
  }
  var toggles = document.querySelectorAll('#legend input[data-verdict]');
  for (var j = 0; j < toggles.length; j++) {
    toggles[j].disabled = false;
    toggles[j].addEventListener('change', function () {
      document.body.classList.toggle('hide-' + this.getAttribute('data-verdict'), !this.checked);
    });
  }
  document.documentElement.setAttribute('data-script', 'ready');
})();
";

/// Per mille as a percentage with one decimal.
fn percent(permille: u64) -> String {
    format!("{}.{}%", permille / 10, permille % 10)
}

/// The whole page.
pub fn page(report: &Report) -> String {
    let style = style();
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>flowwatch report</title>\n<style>{style}</style>\n</head>\n<body>\n",
        csp::policy(&style, SCRIPT)
    );
    let workloads: BTreeSet<&EdgeEnd> = report
        .edges
        .iter()
        .flat_map(|e| [&e.key.src, &e.key.dst])
        .collect();
    let _ = writeln!(
        out,
        "<header><h1>flowwatch report</h1><p class=\"source\">Observed traffic: {}. \
         <span id=\"summary\">{} edges between {} workloads and addresses; {} advised \
         policies; {} of {} rules unused.</span></p></header>",
        text(&report.source),
        report.edges.len(),
        workloads.len(),
        report.advised.len(),
        report.unused_rules.len(),
        report.rules
    );
    graph_section(&mut out, report);
    coverage_section(&mut out, report);
    edges_section(&mut out, report);
    unused_section(&mut out, report);
    advised_section(&mut out, report);
    if !report.notes.is_empty() {
        out.push_str("<section id=\"notes\"><h2>Notes</h2><ul>\n");
        for n in &report.notes {
            let _ = writeln!(out, "<li>{}</li>", text(n));
        }
        out.push_str("</ul></section>\n");
    }
    let _ = write!(out, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    out
}

fn graph_section(out: &mut String, report: &Report) {
    out.push_str(
        "<section id=\"graph-section\"><h2>Observed workload graph</h2>\n\
         <p>One column per namespace; an arrow per source, destination and verdict (its \
         tooltip lists the ports and connections). Hover a workload to see only its edges; \
         untick a verdict to hide it.</p>\n<ul id=\"legend\">\n",
    );
    for (class, n) in report.class_counts() {
        let c = class.as_str();
        let _ = writeln!(
            out,
            "<li class=\"legend-item\" data-verdict=\"{c}\"><label><input type=\"checkbox\" \
             checked disabled data-verdict=\"{c}\"> <svg class=\"swatch verdict-{c}\" \
             width=\"34\" height=\"10\"><line x1=\"0\" y1=\"5\" x2=\"34\" y2=\"5\"/></svg> \
             {} (<span class=\"count\">{n}</span>)</label></li>",
            class.label()
        );
    }
    out.push_str("</ul>\n<div class=\"graph-scroll\">\n");
    let ends = report
        .edges
        .iter()
        .flat_map(|e| [e.key.src.clone(), e.key.dst.clone()])
        .collect();
    let placed = layout(&ends, &report.nodes);
    out.push_str(&svg::graph(report, &placed));
    out.push_str("</div></section>\n");
}

fn coverage_section(out: &mut String, report: &Report) {
    out.push_str(
        "<section id=\"coverage\"><h2>Coverage per namespace</h2>\n\
         <p>Of the observed edges with an end in the namespace, those whose end there is \
         selected by a policy for that direction (ingress: edges into it; egress: edges out of \
         it), and the share of their connections.</p>\n\
         <table id=\"coverage-table\"><thead><tr><th>Namespace</th><th>Ingress edges covered</th>\
         <th>Egress edges covered</th><th>Share of edge ends</th><th>Connections covered</th>\
         <th>Share of connections</th></tr></thead><tbody>\n",
    );
    for c in &report.coverage {
        let share = percent(c.connections_permille());
        let _ = writeln!(
            out,
            "<tr class=\"coverage-row\" data-namespace=\"{ns}\"><td class=\"mono\">{ns}</td>\
             <td class=\"num\">{} / {}</td><td class=\"num\">{} / {}</td>\
             <td class=\"num edge-share\">{}</td><td class=\"num\">{} / {}</td>\
             <td class=\"num\"><meter min=\"0\" max=\"1000\" value=\"{}\"></meter> \
             <span class=\"share\">{share}</span></td></tr>",
            c.ingress_covered,
            c.ingress_edges,
            c.egress_covered,
            c.egress_edges,
            percent(c.edges_permille()),
            c.connections_covered,
            c.connections,
            c.connections_permille(),
            ns = text(&c.namespace)
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn edges_section(out: &mut String, report: &Report) {
    out.push_str(
        "<section id=\"edges\"><h2>Observed edges</h2>\n<table id=\"edge-table\"><thead><tr>\
         <th>Source</th><th>Destination</th><th>Port</th><th>Connections</th><th>Established</th>\
         <th>Verdict</th><th>Why</th></tr></thead><tbody>\n",
    );
    for e in &report.edges {
        let c = e.class.as_str();
        let _ = writeln!(
            out,
            "<tr class=\"edge-row verdict-{c}\" data-verdict=\"{c}\"><td class=\"mono\">{}</td>\
             <td class=\"mono\">{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td><span class=\"badge verdict-{c}\">{c}</span></td>\
             <td>{}</td></tr>",
            text(&e.key.src.to_string()),
            text(&e.key.dst.to_string()),
            e.key.port,
            e.key.protocol,
            e.count.connections,
            e.count.established,
            text(&e.why)
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn unused_section(out: &mut String, report: &Report) {
    let _ = write!(
        out,
        "<section id=\"unused\"><h2>Unused rules</h2>\n<p>{} of the snapshot's {} NetworkPolicy \
         rules matched none of the observed connections.</p>\n<ul id=\"unused-rules\">\n",
        report.unused_rules.len(),
        report.rules
    );
    for r in &report.unused_rules {
        let _ = writeln!(out, "<li class=\"unused-rule mono\">{}</li>", text(r));
    }
    out.push_str("</ul>\n<p>Policies none of whose rules matched anything:</p>\n<ul id=\"unused-policies\">\n");
    for p in &report.unused_policies {
        let _ = writeln!(out, "<li class=\"unused-policy mono\">{}</li>", text(p));
    }
    out.push_str("</ul></section>\n");
}

fn advised_section(out: &mut String, report: &Report) {
    let namespaces: BTreeSet<&str> = report
        .advised
        .iter()
        .map(|p| p.namespace.as_str())
        .collect();
    let _ = write!(
        out,
        "<section id=\"advised\"><h2>Advised policies</h2>\n<p>{} least-privilege NetworkPolicies \
         in {} namespaces allow exactly the established edges (what <code>flowwatch policy advise</code> \
         prints; check them with <code>--verify</code> before applying).</p>\n",
        report.advised.len(),
        namespaces.len()
    );
    for p in &report.advised {
        let name = text(&format!("{}/{}", p.namespace, p.name));
        let _ = writeln!(
            out,
            "<details class=\"advised-policy\" data-name=\"{name}\"><summary>{name}</summary>\
             <pre>{}</pre></details>",
            text(&p.yaml)
        );
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::report::{AdvisedPolicy, NamespaceCoverage, ReportEdge};
    use crate::whatif::{EdgeCount, EdgeKey};

    fn report() -> Report {
        let end = |ns: &str, name: &str| EdgeEnd::Workload {
            namespace: ns.into(),
            kind: "deployment".into(),
            name: name.into(),
        };
        Report {
            source: "flow log <a.jsonl>".into(),
            edges: vec![ReportEdge {
                key: EdgeKey {
                    src: end("shop", "web\"><script>alert(1)</script>"),
                    dst: end("shop", "api"),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                count: EdgeCount {
                    connections: 3,
                    established: 3,
                },
                class: EdgeClass::Allowed,
                why: "allowed (ingress shop/api[0])".into(),
            }],
            coverage: vec![NamespaceCoverage {
                namespace: "shop".into(),
                ingress_edges: 1,
                ingress_covered: 1,
                egress_edges: 1,
                egress_covered: 0,
                connections: 6,
                connections_covered: 3,
            }],
            rules: 2,
            unused_rules: vec!["shop/api ingress[1]".into()],
            unused_policies: vec![],
            advised: vec![AdvisedPolicy {
                namespace: "shop".into(),
                name: "advised-deployment-api".into(),
                yaml: "kind: NetworkPolicy\n".into(),
            }],
            ..Report::default()
        }
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_deterministic() {
        let page = page(&report());
        assert_eq!(page, super::page(&report()));
        assert!(!page.contains("<script>alert"), "{page}");
        assert_eq!(page.matches("<script>").count(), 1);
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("flow log &lt;a.jsonl&gt;"));
        for remote in [
            "http://", "https://", " src=", " href=", "@import", "url(http",
        ] {
            assert!(!page.contains(remote), "{remote} in the page");
        }
        assert!(page.contains("<span class=\"share\">50.0%</span>"));
        assert!(page.contains("data-name=\"shop/advised-deployment-api\""));
        assert!(page.contains("<li class=\"unused-rule mono\">shop/api ingress[1]</li>"));
        // The style and script are the ones the policy names.
        let csp_start = page.find("content=\"default-src").unwrap() + 9;
        let csp = &page[csp_start..csp_start + page[csp_start..].find('"').unwrap()];
        assert!(csp.contains(&csp::source_hash(SCRIPT)), "{csp}");
        assert!(csp.contains(&csp::source_hash(&style())), "{csp}");
        assert!(!csp.contains("unsafe"));
    }
}
