//! Reading and deleting the per-CPU flow map in batches (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`): one system call per few thousand flows instead of two per flow
//! (next key, lookup). aya 0.14 has no batch API, so this speaks `bpf(2)` directly.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use flowwatch_common::{FlowCounters, FlowKey};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Flows fetched per system call.
const CHUNK: usize = 4096;

pub struct FlowMapBatch {
    fd: OwnedFd,
    cpus: usize,
    keys: Vec<FlowKey>,
    values: Vec<FlowCounters>,
}

impl FlowMapBatch {
    pub fn new(fd: OwnedFd, cpus: usize) -> FlowMapBatch {
        FlowMapBatch {
            fd,
            cpus: cpus.max(1),
            keys: vec![FlowKey::default(); CHUNK],
            values: vec![FlowCounters::default(); CHUNK * cpus.max(1)],
        }
    }

    /// Calls `f` with every flow's key and its per-CPU values. Returns the number of flows.
    pub fn for_each(&mut self, mut f: impl FnMut(&FlowKey, &[FlowCounters])) -> io::Result<usize> {
        // Hash maps use a 4-byte bucket cursor; room for more costs nothing.
        let (mut cursor_in, mut cursor_out) = ([0u64; 8], [0u64; 8]);
        let mut first = true;
        let mut total = 0;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { cursor_in.as_ptr() as u64 },
                out_batch: cursor_out.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: CHUNK as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            // `count` is the number of entries copied only on success or ENOENT; other errors
            // may return before the kernel rewrites it (it would still say CHUNK).
            let copied = match &result {
                Ok(()) => true,
                Err(e) => e.raw_os_error() == Some(libc::ENOENT),
            };
            let got = if copied {
                (attr.count as usize).min(CHUNK)
            } else {
                0
            };
            for i in 0..got {
                f(
                    &self.keys[i],
                    &self.values[i * self.cpus..(i + 1) * self.cpus],
                );
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
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                count: rest.len().min(u32::MAX as usize) as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
            match result {
                Ok(()) => return Ok(deleted + (attr.count as usize).min(rest.len())),
                // The key after the deleted ones is gone already (the kernel stops there).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let done = (attr.count as usize).min(rest.len());
                    deleted += done;
                    rest = rest.get(done + 1..).unwrap_or_default();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a properly laid out bpf_attr.batch whose pointers reference live buffers
    // of the sizes given in `count` (keys, values) for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<BatchAttr>(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
