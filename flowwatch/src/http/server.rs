//! The accept loop and the life of one client connection, bounded so that no client can take
//! the agent's memory or file descriptors:
//!
//! - at most [`HttpLimits::max_connections`] are open; a new connection beyond it closes the
//!   one that has made no progress (no byte read or written) for the longest, so held or
//!   trickling connections cannot lock out the kubelet's probes or Prometheus;
//! - request headers must arrive within [`HttpLimits::header_read_timeout`], which is also how
//!   long a kept-alive connection may wait idle for its next request;
//! - a response the client stops reading is abandoned after
//!   [`HttpLimits::write_stall_timeout`] without progress, and its connection closed;
//! - the per-connection read buffer is bounded ([`READ_BUFFER_BYTES`]), and so is the kernel's
//!   send buffer ([`HttpLimits::send_buffer_bytes`]): left to autotuning, each client that does
//!   not read had the kernel queue up to 4 MiB of exposition (`tcp_wmem`'s maximum; 2.7 MiB
//!   measured), socket memory that the cgroup of the agent's pod is charged for and that counts
//!   against the node's `tcp_mem`, outside the process's RSS.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::guarded_io::GuardedIo;
use super::tls::Tls;

/// hyper's read buffer per connection (its minimum is 8 KiB): a request line and headers of
/// any real client fit; larger headers are refused (431) instead of buffered.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Connections the accept loop admits before it lets their tasks run (see `serve_router`):
/// well under any cap, so a connection is served before the cap's worth of newer ones arrive.
const ADMITS_PER_YIELD: usize = 8;

/// The bounds of the HTTP edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections open at once (also capped to half the file-descriptor limit).
    pub max_connections: usize,
    /// Time for a request's headers to arrive, and for an idle kept-alive connection to send
    /// its next request.
    pub header_read_timeout: Duration,
    /// Time a response may wait for the client to read before the connection is dropped.
    pub write_stall_timeout: Duration,
    /// `SO_SNDBUF` of each connection (the kernel doubles it for its bookkeeping): bounds the
    /// socket memory a client that stops reading holds. 128 KiB still moves an exposition of
    /// 7 MiB in about 60 round trips (0.1 s across a node's 1 ms RTT).
    pub send_buffer_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(10),
            send_buffer_bytes: 128 * 1024,
        }
    }
}

impl HttpLimits {
    /// The connection cap under the process's file-descriptor limit: at most half of it, so the
    /// agent keeps descriptors for its own work (eBPF links, maps, netlink, the flow log).
    pub fn effective_max_connections(&self) -> usize {
        let soft = nofile_limit().unwrap_or(1024);
        let by_fds = usize::try_from(soft / 2).unwrap_or(usize::MAX).max(8);
        self.max_connections.clamp(1, by_fds)
    }
}

fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return None;
    }
    Some(lim.rlim_cur)
}

/// Raises the soft file-descriptor limit to the hard one (the soft default, 1024, is what a
/// flood of connections exhausted first). Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit; setrlimit only lowers or raises within the hard limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// One open connection, as the accept loop sees it.
pub(super) struct ConnEntry {
    id: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_progress_ms: AtomicU64,
    evict: CancellationToken,
}

impl ConnEntry {
    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }
}

/// The open connections; evicts the stalest when full.
struct Connections {
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnEntry>>>,
    /// Wakes the shutdown once the last connection is gone.
    emptied: tokio::sync::Notify,
}

impl Connections {
    fn new() -> Connections {
        Connections {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            emptied: tokio::sync::Notify::new(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnEntry>>> {
        crate::sync::lock(&self.live)
    }

    /// Registers a new connection, first closing the stalest ones while `max` are open.
    /// Returns the entry and how many were evicted.
    fn admit(&self, max: usize) -> (Arc<ConnEntry>, usize) {
        let entry = Arc::new(ConnEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            last_progress_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
        });
        entry.touch();
        let mut live = self.live();
        let mut evicted = 0;
        while live.len() >= max {
            let Some(stalest) = live
                .values()
                // Ties (a burst within one millisecond) go to the earliest admitted.
                .min_by_key(|e| (e.last_progress_ms.load(Ordering::Relaxed), e.id))
                .map(|e| e.id)
            else {
                break;
            };
            if let Some(e) = live.remove(&stalest) {
                e.evict.cancel();
                evicted += 1;
            }
        }
        live.insert(entry.id, entry.clone());
        (entry, evicted)
    }

    fn remove(&self, id: u64) {
        let mut live = self.live();
        live.remove(&id);
        if live.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn is_empty(&self) -> bool {
        self.live().is_empty()
    }
}

/// Pending connections the kernel keeps for `accept` (capped by `net.core.somaxconn`). A burst
/// of connections beyond the default 1024 overflows the queue and the kernel drops SYNs, which
/// the kubelet's probe then retries only after a second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the HTTP edge's listener, with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Whether an `accept` error concerns only the connection being accepted (try the next one at
/// once) rather than the process (out of descriptors or memory: back off a little).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Sets `SO_SNDBUF` of an accepted connection (which also turns the kernel's autotuning of it
/// off).
fn set_send_buffer(stream: &tokio::net::TcpStream, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor owned by `stream`; the option value is a c_int whose
    // size is passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled; then lets the
/// requests in flight finish (idle connections close at once) and returns.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max_connections = limits.effective_max_connections();
    let conns = Arc::new(Connections::new());
    let mut accept_errors_logged = 0u32;
    let mut since_yield = 0usize;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (another part of the agent holds them): retry shortly
                // rather than spin; logged a few times, not once per attempt.
                if accept_errors_logged < 10 {
                    accept_errors_logged += 1;
                    tracing::warn!(error = %crate::error_chain::Chain(&e), "accepting an HTTP connection");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Best effort: a connection whose buffer could not be bounded is still served.
        let _ = set_send_buffer(&stream, limits.send_buffer_bytes);
        let (entry, evicted) = conns.admit(max_connections);
        if evicted > 0 {
            tracing::debug!(
                evicted,
                max_connections,
                "HTTP connections at the limit: closed the stalest"
            );
        }
        tokio::spawn(serve_connection(
            stream,
            tls.clone(),
            router.clone(),
            entry,
            conns.clone(),
            limits,
            shutdown.clone(),
        ));
        // Let the new connections' tasks read their requests before many more are admitted:
        // in a burst of more connections than the cap, one that had not yet been served (a
        // kubelet probe among 2,000 held connections) looked as stale as those holding a slot
        // and was evicted before it made progress (a probe reset, seen once in six runs of
        // agent_http_flood). Not after every connection: each yield waits a whole round of the
        // busy writers, and 200 concurrent scrapers then delayed a probe's accept by 0.4 s.
        since_yield += 1;
        if since_yield >= ADMITS_PER_YIELD {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    // Graceful end: each connection task saw `shutdown` too; wait until they are gone
    // (bounded: a stalled write ends within the stall timeout, an idle wait at once).
    let drained = async {
        while !conns.is_empty() {
            let notified = conns.emptied.notified();
            if conns.is_empty() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    };
    let bound = limits.write_stall_timeout + limits.header_read_timeout;
    let _ = tokio::time::timeout(bound, drained).await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<Tls>>,
    router: Router,
    entry: Arc<ConnEntry>,
    conns: Arc<Connections>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    // The guard sits on the socket, under TLS: progress and stalls are the client's bytes.
    let io = GuardedIo::new(stream, entry.clone(), limits.write_stall_timeout);
    match tls {
        None => serve_io(io, router, &entry, limits, shutdown).await,
        Some(tls) => {
            let handshake = tokio::select! {
                h = tls.accept(io, limits.header_read_timeout) => h,
                () = entry.evict.cancelled() => Err(std::io::ErrorKind::ConnectionAborted.into()),
            };
            match handshake {
                Ok(io) => serve_io(io, router, &entry, limits, shutdown).await,
                Err(e) => {
                    tracing::debug!(error = %crate::error_chain::Chain(&e), "TLS handshake failed");
                }
            }
        }
    }
    conns.remove(entry.id);
}

/// HTTP/1.1 on one (plain or TLS) connection until it ends, is evicted or the edge stops.
async fn serve_io<IO>(
    io: IO,
    router: Router,
    entry: &ConnEntry,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let res = router.oneshot(req.map(axum::body::Body::new)).await;
            Ok::<_, Infallible>(res.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(READ_BUFFER_BYTES)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Evicted: dropping the connection closes the socket at once.
        () = entry.evict.cancelled() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = entry.evict.cancelled() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_connection_idle_longest() {
        let conns = Connections::new();
        let (a, _) = conns.admit(2);
        let (b, _) = conns.admit(2);
        a.last_progress_ms.store(500, Ordering::Relaxed);
        b.last_progress_ms.store(100, Ordering::Relaxed);
        let (c, evicted) = conns.admit(2);
        assert_eq!(evicted, 1);
        assert!(b.evict.is_cancelled(), "b made no progress for longest");
        assert!(!a.evict.is_cancelled());
        assert!(!c.evict.is_cancelled());
        assert_eq!(conns.live().len(), 2);
        conns.remove(a.id);
        conns.remove(c.id);
        assert!(conns.is_empty());
    }

    #[test]
    fn the_connection_cap_stays_under_the_descriptor_limit() {
        let limits = HttpLimits {
            max_connections: usize::MAX,
            ..HttpLimits::default()
        };
        let soft = nofile_limit().unwrap();
        assert!(limits.effective_max_connections() as u64 <= (soft / 2).max(8));
        assert_eq!(
            HttpLimits {
                max_connections: 3,
                ..HttpLimits::default()
            }
            .effective_max_connections(),
            3
        );
    }
}
