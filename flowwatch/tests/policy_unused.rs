//! `policy unused` on the example shop: each rule's connections, counted from the flow logs
//! and checked against a count made here by hand from the same records.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn shop(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/shop")
        .join(part)
}

fn unused(format: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "unused", "-o", format, "--snapshot"])
        .arg(shop("repo"))
        .arg("--flows")
        .arg(shop("flows/node-a.jsonl"))
        .arg(shop("flows/node-b.jsonl"))
        .output()
        .unwrap()
}

#[test]
fn rules_are_credited_with_the_connections_they_allowed_and_the_unused_are_named() {
    let out = unused("json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rule = |policy: &str, direction: &str, index: u64| {
        rules
            .iter()
            .find(|r| r["policy"] == policy && r["direction"] == direction && r["rule"] == index)
            .unwrap_or_else(|| panic!("no {policy} {direction}[{index}] in {rules:#?}"))
    };
    // By hand, from deploy/examples/shop/flows: web -> api (3), api -> postgres through its
    // Service (1), api -> redis (1), api -> DNS (1), the internet -> web (1), backup ->
    // postgres (2); web -> redis (1) is denied and credits nothing.
    let expected = [
        ("shop/web", "ingress", 0, 1, 1),
        ("shop/web", "egress", 0, 3, 3),
        ("shop/api", "ingress", 0, 3, 3),
        ("shop/api", "egress", 0, 1, 1),
        ("shop/api", "egress", 1, 1, 1),
        ("shop/redis", "ingress", 0, 1, 1),
        ("shop/allow-dns", "egress", 0, 1, 1),
        ("data/postgres-ingress", "ingress", 0, 3, 3),
        ("ops/backup-egress", "egress", 1, 2, 2),
        ("ops/backup-egress", "egress", 0, 0, 0),
        ("data/allow-dns", "egress", 0, 0, 0),
        ("data/same-namespace", "ingress", 0, 0, 0),
        ("data/same-namespace", "egress", 0, 0, 0),
    ];
    for (policy, direction, index, connections, sole) in expected {
        let r = rule(policy, direction, index);
        assert_eq!(r["connections"], connections, "{r}");
        assert_eq!(r["sole_connections"], sole, "{r}");
        assert_eq!(r["unused"], connections == 0, "{r}");
    }
    assert_eq!(
        rules.len(),
        expected.len(),
        "every rule of every policy: {rules:#?}"
    );
    let postgres = rule("data/postgres-ingress", "ingress", 0);
    assert_eq!(postgres["peers"], serde_json::json!(["ops", "shop"]));
    assert_eq!(postgres["edges"], 2);

    let table = unused("table");
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("13 rules: 4 unused; policies whose rules matched nothing: data/allow-dns, data/same-namespace"),
        "{text}"
    );
}
