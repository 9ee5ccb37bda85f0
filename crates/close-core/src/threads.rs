//! Thread settings for close-rs binaries (the `close` CLI and the benches).
//!
//! candle 0.11 runs its element-wise CPU ops on its own pool of spinning worker threads
//! (`CANDLE_NUM_THREADS`, default: the physical cores), beside rayon's pool that gemm and
//! our fused kernels use. On a 2-core machine the spinning workers compete with the threads
//! doing the work (and two trainings sharing one spinning pool wait on each other's
//! barriers); the numbers are in `docs/performance.md`. Results are the same bit for bit.
//!
//! Besides, when `RAYON_NUM_THREADS` is unset candle re-counts the physical cores from
//! `/proc/cpuinfo` on every matmul. [`init`] therefore fixes both at process start:
//!
//! ```ignore
//! fn main() {
//!     close_core::threads::init();
//!     // ...
//! }
//! ```

/// Call at the very start of `main`, before any thread exists. Values already in the
/// environment win: `CANDLE_NUM_THREADS` (default here: 1, i.e. candle's element-wise
/// ops run on the calling thread) and `RAYON_NUM_THREADS` (default here: the logical cores,
/// rayon's own default, written out so candle reads it instead of `/proc/cpuinfo`).
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Sound: called before other threads start (the caller's contract), so nothing reads
        // the environment concurrently.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
