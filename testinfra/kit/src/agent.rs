//! The real agent binary, run as a child process with a flow log in a temp dir.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The agent binary cargo built beside the running test, bench or example
/// (`target/<profile>/flowwatch`). Cargo builds the package's binary before its integration
/// tests and benches and runs them from `target/<profile>/deps` (examples from
/// `target/<profile>/examples`); `CARGO_BIN_EXE_flowwatch`, when set at run time, wins.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_flowwatch") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the running executable's path");
        let mut dir = exe.parent().expect("an executable's directory");
        if dir.ends_with("deps") || dir.ends_with("examples") {
            dir = dir.parent().expect("target/<profile>");
        }
        dir.join("flowwatch")
    })
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

/// How long a SIGKILLed agent may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the child get SIGKILL when the thread that spawns it (the test) dies, so an agent
/// never outlives a killed test run. The signal follows the spawning *thread*: start agents
/// from the test's own thread, not from a helper thread that ends before the test does.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; they only touch the child itself.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: the signal will not come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        })
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it did not.
fn wait_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL and reap, bounded; `false` if the process could not be reaped in time.
fn kill_and_reap(child: &mut Child) -> bool {
    let _ = child.kill();
    wait_within(child, REAP_TIMEOUT).is_some()
}

/// Where the agent writes its flow log.
#[derive(Clone, Copy)]
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

    /// As `start`, with the flow log at `path` (a file system the test prepared).
    pub fn start_with_flow_log_at(path: &std::path::Path, args: &[&str]) -> Agent {
        let p = path.to_str().expect("a UTF-8 path");
        let mut agent = Agent::spawn(
            FlowLog::None,
            &[&["--poll-interval-ms", "200", "--flow-log", p], args].concat(),
        );
        agent.flow_log = path.to_path_buf();
        agent
    }

    /// As deployed, plus the flow log.
    pub fn start_as_deployed_with_flow_log(args: &[&str]) -> Agent {
        Agent::spawn(FlowLog::File, args)
    }

    /// Starts `flowwatch run` as deployed (no flow log) on the given listen address, so that a
    /// restarted agent is scraped where its predecessor was; panics with the log if it does not
    /// run (the address taken meanwhile included).
    pub fn start_as_deployed_on(listen: &str, args: &[&str]) -> Agent {
        let mut agent = Agent::spawn_once(FlowLog::None, Some(listen), args);
        if agent.wait_running().is_err() {
            agent.wait_for_log("flowwatch running", Duration::ZERO); // panics with the log
        }
        agent
    }

    /// Starts the agent and waits until it runs. The listen port is free when chosen but may
    /// be taken by another test before the agent binds it: then the agent is started again on
    /// another port (a few times at most).
    fn spawn(flow_log_to: FlowLog, args: &[&str]) -> Agent {
        for _ in 0..3 {
            let mut agent = Agent::spawn_once(flow_log_to, None, args);
            if agent.wait_running().is_ok() {
                return agent;
            }
            let port_taken = agent
                .stderr()
                .contains(&format!("listening on {}", agent.listen))
                && agent.stderr().contains("Address already in use");
            if !port_taken {
                agent.wait_for_log("flowwatch running", Duration::ZERO); // panics with the log
            }
            eprintln!("agent: {} was taken meanwhile; another port", agent.listen);
        }
        panic!("the agent found its listen port taken three times");
    }

    /// `Ok` once the agent says it runs; `Err` if it exited before (its log tells why).
    fn wait_running(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stderr().contains("flowwatch running") {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                std::thread::sleep(Duration::from_millis(100)); // the rest of its stderr
                return Err(());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start within 30 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn spawn_once(flow_log_to: FlowLog, listen: Option<&str>, args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let flow_log = dir.path().join("flows.jsonl");
        let listen = listen.map_or_else(|| format!("127.0.0.1:{}", free_port()), str::to_string);
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
        let mut child = die_with_parent(&mut cmd)
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
        Agent {
            child: Some(child),
            dir,
            flow_log,
            listen,
            stderr,
        }
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
        self.child.as_ref().map_or(0, std::process::Child::id)
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
        let Some(status) = wait_within(&mut child, Duration::from_secs(20)) else {
            let reaped = kill_and_reap(&mut child);
            panic!(
                "agent did not stop on signal {signal} (SIGKILLed, reaped: {reaped}):\n{}",
                self.stderr()
            );
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
            if !kill_and_reap(&mut child) {
                eprintln!(
                    "agent {} not reaped {REAP_TIMEOUT:?} after SIGKILL",
                    child.id()
                );
            }
        }
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.flow_log).unwrap_or_default();
        // Only whole lines: a poll may be writing the last one while it is read.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
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
/// Panics, after killing it, if it is still running after 30 s.
pub fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let timeout = Duration::from_secs(30);
    let mut child = die_with_parent(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning flowwatch");
    let mut pipe = child.stderr.take().expect("stderr");
    // Read on a thread: the pipe would otherwise fill up, and read_to_string alone could block
    // on a grandchild holding it open.
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let Some(status) = wait_within(&mut child, timeout) else {
        let reaped = kill_and_reap(&mut child);
        panic!("{cmd:?} still running after {timeout:?} (SIGKILLed, reaped: {reaped})");
    };
    // The reader ends when the last writer closes the pipe; wait for that, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        reader.is_finished(),
        "{cmd:?} exited ({status}) but its stderr stayed open"
    );
    (status, reader.join().unwrap())
}
