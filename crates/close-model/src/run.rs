//! The run directory and a loaded, ready-to-predict run.
//!
//! ```text
//! RUN/
//!   config.json          TrainConfig, resolved (T5 architecture, vocab, adapter, seeds …)
//!   model.json           ModelConfig (T5 config + CLIP dim + prefix length)
//!   model.safetensors    best checkpoint: T5 (HF names) + prefix.lin.{weight,bias}; no CLIP
//!   tokenizer.json       the T5 tokenizer
//!   adapter.json, adapter.safetensors   fitted adapter statistics (mean-shift / cov / linear)
//!   last/                last epoch: model.safetensors, optimizer.safetensors, state.json
//!   log.jsonl            one JSON object per logged step / epoch
//!   loss.png             training-loss curve
//!   metrics.json         summary: per-epoch val metrics, best epoch
//!   eval/<split>/        results file (COCO / VQA / VE jsonl) + metrics.json
//! ```
//! Every file is written atomically.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use close_core::{io, Error, Result};
use close_t5::GenerateConfig;

use crate::config::TrainConfig;
use crate::model::{CloseModel, ModelConfig, TextInput};

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_CONFIG_FILE: &str = "model.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const LAST_DIR: &str = "last";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "log.jsonl";
pub const LOSS_PNG: &str = "loss.png";
pub const METRICS_FILE: &str = "metrics.json";

/// How a new run treats an existing `--out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDir {
    /// The dir must not exist or be empty.
    New,
    /// An existing run there is deleted first (only a run dir: other contents are refused).
    Replace,
}

/// Check that `out` can take a new run, without changing anything; `Ok(true)` when an
/// old run there has to be deleted first ([`prepare_new_run`]). An existing run is an error
/// unless it is to be replaced: training over it would mix the new config with the old
/// weights. A non-empty dir that is not a run is never deleted.
pub fn check_new_run(out: &Path, mode: OutDir) -> Result<bool> {
    if !io::is_occupied(out)? {
        return Ok(false);
    }
    // `model.json` (not `config.json`, which HF model dirs have too) marks a CLOSE run.
    let is_run = out.join(MODEL_CONFIG_FILE).exists() || out.join(LAST_DIR).exists();
    match (mode, is_run) {
        (OutDir::New, true) => Err(Error::Exists {
            path: out.to_path_buf(),
            hint: "it holds a run: pass --resume to continue it, --force to replace it, \
                   or choose another --out"
                .into(),
        }),
        (_, false) => Err(Error::Exists {
            path: out.to_path_buf(),
            hint: "it is not empty and holds no run: choose a new or empty --out".into(),
        }),
        (OutDir::Replace, true) => Ok(true),
    }
}

/// [`check_new_run`], then delete the old run if one is to be replaced. Call it as late as
/// possible (after the inputs have loaded), so that a failing command keeps the old run.
pub fn prepare_new_run(out: &Path, mode: OutDir) -> Result<()> {
    if check_new_run(out, mode)? {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

/// Whether `dir` holds a run that can continue from its last checkpoint (after finishing or
/// undoing an interrupted checkpoint write).
pub fn has_checkpoint(dir: &Path) -> Result<bool> {
    let last = dir.join(LAST_DIR);
    io::recover_dir(&last)?;
    Ok(dir.join(CONFIG_FILE).exists() && last.join(STATE_FILE).exists())
}

/// T5 tokenization for CLOSE: EOS appended, truncation that keeps the EOS, padding.
#[derive(Clone)]
pub struct TextCodec {
    pub tokenizer: Tokenizer,
    pub pad: u32,
    pub eos: u32,
}

impl TextCodec {
    pub fn new(tokenizer: Tokenizer, pad: u32, eos: u32) -> Self {
        Self {
            tokenizer,
            pad,
            eos,
        }
    }

    /// The codec of a model with config `t5`, whose tokenizer was read from `file`: every
    /// id the tokenizer can produce must be inside the model's vocabulary (a GPU forward
    /// does not check ids one by one).
    pub fn for_model(tokenizer: Tokenizer, t5: &close_t5::T5Config, file: &Path) -> Result<Self> {
        let n = tokenizer.get_vocab_size(true);
        if n > t5.vocab_size {
            return Err(Error::format(
                file,
                None,
                format!(
                    "the tokenizer has {n} tokens but the model's vocabulary only {}; \
                     give the tokenizer that belongs to this model",
                    t5.vocab_size
                ),
            ));
        }
        Ok(Self::new(tokenizer, t5.pad_token_id, t5.eos_token_id))
    }

    /// Token ids of `text` with a final EOS, at most `max` tokens.
    pub fn encode(&self, text: &str, max: usize) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?.get_ids().to_vec();
        if ids.last() != Some(&self.eos) {
            ids.push(self.eos);
        }
        if ids.len() > max {
            ids.truncate(max.saturating_sub(1));
            ids.push(self.eos);
        }
        Ok(ids)
    }

    /// Pad pre-tokenized sequences into a [`TextInput`].
    pub fn batch(&self, seqs: &[&[u32]], device: &Device) -> Result<TextInput> {
        let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad; seqs.len() * l];
        let mut mask = vec![0f32; seqs.len() * l];
        for (i, s) in seqs.iter().enumerate() {
            for (j, &t) in s.iter().enumerate() {
                ids[i * l + j] = t;
                mask[i * l + j] = 1.0;
            }
        }
        Ok(TextInput {
            ids: Tensor::from_vec(ids, (seqs.len(), l), device)?,
            mask: Tensor::from_vec(mask, (seqs.len(), l), device)?,
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(ids, true)?.trim().to_string())
    }
}

/// One generated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beam {
    pub text: String,
    /// Summed log-probability.
    pub logprob: f32,
}

/// A trained run loaded for evaluation / prediction.
pub struct Run {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub model: CloseModel,
    pub codec: TextCodec,
}

impl Run {
    /// Load `dir/model.safetensors` (the best checkpoint) with its config and tokenizer.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_checkpoint(dir, None, device)
    }

    /// Load a specific weights file of the run (e.g. `last/model.safetensors`).
    pub fn load_checkpoint(
        dir: impl AsRef<Path>,
        weights: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config: TrainConfig = io::read_json(dir.join(CONFIG_FILE))?;
        let mcfg: ModelConfig = io::read_json(dir.join(MODEL_CONFIG_FILE))?;
        let model = CloseModel::load(
            mcfg.clone(),
            &weights
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| dir.join(MODEL_FILE)),
            device,
        )?;
        let tok_path = dir.join(TOKENIZER_FILE);
        let tok = close_t5::tokenizer::load(&tok_path)?;
        let codec = TextCodec::for_model(tok, &mcfg.t5, &tok_path)?;
        Ok(Self {
            dir,
            config,
            model,
            codec,
        })
    }

    /// The CLIP dimension the model expects.
    pub fn clip_dim(&self) -> usize {
        self.model.config().clip_dim
    }

    /// The generation settings of the run (beams, max steps), optionally overridden.
    pub fn generate_config(
        &self,
        beams: Option<usize>,
        max_steps: Option<usize>,
    ) -> GenerateConfig {
        GenerateConfig::beam(
            beams.unwrap_or(self.config.beams),
            max_steps.unwrap_or_else(|| self.config.max_steps()),
        )
    }

    /// Predict for unit CLIP image vectors `clip [B, C]` and, for tasks with extra text
    /// (VQA question, VE hypothesis, news article), one text per row. Returns per row the
    /// beams, best first.
    pub fn predict(
        &self,
        clip: &Tensor,
        texts: Option<&[String]>,
        gen: &GenerateConfig,
    ) -> Result<Vec<Vec<Beam>>> {
        let (b, _) = clip.dims2()?;
        let clip = clip.to_dtype(DType::F32)?.to_device(self.model.device())?;
        let input = match texts {
            Some(t) => {
                if t.len() != b {
                    return Err(Error::invalid(format!(
                        "predict: {b} images but {} texts",
                        t.len()
                    )));
                }
                let seqs = t
                    .iter()
                    .map(|s| self.codec.encode(s, self.config.max_input_tokens))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
                Some(self.codec.batch(&refs, self.model.device())?)
            }
            None if self.config.task.has_input_text() => {
                return Err(Error::invalid(format!(
                    "task {} needs a text per image (question / hypothesis / article)",
                    self.config.task
                )))
            }
            None => None,
        };
        let hyps = self.model.generate(&clip, input.as_ref(), gen)?;
        hyps.into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| {
                        Ok(Beam {
                            text: self.codec.decode(&h.tokens)?,
                            logprob: h.logprob,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}
