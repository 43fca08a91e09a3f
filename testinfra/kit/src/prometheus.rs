//! A real Prometheus for tests: Debian's `/usr/bin/prometheus` on a free loopback port, with a
//! temp config and data dir, scraping the given jobs every second. Queried through its HTTP API
//! (a tiny HTTP/1.0 client, no extra crates). Killed and its dir removed on Drop.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::free_port;

/// Whether the binaries are installed (for `privileged::require`).
pub fn available() -> Result<(), String> {
    super::privileged::command("prometheus")
}

/// One scrape job.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// URL query parameters (`params:` in the scrape config).
    pub params: Vec<(String, String)>,
    /// `https` scrapes, trusting this CA file for the targets' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// `Authorization: Bearer` on each scrape.
    pub bearer_token: Option<String>,
    /// This job's scrape interval (its timeout too) instead of the global 1 s / 900 ms: for
    /// targets whose exposition takes longer than that to fetch and ingest on a loaded machine.
    pub interval: Option<Duration>,
}

impl Job {
    pub fn new(name: &str, targets: &[&str]) -> Job {
        Job {
            name: name.into(),
            targets: targets
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            params: Vec::new(),
            tls_ca_file: None,
            bearer_token: None,
            interval: None,
        }
    }
    pub fn interval(mut self, every: Duration) -> Job {
        self.interval = Some(every);
        self
    }
    pub fn https(mut self, ca_file: &Path) -> Job {
        self.tls_ca_file = Some(ca_file.to_path_buf());
        self
    }
    pub fn bearer_token(mut self, token: &str) -> Job {
        self.bearer_token = Some(token.into());
        self
    }
    pub fn param(mut self, k: &str, v: &str) -> Job {
        self.params.push((k.into(), v.into()));
        self
    }
}

/// Prometheus's own record of its scrapes of one job over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scrapes {
    /// Scrapes attempted (one `up` sample each).
    pub attempts: u64,
    /// Of them, those that failed (`up == 0`: refused, timed out, cut short).
    pub failed: u64,
    /// The fewest samples one scrape brought.
    pub fewest_samples: u64,
}

/// One sample of an instant-query result.
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `openmetrics` as TSDB blocks into `dir/data` (`promtool`, from the same package).
fn backfill(dir: &Path, openmetrics: &str) -> Result<(), String> {
    let input = dir.join("history.om");
    std::fs::write(&input, openmetrics).map_err(|e| format!("write the history: {e}"))?;
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("data"))
        .output()
        .map_err(|e| format!("spawn promtool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "promtool tsdb create-blocks-from openmetrics: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to json")
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second and evaluating `rule_files` every second.
    /// Panics (with Prometheus's log) if it does not become ready.
    pub fn start(jobs: &[Job], rule_files: &[PathBuf]) -> Prometheus {
        let mut last_err = String::new();
        // The port is picked by binding :0 and released; retry if another process takes it.
        for _ in 0..3 {
            match Prometheus::try_start(jobs, rule_files, None) {
                Ok(p) => return p,
                Err(e) => last_err = e,
            }
        }
        panic!("prometheus did not start: {last_err}");
    }

    /// Starts Prometheus on a history: `openmetrics` (samples with timestamps, `# EOF` at the
    /// end) is written into its storage with `promtool tsdb create-blocks-from openmetrics`
    /// first. Scrapes nothing.
    pub fn start_with_history(openmetrics: &str) -> Prometheus {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Prometheus::try_start(&[], &[], Some(openmetrics)) {
                Ok(p) => return p,
                Err(e) => last_err = e,
            }
        }
        panic!("prometheus did not start on the history: {last_err}");
    }

    fn try_start(
        jobs: &[Job],
        rule_files: &[PathBuf],
        history: Option<&str>,
    ) -> Result<Prometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("flowwatch-prometheus-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if let Some(openmetrics) = history {
            backfill(dir.path(), openmetrics)?;
        }
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n",
        );
        if !rule_files.is_empty() {
            cfg.push_str("rule_files:\n");
            for f in rule_files {
                let _ = writeln!(cfg, "  - {}", yaml_str(&f.display().to_string()));
            }
        }
        if !jobs.is_empty() {
            cfg.push_str("scrape_configs:\n");
        }
        for job in jobs {
            let _ = writeln!(cfg, "  - job_name: {}", yaml_str(&job.name));
            if let Some(every) = job.interval {
                let ms = every.as_millis();
                let _ = write!(
                    cfg,
                    "    scrape_interval: {ms}ms\n    scrape_timeout: {ms}ms\n"
                );
            }
            if !job.params.is_empty() {
                cfg.push_str("    params:\n");
                for (k, v) in &job.params {
                    let _ = writeln!(cfg, "      {}: [{}]", yaml_str(k), yaml_str(v));
                }
            }
            if let Some(ca) = &job.tls_ca_file {
                cfg.push_str("    scheme: https\n    tls_config:\n");
                let _ = writeln!(
                    cfg,
                    "      ca_file: {}",
                    yaml_str(&ca.display().to_string())
                );
            }
            if let Some(token) = &job.bearer_token {
                let _ = write!(
                    cfg,
                    "    authorization:\n      credentials: {}\n",
                    yaml_str(token)
                );
            }
            cfg.push_str("    static_configs:\n      - targets: [");
            let targets: Vec<String> = job.targets.iter().map(|t| yaml_str(t)).collect();
            cfg.push_str(&targets.join(", "));
            cfg.push_str("]\n");
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, &cfg).map_err(|e| format!("write config: {e}"))?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // A backfilled history may be older than the default 15 days.
            .arg("--storage.tsdb.retention.time=100d")
            .arg("--web.console.templates=/nonexistent")
            .arg("--web.console.libraries=/nonexistent")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn prometheus: {e}"))?;
        let mut p = Prometheus { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("prometheus exited with {status}:\n{}", p.logs()));
            }
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("prometheus not ready after 30 s:\n{}", p.logs()))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` (with query string); returns status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(&format!("127.0.0.1:{}", self.port), path, None)
    }

    /// An instant query. `Err` carries Prometheus's error (e.g. a PromQL parse error).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let (_, body) = self.get(&format!("/api/v1/query?query={}", urlencode(promql)))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("bad JSON from prometheus: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        let result = &v["data"]["result"];
        let samples = match v["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().cloned().unwrap_or_default(),
            Some("scalar") => {
                return Ok(vec![Sample {
                    labels: serde_json::Map::default(),
                    value: parse_value(&result[1]),
                }])
            }
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples
            .iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: parse_value(&s["value"][1]),
            })
            .collect())
    }

    /// What Prometheus's own scrapes of `job` did over the last `window` (whole seconds, at
    /// least one): attempts (`up` samples), failed ones (`up == 0`) and the fewest samples a
    /// scrape brought (`scrape_samples_scraped`).
    pub fn scrapes_over(&self, job: &str, window: Duration) -> Result<Scrapes, String> {
        let secs = window.as_secs().max(1);
        let one = |promql: String| -> Result<f64, String> {
            let samples = self.query(&promql)?;
            match samples.as_slice() {
                [s] => Ok(s.value),
                other => Err(format!("{promql}: {} series", other.len())),
            }
        };
        let sel = format!("{{job={}}}", yaml_str(job));
        // `up` is 1 or 0 per attempt: attempts minus its sum are the failures.
        let attempts = one(format!("count_over_time(up{sel}[{secs}s])"))? as u64;
        let succeeded = one(format!("sum_over_time(up{sel}[{secs}s])"))? as u64;
        Ok(Scrapes {
            attempts,
            failed: attempts.saturating_sub(succeeded),
            fewest_samples: one(format!(
                "min_over_time(scrape_samples_scraped{sel}[{secs}s])"
            ))? as u64,
        })
    }

    /// Polls `promql` until `done` holds for its result; panics with the last result and the
    /// log after `timeout`.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if let Ok(s) = &r {
                if done(s) {
                    return s.clone();
                }
            }
            assert!(
                Instant::now() <= deadline,
                "timed out waiting for {promql}: last result {r:?}\nlog:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `/api/v1/rules` as JSON.
    pub fn rules(&self) -> Value {
        let (_, body) = self.get("/api/v1/rules").expect("GET /api/v1/rules");
        serde_json::from_str(&body).expect("rules JSON")
    }
}

fn parse_value(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A minimal HTTP/1.0 GET (no chunked encoding to deal with). Returns status and body.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> Result<(u16, String), String> {
    let (status, _, body) = http_get_full(addr, path, accept)?;
    Ok((status, body))
}

/// An HTTP response: status, headers (lower-cased names), body.
pub type Response = (u16, Vec<(String, String)>, String);

/// Like [`http_get`], also returning the response headers (lower-cased names).
pub fn http_get_full(addr: &str, path: &str, accept: Option<&str>) -> Result<Response, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response from {addr}: {raw:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line from {addr}: {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Runs `promtool check metrics` on the text exposition (`/metrics?format=prometheus`) served at
/// `addr`; panics with promtool's complaints and the exposition unless it is clean. Returns the
/// exposition.
pub fn promtool_check_metrics(name: &str, addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics?format=prometheus", None)
        .unwrap_or_else(|e| panic!("scraping {name} at {addr}: {e}"));
    assert_eq!(status, 200, "{name}'s /metrics: {body}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics rejects {name}'s exposition:\n{}{}\n---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    body
}
