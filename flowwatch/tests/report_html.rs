//! `flowwatch report` opened in headless Chromium (Debian's `chromium`): what the page shows
//! after its script ran (edges and their verdict classes, coverage per namespace, unused rule
//! names, advised policy names), a screenshot kept under `target/test-artifacts/`, and proof
//! that opening it makes no network request (Chromium's net log, with a resolver that
//! resolves nothing). The traffic: the real agent's flow log of netns pods in four verdicts
//! (root), the shop example, fifty workloads, and hostile names.
//!
//! What the page says is checked against the CLI commands it shares its evaluators with
//! (`policy unused`, `policy advise`), not only against numbers written here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flowwatch_testkit::chromium;
use flowwatch_testkit::netns::{Node, Pod};
use flowwatch_testkit::recording::{agent_and_prometheus, shop_pod, shop_snapshot};
use flowwatch_testkit::traffic::{one_connection, wait_record};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn flowwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `flowwatch report` with `args` into `out`; its stderr.
fn report(args: &[&str], out: &Path) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let run = flowwatch(&all);
    assert!(run.status.success(), "{}", text(&run.stderr));
    text(&run.stderr)
}

fn chromium_test(what: &str) -> bool {
    flowwatch_testkit::privileged::require(what, chromium::available())
}

/// HTML text back to plain text (what the serialized DOM escapes).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The text of an element's markup, tags removed.
fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out)
}

/// The value of attribute `name` in a tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// The pieces of `dom` that start with `marker`, each up to `end`.
fn pieces<'a>(dom: &'a str, marker: &str, end: &str) -> Vec<&'a str> {
    dom.match_indices(marker)
        .map(|(i, _)| {
            let rest = &dom[i..];
            &rest[..rest.find(end).map_or(rest.len(), |e| e + end.len())]
        })
        .collect()
}

/// The graph's curves: (source -> destination, verdict class), from each curve's tooltip.
fn graph_edges(dom: &str) -> BTreeSet<(String, String)> {
    pieces(dom, "<g class=\"edge ", "</g>")
        .into_iter()
        .map(|g| {
            let title = &g[g.find("<title>").unwrap() + 7..g.find("</title>").unwrap()];
            let title = unescape(title);
            let pair = title[..title.find(" (").unwrap()].to_string();
            (pair, attr(g, "data-verdict").unwrap())
        })
        .collect()
}

/// Coverage rows: namespace -> the row's cells.
fn coverage(dom: &str) -> BTreeMap<String, Vec<String>> {
    pieces(dom, "<tr class=\"coverage-row\"", "</tr>")
        .into_iter()
        .map(|row| {
            let cells = pieces(row, "<td", "</td>")
                .into_iter()
                .map(|c| strip_tags(c).trim().to_string())
                .collect();
            (attr(row, "data-namespace").unwrap(), cells)
        })
        .collect()
}

/// The texts of the elements with class `class` (`<li class="unused-rule ...">`).
fn items(dom: &str, class: &str) -> Vec<String> {
    pieces(dom, &format!("<li class=\"{class} "), "</li>")
        .into_iter()
        .map(strip_tags)
        .collect()
}

fn advised_names(dom: &str) -> Vec<String> {
    pieces(dom, "<details class=\"advised-policy\"", ">")
        .into_iter()
        .map(|d| attr(d, "data-name").unwrap())
        .collect()
}

/// The checks every report gets: its script ran under its CSP, it loads nothing, it names
/// nothing remote, and it renders the same bytes twice.
fn open_checked(page: &Path) -> chromium::Opened {
    let html = std::fs::read_to_string(page).unwrap();
    // Every `<` and `"` of a name is escaped, so each literal `<` opens one of the page's own
    // tags and each `"` delimits one of its attribute values: the attribute names are what
    // is left of a tag without its quoted values.
    for tag in html
        .split('<')
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap_or(t.len())])
    {
        let tag: String = tag.split('"').step_by(2).collect();
        for load in [
            " src=",
            " href=",
            " xlink:href=",
            " srcset=",
            " action=",
            " data=",
            " poster=",
        ] {
            assert!(!tag.contains(load), "<{tag}> loads something");
        }
    }
    for (i, _) in html.match_indices("url(") {
        assert!(html[i + 4..].starts_with('#'), "a url() to elsewhere");
    }
    // A URL may be text (the Prometheus the traffic came from), never something to fetch.
    assert!(!html.contains("@import"), "the page imports a style sheet");
    assert!(
        html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';")
    );
    let opened = chromium::open(page);
    assert!(
        opened.page_requests.is_empty(),
        "opening the report made requests: {:?}",
        opened.page_requests
    );
    assert!(
        opened
            .dom
            .contains("<html lang=\"en\" data-script=\"ready\">"),
        "the page's script did not run (CSP hash?): {}",
        &opened.dom[..opened.dom.len().min(600)]
    );
    opened
}

/// A screenshot kept as a test artifact; checked to be a PNG of the window's size with
/// enough in it not to be blank.
fn screenshot(page: &Path, name: &str, width: u32, height: u32) -> PathBuf {
    let png = chromium::artifacts_dir().join(name);
    let _ = std::fs::remove_file(&png);
    chromium::screenshot(page, &png, width, height);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(
        chromium::png_size(&bytes),
        Some((width, height)),
        "{}",
        png.display()
    );
    // A blank page of this size compresses to a few kilobytes.
    assert!(
        bytes.len() > 30_000,
        "{}: only {} bytes",
        png.display(),
        bytes.len()
    );
    png
}

#[test]
fn a_page_that_loads_something_is_caught_by_the_net_log_check() {
    if !chromium_test("report: the net log check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("loads.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><img src=\"http://report-test.invalid/x.png\"></body></html>",
    )
    .unwrap();
    let opened = chromium::open(&page);
    assert_eq!(opened.page_requests, ["http://report-test.invalid/x.png"]);
}

#[test]
fn the_shop_report_shows_what_the_policy_commands_say() {
    if !chromium_test("report on the shop example") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shop = root().join("deploy/examples/shop");
    let snapshot = shop.join("repo");
    let flows = [
        shop.join("flows/node-a.jsonl"),
        shop.join("flows/node-b.jsonl"),
    ];
    let mut args = vec!["--snapshot", snapshot.to_str().unwrap(), "--flows"];
    args.extend(flows.iter().map(|f| f.to_str().unwrap()));
    let page = dir.path().join("shop.html");
    let stderr = report(&args, &page);
    assert!(
        stderr.contains("report: 7 edges (1 blocked, 6 allowed)"),
        "{stderr}"
    );
    // docs/report.md shows this run's summary line.
    let doc = std::fs::read_to_string(root().join("docs/report.md")).unwrap();
    assert!(
        doc.contains(&format!("\n{}", stderr.trim_end())),
        "{stderr}"
    );
    let again = dir.path().join("again.html");
    report(&args, &again);
    assert_eq!(
        std::fs::read(&page).unwrap(),
        std::fs::read(&again).unwrap(),
        "the same input renders the same bytes"
    );

    let opened = open_checked(&page);
    let dom = &opened.dom;
    let edges = graph_edges(dom);
    assert!(
        edges.contains(&(
            "shop/deployment/web -> shop/deployment/redis".into(),
            "blocked".into()
        )),
        "{edges:?}"
    );
    assert!(edges.contains(&(
        "shop/deployment/web -> shop/deployment/api".into(),
        "allowed".into()
    )));
    assert!(edges.contains(&(
        "203.0.113.9 -> shop/deployment/web".into(),
        "allowed".into()
    )));
    assert_eq!(edges.len(), 7, "{edges:?}");
    assert!(dom.contains("blocked (denied, never established) (<span class=\"count\">1</span>)"));

    let cov = coverage(dom);
    assert_eq!(
        cov["kube-system"][1..],
        ["0 / 1", "0 / 0", "0.0%", "0 / 1", "0.0%"]
    );
    assert_eq!(cov["shop"][3..], ["100.0%", "13 / 13", "100.0%"]);
    assert_eq!(cov.len(), 4, "{cov:?}");

    // The unused rules and advised policies are those of `policy unused` and `policy advise`.
    let mut unused_args = vec!["policy", "unused", "-o", "json"];
    unused_args.extend_from_slice(&args);
    let unused = flowwatch(&unused_args);
    let expected: Vec<String> = text(&unused.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["unused"] == true)
        .map(|r| {
            format!(
                "{} {}[{}]",
                r["policy"].as_str().unwrap(),
                r["direction"].as_str().unwrap(),
                r["rule"]
            )
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(items(dom, "unused-rule"), expected);
    assert!(items(dom, "unused-rule").contains(&"ops/backup-egress egress[0]".to_string()));

    let mut advise_args = vec!["policy", "advise"];
    advise_args.extend_from_slice(&args);
    let advised = flowwatch(&advise_args);
    let names: Vec<String> = text(&advised.stdout)
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let field = |f: &str| {
                d.lines()
                    .find_map(|l| l.strip_prefix(&format!("  {f}: ")))
                    .unwrap()
                    .to_string()
            };
            format!("{}/{}", field("namespace"), field("name"))
        })
        .collect();
    assert_eq!(names.len(), 10);
    assert_eq!(advised_names(dom), names);
    assert!(dom.contains("<summary>shop/advised-deployment-web</summary>"));

    screenshot(&page, "report-shop.png", 1400, 1000);
}

/// The cluster the agent sees: four pods of the shop namespace on their addresses.
fn cluster_snapshot(pods: &[&Pod; 4]) -> String {
    shop_snapshot(&[
        shop_pod(
            "web-5d8c7f9b4-x2x7q",
            "app: web, pod-template-hash: 5d8c7f9b4",
            ("ReplicaSet", "web-5d8c7f9b4"),
            pods[0],
            "",
        ),
        shop_pod(
            "api-7c9d6b5f8-k4m2p",
            "app: api, pod-template-hash: 7c9d6b5f8",
            ("ReplicaSet", "api-7c9d6b5f8"),
            pods[1],
            "",
        ),
        shop_pod("db-0", "app: db", ("StatefulSet", "db"), pods[2], ""),
        shop_pod(
            "cache-6f7d8c9b5-q1w2e",
            "app: cache, pod-template-hash: 6f7d8c9b5",
            ("ReplicaSet", "cache-6f7d8c9b5"),
            pods[3],
            "",
        ),
    ])
}

/// The repository: four workloads; api admits web, db admits api on 5432, and a rule for a
/// client that never came (unused). cache has no policy.
const REPO: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: x}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template: {metadata: {labels: {app: api}}, spec: {containers: [{name: c, image: x}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: cache, namespace: shop}
spec:
  selector: {matchLabels: {app: cache}}
  template: {metadata: {labels: {app: cache}}, spec: {containers: [{name: c, image: x}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  template: {metadata: {labels: {app: db}}, spec: {containers: [{name: c, image: x}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-ghost, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: ghost}}}], ports: [{port: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
";

/// A connection nobody accepts (nothing listens): refused, recorded as failed.
fn refused_connection(from: &Pod, addr: SocketAddr) {
    let refused = from
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err())
        .join()
        .unwrap();
    assert!(refused, "something listens on {addr}");
}

/// The real agent's flow log and a real Prometheus that scraped it: the report shows the
/// four verdicts, and `policy advise` (both forms) and `report` read the same from either.
#[test]
fn the_real_agents_traffic_shows_in_all_four_verdicts_and_prometheus_says_the_same() {
    if !flowwatch_testkit::privileged::root_test("report on the real agent's traffic")
        || !chromium_test("report on the real agent's traffic")
        || !flowwatch_testkit::privileged::require(
            "report and advise from Prometheus",
            flowwatch_testkit::prometheus::available(),
        )
    {
        return;
    }
    let node = Node::new(4);
    let [web, api, db, cache] = [0, 1, 2, 3].map(|i| &node.pods[i]);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    std::fs::write(&snapshot, cluster_snapshot(&[web, api, db, cache])).unwrap();
    let repo = dir.path().join("repo.yaml");
    std::fs::write(&repo, REPO).unwrap();

    let (mut agent, prom) = agent_and_prometheus(&node, &snapshot);
    let api_addr = SocketAddr::from((api.ipv4, 8080));
    let db_addr = SocketAddr::from((db.ipv4, 5432));
    let db_closed = SocketAddr::from((db.ipv4, 5433));
    let cache_addr = SocketAddr::from((cache.ipv4, 6379));
    one_connection(web, api, api_addr);
    one_connection(web, api, api_addr);
    one_connection(api, db, db_addr);
    // Denied by db-ingress, but nothing enforces it here: established.
    one_connection(web, db, db_addr);
    // Denied, and refused: never established.
    refused_connection(web, db_closed);
    // No policy selects web's egress or cache's ingress.
    one_connection(web, cache, cache_addr);
    wait_record(&agent, api_addr, 1);
    wait_record(&agent, db_addr, 1);
    wait_record(&agent, db_closed, 0);
    wait_record(&agent, cache_addr, 0);
    prom.wait_for(
        "sum(flowwatch_connections_total{src_namespace=\"shop\"})",
        Duration::from_secs(40),
        |r| r.first().is_some_and(|s| s.value >= 6.0),
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());

    // The agent sees every socket of the machine: keep the records of this test's pods (tests
    // running alongside make their own traffic).
    let ours: Vec<String> = [web, api, db, cache]
        .iter()
        .map(|p| format!("\"ip\":\"{}\"", p.ipv4))
        .collect();
    let log: String = std::fs::read_to_string(&agent.flow_log)
        .unwrap()
        .lines()
        .filter(|l| ours.iter().filter(|ip| l.contains(ip.as_str())).count() == 2)
        .flat_map(|l| [l, "\n"])
        .collect();
    let flow_log_path = dir.path().join("flows.jsonl");
    std::fs::write(&flow_log_path, log).unwrap();
    let page = dir.path().join("agent.html");
    let stderr = report(
        &[
            "--snapshot",
            repo.to_str().unwrap(),
            "--flows",
            flow_log_path.to_str().unwrap(),
        ],
        &page,
    );
    assert!(
        stderr
            .contains("report: 5 edges (1 blocked, 1 denied-established, 1 uncovered, 2 allowed)"),
        "{stderr}"
    );
    let opened = open_checked(&page);
    let dom = &opened.dom;
    let pair = |s: &str, d: &str, v: &str| (format!("shop/{s} -> shop/{d}"), v.to_string());
    let expected: BTreeSet<(String, String)> = [
        pair("deployment/web", "deployment/api", "allowed"),
        pair("deployment/api", "statefulset/db", "allowed"),
        pair("deployment/web", "statefulset/db", "denied-established"),
        pair("deployment/web", "statefulset/db", "blocked"),
        pair("deployment/web", "deployment/cache", "uncovered"),
    ]
    .into();
    assert_eq!(graph_edges(dom), expected);
    // The table says the same, row by row, with the connection counts.
    let rows: BTreeSet<(String, String, String, String)> =
        pieces(dom, "<tr class=\"edge-row ", "</tr>")
            .into_iter()
            .map(|row| {
                let cells: Vec<String> = pieces(row, "<td", "</td>")
                    .into_iter()
                    .map(strip_tags)
                    .collect();
                (
                    format!("{} -> {}", cells[0], cells[1]),
                    cells[2].clone(),
                    cells[3].clone(),
                    attr(row, "data-verdict").unwrap(),
                )
            })
            .collect();
    assert!(
        rows.contains(&(
            "shop/deployment/web -> shop/statefulset/db".into(),
            "5433/TCP".into(),
            "1".into(),
            "blocked".into()
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "shop/deployment/web -> shop/deployment/api".into(),
            "8080/TCP".into(),
            "2".into(),
            "allowed".into()
        )),
        "{rows:?}"
    );

    // shop: 4 of 5 edges into its pods are selected by an ingress policy (cache's is not),
    // none of the 5 out of them by an egress policy (4 of 10 edge ends); connections: 5 of 6
    // in, 0 of 6 out.
    let cov = coverage(dom);
    assert_eq!(
        cov["shop"],
        ["shop", "4 / 5", "0 / 5", "40.0%", "5 / 12", "41.6%"],
        "{cov:?}"
    );
    assert_eq!(
        items(dom, "unused-rule"),
        ["shop/api-from-ghost ingress[0]"]
    );
    assert_eq!(items(dom, "unused-policy"), ["shop/api-from-ghost"]);
    assert_eq!(
        advised_names(dom),
        [
            "shop/advised-default-deny",
            "shop/advised-deployment-api",
            "shop/advised-deployment-cache",
            "shop/advised-deployment-web",
            "shop/advised-statefulset-db",
        ]
    );
    screenshot(&page, "report-agent.png", 1400, 1000);

    // Prometheus holds the same edges: the same advice, byte for byte, in both forms (the
    // failed attempt, web -> db 5433, is left out of both: never established).
    let flow_log = ["--flows", flow_log_path.to_str().unwrap()];
    let url = prom.url();
    let from_prometheus = ["--prometheus", url.as_str(), "--since", "10m"];
    for form in [&[][..], &["--cluster-scoped"][..]] {
        let advise = |traffic: &[&str]| {
            let mut args = vec![
                "policy",
                "advise",
                "--verify",
                "--snapshot",
                repo.to_str().unwrap(),
            ];
            args.extend_from_slice(traffic);
            args.extend_from_slice(form);
            let out = flowwatch(&args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("verify: passed"),
                "{}",
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        let from_log = advise(&flow_log);
        assert!(
            from_log.contains("advised-statefulset-db")
                || from_log.contains("advised-shop-statefulset-db")
        );
        assert_eq!(advise(&from_prometheus), from_log, "{form:?}");
    }
    let prom_page = dir.path().join("prometheus.html");
    let mut args = vec!["--snapshot", repo.to_str().unwrap()];
    args.extend_from_slice(&from_prometheus);
    report(&args, &prom_page);
    let prom_dom = open_checked(&prom_page).dom;
    assert_eq!(graph_edges(&prom_dom), expected);
    assert_eq!(coverage(&prom_dom), cov);
    assert_eq!(items(&prom_dom, "unused-rule"), items(dom, "unused-rule"));
    assert_eq!(advised_names(&prom_dom), advised_names(dom));
}

/// Fifty Deployments in five namespaces (`app: wN` each), each talking to the same-numbered
/// one of the next namespace and to a neighbour of its own; ns0 has a default deny.
fn fifty(dir: &Path) -> (PathBuf, PathBuf) {
    let mut repo = String::new();
    let mut flows = String::new();
    let mut ip = |ns: usize, w: usize| format!("10.{}.0.{}", 10 + ns, 10 + w);
    let record =
        |src: (usize, usize), dst: (usize, usize), ip: &mut dyn FnMut(usize, usize) -> String| {
            format!(
                "{{\"protocol\":\"TCP\",\"outcome\":\"established\",\
             \"src\":{{\"ip\":\"{}\",\"port\":40000,\"kind\":\"pod\",\"namespace\":\"ns{}\",\
             \"workload_kind\":\"Deployment\",\"workload_name\":\"service-{:02}\"}},\
             \"dst\":{{\"ip\":\"{}\",\"port\":8080,\"kind\":\"pod\",\"namespace\":\"ns{}\",\
             \"workload_kind\":\"Deployment\",\"workload_name\":\"service-{:02}\"}}}}\n",
                ip(src.0, src.1),
                src.0,
                src.1,
                ip(dst.0, dst.1),
                dst.0,
                dst.1
            )
        };
    for ns in 0..5 {
        let _ = write!(
            repo,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}}}\n---\n"
        );
        for w in 0..10 {
            let _ = write!(
                repo,
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: service-{w:02}, namespace: ns{ns}}}\n\
                 spec:\n  selector: {{matchLabels: {{app: w{w}}}}}\n  template: {{metadata: {{labels: {{app: w{w}}}}}, \
                 spec: {{containers: [{{name: c, image: x}}]}}}}\n---\n"
            );
            if ns < 4 {
                flows.push_str(&record((ns, w), (ns + 1, w), &mut ip));
            }
            flows.push_str(&record((ns, w), (ns, (w + 1) % 10), &mut ip));
        }
    }
    repo.push_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: ns0}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    let (r, f) = (dir.join("fifty.yaml"), dir.join("fifty.jsonl"));
    std::fs::write(&r, repo).unwrap();
    std::fs::write(&f, flows).unwrap();
    (r, f)
}

#[test]
fn fifty_workloads_get_a_box_each_without_overlap() {
    if !chromium_test("report of fifty workloads") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (repo, flows) = fifty(dir.path());
    let page = dir.path().join("fifty.html");
    let stderr = report(
        &[
            "--snapshot",
            repo.to_str().unwrap(),
            "--flows",
            flows.to_str().unwrap(),
        ],
        &page,
    );
    assert!(
        stderr.contains("report: 90 edges (10 denied-established, 80 uncovered)"),
        "{stderr}"
    );
    let opened = open_checked(&page);
    let boxes: Vec<(String, i64, i64)> = pieces(&opened.dom, "<g class=\"node\"", "</g>")
        .into_iter()
        .map(|g| {
            let rect = &g[g.find("<rect").unwrap()..];
            let n = |a: &str| attr(rect, a).unwrap().parse::<i64>().unwrap();
            (attr(g, "data-name").unwrap(), n("x"), n("y"))
        })
        .collect();
    assert_eq!(boxes.len(), 50);
    let svg = &opened.dom[opened.dom.find("<svg id=\"graph\"").unwrap()..];
    let (w, h) = (
        attr(svg, "width").unwrap().parse::<i64>().unwrap(),
        attr(svg, "height").unwrap().parse::<i64>().unwrap(),
    );
    for (i, (name, x, y)) in boxes.iter().enumerate() {
        assert!(
            *x >= 0 && *y >= 0 && x + 190 <= w && y + 26 <= h,
            "{name} outside"
        );
        for (other, ox, oy) in &boxes[i + 1..] {
            let apart = (x - ox).abs() >= 190 || (y - oy).abs() >= 26;
            assert!(apart, "{name} overlaps {other}");
        }
    }
    // Namespaces side by side: a wide page, not a tall one.
    assert!(w <= 1600 && h <= 600, "{w}x{h}");
    screenshot(&page, "report-fifty-workloads.png", 1600, 900);
}

#[test]
fn names_from_the_flow_log_stay_text() {
    if !chromium_test("report with hostile names") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo.yaml");
    std::fs::write(
        &repo,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        r#"{"protocol":"TCP","outcome":"established","src":{"ip":"10.0.0.1","port":1,"kind":"pod","namespace":"<img src=x onerror=alert(1)>","workload_kind":"Deployment","workload_name":"\"><script>document.title='owned'</script>"},"dst":{"ip":"10.0.0.2","port":80,"kind":"pod","namespace":"shop","workload_kind":"Deployment","workload_name":"<b>web</b>"}}
"#,
    )
    .unwrap();
    let page = dir.path().join("hostile.html");
    report(
        &[
            "--snapshot",
            repo.to_str().unwrap(),
            "--flows",
            flows.to_str().unwrap(),
        ],
        &page,
    );
    let opened = open_checked(&page);
    let dom = &opened.dom;
    assert!(!dom.contains("<img"), "an injected element");
    assert!(!dom.contains("<b>"), "an injected element");
    assert!(dom.contains("<title>flowwatch report</title>"));
    assert_eq!(
        dom.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let edges = graph_edges(dom);
    assert_eq!(
        edges.into_iter().collect::<Vec<_>>(),
        [(
            "<img src=x onerror=alert(1)>/deployment/\"><script>document.title='owned'</script> -> shop/deployment/<b>web</b>".to_string(),
            "unresolved".to_string()
        )]
    );
}

/// Bad input gets the `policy` commands' exit codes and one line naming what is wrong.
#[test]
fn bad_input_is_named_and_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let shop = root().join("deploy/examples/shop");
    let snapshot = shop.join("repo");
    let flows = shop.join("flows/node-a.jsonl");
    let out = dir.path().join("r.html");
    let run = |args: &[&str]| {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        let o = flowwatch(&all);
        (o.status.code(), text(&o.stderr))
    };
    let missing = dir.path().join("missing.yaml");
    let (code, err) = run(&[
        "--snapshot",
        missing.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot read snapshot") && err.contains("missing.yaml"),
        "{err}"
    );
    let (code, err) = run(&[
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--flows",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read the observed traffic") && err.contains("missing.yaml"),
        "{err}"
    );
    let unwritable = dir.path().join("no-such-dir/r.html");
    let (code, err) = run(&[
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
        "--out",
        unwritable.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("writing the report") && err.contains("no-such-dir"),
        "{err}"
    );
    let (code, err) = run(&[
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "no traffic given: {err}");
    assert!(!out.exists());
    assert!(!err.contains("panicked"), "{err}");
}
