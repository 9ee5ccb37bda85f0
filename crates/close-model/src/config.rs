//! The training configuration: everything a run needs, saved resolved as `config.json` in
//! the run dir (and read back by `close eval`, `close predict`, `--resume` and serving).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use close_core::optim::AdamWConfig;
use close_core::{Error, Result};
use close_t5::T5Config;

use crate::adapter::{AdapterConfig, AdapterKind};
use crate::task::{Task, TrainOn};

/// Where T5 comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum T5Init {
    /// Random initialisation with this architecture; the tokenizer is trained on the task's
    /// text (`vocab` pieces, `vocab_size` is then set to the tokenizer's size).
    Scratch {
        config: T5Config,
        vocab: usize,
        /// Reuse this `tokenizer.json` instead of training one (e.g. one tokenizer shared
        /// by all runs of a sweep).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokenizer: Option<PathBuf>,
    },
    /// A pretrained HF T5 directory (`config.json`, `*.safetensors`, `tokenizer.json`).
    Pretrained { dir: PathBuf },
}

/// A CLOSE training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: Task,
    #[serde(default)]
    pub train_on: TrainOn,
    pub adapter: AdapterConfig,
    /// Directory with fitted adapter statistics (`adapter.json` + `adapter.safetensors`),
    /// needed by mean-shift / cov / linear; copied into the run dir.
    #[serde(default)]
    pub adapter_stats: Option<PathBuf>,
    pub t5: T5Init,
    /// Prefix length (reference: 4).
    pub n_prefix: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Cap on the examples drawn (reshuffled) per epoch (reference: 200k).
    pub max_examples_per_epoch: Option<usize>,
    /// Train on at most this many of an example's targets per step, drawn afresh each step
    /// (None: all, as the reference). An unbiased estimate of the all-targets loss at a
    /// fraction of the decoder cost, e.g. m-cap's four other captions.
    #[serde(default)]
    pub targets_per_step: Option<usize>,
    pub optim: AdamWConfig,
    /// Linear warmup steps (0: none, as the reference).
    pub warmup_steps: u64,
    /// Learning rate at the last step as a fraction of the peak (0: decay to zero).
    pub final_lr_ratio: f64,
    pub seed: u64,
    /// Longest extra-text input in T5 tokens (EOS included; longer text is truncated).
    pub max_input_tokens: usize,
    /// Longest target in T5 tokens (EOS included; longer targets are truncated).
    pub max_target_tokens: usize,
    /// Evaluate on the val split after every epoch (best checkpoint by the task metric).
    pub eval_each_epoch: bool,
    /// With `eval_each_epoch`, evaluate after every `val_interval`-th epoch and after the
    /// last one only (1: every epoch). For long runs whose best epoch comes late.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub val_interval: usize,
    /// Evaluate on at most this many val items per epoch (None: all).
    pub max_val_examples: Option<usize>,
    /// Beams for evaluation / prediction (reference: 5).
    pub beams: usize,
    /// Generation length limit (None: the task default, 32 / 16 / 8).
    pub max_steps: Option<usize>,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Reproduce the reference's unmasked encoder (see `ModelConfig`).
    #[serde(default)]
    pub reference_encoder_mask_quirk: bool,
    /// Where the CLIP model lives (recorded for `close predict` / serving).
    #[serde(default)]
    pub clip: Option<PathBuf>,
    /// Embedding caches used (recorded for provenance).
    #[serde(default)]
    pub text_cache: Option<PathBuf>,
    #[serde(default)]
    pub image_cache: Option<PathBuf>,
    /// Log the training loss every this many steps. On a GPU the loss is read back only
    /// then (and at the end of each epoch), so it is also how often the host waits for it.
    pub log_every: u64,
    /// The dtype the model trains in (see [`Precision`]).
    #[serde(default)]
    pub dtype: Precision,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The dtype the model's weights and activations use in training. Half precision is for
/// GPUs (on a CPU it is slower than f32): the optimizer keeps f32 master weights and moments,
/// the loss is computed in f32, and f16 scales the loss dynamically against underflow. The
/// run's weights are saved in this dtype; inference loads them into f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl TrainConfig {
    /// The reference's settings for `task` on a pretrained T5 (t5-base in the paper): AdamW
    /// 3e-4, 8 epochs, ≤ 200k examples per epoch, batch 128 (32 for m-cap), the task's noise.
    pub fn reference(task: Task, t5_dir: PathBuf) -> Self {
        Self {
            task,
            train_on: TrainOn::Text,
            adapter: AdapterConfig {
                kind: AdapterKind::Noise,
                noise: task.default_noise(),
                ..Default::default()
            },
            adapter_stats: None,
            t5: T5Init::Pretrained { dir: t5_dir },
            n_prefix: 4,
            epochs: 8,
            batch_size: task.default_batch_size(),
            max_examples_per_epoch: Some(200_000),
            targets_per_step: None,
            optim: AdamWConfig {
                lr: 3e-4,
                ..Default::default()
            },
            warmup_steps: 0,
            final_lr_ratio: 0.0,
            seed: 0,
            max_input_tokens: 128,
            max_target_tokens: 64,
            eval_each_epoch: true,
            val_interval: 1,
            max_val_examples: None,
            beams: 5,
            max_steps: None,
            eval_batch_size: 64,
            reference_encoder_mask_quirk: false,
            clip: None,
            text_cache: None,
            image_cache: None,
            log_every: 10,
            dtype: Precision::F32,
        }
    }

    /// A small from-scratch model for the shapes world and tests: T5 with d_model 64,
    /// 2+2 layers, a tokenizer of ≤ 400 pieces trained on the task's text, lr 1e-3 with a
    /// short warmup, batch 32, 4 epochs, greedy decoding.
    pub fn small(task: Task) -> Self {
        let t5 = T5Config {
            vocab_size: 400,
            d_model: 64,
            d_kv: 16,
            d_ff: 128,
            num_layers: 2,
            num_decoder_layers: Some(2),
            num_heads: 4,
            relative_attention_num_buckets: 16,
            relative_attention_max_distance: 64,
            dropout_rate: 0.0,
            ..T5Config::t5_small()
        };
        Self {
            t5: T5Init::Scratch {
                config: t5,
                vocab: 400,
                tokenizer: None,
            },
            epochs: 4,
            batch_size: 32,
            max_examples_per_epoch: None,
            optim: AdamWConfig {
                lr: 1e-3,
                ..Default::default()
            },
            warmup_steps: 20,
            final_lr_ratio: 0.0,
            max_input_tokens: 48,
            max_target_tokens: 32,
            beams: 1,
            eval_batch_size: 128,
            max_val_examples: Some(200),
            ..Self::reference(task, PathBuf::new())
        }
    }

    /// The generation length limit in effect.
    pub fn max_steps(&self) -> usize {
        self.max_steps
            .unwrap_or_else(|| self.task.default_max_steps())
    }

    pub fn validate(&self) -> Result<()> {
        self.adapter.validate()?;
        let pos = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("n_prefix", self.n_prefix),
            ("beams", self.beams),
            ("eval_batch_size", self.eval_batch_size),
            ("val_interval", self.val_interval),
            ("max_input_tokens", self.max_input_tokens),
            ("max_target_tokens", self.max_target_tokens),
        ];
        for (k, v) in pos {
            if v == 0 {
                return Err(Error::config(k, "must be positive"));
            }
        }
        if self.max_examples_per_epoch == Some(0) {
            return Err(Error::config("max_examples_per_epoch", "must be positive"));
        }
        if self.targets_per_step == Some(0) {
            return Err(Error::config("targets_per_step", "must be positive"));
        }
        if !self.optim.lr.is_finite() || self.optim.lr <= 0.0 {
            return Err(Error::config(
                "lr",
                format!("must be positive, got {}", self.optim.lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.final_lr_ratio) {
            return Err(Error::config("final_lr_ratio", "must be in [0, 1]"));
        }
        if self.adapter.kind.needs_stats()
            && self.adapter_stats.is_none()
            && self.train_on == TrainOn::Text
        {
            return Err(Error::config(
                "adapter_stats",
                format!("adapter `{}` needs fitted statistics (`close adapter fit`, then --adapter-stats DIR)", self.adapter.kind),
            ));
        }
        if let T5Init::Scratch { config, vocab, .. } = &self.t5 {
            config.validate()?;
            if *vocab < 8 {
                return Err(Error::config(
                    "t5.vocab",
                    "a from-scratch tokenizer needs at least 8 pieces",
                ));
            }
        }
        Ok(())
    }
}
