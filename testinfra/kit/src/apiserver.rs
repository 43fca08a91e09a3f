//! A real Kubernetes control plane for tests: etcd + kube-apiserver on loopback ports.
//!
//! ```no_run
//! # use flowwatch_testkit::{apiserver::ApiServer, privileged};
//! # async fn a_test() {
//! if !privileged::require("my test", ApiServer::available()) { return; }
//! let api = ApiServer::start().await;          // etcd + kube-apiserver, ready
//! let client = api.admin_client().await;       // system:masters (token auth)
//! let sa = api.client_for_service_account("flowwatch", "flowwatch").await; // RBAC applies
//! // api.kubeconfig_path(): an admin kubeconfig file (e.g. for `kubectl --dry-run=server`)
//! # }
//! ```
//!
//! What it runs: the binaries built by `cargo xtask k8s-bins` (read from `FLOWWATCH_ETCD` and
//! `FLOWWATCH_KUBE_APISERVER`, else from the version-keyed cache that xtask fills). Each
//! `ApiServer` has its own temp dir (etcd data, certs, keys, token file, kubeconfig, logs) and
//! its own ports picked by binding port 0, so tests run in parallel. Authentication: a static
//! token file (`admin` in `system:masters`, plus any extra tokens of [`ApiServerOptions`]) and
//! service-account tokens (a fresh RSA key pair). Authorization: RBAC only. Admission: the
//! `ServiceAccount` plugin is off (no controller-manager creates `default` service accounts).
//! No kubelet or controllers run: pods stay Pending until a test sets `status.podIP(s)`
//! through the status subresource, and namespaces never finish terminating.
//!
//! Cleanup: Drop kills both processes and removes the temp dir, also when the test panics; the
//! processes also get SIGKILL if the test process dies (`PR_SET_PDEATHSIG`).

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::agent::free_port;

/// The admin's static token (user `admin`, group `system:masters`).
pub const ADMIN_TOKEN: &str = "flowwatch-test-admin-token";

/// Knobs for tests that need a particular server behaviour.
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// The API server's watch cache (on by default, as in a real cluster). Off, every watch
    /// goes to etcd, so a watch resumed from a compacted revision gets 410 Gone.
    pub watch_cache: bool,
    /// How often the API server compacts etcd (`--etcd-compaction-interval`; default 5m).
    pub etcd_compaction_interval: Option<Duration>,
    /// Extra static tokens: (token, user, groups).
    pub tokens: Vec<(String, String, Vec<String>)>,
    /// Extra kube-apiserver flags (e.g. `--feature-gates=WatchList=false`).
    pub extra_args: Vec<String>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            watch_cache: true,
            etcd_compaction_interval: None,
            tokens: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// The binaries to run.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
}

/// A running etcd + kube-apiserver; stopped and cleaned up on Drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    bins: Binaries,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    apiserver_args: Vec<String>,
    port: u16,
    url: String,
    kubeconfig: PathBuf,
}

impl ApiServer {
    /// Whether the binaries are there (for `privileged::require`).
    pub fn available() -> Result<(), String> {
        binaries().map(|_| ())?;
        if Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            Ok(())
        } else {
            Err("`openssl` (for the service-account key pair) not found".into())
        }
    }

    /// Starts etcd and kube-apiserver with the defaults and waits until `/readyz` is ok.
    /// Panics (with the servers' log tails) when they do not come up.
    pub async fn start() -> ApiServer {
        Self::start_with(ApiServerOptions::default()).await
    }

    pub async fn start_with(opts: ApiServerOptions) -> ApiServer {
        let bins = binaries().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("flowwatch-apiserver-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();

        // Service-account signing key pair.
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(d.join("sa.key"))
                .arg("2048"),
        );
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(d.join("sa.key"))
                .arg("-out")
                .arg(d.join("sa.pub")),
        );

        // Static tokens: token,user,uid,"group1,group2"
        let mut tokens = format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n");
        for (i, (token, user, groups)) in opts.tokens.iter().enumerate() {
            let _ = writeln!(tokens, "{token},{user},uid-{i},\"{}\"", groups.join(","));
        }
        std::fs::write(d.join("tokens.csv"), tokens).expect("token file");

        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd_log = std::fs::File::create(d.join("etcd.log")).expect("etcd log");
        let mut etcd_cmd = Command::new(&bins.etcd);
        etcd_cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=test=http://127.0.0.1:{peer_port}"
            ))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdout(etcd_log.try_clone().expect("log"))
            .stderr(etcd_log);
        let etcd = spawn(&mut etcd_cmd);

        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--anonymous-auth=false".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--watch-cache={}", opts.watch_cache),
        ];
        apiserver_args.extend(opts.extra_args.iter().cloned());
        if let Some(every) = opts.etcd_compaction_interval {
            apiserver_args.push(format!(
                "--etcd-compaction-interval={}ms",
                every.as_millis()
            ));
        }

        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&url, &d.join("certs/apiserver.crt"), ADMIN_TOKEN),
        )
        .expect("kubeconfig");

        let mut api = ApiServer {
            dir,
            bins,
            etcd: Some(etcd),
            apiserver: None,
            apiserver_args,
            port,
            url,
            kubeconfig,
        };
        wait_for_port(etcd_port, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("etcd did not listen: {e}\n{}", api.logs()));
        api.start_apiserver().await;
        api
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An admin kubeconfig (token auth, the server's self-signed CA).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temp dir (certs, keys, logs); removed on Drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client with `system:masters` rights.
    pub async fn admin_client(&self) -> Client {
        self.client_for_token(ADMIN_TOKEN).await
    }

    /// A client that authenticates with `token` (a static token or a service-account token).
    pub async fn client_for_token(&self, token: &str) -> Client {
        self.client_via(&self.url, token).await
    }

    /// A client for `url` (e.g. a proxy in front of this server on loopback: the server's
    /// certificate holds 127.0.0.1) with `token`.
    pub async fn config_via(&self, url: &str, token: &str) -> kube::Config {
        let yaml = kubeconfig_yaml(url, &self.dir.path().join("certs/apiserver.crt"), token);
        let kc = Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("client config");
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(30));
        config
    }

    /// [`ApiServer::config_via`] as a client.
    pub async fn client_via(&self, url: &str, token: &str) -> Client {
        Client::try_from(self.config_via(url, token).await).expect("client")
    }

    /// A kubeconfig file for `token` (written into the temp dir).
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            kubeconfig_yaml(
                &self.url,
                &self.dir.path().join("certs/apiserver.crt"),
                token,
            ),
        )
        .expect("kubeconfig");
        path
    }

    /// A token for an existing ServiceAccount, minted through the TokenRequest API (one hour).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin_client().await, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let out = api
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .unwrap_or_else(|e| panic!("token for serviceaccount {namespace}/{name}: {e}"));
        out.status.expect("TokenRequest status").token
    }

    /// A client acting as an existing ServiceAccount (its RBAC bindings apply).
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Client {
        let token = self.service_account_token(namespace, name).await;
        self.client_for_token(&token).await
    }

    /// The kube-apiserver process id (for its CPU time and memory).
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(std::process::Child::id)
    }

    /// The server's `/metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        let client = self.admin_client().await;
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .expect("request");
        client.request_text(req).await.expect("GET /metrics")
    }

    /// The sum of the samples of a `/metrics` family whose labels include all of `labels`
    /// (e.g. `apiserver_request_total` with `verb="LIST"`, `resource="pods"`).
    pub async fn metric_sum(&self, family: &str, labels: &[&str]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops kube-apiserver (etcd keeps running): clients see connection refused.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again on the same port, certs and etcd; waits until ready.
    pub async fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver().await;
    }

    /// The tails of both logs (for panic messages).
    pub fn logs(&self) -> String {
        format!(
            "--- etcd.log (tail) ---\n{}\n--- kube-apiserver.log (tail) ---\n{}",
            tail(&self.dir.path().join("etcd.log")),
            tail(&self.dir.path().join("kube-apiserver.log"))
        )
    }

    async fn start_apiserver(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kube-apiserver.log"))
            .expect("apiserver log");
        let mut cmd = Command::new(&self.bins.kube_apiserver);
        cmd.args(&self.apiserver_args)
            .arg("-v=0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.apiserver = Some(spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = loop {
            assert!(
                Instant::now() <= deadline,
                "kube-apiserver on port {} not ready in 90 s\n{}",
                self.port,
                self.logs()
            );
            if let Some(child) = self.apiserver.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("kube-apiserver exited: {status}\n{}", self.logs());
                }
            }
            if self.dir.path().join("certs/apiserver.crt").is_file()
                && TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], self.port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                break self.admin_client().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if let Ok(body) = client.request_text(req).await {
                if body.trim() == "ok" {
                    return;
                }
            }
            assert!(
                Instant::now() <= deadline,
                "kube-apiserver /readyz not ok in 90 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "ApiServer at {} (test panicked):\n{}",
                self.url,
                self.logs()
            );
        }
        // the TempDir field removes the directory after this.
    }
}

/// The binaries: from `FLOWWATCH_ETCD` / `FLOWWATCH_KUBE_APISERVER`, else from the cache that
/// `cargo xtask k8s-bins` fills (keyed by the version in `testinfra/kube/go.mod`).
pub fn binaries() -> Result<Binaries, String> {
    let from_env = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let (etcd, kube_apiserver) = match (
        from_env("FLOWWATCH_ETCD"),
        from_env("FLOWWATCH_KUBE_APISERVER"),
    ) {
        (Some(e), Some(k)) => (e, k),
        (e, k) => {
            let dir = cache_dir()?;
            (
                e.unwrap_or_else(|| dir.join("etcd")),
                k.unwrap_or_else(|| dir.join("kube-apiserver")),
            )
        }
    };
    for p in [&etcd, &kube_apiserver] {
        if !p.is_file() {
            return Err(format!(
                "{} not found (run `cargo xtask k8s-bins`, or set FLOWWATCH_ETCD and FLOWWATCH_KUBE_APISERVER)",
                p.display()
            ));
        }
    }
    Ok(Binaries {
        etcd,
        kube_apiserver,
    })
}

/// kubectl, built with the control plane (same version): from `FLOWWATCH_KUBECTL`, else from
/// the cache that `cargo xtask k8s-bins` fills.
pub fn kubectl() -> Result<PathBuf, String> {
    let path = match std::env::var_os("FLOWWATCH_KUBECTL").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_dir()?.join("kubectl"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (run `cargo xtask k8s-bins`, or set FLOWWATCH_KUBECTL)",
            path.display()
        ))
    }
}

fn cache_dir() -> Result<PathBuf, String> {
    let go_mod_path = crate::paths::repo().join("testinfra/kube/go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .map_err(|e| format!("{}: {e}", go_mod_path.display()))?;
    let version = go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| l.strip_prefix("k8s.io/kubernetes "))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
        .ok_or_else(|| format!("{}: no k8s.io/kubernetes version", go_mod_path.display()))?;
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("flowwatch").join(format!("k8s-{version}")))
}

fn kubeconfig_yaml(url: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: user
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: user
current-context: test
",
        ca = ca.display()
    )
}

fn wait_for_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("127.0.0.1:{port} not listening after {timeout:?}"))
}

/// Spawns a child that gets SIGKILL when the spawning thread (the test) dies.
fn spawn(cmd: &mut Command) -> Child {
    // SAFETY: prctl is async-signal-safe; it only sets this process's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", cmd.get_program().display()))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}
