//! Progress reporting without printing: library jobs call a [`Progress`] sink; the CLI
//! implements it with indicatif bars, tests use [`NoProgress`].

/// Receives progress of a long job. All methods have no-op defaults.
pub trait Progress: Send + Sync {
    /// A new stage begins with `total` units of work (0 if unknown).
    fn start(&self, _stage: &str, _total: u64) {}
    /// `n` more units are done.
    fn inc(&self, _n: u64) {}
    /// A short status message (e.g. `loss 2.31 lr 3e-4`).
    fn message(&self, _msg: &str) {}
    /// The current stage is finished.
    fn finish(&self) {}
}

/// A sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
