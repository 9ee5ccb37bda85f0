//! Shared foundation of close-rs.
//!
//! Every library crate of the workspace (`close-data`, `close-metrics`, `close-clip`,
//! `close-t5`, `close-model`) uses the one [`Error`] type defined here, the differentiable
//! ops in [`ops`] (candle's fused softmax / layer-norm / rms-norm kernels have no backward
//! pass), the [`optim::AdamW`] optimizer, atomic file writes in [`io`], and the
//! [`progress::Progress`] callback through which long jobs report progress without printing.

#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod bench;
pub mod check;
pub mod device;
pub mod dist;
pub mod error;
pub mod fused;
pub mod init;
pub mod io;
pub mod matmul;
pub mod ops;
pub mod optim;
pub mod pace;
pub mod plot;
pub mod progress;
pub mod simd;
pub mod step_losses;
pub mod threads;

pub use device::DeviceSpec;
pub use error::{Error, Result};
