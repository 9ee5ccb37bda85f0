//! Test knobs, read from the environment; unset (the normal case) they do nothing.
//!
//! - `CLOSE_TEST_SLOWDOWN_MS=N` slows every unit of work down, to show that results do not
//!   depend on the machine's speed: [`step`] sleeps N milliseconds. Training loops call it
//!   once per optimizer step, embedding once per batch.
//! - `CLOSE_TEST_DIE_AT=RANK:STEP` makes data-parallel rank RANK die (abort, as a crash
//!   would) right after optimizer step STEP ([`rank_step_done`]), to test what the other
//!   ranks do and that the run resumes.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable read by [`step`].
pub const SLOWDOWN_ENV: &str = "CLOSE_TEST_SLOWDOWN_MS";

fn delay() -> Option<Duration> {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var(SLOWDOWN_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    })
}

/// One unit of work is done: sleep if the slowdown knob is set.
pub fn step() {
    if let Some(d) = delay() {
        std::thread::sleep(d);
    }
}

/// The environment variable read by [`rank_step_done`].
pub const DIE_AT_ENV: &str = "CLOSE_TEST_DIE_AT";

fn die_at() -> Option<(usize, u64)> {
    static AT: OnceLock<Option<(usize, u64)>> = OnceLock::new();
    *AT.get_or_init(|| {
        let v = std::env::var(DIE_AT_ENV).ok()?;
        let (rank, step) = v.trim().split_once(':')?;
        Some((rank.parse().ok()?, step.parse().ok()?))
    })
}

/// Rank `rank` has finished optimizer step `step` (1-based): abort if the knob says so.
pub fn rank_step_done(rank: usize, step: u64) {
    if die_at() == Some((rank, step)) {
        std::process::abort();
    }
}
