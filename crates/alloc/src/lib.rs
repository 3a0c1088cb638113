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
