//! The Helm chart: `helm lint`, `helm template` with the defaults and with every option, what a
//! cautious platform team checks in the DaemonSet (including its only hostPath, tracefs), the
//! values-to-env mapping, render-time errors for values the agent would reject, the embedded
//! rules and dashboard, the README's coverage of values.yaml, and drift of the rendered manifests
//! (rendered here by `flowwatch_render::rendered`, the function `cargo xtask render-manifests`
//! writes them with; the command itself is not run).
//!
//! helm is built from its Go module by `cargo xtask render-manifests` (xtask `ensure_helm`) into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/helm-v3.22.0/helm`.

use std::collections::BTreeMap;
use std::process::Command;

use flowwatch_testkit::helm::{chart, helm, rendered, template, KUBE_VERSION};
use flowwatch_testkit::paths::repo;
use flowwatch_testkit::privileged::require;
use serde_yaml::Value;

macro_rules! need_helm {
    ($what:expr) => {
        match helm() {
            Ok(h) => h,
            Err(e) => {
                require($what, Err(e));
                return;
            }
        }
    };
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn env(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let v = if e["value"].is_null() {
                e["valueFrom"].clone()
            } else {
                e["value"].clone()
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn helm_lint_passes_with_defaults_and_with_every_option() {
    let helm = need_helm!("helm lint");
    for set in [
        "",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,podMonitor.enabled=true,namespace.create=true,tolerateAllTaints=true,agent.flowLog=-,agent.labelAllowlist={app,team},extraCapabilities={SYS_RESOURCE},priorityClassName=system-node-critical,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict", "--kube-version", KUBE_VERSION]).arg(chart());
        if !set.is_empty() {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("0 chart(s) failed"), "helm lint --set {set}:\n{text}");
    }
}

#[test]
fn the_daemonset_is_what_a_cautious_platform_team_expects() {
    let helm = need_helm!("helm template");
    let objs = docs(&template(&helm, &[]).unwrap());
    let ds = find(&objs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], Value::Bool(true));
    assert_eq!(spec["hostPID"], Value::Bool(false));
    assert_eq!(spec["hostIPC"], Value::Bool(false));
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["serviceAccountName"], "flowwatch");
    let containers = spec["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let caps = |k: &str| -> Vec<String> {
        sc["capabilities"][k]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(caps("drop"), vec!["ALL"]);
    assert_eq!(caps("add"), vec!["BPF", "PERFMON", "NET_ADMIN"]);
    // Probes on the agent's own endpoints.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], Value::from(9810));
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!c["resources"][k][r].is_null(), "resources.{k}.{r} missing");
        }
    }
    // Host paths: the host's tracefs, which the agent reads (the tracepoint's id and format,
    // datapath/preflight.rs) and does not mount itself (FLOWWATCH_MOUNT_TRACEFS=false): read-only,
    // no mount propagation, and it must already exist on the node (`Directory`, not
    // `DirectoryOrCreate`); and the agent's own state directory (the known edges), created if
    // missing, at the same path as FLOWWATCH_STATE_DIR. The agent pins no BPF objects, so the
    // host's bpffs is not mounted.
    let volumes = spec["volumes"].as_sequence().unwrap();
    let host_paths: Vec<(&str, &str, &str)> = volumes
        .iter()
        .filter(|v| !v["hostPath"].is_null())
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
                v["hostPath"]["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        host_paths,
        vec![
            ("tracefs", "/sys/kernel/tracing", "Directory"),
            ("state", "/var/lib/flowwatch", "DirectoryOrCreate")
        ]
    );
    // Every other volume is the /tmp emptyDir.
    let others: Vec<&str> = volumes
        .iter()
        .filter(|v| v["hostPath"].is_null())
        .map(|v| {
            assert!(!v["emptyDir"].is_null(), "unexpected volume {v:?}");
            v["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(others, vec!["tmp"]);
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    assert_eq!(
        mounts.keys().copied().collect::<Vec<_>>(),
        vec!["/sys/kernel/tracing", "/tmp", "/var/lib/flowwatch"]
    );
    assert_eq!(mounts["/var/lib/flowwatch"]["name"], "state");
    assert!(mounts["/var/lib/flowwatch"]["readOnly"].is_null());
    let tracefs = mounts["/sys/kernel/tracing"];
    assert_eq!(tracefs["name"], "tracefs");
    assert_eq!(tracefs["readOnly"], Value::Bool(true));
    assert!(tracefs["mountPropagation"].is_null(), "{tracefs:?}");
    assert!(!mounts.keys().any(|p| p.starts_with("/sys/fs/bpf")));
    // Rolling update without surge (host port).
    let us = &ds["spec"]["updateStrategy"];
    assert_eq!(us["type"], "RollingUpdate");
    assert_eq!(us["rollingUpdate"]["maxSurge"], Value::from(0));
    // Control-plane nodes tolerated, no catch-all by default.
    let tol = spec["tolerations"].as_sequence().unwrap();
    assert!(tol
        .iter()
        .any(|t| t["key"] == "node-role.kubernetes.io/control-plane"));
    assert!(tol.iter().all(|t| !t["key"].is_null()));
    // The node name from the downward API.
    let e = env(c);
    assert_eq!(
        e["FLOWWATCH_NODE_NAME"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(e["FLOWWATCH_LISTEN"], "0.0.0.0:9810");
    assert_eq!(e["FLOWWATCH_MOUNT_TRACEFS"], "false");
    assert_eq!(e["FLOWWATCH_STATE_DIR"], "/var/lib/flowwatch");
    assert_eq!(e["FLOWWATCH_EDGE_RETENTION_DAYS"], "30");
    assert!(
        !e.contains_key("FLOWWATCH_FLOW_LOG"),
        "flow log off by default"
    );
    // Selector labels are stable (no version in them).
    let sel = ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    assert_eq!(sel.len(), 2, "{sel:?}");
}

#[test]
fn every_agent_setting_maps_to_its_env_var() {
    let helm = need_helm!("helm template");
    let objs = docs(
        &template(
            &helm,
            &[
                "--set",
                "agent.port=9999,agent.listenAddress=127.0.0.1,agent.interfaces={eth0,veth*},agent.flowLog=-,agent.pollIntervalMs=250,agent.idleTimeoutSecs=5,agent.flowsMaxEntries=131072,agent.eventsRingBytes=1048576,agent.ignoreCidrs={10.0.0.0/8},agent.labelAllowlist={app,team},agent.namedNetworks={corp-vpn=10.200.0.0/16},agent.ipblockMatchesPodIps=false,agent.ignoreCniPolicies=true,agent.kube=false,agent.logFormat=text,agent.logLevel=debug,agent.seriesBudget.perFamily=500,agent.seriesBudget.perNamespace=50,agent.seriesTtlSecs=60,agent.edgeRetentionDays=7,hostMounts.state.path=/var/lib/fw-state,tolerateAllTaints=true,extraCapabilities={SYS_RESOURCE}",
            ],
        )
        .unwrap(),
    );
    let ds = find(&objs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let e = env(c);
    for (k, v) in [
        ("FLOWWATCH_LISTEN", "127.0.0.1:9999"),
        ("FLOWWATCH_INTERFACES", "eth0,veth*"),
        ("FLOWWATCH_FLOW_LOG", "-"),
        ("FLOWWATCH_POLL_INTERVAL_MS", "250"),
        ("FLOWWATCH_IDLE_TIMEOUT_SECS", "5"),
        ("FLOWWATCH_FLOWS_MAX_ENTRIES", "131072"),
        ("FLOWWATCH_EVENTS_RING_BYTES", "1048576"),
        ("FLOWWATCH_IGNORE_CIDRS", "10.0.0.0/8"),
        ("FLOWWATCH_LABEL_ALLOWLIST", "app,team"),
        ("FLOWWATCH_NAMED_NETWORKS", "corp-vpn=10.200.0.0/16"),
        ("FLOWWATCH_IPBLOCK_MATCHES_POD_IPS", "false"),
        ("FLOWWATCH_IGNORE_CNI_POLICIES", "true"),
        ("FLOWWATCH_KUBE", "false"),
        ("FLOWWATCH_LOG_FORMAT", "text"),
        ("FLOWWATCH_LOG", "debug"),
        ("FLOWWATCH_SERIES_BUDGET", "500"),
        ("FLOWWATCH_SERIES_BUDGET_PER_NAMESPACE", "50"),
        ("FLOWWATCH_SERIES_TTL_SECS", "60"),
        ("FLOWWATCH_EDGE_RETENTION_DAYS", "7"),
        ("FLOWWATCH_STATE_DIR", "/var/lib/fw-state"),
    ] {
        assert_eq!(e[k], v, "{k}");
    }
    assert_eq!(c["ports"][0]["containerPort"], Value::from(9999));
    let add = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap();
    assert_eq!(add.last().unwrap(), "SYS_RESOURCE");
    let tol = spec["tolerations"].as_sequence().unwrap();
    assert!(tol
        .iter()
        .any(|t| t["operator"] == "Exists" && t["key"].is_null()));
    let svc = find(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], Value::from(9999));
}

#[test]
fn prometheus_operator_objects_and_the_dashboard_embed_the_shipped_files() {
    let helm = need_helm!("helm template");
    let objs = docs(
        &template(
            &helm,
            &[
                "--set",
                "serviceMonitor.enabled=true,prometheusRule.enabled=true,podMonitor.enabled=true",
            ],
        )
        .unwrap(),
    );
    // The PrometheusRule holds the groups of the plain rule file (both rendered from the same
    // values; deploy_rules.rs checks the file against the chart).
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/flowwatch-rules.yaml")).unwrap(),
    )
    .unwrap();
    let pr = find(&objs, "PrometheusRule");
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "PrometheusRule differs from deploy/prometheus/flowwatch-rules.yaml"
    );
    let sm = find(&objs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let svc = find(&objs, "Service");
    // The ServiceMonitor selects the Service.
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "Service lacks selector label {k:?}"
        );
    }
    let pm = find(&objs, "PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("dashboard ConfigMap with grafana_dashboard=\"1\"");
    for (key, file) in [
        ("flowwatch-dashboard.json", "files/dashboard.json"),
        (
            "flowwatch-workload-dashboard.json",
            "files/workload-dashboard.json",
        ),
    ] {
        let embedded: serde_json::Value =
            serde_json::from_str(cm["data"][key].as_str().unwrap()).unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(chart().join(file)).unwrap()).unwrap();
        assert_eq!(embedded, file, "{key}");
    }
    // Off by default: no CRD-dependent objects.
    let defaults = docs(&template(&helm, &[]).unwrap());
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "Namespace",
    ] {
        assert!(
            defaults.iter().all(|o| o["kind"] != kind),
            "{kind} rendered by default"
        );
    }
}

#[test]
fn a_service_monitor_without_a_service_is_a_clear_error() {
    let helm = need_helm!("helm template");
    let err = template(
        &helm,
        &["--set", "serviceMonitor.enabled=true,service.enabled=false"],
    )
    .unwrap_err();
    assert!(
        err.contains("serviceMonitor.enabled needs service.enabled"),
        "{err}"
    );
}

#[test]
fn a_namespace_budget_above_the_family_budget_fails_rendering_naming_both_values() {
    // The agent refuses this at startup (MetricsConfig::validate); the chart must not render a
    // crash-looping DaemonSet. The default perNamespace (2000) is above a perFamily of 1000.
    let helm = need_helm!("helm template");
    for (set, per_namespace, per_family) in [
        ("agent.seriesBudget.perFamily=1000", 2000, 1000),
        (
            "agent.seriesBudget.perFamily=500,agent.seriesBudget.perNamespace=501",
            501,
            500,
        ),
        ("agent.seriesBudget.perNamespace=20000", 20000, 10000),
    ] {
        let err = template(&helm, &["--set", set]).expect_err(set);
        let want = format!(
            "agent.seriesBudget.perNamespace ({per_namespace}) must not exceed agent.seriesBudget.perFamily ({per_family})"
        );
        assert!(
            err.contains(&want),
            "--set {set}: expected {want:?}:\n{err}"
        );
    }
    // Equal budgets are accepted, as the agent accepts them.
    let objs = docs(
        &template(
            &helm,
            &[
                "--set",
                "agent.seriesBudget.perFamily=1000,agent.seriesBudget.perNamespace=1000",
            ],
        )
        .unwrap(),
    );
    let e = env(&find(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(e["FLOWWATCH_SERIES_BUDGET"], "1000");
    assert_eq!(e["FLOWWATCH_SERIES_BUDGET_PER_NAMESPACE"], "1000");
}

/// Every leaf key of values.yaml, as a dotted path.
fn leaf_keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                // Probe and strategy bodies are Kubernetes objects, documented as a whole.
                if [
                    "livenessProbe",
                    "readinessProbe",
                    "updateStrategy",
                    "resources",
                    "securityContext",
                    "namespace.labels",
                    "grafanaDashboard.labels",
                    "nodeSelector",
                ]
                .contains(&p.as_str())
                {
                    out.push(p);
                } else {
                    leaf_keys(v, &p, out);
                }
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn the_chart_readme_documents_every_value() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let mut keys = Vec::new();
    leaf_keys(&values, "", &mut keys);
    assert!(keys.len() > 40, "{keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values not documented in the chart README: {missing:?}"
    );
}

#[test]
fn the_rendered_manifests_match_the_chart() {
    let helm = need_helm!("manifest drift");
    // The very render `cargo xtask render-manifests` writes (flowwatch_render::rendered);
    // deploy_rules.rs compares the rule file and the dashboards it also renders.
    for (file, want) in rendered(&helm)
        .unwrap()
        .into_iter()
        .filter(|(file, _)| file.starts_with("deploy/manifests"))
    {
        let got = std::fs::read_to_string(repo().join(&file)).unwrap_or_default();
        assert!(
            got == want,
            "{} drifted from the chart: run `cargo xtask render-manifests` and commit",
            file.display()
        );
    }
}

#[test]
fn the_containerfile_agrees_with_the_chart_and_the_toolchain() {
    let cf = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let port = values["agent"]["port"].as_u64().unwrap();
    assert!(
        cf.contains(&format!("EXPOSE {port}\n")),
        "EXPOSE differs from agent.port {port}"
    );
    // The bpf-linker the image builds is the one `cargo xtask setup` installs.
    let setup = std::fs::read_to_string(repo().join("xtask/src/setup.rs")).unwrap();
    let version = setup
        .lines()
        .find_map(|l| l.strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|r| r.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in xtask/src/setup.rs");
    assert!(
        cf.contains(&format!("ARG BPF_LINKER_VERSION={version}\n")),
        "bpf-linker {version} expected"
    );
    assert!(
        cf.contains("--features llvm-22") && cf.contains("llvm-22-dev"),
        "LLVM 22 for bpf-linker"
    );
    assert!(
        cf.contains("--component rust-src"),
        "rust-src for the nested eBPF build"
    );
    // By default the binary is built in the `build` stage and the runtime is distroless; the
    // tests' offline build (tests/node.rs) only switches the two build arguments.
    let froms: Vec<&str> = cf.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        [
            "FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build",
            "FROM scratch AS prebuilt",
            "FROM ${AGENT_FROM} AS agent",
            "FROM ${RUNTIME_BASE}",
        ]
    );
    assert!(cf.contains("\nARG AGENT_FROM=build\n"));
    assert!(cf.contains("\nARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot\n"));
    assert!(cf.contains("COPY --from=agent /out/flowwatch /usr/local/bin/flowwatch"));
    let last_stage = &cf[cf.rfind("\nFROM ").unwrap()..];
    assert!(
        last_stage.contains("\nUSER 65532:65532\n"),
        "runtime stage must default to non-root"
    );
    assert!(last_stage.contains("ENTRYPOINT [\"/usr/local/bin/flowwatch\"]"));
    // The chart runs the image's binary with `run` (without helm: a skip, a failure under CI).
    let helm = need_helm!("the chart's command against the Containerfile");
    let objs = docs(&template(&helm, &[]).unwrap());
    let c = &find(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "run");
    assert!(
        c["command"].is_null(),
        "the chart relies on the image's entrypoint"
    );
}

#[test]
fn bad_values_are_clear_errors_naming_the_field() {
    let helm = need_helm!("values schema");
    for (set, field) in [
        ("agent.port=0", "/agent/port"),
        ("agent.port=abc", "/agent/port"),
        (
            "agent.seriesBudget.perFamily=0",
            "/agent/seriesBudget/perFamily",
        ),
        ("agent.logFormat=xml", "/agent/logFormat"),
        ("agent.pollIntervalMs=1", "/agent/pollIntervalMs"),
        ("agent.eventsRingBytes=3000000", "/agent/eventsRingBytes"),
        ("image.digest=latest", "/image/digest"),
        ("extraCapabilities={sys_admin}", "/extraCapabilities/0"),
        (
            "hostMounts.tracefs.path=relative",
            "/hostMounts/tracefs/path",
        ),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        // The bpffs mount was removed (the agent pins nothing): a stale value is an error.
        ("hostMounts.bpffs.enabled=true", "'bpffs' not allowed"),
        ("agnet.port=1", "'agnet' not allowed"),
    ] {
        let err = template(&helm, &["--set", set]).expect_err(set);
        assert!(
            err.contains(field),
            "--set {set}: error should name {field}:\n{err}"
        );
    }
}

#[test]
fn the_chart_sets_every_agent_setting_of_the_cli() {
    // Every `env = "FLOWWATCH_*"` of `flowwatch run`, except those for demos and tests.
    let cli = std::fs::read_to_string(repo().join("flowwatch/src/cli.rs")).unwrap();
    let flags: Vec<&str> = cli
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|v| v.starts_with("FLOWWATCH_"))
        .filter(|v| !["FLOWWATCH_SNAPSHOT", "FLOWWATCH_EXIT_AFTER_SECS"].contains(v))
        .collect();
    assert!(flags.len() >= 15, "{flags:?}");
    let daemonset = std::fs::read_to_string(chart().join("templates/daemonset.yaml")).unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    for flag in flags {
        assert!(
            daemonset.contains(&format!("name: {flag}\n")),
            "the chart does not set {flag}"
        );
        assert!(
            readme.contains(flag),
            "the chart README does not mention {flag}"
        );
    }
}

/// The literal `FLOWWATCH_*` values of the rendered DaemonSet, each parsed by the agent's own
/// command line (as the flag the variable stands for), so a value the agent would refuse at
/// start fails here. FLOWWATCH_LOG is a tracing filter, not a flag.
fn agent_refusals(objs: &[Value]) -> Vec<String> {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Agent {
        #[command(flatten)]
        run: flowwatch::cli::RunArgs,
    }
    let flags: BTreeMap<String, String> = Agent::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some((env, a.get_long()?.to_string()))
        })
        .collect();
    let ds = find(objs, "DaemonSet");
    let e = env(&ds["spec"]["template"]["spec"]["containers"][0]);
    let mut refused = Vec::new();
    let mut parsed = 0;
    for (name, value) in &e {
        let (Some(value), Some(flag)) = (value.as_str(), flags.get(name)) else {
            continue;
        };
        let arg = format!("--{flag}={value}");
        if let Err(err) = Agent::try_parse_from(["flowwatch", arg.as_str()]) {
            refused.push(format!("{name}={value:?}: {}", err.kind()));
        }
        parsed += 1;
    }
    // Every literal setting but the log filter went through the parser.
    let literal = e
        .iter()
        .filter(|(n, v)| v.is_string() && n.as_str() != "FLOWWATCH_LOG")
        .count();
    assert_eq!(parsed, literal, "{e:?}");
    refused
}

#[test]
fn the_agent_accepts_every_setting_the_chart_renders_by_default_and_with_large_numbers() {
    let helm = need_helm!("helm template");
    let defaults = docs(&template(&helm, &[]).unwrap());
    assert_eq!(agent_refusals(&defaults), Vec::<String>::new(), "defaults");
    // Numbers from a values file are YAML floats to helm: a million and more must still render
    // as whole numbers (`--set` parses them as integers, so it cannot show this).
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("large.yaml");
    std::fs::write(
        &values,
        "agent:\n  flowsMaxEntries: 4194304\n  eventsRingBytes: 16777216\n  pollIntervalMs: 1000\n  idleTimeoutSecs: 86400\n  seriesTtlSecs: 2000000\n  seriesBudget:\n    perFamily: 5000000\n    perNamespace: 1000000\n",
    )
    .unwrap();
    let large = docs(&template(&helm, &["-f", values.to_str().unwrap()]).unwrap());
    assert_eq!(agent_refusals(&large), Vec::<String>::new(), "large values");
    let e = env(&find(&large, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(e["FLOWWATCH_FLOWS_MAX_ENTRIES"], "4194304");
    assert_eq!(e["FLOWWATCH_SERIES_BUDGET"], "5000000");
}
