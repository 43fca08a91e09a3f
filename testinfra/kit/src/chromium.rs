//! Debian's headless Chromium, to open a page as a reader would: the DOM after its scripts
//! ran (`--dump-dom`), a screenshot, and every network request the page made, from
//! Chromium's own net log. Each run gets its own profile and a resolver that resolves
//! nothing (`MAP * ~NOTFOUND`): a page that tried to load something could not reach anyone,
//! and the net log still shows it tried.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest one Chromium run may take.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Whether `chromium` is installed (`cargo xtask setup` installs it).
pub fn available() -> Result<(), String> {
    super::privileged::command("chromium")
}

/// Flags that keep the browser's own background services (updates, sign-in, safe browsing)
/// quiet; what they still send is told apart from the page's requests by its initiator.
const QUIET: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-pings",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--host-resolver-rules=MAP * ~NOTFOUND",
];

/// What opening a page showed.
pub struct Opened {
    /// The DOM after the page's scripts ran, serialized.
    pub dom: String,
    /// The URLs of the network requests the page made (not the browser's own).
    pub page_requests: Vec<String>,
}

fn run(args: &[String]) -> Output {
    let mut child = Command::new("chromium")
        .args(QUIET)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    // Read both pipes on threads: a full pipe would stall the browser.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {TIMEOUT:?}: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn file_url(page: &Path) -> String {
    format!(
        "file://{}",
        page.canonicalize().expect("the page exists").display()
    )
}

/// Opens `page` (a file): its DOM after its scripts ran, and the requests it made.
pub fn open(page: &Path) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let netlog = dir.path().join("netlog.json");
    let out = run(&[
        format!("--user-data-dir={}", dir.path().join("profile").display()),
        format!("--log-net-log={}", netlog.display()),
        "--dump-dom".into(),
        file_url(page),
    ]);
    assert!(
        out.status.success(),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&netlog).expect("chromium wrote its net log");
    Opened {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        page_requests: page_requests(&log),
    }
}

/// A screenshot of `page` at `width` x `height` into `png`.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        format!("--user-data-dir={}", dir.path().join("profile").display()),
        format!("--screenshot={}", png.display()),
        format!("--window-size={width},{height}"),
        "--hide-scrollbars".into(),
        file_url(page),
    ]);
    assert!(
        out.status.success() && png.exists(),
        "chromium --screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The URLs of the requests a page made, from a net log: every `URL_REQUEST_START_JOB`
/// with an initiator (the browser's own background requests have none: "not an origin").
pub fn page_requests(netlog: &str) -> Vec<String> {
    // A net log cut short (the browser exits mid-write) lacks its closing brackets.
    let log: Value = serde_json::from_str(netlog)
        .or_else(|_| {
            serde_json::from_str(&format!("{}]}}", netlog.trim_end().trim_end_matches(',')))
        })
        .expect("the net log is JSON");
    let Some(start) = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64() else {
        panic!("the net log names no URL_REQUEST_START_JOB event type");
    };
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"].as_u64() == Some(start))
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str().map(String::from))
        .collect()
}

/// Width and height of a PNG, from its header; `None` when it is not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// Where tests keep what a person may want to look at after a run.
pub fn artifacts_dir() -> std::path::PathBuf {
    let dir = crate::paths::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
