//! A test knob that slows every unit of work down, to show that results do not depend on
//! the machine's speed: with `CLOSE_TEST_SLOWDOWN_MS=N` in the environment, [`step`] sleeps
//! N milliseconds. Training loops call it once per optimizer step, embedding once per
//! batch. Unset (the normal case) it does nothing.

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
