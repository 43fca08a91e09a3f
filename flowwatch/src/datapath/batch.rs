//! Reading and deleting the per-CPU flow map in batches (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`): one system call per few thousand flows instead of two per flow
//! (next key, lookup). aya 0.14 has no batch API, so this speaks `bpf(2)` directly, through
//! [`sys::FlowMap`].

use std::io;

use flowwatch_common::{FlowCounters, FlowKey};

use super::sys::{self, BatchCursor};

/// Flows fetched per system call.
const CHUNK: usize = 4096;

pub struct FlowMapBatch {
    map: sys::FlowMap,
    keys: Vec<FlowKey>,
    values: Vec<FlowCounters>,
}

impl FlowMapBatch {
    pub fn new(map: sys::FlowMap) -> FlowMapBatch {
        let cpus = map.cpus();
        FlowMapBatch {
            map,
            keys: vec![FlowKey::default(); CHUNK],
            values: vec![FlowCounters::default(); CHUNK * cpus],
        }
    }

    /// Calls `f` with every flow's key and its per-CPU values. Returns the number of flows.
    pub fn for_each(&mut self, mut f: impl FnMut(&FlowKey, &[FlowCounters])) -> io::Result<usize> {
        let cpus = self.map.cpus();
        let (mut cursor_in, mut cursor_out): (BatchCursor, BatchCursor) = ([0; 8], [0; 8]);
        let mut first = true;
        let mut total = 0;
        loop {
            let resume = if first { None } else { Some(&cursor_in) };
            let (count, result) =
                self.map
                    .lookup_batch(resume, &mut cursor_out, &mut self.keys, &mut self.values);
            // `count` is the number of entries copied only on success or ENOENT; other errors
            // may return before the kernel rewrites it (it would still say CHUNK).
            let copied = match &result {
                Ok(()) => true,
                Err(e) => e.raw_os_error() == Some(libc::ENOENT),
            };
            let got = if copied { count } else { 0 };
            for i in 0..got {
                f(&self.keys[i], &self.values[i * cpus..(i + 1) * cpus]);
            }
            total += got;
            match result {
                Ok(()) => {}
                // ENOENT: the walk reached the end (the last batch may still carry entries).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
                Err(e) => return Err(e),
            }
            cursor_in = cursor_out;
            first = false;
        }
    }

    /// Deletes `keys`; keys that are not in the map are skipped. Returns how many were deleted.
    pub fn delete(&mut self, keys: &[FlowKey]) -> io::Result<usize> {
        let mut deleted = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            match self.map.delete_batch(rest) {
                (done, Ok(())) => return Ok(deleted + done),
                // The key after the deleted ones is gone already (the kernel stops there).
                (done, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                    deleted += done;
                    rest = rest.get(done + 1..).unwrap_or_default();
                }
                (_, Err(e)) => return Err(e),
            }
        }
        Ok(deleted)
    }
}
