//! Serve CLOSE models to people and programs: an HTTP service (axum) with a small web page.
//!
//! A tour:
//! - [`predictor::Predictor`]: what a served model must do (batched prediction returning
//!   beams with log-probs and the nearest training captions); [`run::RunPredictor`]
//!   implements it for trained runs, [`mock::ColorPredictor`] is a model-free stand-in for
//!   server tests and the load test.
//! - [`worker`]: one inference thread per model with dynamic batching of queued requests.
//! - [`request`]: multipart / JSON(base64) request parsing with 4xx JSON errors
//!   ([`api_error::ApiError`]).
//! - [`server`]: routes, upload limit, timeouts, bounded concurrency (503 + `Retry-After`),
//!   graceful shutdown; [`server::RunningServer`] runs one in the background.
//! - The page (`GET /`, `src/page.html`): upload or drop an image, pick task and model, see
//!   the answer, the beams and the nearest training captions.

pub mod api_error;
pub mod mock;
pub mod request;
pub mod server;
pub mod worker;

/// The inference types and the run predictor live in `close_model::infer`, shared with the
/// batch CLI; re-exported here under their old paths.
pub use close_model::infer::{batch, predictor, run};

pub use api_error::ApiError;
pub use predictor::{Beam, DecodeOptions, ModelInfo, Neighbor, Prediction, Predictor, Query, Task};
pub use server::{
    router, serve, serve_blocking, AppState, PredictResponse, RunningServer, ServeConfig,
};
