//! The [`Predictor`] trait: what the server (and the batch CLI) needs from a model.
//!
//! One predictor serves one model (one trained run) for one [`Task`]. The server owns each
//! predictor on its own worker thread and hands it batches of [`Query`]s; a predictor never
//! sees HTTP. [`super::run::RunPredictor`] implements it for trained CLOSE runs,
//! `close_serve::mock::ColorPredictor` is a deterministic stand-in for server tests and the load
//! test.

use serde::{Deserialize, Serialize};

use close_core::Result;

/// The task a model was trained for; it decides which endpoint serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Image → caption (`POST /v1/caption`).
    Caption,
    /// Image + question → answer (`POST /v1/vqa`).
    Vqa,
    /// Image + hypothesis → entailment / neutral / contradiction (`POST /v1/entail`).
    Entail,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Caption => "caption",
            Task::Vqa => "vqa",
            Task::Entail => "entail",
        }
    }

    /// Name of the text field the task takes (`None` for captioning).
    pub fn text_field(self) -> Option<&'static str> {
        match self {
            Task::Caption => None,
            Task::Vqa => Some("question"),
            Task::Entail => Some("hypothesis"),
        }
    }

    /// Parse `caption`, `vqa` or `entail`.
    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "caption" => Some(Task::Caption),
            "vqa" => Some(Task::Vqa),
            "entail" => Some(Task::Entail),
            _ => None,
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client may know about a served model (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Unique name used in requests (`"model": "..."`), e.g. the run dir's name.
    pub name: String,
    pub task: Task,
    /// One line for people (e.g. the run's config summary).
    pub description: String,
    /// Default decoding settings of the model.
    pub defaults: DecodeOptions,
    /// Upper bound for `max_tokens` (the decoder's position limit).
    pub max_tokens_limit: usize,
    /// Number of training captions available for nearest-caption lookup (0 = none).
    pub corpus_size: usize,
}

/// Decoding settings of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecodeOptions {
    /// Beam width (1 = greedy).
    pub beams: usize,
    /// Maximum generated tokens.
    pub max_tokens: usize,
    /// How many nearest training captions to return (0 = none).
    pub neighbors: usize,
}

/// One input: a decoded RGB image and, for VQA / entailment, the question / hypothesis.
#[derive(Debug, Clone)]
pub struct Query {
    pub image: image::RgbImage,
    pub text: Option<String>,
}

/// One decoded sequence with its summed log-probability.
pub use crate::run::Beam;

/// A training caption close to the image in CLIP space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    pub caption: String,
    /// Cosine between the image's and the caption's unit CLIP vectors.
    pub cosine: f32,
}

/// The model's output for one query: beams best first (the answer is `beams[0]`) and the
/// nearest training captions, most similar first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub beams: Vec<Beam>,
    pub neighbors: Vec<Neighbor>,
}

impl Prediction {
    /// The best beam's text (empty if the model produced no beam).
    pub fn answer(&self) -> &str {
        self.beams.first().map(|b| b.text.as_str()).unwrap_or("")
    }

    /// The best beam's log-probability (`-inf` if none).
    pub fn logprob(&self) -> f32 {
        self.beams
            .first()
            .map(|b| b.logprob)
            .unwrap_or(f32::NEG_INFINITY)
    }
}

/// A served model. Implementations run on a dedicated worker thread, so they may block and
/// use all cores; they must not panic on any image or text (return an error instead).
pub trait Predictor: Send {
    /// Name, task and defaults of the model.
    fn info(&self) -> ModelInfo;

    /// Predict for a batch of queries (all with the same options). Returns one prediction
    /// per query, in order. For [`Task::Vqa`] and [`Task::Entail`] every query has `text`.
    fn predict(&mut self, queries: &[Query], opts: &DecodeOptions) -> Result<Vec<Prediction>>;
}
