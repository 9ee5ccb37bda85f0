//! Inference on image files with a trained run, shared by `close caption|vqa|entail`,
//! `close predict` and `close serve`: decode → CLIP image vectors → prefix → beam search,
//! with unreadable images skipped and reported in one place.
//!
//! - [`predictor`]: what a served model does ([`predictor::Predictor`]: batched
//!   prediction with beams, log-probs and the nearest training captions) and its types.
//! - [`run`]: [`run::RunPredictor`], a trained run with its CLIP (and caption corpus), and
//!   [`run::clip_dir`], the CLIP a run is used with.
//! - [`batch`]: folders expanded to image files, predicted batch by batch.

/// The decoded image type the predictors take.
pub use image::RgbImage;

pub mod batch;
pub mod predictor;
pub mod run;
