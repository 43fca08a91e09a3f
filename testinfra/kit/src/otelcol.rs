//! A real OpenTelemetry Collector for tests: the collector's own OTLP receiver (built by
//! `cargo xtask k8s-bins` from `testinfra/otelcol`, published Go modules of collector v0.165.0)
//! on a loopback port, appending what it receives, as OTLP JSON, to a file in its temp dir.
//! Read from `FLOWWATCH_OTELCOL`, else from the cache xtask fills
//! (`${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/otelcol-<version>/otelcol`). Killed on Drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary, or why it is missing.
pub fn binary() -> Result<PathBuf, String> {
    super::gocache::tool(
        "FLOWWATCH_OTELCOL",
        "otelcol",
        "go.opentelemetry.io/collector/receiver/otlpreceiver",
        "otelcol",
        "otelcol",
    )
}

pub fn available() -> Result<(), String> {
    binary().map(|_| ())
}

pub struct Collector {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Collector {
    /// Starts the collector with OTLP/HTTP on a free loopback port; waits until it listens.
    pub fn start() -> Collector {
        let dir = tempfile::Builder::new()
            .prefix("flowwatch-otelcol-")
            .tempdir()
            .expect("temp dir");
        let port = crate::agent::free_port();
        let mut c = Collector {
            child: None,
            dir,
            port,
        };
        c.restart();
        c
    }

    /// The OTLP/HTTP endpoint (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the collector (the port refuses connections until [`Collector::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and file.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("otelcol.log")).expect("log file");
        let child = Command::new(binary().unwrap_or_else(|e| panic!("{e}")))
            .arg(format!("--http=127.0.0.1:{}", self.port))
            .arg("--grpc=")
            .arg(format!("--out={}", self.out().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(std::process::Child::try_wait) {
                panic!("collector exited with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "collector not listening: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("received.jsonl")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otelcol.log")).unwrap_or_default()
    }

    /// Every batch received so far, as OTLP JSON (`{"resourceLogs": [...]}`).
    pub fn batches(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("collector wrote OTLP JSON"))
            .collect()
    }

    /// Every log record received so far, each with its resource's attributes.
    pub fn records(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for batch in self.batches() {
            for rl in batch["resourceLogs"].as_array().into_iter().flatten() {
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for r in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push((rl["resource"].clone(), r.clone()));
                    }
                }
            }
        }
        out
    }

    /// Waits until at least `n` records arrived; returns them.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Vec<(Value, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.records();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} records arrived within {timeout:?}; log: {}",
                got.len(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An attribute's value from an OTLP JSON `attributes` list (`stringValue` or `intValue`).
pub fn attribute(attrs: &Value, key: &str) -> Option<String> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
        })
}
