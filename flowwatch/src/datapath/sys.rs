//! The datapath's own system calls, each behind a small safe wrapper (as aya keeps its `sys/`):
//! the `bpf(2)` commands aya 0.14 has no API for (batch lookup and delete of the flow map, and
//! `BPF_PROG_TEST_RUN` for the test hooks), and the socket, poll, mount and interface calls of
//! the kernel edge. Nothing else in `datapath` writes `unsafe` for a system call.
//!
//! Every wrapper returns `io::Result` with the kernel's `errno`; callers decide what an error
//! means (ENOENT ends a batch walk, for instance).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{IterableMap, MapData, PerCpuHashMap};
use flowwatch_common::{FlowCounters, FlowKey};

/// `bpf(2)` commands (`enum bpf_cmd`, linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
#[cfg(feature = "test-hooks")]
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `bpf(2)` with one member of `union bpf_attr`.
///
/// # Safety
/// `attr` must be the member `cmd` expects, laid out as linux/bpf.h lays it out, and every
/// pointer in it must reference memory that stays valid, for the sizes the kernel derives from
/// `attr` and the object it names, for the whole call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: the caller's contract above; the size is the member's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<A>(attr),
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

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

/// Where a batch walk of a hash map resumes: the kernel writes its bucket cursor (4 bytes for
/// hash maps; room for more costs nothing).
pub type BatchCursor = [u64; 8];

/// The kernel's flow map, for the batch calls. Typed by aya, which checked its key and value
/// sizes against [`FlowKey`] and [`FlowCounters`] when it was taken from the object; with the
/// number of possible CPUs (one value per CPU), that is what the buffers must hold.
pub struct FlowMap {
    map: PerCpuHashMap<MapData, FlowKey, FlowCounters>,
    cpus: usize,
}

impl FlowMap {
    pub fn new(map: PerCpuHashMap<MapData, FlowKey, FlowCounters>) -> io::Result<FlowMap> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(FlowMap {
            map,
            cpus: cpus.max(1),
        })
    }

    /// Values per key: one per possible CPU.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.map.map().fd().as_fd()
    }

    /// `BPF_MAP_LOOKUP_BATCH`: copies up to `keys.len()` entries (and `values`, `cpus()` per
    /// key) starting where `resume` left off (the start of the map when `None`), and writes the
    /// cursor of the next batch to `next`. Returns the kernel's entry count and the call's
    /// result; the count is meaningful on success and on ENOENT (the end of the map) only.
    pub fn lookup_batch(
        &self,
        resume: Option<&BatchCursor>,
        next: &mut BatchCursor,
        keys: &mut [FlowKey],
        values: &mut [FlowCounters],
    ) -> (usize, io::Result<()>) {
        let room = keys.len().min(values.len() / self.cpus);
        let count = u32::try_from(room).unwrap_or(u32::MAX);
        let mut attr = BatchAttr {
            in_batch: resume.map_or(0, |c| c.as_ptr() as u64),
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: self.fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: a `batch` attr for a per-CPU hash map whose key and value sizes are those of
        // FlowKey and FlowCounters (checked by aya): the kernel writes at most `count` keys and
        // `count * cpus` values, which `keys` and `values` hold; the cursors are 64 bytes, more
        // than a hash map's; all live across the call.
        let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        ((attr.count as usize).min(room), result)
    }

    /// `BPF_MAP_DELETE_BATCH`: deletes `keys` in order, stopping at the first one that is not
    /// in the map (ENOENT). Returns how many were deleted before it stopped, and the result.
    pub fn delete_batch(&self, keys: &[FlowKey]) -> (usize, io::Result<()>) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            map_fd: self.fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: a `batch` attr whose `keys` points to `count` FlowKeys, the map's key size;
        // the kernel only reads them.
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        ((attr.count as usize).min(keys.len()), result)
    }
}

/// The `test` member of `union bpf_attr` (linux/bpf.h), zero-padded to its full size.
#[cfg(feature = "test-hooks")]
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    padding: u32,
}

/// What `BPF_PROG_TEST_RUN` reports.
#[cfg(feature = "test-hooks")]
pub struct TestRun {
    /// The program's return value (its verdict).
    pub retval: u32,
    /// Mean run time of one run, in nanoseconds.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN`: the kernel runs `program` on `data` `repeat` times in a row.
#[cfg(feature = "test-hooks")]
pub fn prog_test_run(program: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: u32::try_from(data.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: a `test` attr that outlives the call; the kernel only reads `data_size_in` bytes
    // of `data` (data_out and the context are null).
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// `SO_RCVTIMEO`: a blocking receive on `socket` gives up after `timeout`.
pub fn set_receive_timeout(socket: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().cast_signed()),
    };
    // SAFETY: setsockopt reads a timeval of the size given, from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` is readable or `timeout` passed. An error or an interruption only ends the
/// wait early, so there is nothing to report: the caller looks at what it waited for anyway.
/// `fd` may be closed meanwhile (the kernel then answers POLLNVAL at once).
pub fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, live across the call.
    unsafe { libc::poll(&raw mut poll, 1, millis) };
}

/// Mounts tracefs at `target`.
pub fn mount_tracefs(target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_encoded_bytes())?;
    let fstype = c"tracefs";
    let source = c"nodev";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The interfaces of the calling thread's network namespace (if_nameindex(3)), name -> ifindex.
pub fn interface_indexes() -> io::Result<BTreeMap<String, u32>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry (or null on error),
    // read here before it is freed once below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = BTreeMap::new();
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.insert(name, (*cur).if_index);
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}
