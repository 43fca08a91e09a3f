//! Protected metrics: the HTTP edge over TLS with its certificate reloaded from disk, and
//! `/metrics` behind the API server's TokenReview + SubjectAccessReview, checked against a real
//! kube-apiserver (tokens of real ServiceAccounts, the chart's RBAC) and scraped by a real
//! Prometheus over HTTPS with a token that is allowed, one that is not, and none.
//!
//! The certificates are made with the `openssl` command (test tooling only; the agent uses
//! rustls). Everything listens on loopback; the servers are stopped and their temp dirs removed
//! on drop.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::http::{self, Authorizer, AuthzOptions, HttpLimits, HttpState, Readiness, Tls};
use flowwatch::metrics::{Metrics, MetricsConfig};
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::privileged::{command, require};
use flowwatch_testkit::prometheus::{Job, Prometheus};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// What the chart grants the agent in `metrics.auth.mode=kubernetes` (checked against the
/// rendered chart in `the_chart_grants_reviews_only_in_kubernetes_mode`).
fn auth_delegator_rules() -> serde_json::Value {
    json!([
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ])
}

fn metrics_reader_rules() -> serde_json::Value {
    json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// `openssl req` with a new key and `args`.
fn openssl_req(dir: &Path, args: &[&str]) {
    openssl(dir, &[&["req"], &NEW_EC_KEY[..], args].concat());
}

/// A test CA (`ca.crt`, `ca.key`) in `dir`.
fn make_ca(dir: &Path) {
    openssl_req(
        dir,
        &[
            "-x509",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=flowwatch-test-ca",
            "-days",
            "1",
        ],
    );
}

/// A server certificate for 127.0.0.1 signed by the CA: (cert PEM, key PEM).
fn make_server_cert(dir: &Path, cn: &str) -> (Vec<u8>, Vec<u8>) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:flowwatch.test\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl_req(
        dir,
        &[
            "-keyout",
            "new.key",
            "-out",
            "new.csr",
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "new.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "new.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    (
        std::fs::read(dir.join("new.crt")).unwrap(),
        std::fs::read(dir.join("new.key")).unwrap(),
    )
}

fn der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .expect("certificate PEM")
        .to_vec()
}

/// One HTTPS GET trusting `ca`: (status, body, the certificate the server presented).
async fn https_get(
    addr: &str,
    ca: &Path,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String, Vec<u8>), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // The server closes after an HTTP/1.0 response; a missing close_notify is not our concern.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body, presented))
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {obj:?}: {e}"));
}

async fn cluster_role(
    admin: &kube::Client,
    name: &str,
    rules: serde_json::Value,
    sa: (&str, &str),
) {
    create(
        &Api::<ClusterRole>::all(admin.clone()),
        json!({"metadata": {"name": name}, "rules": rules}),
    )
    .await;
    create(
        &Api::<ClusterRoleBinding>::all(admin.clone()),
        json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "namespace": sa.0, "name": sa.1}],
        }),
    )
    .await;
}

async fn service_account(admin: &kube::Client, ns: &str, name: &str) {
    create(
        &Api::<ServiceAccount>::namespaced(admin.clone(), ns),
        json!({"metadata": {"name": name, "namespace": ns}}),
    )
    .await;
}

fn target_error(prom: &Prometheus, job: &str) -> String {
    let (_, body) = prom.get("/api/v1/targets").expect("targets");
    let v: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
    v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["labels"]["job"] == job)
        .and_then(|t| t["lastError"].as_str())
        .unwrap_or("")
        .to_string()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn metrics_over_tls_behind_the_api_servers_authorization() {
    let what = "protected metrics (kube-apiserver, prometheus, openssl)";
    if !require(what, ApiServer::available())
        || !require(what, command("prometheus"))
        || !require(what, command("openssl"))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut api = rt.block_on(ApiServer::start());
    let admin = rt.block_on(api.admin_client());

    // The agent's ServiceAccount with the chart's auth-delegator rules; two scrapers, one
    // granted `get /metrics` as the chart's metrics-reader ClusterRole grants it.
    let (allowed, intruder, agent_client) = rt.block_on(async {
        let ns = Api::<Namespace>::all(admin.clone());
        for n in ["flowwatch", "monitoring"] {
            create(&ns, json!({"metadata": {"name": n}})).await;
        }
        service_account(&admin, "flowwatch", "flowwatch").await;
        service_account(&admin, "monitoring", "prometheus").await;
        service_account(&admin, "monitoring", "intruder").await;
        cluster_role(
            &admin,
            "flowwatch-auth-delegator",
            auth_delegator_rules(),
            ("flowwatch", "flowwatch"),
        )
        .await;
        cluster_role(
            &admin,
            "flowwatch-metrics-reader",
            metrics_reader_rules(),
            ("monitoring", "prometheus"),
        )
        .await;
        (
            api.service_account_token("monitoring", "prometheus").await,
            api.service_account_token("monitoring", "intruder").await,
            api.client_for_service_account("flowwatch", "flowwatch")
                .await,
        )
    });

    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path());
    let (cert1, key1) = make_server_cert(certs.path(), "flowwatch-one");
    let cert_file = certs.path().join("tls.crt");
    let key_file = certs.path().join("tls.key");
    std::fs::write(&cert_file, &cert1).unwrap();
    std::fs::write(&key_file, &key1).unwrap();
    let ca = certs.path().join("ca.crt");

    // The agent's HTTP edge, as `run` builds it with --metrics-tls-* and --metrics-auth=kubernetes.
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
    let readiness = Readiness::new();
    readiness.set_ready();
    let authz = Arc::new(Authorizer::new(agent_client, AuthzOptions::default()));
    let state = HttpState::new(Arc::new(registry), metrics, readiness).with_authz(authz.clone());
    let tls = Arc::new(
        Tls::from_files(flowwatch::http::TlsFiles {
            cert: cert_file.clone(),
            key: key_file.clone(),
        })
        .expect("certificate loads"),
    );
    let addr = rt.block_on(async {
        tokio::spawn(tls.clone().watch(Duration::from_millis(200), stop.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(http::serve_secured(
            listener,
            state,
            HttpLimits::default(),
            Some(tls.clone()),
            stop.clone(),
        ));
        addr
    });

    // Directly: the status each kind of client gets.
    let get = |path: &str, token: Option<&str>| {
        rt.block_on(https_get(&addr, &ca, path, token))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let (status, body, presented) = get("/metrics", Some(&allowed));
    assert_eq!(status, 200, "allowed token: {body}");
    assert!(body.contains("flowwatch_build_info"), "{body}");
    assert_eq!(presented, der(&cert1), "the first certificate is served");
    assert_eq!(
        get("/metrics", Some(&intruder)).0,
        403,
        "token without the grant"
    );
    assert_eq!(get("/metrics", None).0, 401, "no token");
    assert_eq!(get("/metrics", Some("not-a-token")).0, 401, "unknown token");
    assert_eq!(
        get("/healthz", None).0,
        200,
        "the kubelet's probe needs no token"
    );
    assert_eq!(
        get("/readyz", None).0,
        200,
        "the kubelet's probe needs no token"
    );
    let plain = flowwatch_testkit::prometheus::http_get(&addr, "/healthz", None);
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP must not be served on the TLS port: {plain:?}"
    );

    // A real Prometheus scraping over HTTPS with each kind of token.
    let prom = Prometheus::start(
        &[
            Job::new("allowed", &[&addr])
                .https(&ca)
                .bearer_token(&allowed),
            Job::new("forbidden", &[&addr])
                .https(&ca)
                .bearer_token(&intruder),
            Job::new("anonymous", &[&addr]).https(&ca),
        ],
        &[],
    );
    prom.wait_for(
        "up{job=\"allowed\"} == 1 and on() flowwatch_build_info{job=\"allowed\"}",
        Duration::from_secs(30),
        |s| !s.is_empty(),
    );
    for (job, code) in [("forbidden", "403"), ("anonymous", "401")] {
        let err = wait_until(
            &format!("{job} scrape refused"),
            Duration::from_secs(30),
            || {
                let e = target_error(&prom, job);
                e.contains(code).then_some(e.clone()).ok_or(e)
            },
        );
        eprintln!("{job}: {err}");
        let up = prom.query(&format!("up{{job=\"{job}\"}}")).unwrap();
        assert!(up.iter().all(|s| s.value == 0.0), "{job}: {up:?}");
    }
    assert!(
        authz.cached() >= 2,
        "decisions are cached, not asked per scrape"
    );

    // Rotation on disk (the key first, as a careless rotation would: the mismatched pair in
    // between must not be served), picked up without a restart.
    let (cert2, key2) = make_server_cert(certs.path(), "flowwatch-two");
    assert_ne!(der(&cert1), der(&cert2));
    std::fs::write(&key_file, &key2).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        get("/metrics", Some(&allowed)).2,
        der(&cert1),
        "a key without its certificate is not taken"
    );
    let rotated = Instant::now();
    let rotated_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::fs::write(&cert_file, &cert2).unwrap();
    wait_until(
        "the rotated certificate served",
        Duration::from_secs(5),
        || {
            let (status, _, presented) = get("/metrics", Some(&allowed));
            (status == 200 && presented == der(&cert2))
                .then_some(())
                .ok_or(format!("status {status}, old certificate still served"))
        },
    );
    eprintln!("rotation picked up in {:?}", rotated.elapsed());
    prom.wait_for(
        &format!("up{{job=\"allowed\"}} == 1 and timestamp(up{{job=\"allowed\"}}) > {rotated_at}"),
        Duration::from_secs(30),
        |s| !s.is_empty(),
    );

    // The API server gone: a cached grant keeps working, an unknown token gets 503 (not a
    // cached refusal).
    api.stop_apiserver();
    assert_eq!(get("/metrics", Some(&allowed)).0, 200, "cached grant");
    assert_eq!(get("/metrics", Some("another-token")).0, 503);
}

/// The chart adds exactly the review rights in kubernetes mode, nothing in the default mode,
/// and sets the scrape endpoint up for TLS and the token.
#[test]
fn the_chart_grants_reviews_only_in_kubernetes_mode() {
    let Some(helm) = flowwatch_testkit::helm::helm()
        .map_err(|e| require("chart render", Err(e)))
        .ok()
    else {
        return;
    };
    let docs = |args: &[&str]| -> Vec<serde_json::Value> {
        let text = flowwatch_testkit::helm::template(&helm, args).unwrap_or_else(|e| panic!("{e}"));
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .filter(|v: &serde_json::Value| v.is_object())
            .collect()
    };
    let roles = |docs: &[serde_json::Value]| -> Vec<(String, serde_json::Value)> {
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| {
                (
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                    d["rules"].clone(),
                )
            })
            .collect()
    };
    let default = docs(&[]);
    assert_eq!(
        roles(&default).len(),
        1,
        "default mode: only the read-only role"
    );
    let env = |docs: &[serde_json::Value], name: &str| -> Option<String> {
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        ds["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        env(&default, "FLOWWATCH_METRICS_AUTH").as_deref(),
        Some("none")
    );
    assert_eq!(env(&default, "FLOWWATCH_METRICS_TLS_CERT_FILE"), None);

    let secured = docs(&[
        "--set",
        "metrics.auth.mode=kubernetes",
        "--set",
        "metrics.auth.readers[0].kind=ServiceAccount",
        "--set",
        "metrics.auth.readers[0].name=prometheus",
        "--set",
        "metrics.auth.readers[0].namespace=monitoring",
        "--set",
        "metrics.tls.enabled=true",
        "--set",
        "metrics.tls.secretName=flowwatch-tls",
        "--set",
        "metrics.tls.scrapeTlsConfig.serverName=flowwatch",
        "--set",
        "serviceMonitor.enabled=true",
    ]);
    let roles = roles(&secured);
    let find = |suffix: &str| {
        roles
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no ClusterRole *{suffix}: {roles:?}"))
            .1
            .clone()
    };
    assert_eq!(find("-auth-delegator"), auth_delegator_rules());
    assert_eq!(find("-metrics-reader"), metrics_reader_rules());
    assert_eq!(
        env(&secured, "FLOWWATCH_METRICS_AUTH").as_deref(),
        Some("kubernetes")
    );
    assert_eq!(
        env(&secured, "FLOWWATCH_METRICS_TLS_CERT_FILE").as_deref(),
        Some("/etc/flowwatch/tls/tls.crt")
    );
    let ds = secured.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let agent = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(agent["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let sm = secured
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .unwrap();
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["scheme"], "https");
    assert_eq!(ep["tlsConfig"]["serverName"], "flowwatch");
    assert_eq!(
        ep["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    let binding = secured
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding"
                && d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-metrics-reader")
        })
        .expect("readers bound");
    assert_eq!(binding["subjects"][0]["name"], "prometheus");

    let err =
        flowwatch_testkit::helm::template(&helm, &["--set", "metrics.auth.mode=rbac"]).unwrap_err();
    assert!(err.contains("metrics.auth.mode"), "{err}");
    let err = flowwatch_testkit::helm::template(&helm, &["--set", "metrics.tls.enabled=true"])
        .unwrap_err();
    assert!(err.contains("metrics.tls.secretName"), "{err}");
    let err = flowwatch_testkit::helm::template(
        &helm,
        &[
            "--set",
            "metrics.auth.mode=kubernetes",
            "--set",
            "podMonitor.enabled=true",
        ],
    )
    .unwrap_err();
    assert!(err.contains("scrapeTokenSecret"), "{err}");
}

/// A certificate that cannot be used stops the agent at startup, naming the file; a half
/// pair is refused by the command line.
#[test]
fn the_agent_refuses_a_certificate_it_cannot_use_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (status, stderr) = flowwatch_testkit::agent::run_to_exit(
        Command::new(flowwatch_testkit::agent::binary())
            .arg("run")
            .arg("--listen=127.0.0.1:0")
            .arg("--metrics-tls-cert-file")
            .arg(&cert)
            .arg("--metrics-tls-key-file")
            .arg(&key),
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&cert.display().to_string()) && stderr.contains("no CERTIFICATE"),
        "{stderr}"
    );
    let (status, stderr) = flowwatch_testkit::agent::run_to_exit(
        Command::new(flowwatch_testkit::agent::binary())
            .args(["run", "--metrics-tls-cert-file"])
            .arg(&cert),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--metrics-tls-key-file"), "{stderr}");
}
