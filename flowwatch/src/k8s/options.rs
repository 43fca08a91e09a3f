//! How the agent watches the API server: debounce, timeouts, page size, backoff, list strategy.
use std::time::Duration;

use kube::runtime::watcher;

/// Watch settings.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Quiet time after a change before a new view is built (changes within it are batched).
    pub debounce: Duration,
    /// Server-side timeout of each watch request (kube-rs default: 290 s).
    pub watch_timeout_secs: Option<u32>,
    /// Page size of the initial lists.
    pub page_size: u32,
    /// Base of the first and of the largest pause before a failed watch is restarted; each
    /// pause is jittered up to twice its base ([`super::backoff::Backoff`]).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often API discovery looks for the optional kinds ([`super::optional`]) coming or going.
    pub discovery_interval: Duration,
    /// How the initial state of each kind is fetched (see [`ListStrategy`]).
    pub list_strategy: ListStrategy,
}

/// How a watch gets the objects that exist when it starts.
///
/// Paged is the default: with kube-runtime 2.0.1 a streaming watch asks for the initial events
/// again each time it resumes (every 290 s per kind, kube-rs issue #1844, fixed upstream by
/// kube-rs PR #1882 in a later release), so at rest it downloads the whole state again every
/// few minutes, where a paged agent resumes its watch for free (figures in
/// docs/benchmarks.md). Streaming pays off in a restart storm; switch the default once the
/// kube-rs upgrade carries the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ListStrategy {
    /// A streaming list (`sendInitialEvents=true`, KEP-3157 WatchList) when the server
    /// supports it, else paged lists: a kind whose streaming watch the server refuses (422/400:
    /// the WatchList feature off or unknown) before it ever completed lists in pages from then on.
    Auto,
    /// Always a streaming list: one watch request per kind instead of a list request per page
    /// and a watch.
    Streaming,
    /// Paged lists (`limit`/`continue`), then a watch resumed from its resourceVersion.
    #[default]
    Paged,
}

/// The watcher settings of one watch of a kind (page size, timeout, list strategy).
pub fn watcher_config(opts: &WatchOptions, streaming: bool) -> watcher::Config {
    let mut cfg = watcher::Config {
        page_size: Some(opts.page_size),
        ..Default::default()
    };
    if let Some(t) = opts.watch_timeout_secs {
        cfg = cfg.timeout(t);
    }
    if streaming {
        cfg = cfg.streaming_lists();
    }
    cfg
}

/// Whether a streaming watch that has not delivered its initial state yet failed because the
/// server does not do streaming lists: it rejects `sendInitialEvents` as invalid (422, or 400),
/// or, for a metadata-only watch, answers with a Status that is no watch event (kube-rs cannot
/// decode it). Any of these on a kind whose streaming list never completed means: list in pages.
pub(super) fn refuses_streaming_lists(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::WatchError(e)
        | watcher::Error::WatchFailed(kube::Error::Api(e)) => {
            matches!(e.code, 400 | 422)
        }
        watcher::Error::WatchStartFailed(kube::Error::SerdeError(_))
        | watcher::Error::WatchFailed(kube::Error::SerdeError(_)) => true,
        _ => false,
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(100),
            watch_timeout_secs: None,
            page_size: 100,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(30),
            list_strategy: ListStrategy::Paged,
        }
    }
}
