//! A trainable T5 encoder-decoder on candle (port of HF transformers'
//! `T5ForConditionalGeneration`, proven against it by `tests/parity.rs`).
//!
//! - [`T5Config`]: HF `config.json` fields, presets (`tiny`, `t5-small`, `t5-base`), validation.
//! - [`T5`]: HF parameter names (`shared.weight`, `encoder.block.0.layer.0.SelfAttention.q.weight`,
//!   ...): [`T5::encode`] over `inputs_embeds` + mask, teacher-forced [`T5::decode`], masked
//!   [`T5::loss`], [`T5::repeat_for_targets`], and [`T5::generate`] (greedy / beam search with a
//!   KV cache, batched).
//! - [`weights`]: loading HF safetensors checkpoints (errors name file and key), seeded init.
//! - [`tokenizer`]: HF `tokenizer.json` loading and BPE training for small corpora.
//!
//! Training uses fused CPU kernels with hand-written backward passes (softmax, RMS norm,
//! label NLL; composed `close_core::ops` on other devices), so every parameter trains.
//!
//! Intended deviations / notes:
//! - `tie_word_embeddings` keeps its transformers-4 meaning (false = separate `lm_head`, no
//!   `d_model^-0.5` scaling), as in real v1.1 / flan-t5 checkpoints. transformers 5 ties the
//!   head to `shared` regardless; the parity fixture untied it explicitly.
//! - Sequence lengths above `n_positions` (512 in HF configs) are rejected, not extrapolated.
//! - Beam search reproduces transformers' `early_stopping=False` behaviour; the default length
//!   penalty is 0 (summed log-prob, as CLOSE decodes), not transformers' 1.0.

pub mod config;
mod fused;
pub mod generate;
pub mod model;
pub mod tokenizer;
pub mod weights;

pub use config::{Activation, FeedForward, T5Config};
pub use generate::{GenerateConfig, Hypothesis};
pub use model::{masked_cross_entropy, pad_targets, relative_position_buckets, repeat_rows, T5};
