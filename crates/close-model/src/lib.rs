//! The CLOSE model and trainer (Gu, Clark & Kembhavi, *I Can't Believe There's No Images!
//! Learning Visual Tasks Using only Language Supervision*, ICCV 2023; reference code
//! allenai/close): train a T5 on CLIP **text** vectors of captions plus Gaussian noise, then
//! feed CLIP **image** vectors at test time.
//!
//! # A tour
//!
//! - [`task`]: the tasks (`s-cap`, `m-cap`, `vqa`, `evqa`, `ve`, `news`, `style`) and how
//!   their training / evaluation examples are built from the standard dataset files
//!   ([`task::TaskData::load`] over a [`task::DataPaths`]); `TrainOn::Images` gives the
//!   image-trained upper bound with the same code.
//! - [`embeddings`]: where CLIP vectors come from — the [`embeddings::Embeddings`] trait,
//!   implemented by `close_clip::cache::EmbeddingCache` and the in-memory
//!   [`embeddings::MemEmbeddings`].
//! - [`adapter`]: what happens to a text vector in training (`none`, `noise`, `mean-shift`,
//!   `cov`, `linear`: one [`adapter::LanguageAdapter`] type each) and fitting the statistics ourselves ([`adapter::fit_adapter`]) with
//!   the f64 linear algebra of [`linalg`] (Cholesky, least squares, covariances).
//! - [`model`]: [`model::CloseModel`] — `prefix.lin` (Linear(clip_dim, n_prefix·d_model))
//!   → `[B, n_prefix, D]` ++ T5 embeddings of the extra text, masked T5 encoder, several
//!   targets per input, generation.
//! - [`config`]: [`config::TrainConfig`] with the reference preset
//!   ([`config::TrainConfig::reference`]) and a small from-scratch preset for the shapes world
//!   ([`config::TrainConfig::small`]).
//! - [`train`]: [`train::train`] → [`train::RunSummary`], step by step in
//!   [`train::Trainer`] (AdamW, warmup + linear decay from
//!   [`schedule`], fresh seeded noise per batch, epochs with a cap, per-epoch validation with
//!   the task metric, best + last checkpoints, `--resume`, JSONL log, loss PNG via `close_core::plot`),
//!   and [`train::evaluate`] of a loaded run on val / test images.
//! - [`eval`]: batched prediction, scoring with `close-metrics`, standard results files.
//! - [`run`]: the run-dir layout and [`run::Run`] (load a run, [`run::Run::predict`] from
//!   image vectors).
//! - [`infer`]: a run with its CLIP on image files ([`infer::run::RunPredictor`], batch
//!   inference with bad files skipped and reported) — what `close caption|vqa|entail`,
//!   `close predict` and `close serve` call.
//! - [`import`]: official checkpoints (`model.json` + `state-ep8.pth`) into a run dir.
//! - [`hub`]: `--clip` / `--t5` as a local dir or a hub id (HF cache first, then download).
//!
//! # Library use (what `close train` / `close demo` do)
//!
//! ```no_run
//! # fn main() -> close_core::Result<()> {
//! use close_model::{config::TrainConfig, run::Run, task::{DataPaths, Task, TaskData, TrainOn}};
//! let dev = candle_core::Device::Cpu;
//! let data = TaskData::load(Task::SCap, TrainOn::Text, &DataPaths::new("world"))?;
//! let texts = close_clip::cache::EmbeddingCache::open("cache/texts")?;
//! let images = close_clip::cache::EmbeddingCache::open("cache/images")?;
//! let mut cfg = TrainConfig::small(Task::SCap);
//! cfg.adapter.noise = 0.08;
//! let p = close_core::progress::NoProgress;
//! let inputs = close_model::train::TrainInputs { data: &data, texts: &texts, images: &images };
//! let summary = close_model::train::train(&cfg, inputs, "runs/scap".as_ref(), false, &dev, &p)?;
//! let run = Run::load(&summary.run_dir, &dev)?;
//! let test = close_model::train::evaluate(&run, &data, "test", &images, &run.generate_config(None, None), None, &p)?;
//! println!("test {} = {}", test.primary_name, test.primary);
//! # Ok(()) }
//! ```
//!
//! # Deviations from the reference (intended)
//!
//! - The T5 encoder gets the attention mask (the reference passes none; opt back in with
//!   `reference_encoder_mask_quirk`).
//! - The learning rate really decays (the reference's schedule steps per batch against an
//!   example count, so it stays ~constant); optional warmup.
//! - Text vectors come from a cache of unit-normalized vectors, so VQA's caption average is a
//!   mean of **unit** caption vectors (the reference averages raw CLIP outputs); CLIP text
//!   norms vary little, so the direction changes little.
//! - Adapter statistics are fitted here (the reference ships pickles only); `cov` can also be
//!   fitted without pairs as Σ_image + Σ_text.
//! - VE is scored (the reference's evaluator is a stub); VQA uses the official metric.

pub mod adapter;
pub mod config;
pub mod embeddings;
pub mod eval;
pub mod hub;
pub mod import;
pub mod infer;
pub mod linalg;
pub mod model;
pub mod run;
pub mod schedule;
pub mod task;
pub mod train;
