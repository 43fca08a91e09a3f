//! The real agent binary, run as a child process with a flow log in a temp dir.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_flowwatch")
}

pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub flow_log: PathBuf,
    /// The agent's HTTP address (`127.0.0.1:port`).
    pub listen: String,
    stderr: Arc<Mutex<String>>,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// Where the agent writes its flow log.
enum FlowLog {
    None,
    File,
    Stdout,
}

impl Agent {
    /// Starts `flowwatch run` with the flow log, a free listen port, a 200 ms poll (so tests
    /// see records quickly) and `args`, and waits until it says it is running (programs
    /// loaded, interfaces attached).
    pub fn start(args: &[&str]) -> Agent {
        Agent::spawn(
            FlowLog::File,
            &[&["--poll-interval-ms", "200"], args].concat(),
        )
    }

    /// As `start`, with the flow log written to standard output (`--flow-log -`), which the
    /// harness keeps in a file that `records()` reads.
    pub fn start_with_flow_log_on_stdout(args: &[&str]) -> Agent {
        Agent::spawn(
            FlowLog::Stdout,
            &[&["--poll-interval-ms", "200"], args].concat(),
        )
    }

    /// Starts `flowwatch run` as the DaemonSet runs it: default poll, no flow log (metrics
    /// only), a free listen port and `args`. `records()` is empty for such an agent.
    pub fn start_as_deployed(args: &[&str]) -> Agent {
        Agent::spawn(FlowLog::None, args)
    }

    /// As deployed, plus the flow log.
    pub fn start_as_deployed_with_flow_log(args: &[&str]) -> Agent {
        Agent::spawn(FlowLog::File, args)
    }

    fn spawn(flow_log_to: FlowLog, args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let flow_log = dir.path().join("flows.jsonl");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(binary());
        cmd.arg("run");
        let stdout = match flow_log_to {
            FlowLog::None => Stdio::null(),
            FlowLog::File => {
                cmd.arg("--flow-log").arg(&flow_log);
                Stdio::null()
            }
            FlowLog::Stdout => {
                cmd.args(["--flow-log", "-"]);
                Stdio::from(std::fs::File::create(&flow_log).expect("stdout capture file"))
            }
        };
        let mut child = cmd
            .args(["--listen", &listen])
            .args(args)
            .env("FLOWWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning flowwatch");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut agent = Agent {
            child: Some(child),
            dir,
            flow_log,
            listen,
            stderr,
        };
        agent.wait_for_log("flowwatch running", Duration::from_secs(30));
        agent
    }

    /// Waits until stderr contains `needle`; panics with the log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "agent exited ({status}) before {needle:?}:\n{}",
                        self.stderr()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent did not log {needle:?} within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, wait for exit, return the status and the flow records.
    pub fn stop(&mut self) -> (ExitStatus, Vec<serde_json::Value>) {
        self.stop_with(libc::SIGTERM)
    }

    /// `signal` (SIGTERM or SIGINT), wait for exit, return the status and the flow records.
    pub fn stop_with(&mut self, signal: libc::c_int) -> (ExitStatus, Vec<serde_json::Value>) {
        let mut child = self.child.take().expect("agent already stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop on signal {signal}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.records())
    }

    /// The value of one series (`name` or `name{labels}` as exposed) on the agent's /metrics.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = super::prometheus::http_get(&self.listen, "/metrics", None).ok()?;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(series))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `series` reads `value` (metrics the agent sets on its poll); panics after
    /// `timeout` naming the series and its last value.
    pub fn wait_metric(&self, series: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.metric(series);
            if got == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} not {value} within {timeout:?} (last {got:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.flow_log).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad flow log line {l:?}: {e}"))
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the agent binary to completion (for startup errors) and returns (status, stderr).
pub fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("spawning flowwatch");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
