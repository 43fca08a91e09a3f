//! The agent's settings for glibc's malloc (the allocator of the distroless image).
//!
//! Measured with `benches/http_flood.rs` (docs/benchmarks.md): under floods of scrapers the
//! agent's heap held 65 MiB free for 10 MiB in use, and RSS reached 3.5x the idle figure. Two
//! defaults of glibc cause it:
//!
//! - the mmap threshold is dynamic: once a large block (an 8 MiB exposition) is freed, blocks up
//!   to that size are carved from the heap instead of mapped, and a freed 8 MiB block in the
//!   middle of a heap is kept, not returned to the kernel;
//! - every thread that allocates under contention gets an arena of its own (up to 8 per core),
//!   each keeping its own free memory: the exposition is encoded on the blocking pool's
//!   threads, which come and go.
//!
//! So: blocks of [`MMAP_THRESHOLD`] and more are always mapped (freeing one unmaps it at once:
//! the memory of an encoding nobody holds any more leaves RSS), and the arenas are few. Same as
//! `MALLOC_MMAP_THRESHOLD_=262144 MALLOC_ARENA_MAX=2` in the environment, which the image does
//! not need then.

/// Blocks at least this large are mapped and unmapped, never kept in a heap (glibc's default is
/// 128 KiB, raised automatically up to 32 MiB, which is what this disables).
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Most malloc arenas (glibc's default is 8 per core).
pub const ARENA_MAX: usize = 2;

/// Applies the settings (before the runtime starts its threads). `false` when the allocator is
/// not glibc's, or it refused a setting.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether glibc mapped the block at `p` (the IS_MMAPPED bit of the chunk's size word).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn is_mapped(p: *mut libc::c_void) -> bool {
        // SAFETY: `p` is a live block from malloc; its chunk header precedes it.
        unsafe { *(p as *const usize).sub(1) & 2 != 0 }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_stay_mapped_after_a_larger_one_was_freed() {
        assert!(tune());
        // SAFETY: plain malloc/free of blocks this test owns.
        unsafe {
            // Without the fixed threshold, freeing this raises glibc's threshold to 8 MiB...
            let big = libc::malloc(8 << 20);
            assert!(is_mapped(big));
            libc::free(big);
            // ...and this would come from a heap, to be kept there when freed.
            let block = libc::malloc(1 << 20);
            assert!(!block.is_null());
            let mapped = is_mapped(block);
            libc::free(block);
            assert!(mapped, "a 1 MiB block was carved from a heap, not mapped");
        }
    }
}
