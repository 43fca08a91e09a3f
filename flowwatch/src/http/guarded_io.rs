//! A client socket that notes each byte of progress (for the eviction of the stalest
//! connection) and gives up on a write that makes no progress for too long (a client that
//! stopped reading would otherwise hold its response, megabytes of exposition, forever).
//!
//! It also yields to the other connections after each [`WRITE_QUANTUM`] written: a socket that
//! takes megabytes at once (loopback, a fast scraper) would otherwise keep the runtime's thread
//! copying for as long as its buffer allows, and 200 of them delay a `/healthz` by seconds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::server::ConnEntry;

/// Bytes a connection writes before letting the other tasks of the runtime run.
pub const WRITE_QUANTUM: usize = 64 * 1024;

pub(super) struct GuardedIo<IO> {
    inner: IO,
    /// Written since this connection last yielded.
    written_since_yield: usize,
    entry: Arc<ConnEntry>,
    stall_timeout: Duration,
    /// Running while a write waits for the client to make room; cleared by any progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<IO> GuardedIo<IO> {
    pub(super) fn new(inner: IO, entry: Arc<ConnEntry>, stall_timeout: Duration) -> Self {
        GuardedIo {
            inner,
            written_since_yield: 0,
            entry,
            stall_timeout,
            stall: None,
        }
    }

    /// After a quantum, gives the runtime back (woken at once: not a stall).
    fn take_turn(&mut self, cx: &mut Context<'_>) -> bool {
        if self.written_since_yield < WRITE_QUANTUM {
            return false;
        }
        self.written_since_yield = 0;
        cx.waker().wake_by_ref();
        true
    }

    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                self.written_since_yield += n;
                self.entry.touch();
            }
        }
    }

    /// A write that returned `Pending` arms the stall timer (once); its expiry fails the
    /// write, which ends the connection. Progress disarms it.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = self.stall_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    self.stall = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {timeout:?}"),
                    )));
                }
                Poll::Pending
            }
            ready @ Poll::Ready(_) => {
                self.stall = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.entry.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.take_turn(cx) {
            return Poll::Pending;
        }
        let limit = data.len().min(WRITE_QUANTUM);
        let polled = Pin::new(&mut self.inner).poll_write(cx, &data[..limit]);
        self.wrote(&polled);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.take_turn(cx) {
            return Poll::Pending;
        }
        // At most a quantum per call: the slices up to it, and the part of the one crossing it.
        let mut total = 0;
        let mut bounded: Vec<io::IoSlice<'_>> = Vec::with_capacity(bufs.len());
        for b in bufs {
            if total >= WRITE_QUANTUM {
                break;
            }
            let take = b.len().min(WRITE_QUANTUM - total);
            bounded.push(io::IoSlice::new(&b[..take]));
            total += take;
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, &bounded);
        self.wrote(&polled);
        self.guard(cx, polled)
    }

    /// Forwarded: hyper then queues the shared exposition `Bytes` as they are instead of
    /// copying them into a per-connection buffer.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}
