//! Keeping freed activation memory in the process (glibc only).
//!
//! libtorch allocates every intermediate tensor with `malloc`. glibc serves blocks above its
//! mmap threshold with fresh `mmap`s and gives them back on `free`, and trims the heap top
//! back to the OS; either way the next forward pass faults the same pages in again and the
//! kernel zeroes them. A prefill allocates hundreds of multi-megabyte activations, and the
//! page faults cost about a third of its time on a 2-core machine. With mmap off and trimming
//! off, freed blocks stay in the heap and are reused; the process keeps its peak footprint,
//! which for a model server is what it needs again for the next batch anyway.

/// Tunes glibc's allocator once per process (no-op on other platforms).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::tune_once();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;
    use std::sync::Once;

    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_TOP_PAD: c_int = -2;
    const M_MMAP_MAX: c_int = -4;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn tune_once() {
        static TUNED: Once = Once::new();
        TUNED.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; glibc serialises it against
            // concurrent allocation. A rejected value (return 0) leaves the default in place.
            unsafe {
                mallopt(M_MMAP_MAX, 0);
                mallopt(M_TRIM_THRESHOLD, c_int::MAX);
                mallopt(M_TOP_PAD, 64 << 20);
            }
        });
    }
}
