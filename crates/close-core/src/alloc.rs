//! The allocator for close-rs binaries (the `close` CLI and the benches).
//!
//! Training and embedding allocate and free many large tensors (T5-small's logits alone are
//! 41 MB per step). glibc's malloc returns blocks this large to the OS on every free and
//! maps fresh zero pages on the next allocation, so each step pays page faults and, with
//! several threads, TLB shootdowns; mimalloc keeping freed memory avoids both ([`init`];
//! the train-step numbers are in `docs/performance.md`).
//!
//! [`init`] also turns transparent huge pages off for the process. mimalloc asks for them
//! (`MADV_HUGEPAGE`), and on virtual machines the first touch of each 2 MiB page can stall
//! for milliseconds, which made short commands several times slower than their steady
//! state (`docs/performance.md`). `CLOSE_THP=1` keeps them on.
//!
//! A library cannot choose the process allocator, so binaries opt in:
//!
//! ```ignore
//! close_core::global_allocator!();
//! fn main() {
//!     close_core::alloc::init();
//!     // ...
//! }
//! ```

pub use mimalloc::MiMalloc;

/// Declares mimalloc as the `#[global_allocator]` of the binary that invokes it.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static CLOSE_GLOBAL_ALLOCATOR: $crate::alloc::MiMalloc = $crate::alloc::MiMalloc;
    };
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory for reuse instead of returning it to the OS after 10 ms (mimalloc's
/// default). The process keeps its peak footprint, as PyTorch's caching allocators do.
/// Call at the start of `main`; `MIMALLOC_PURGE_DELAY` in the environment still wins.
pub fn init() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide integer option; mimalloc reads it atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os("CLOSE_THP").is_none_or(|v| v != "1") {
        // SAFETY: integer arguments; the flag applies to this process's future page faults,
        // including those in regions already advised for huge pages.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_is_the_option_we_think() {
        super::init();
        // SAFETY: reads a process-wide option.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, -1);
        // mimalloc's default for the purge delay is 10 ms; no other option here is -1.
        // SAFETY: reads a process-wide option.
        let eager_commit_delay = unsafe { libmimalloc_sys::mi_option_get(14) };
        assert_ne!(eager_commit_delay, -1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_after_init() {
        super::init();
        // SAFETY: reads this process's flag.
        let off = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(off, 1);
    }
}
