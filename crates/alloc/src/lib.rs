//! The global allocator of the `seqtopk` binary and the benchmarks: mimalloc, told to keep the
//! memory it frees.
//!
//! A training step frees and reallocates the same large tensors every step. By default mimalloc
//! returns freed memory to the OS after a delay ("purging"), and the next step takes it back
//! page by page, each page zeroed by the kernel: on the study's model that was ~11 % of the CPU
//! time and 130 k page faults in 12 steps, against 1.7 k without purging. Keeping freed memory
//! trades those for a resident set that stays at the run's peak, which a training run reaches on
//! its first step anyway.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: seqtopk_alloc::MiMalloc = seqtopk_alloc::MiMalloc;
//! fn main() {
//!     seqtopk_alloc::keep_freed_memory();
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (`mimalloc.h`, v2 and v3 alike), which
/// `libmimalloc-sys` does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS (`purge_delay = -1`). Call it first
/// thing in `main`; it only changes an option, so calling it again or late is harmless.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` only stores an integer option; any value is valid for it, and it
    // may be called at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

/// mimalloc that also counts the bytes it has handed out and not yet taken back, and their
/// peak: the memory a program's data occupies, without the allocator's cached pages that the
/// resident set (`VmHWM`) includes. For benchmarks; a relaxed atomic add per call.
pub struct CountingMiMalloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl CountingMiMalloc {
    /// Bytes allocated and not freed now.
    pub fn live_bytes() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Most bytes allocated at once so far.
    pub fn peak_bytes() -> usize {
        PEAK.load(Ordering::Relaxed)
    }

    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to mimalloc's own `GlobalAlloc` with the same arguments; the
// counters only observe sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingMiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mimalloc reads `MIMALLOC_PURGE_DELAY` into the purge-delay option at start-up: a child
    /// started with it set must find that value at index [`MI_OPTION_PURGE_DELAY`], then -1 after
    /// [`keep_freed_memory`].
    #[test]
    #[allow(unsafe_code)]
    fn the_option_index_is_mimallocs_purge_delay() {
        const CHILD: &str = "SEQTOPK_ALLOC_TEST_CHILD";
        // SAFETY: reading an integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(get(), 4321);
            keep_freed_memory();
            assert_eq!(get(), -1);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::the_option_index_is_mimallocs_purge_delay",
            ])
            .env(CHILD, "1")
            .env("MIMALLOC_PURGE_DELAY", "4321")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }
}
