//! A trainable T5 encoder-decoder on candle.
//!
//! - [`T5Config`]: HF `config.json` fields, presets, validation.
//! - [`T5`]: `T5ForConditionalGeneration` with HF parameter names: [`T5::encode`] over
//!   `inputs_embeds` + mask, teacher-forced [`T5::decode`], masked [`T5::loss`],
//!   [`T5::repeat_for_targets`], and [`T5::generate`] (greedy / beam search with a KV cache).
//! - [`weights`]: loading HF safetensors checkpoints with errors naming file and key.
//! - [`tokenizer`]: HF `tokenizer.json` loading and Unigram training for small corpora.

pub mod config;
mod fused;
pub mod generate;
pub mod model;
pub mod tokenizer;
pub mod weights;

pub use config::{Activation, FeedForward, T5Config};
pub use generate::{GenerateConfig, Hypothesis};
pub use model::{masked_cross_entropy, pad_targets, relative_position_buckets, T5};
