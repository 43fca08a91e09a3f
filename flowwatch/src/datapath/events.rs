//! The socket-event ring buffer, emptied by a thread of its own.
//!
//! The agent's main loop takes events every 100 ms, but a poll of a busy node's flow map keeps
//! it away for longer, and longer still when the node's CPUs are saturated and the agent only
//! gets its share of them: in `bench capture` with the CPUs saturated, the kernel's 4 MiB ring
//! (about 0.4 s of 40,000 connections/s) overflowed while the main loop was busy with a poll.
//! This reader moves records out of the ring into a queue the main loop takes, so the ring stays
//! nearly empty however long a poll takes. It comes by every 10 ms while events flow (every
//! 100 ms when none do), and at once when the kernel wakes it: every event submitted while the
//! ring is at least half full comes with a wakeup, so a burst is unlikely to fill the ring
//! between two visits (unless the reader itself is scheduled late, or the queue is full).
//!
//! The queue is bounded and allocated once (`limit` bytes): when it is full, the reader leaves
//! further records in the ring, which then overflows as before. Overload is still counted in
//! one place, the kernel's `ringbuf_full`, and the agent's memory stays bounded.
//!
//! Order matters (a socket's close must not overtake its establishment), so the reader moves a
//! batch into the queue while it holds the ring, and [`EventReader::drain`] takes the queue and
//! then the ring under the same lock.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use crate::sync::lock;

/// How often the reader looks at the ring while events flow, and while none do.
const BUSY_INTERVAL: Duration = Duration::from_millis(10);
const IDLE_INTERVAL: Duration = Duration::from_millis(100);

/// Each queued record is its length (`u16`, native order) and its bytes, at most
/// `MAX_RECORD` of them: an event is 56 bytes, and a longer record is not one of ours (it is
/// queued cut, and decoded or reported undecodable like any other).
const LENGTH_PREFIX: usize = 2;
const MAX_RECORD: usize = 64;

struct Shared {
    ring: Mutex<RingBuf<MapData>>,
    queue: Mutex<Vec<u8>>,
    limit: usize,
    stop: AtomicBool,
}

/// Reads the ring buffer on its own thread; see the module doc.
pub struct EventReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EventReader {
    /// Starts the reader thread; `limit` bounds the queue, in bytes.
    pub fn start(ring: RingBuf<MapData>, limit: usize) -> std::io::Result<EventReader> {
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            // Allocated once: the queue never holds more than `limit` bytes.
            queue: Mutex::new(Vec::with_capacity(limit)),
            limit,
            stop: AtomicBool::new(false),
        });
        let reader = shared.clone();
        // The ring outlives the thread: the thread's `Arc` keeps it.
        let ring_fd = lock(&shared.ring).as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("flowwatch-events".into())
            .spawn(move || {
                while !reader.stop.load(Ordering::Relaxed) {
                    let (moved, queue_full) = reader.move_to_queue();
                    let interval = if moved > 0 {
                        BUSY_INTERVAL
                    } else {
                        IDLE_INTERVAL
                    };
                    if queue_full {
                        // The ring still holds records, so it would poll readable at once.
                        std::thread::sleep(BUSY_INTERVAL);
                    } else {
                        wait_readable(ring_fd, interval);
                    }
                }
            })?;
        Ok(EventReader {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands every record the kernel has written so far to `each`, oldest first.
    pub fn drain(&self, mut each: impl FnMut(&[u8])) {
        // Same lock order as the reader (ring, then queue); it waits on the ring meanwhile.
        let mut ring = lock(&self.shared.ring);
        let mut queue = lock(&self.shared.queue);
        for_each_record(&queue, &mut each);
        queue.clear(); // keeps its allocation for the next batches
        while let Some(record) = ring.next() {
            each(&record);
        }
    }
}

impl Shared {
    /// Moves what the ring holds into the queue, up to the queue's limit; returns how many
    /// records it moved, and whether it stopped at the limit.
    fn move_to_queue(&self) -> (usize, bool) {
        let mut ring = lock(&self.ring);
        let mut queue = lock(&self.queue);
        let mut moved = 0;
        while queue.len() + LENGTH_PREFIX + MAX_RECORD <= self.limit {
            let Some(record) = ring.next() else {
                return (moved, false);
            };
            push_record(&mut queue, &record);
            moved += 1;
        }
        (moved, true)
    }
}

/// Waits until the ring has data and the kernel signalled it (an event submitted with a
/// wakeup), or `timeout`. The ring is empty when this is called, so it does not return at once.
fn wait_readable(fd: RawFd, timeout: Duration) {
    super::sys::wait_readable(fd, timeout);
}

/// Appends one record to the queue, cut to `MAX_RECORD` bytes.
fn push_record(queue: &mut Vec<u8>, record: &[u8]) {
    let len = record.len().min(MAX_RECORD);
    queue.extend_from_slice(&(len as u16).to_ne_bytes());
    queue.extend_from_slice(&record[..len]);
}

/// Hands each record of a queue built by [`push_record`] to `each`, in order.
fn for_each_record(mut queue: &[u8], each: &mut impl FnMut(&[u8])) {
    while queue.len() >= LENGTH_PREFIX {
        let len = u16::from_ne_bytes([queue[0], queue[1]]) as usize;
        let end = (LENGTH_PREFIX + len).min(queue.len());
        each(&queue[LENGTH_PREFIX..end]);
        queue = &queue[end..];
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(records: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut queue = Vec::new();
        for r in records {
            push_record(&mut queue, r);
        }
        let mut out = Vec::new();
        for_each_record(&queue, &mut |r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn records_come_back_whole_and_in_order() {
        let event = [7u8; 56];
        let out = round_trip(&[&event, &[], &[1, 2, 3], &event]);
        assert_eq!(
            out,
            vec![event.to_vec(), vec![], vec![1, 2, 3], event.to_vec()]
        );
    }

    #[test]
    fn a_record_longer_than_an_event_comes_back_cut_and_the_rest_intact() {
        let long = vec![9u8; 1_000];
        let out = round_trip(&[&long, &[4, 5]]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], vec![9u8; MAX_RECORD]);
        assert_eq!(out[1], vec![4, 5]);
    }
}
