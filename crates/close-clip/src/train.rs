//! Training a CLIP from scratch (Radford et al. 2021, §2.5) on image–caption pairs in a COCO
//! Karpathy json: symmetric InfoNCE over a batch of distinct images (one random caption per
//! image per epoch), learnable temperature clamped to `[0, ln 100]`, AdamW (weight decay on
//! matrices only), linear warmup then cosine decay. Optionally each caption also brings a
//! hard negative (a copy with attribute words exchanged, [`crate::negatives`]). A word-level
//! tokenizer is trained on the training captions when none is given. The output dir is an
//! HF-layout CLIP
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `preprocessor_config.json`) plus `clip_train.json` (this config) and
//! `clip_train_report.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use close_core::init::{init_tensor, name_seed, SeededInit};
use close_core::optim::{AdamW, AdamWConfig};
use close_core::progress::Progress;
use close_core::step_losses::{LossBook, StepLoss};
use close_core::{Error, Result};
use close_data::coco::Karpathy;

use crate::bundle::{save_model, PREPROCESSOR_FILE, TEXT_GROUP_OVERHEAD, TOKENIZER_FILE};
use crate::config::ClipConfig;
use crate::gap::{gap_stats, GapStats};
use crate::model::ClipModel;
use crate::negatives::NegativeMaker;
use crate::preprocess::{load_image, ImageProcessor, ImageProcessorConfig};
use crate::retrieval::{retrieval_metrics, Retrieval};
use crate::tokenizer::{hf_tokenizer_config, train_word_level, ClipTokenizer};

/// The training report written beside the model.
pub const REPORT_FILE: &str = "clip_train_report.json";

/// Training hyper-parameters (saved as `clip_train.json` beside the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Model shape; `text_config.vocab_size` is set from the tokenizer.
    pub model: ClipConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of all steps used for linear warmup.
    pub warmup_frac: f64,
    pub seed: u64,
    /// Split(s) trained on (`train` includes `restval`).
    pub train_split: String,
    /// Held-out split for retrieval (`test`, or `val`).
    pub eval_split: String,
    /// Tokenizer training: max vocabulary and minimum word count.
    pub max_vocab: usize,
    pub min_word_freq: u64,
    /// Most held-out images used for retrieval.
    pub max_eval_images: usize,
    /// Wall-clock limit for the optimisation loop in seconds. The schedule never depends
    /// on it: when the limit is reached, training stops at that step (the learning rate
    /// where the planned schedule had it), the model is saved and the report's
    /// `stopped_early` says so. `None`: run all epochs.
    pub max_train_seconds: Option<f64>,
    /// Groups of mutually exclusive words (colours, shapes, `left`/`right`; never synonyms)
    /// for hard negatives ([`crate::negatives`]): each training caption also gets a copy with
    /// two words of a group swapped or one replaced, ranked against the true caption by the
    /// image→text loss. Costs about one more text-tower pass per step. Empty: off. It
    /// sharpens attribute binding and, with `vision_position_init_std`, lets the model
    /// match cells to position words (measurements: `docs/demo/NOTES.md`).
    pub hard_negative_groups: Vec<Vec<String>>,
    /// Weight of a pairwise term added to the loss when hard negatives are on: each image
    /// ranks its caption above that caption's own negative, `softplus(s·(v·t' − v·t))`
    /// ([`hard_negative_pair_loss`]). In the batch softmax a negative is one of `2n − 1`
    /// competitors; this term makes the distinction it tests count on its own. 0: off (the
    /// demo's choice: on the shapes world it lifts colour binding but costs text-to-image
    /// transfer, `docs/demo/NOTES.md` part 7).
    pub hard_negative_weight: f64,
    /// Weight of a term that pulls each image toward its own caption: `1 − cos(v, t)`, mean
    /// over the batch. The contrastive loss only ranks captions, and with the pair term
    /// above it left images further from their captions than without it (a wider modality
    /// gap, which noise alone did not bridge); a small weight holds them closer. Large
    /// weights close the gap altogether. 0: off (`docs/demo/NOTES.md` part 7).
    pub align_weight: f64,
    /// Standard deviation of the vision tower's initial position embeddings (HF: the
    /// `initializer_range`, 0.02). `None`: HF's. At HF's the position signal starts far
    /// below a patch's content and the image vectors never held a lone object's cell; the
    /// demo uses 1.0 (`docs/demo/NOTES.md`).
    pub vision_position_init_std: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ClipConfig::shapes(),
            epochs: 10,
            // The best held-out R@1 on the shapes world (batch and lr: `docs/demo.md`, CLIP).
            batch_size: 32,
            lr: 5e-4,
            weight_decay: 0.05,
            warmup_frac: 0.05,
            seed: 0,
            train_split: "train".into(),
            eval_split: "test".into(),
            max_vocab: 4096,
            min_word_freq: 1,
            max_eval_images: 1000,
            max_train_seconds: None,
            hard_negative_groups: Vec::new(),
            hard_negative_weight: 0.0,
            align_weight: 0.0,
            vision_position_init_std: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::config(
                "batch_size",
                "must be ≥ 2 (contrastive loss needs negatives)",
            ));
        }
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be ≥ 1"));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(Error::config("lr", "must be > 0"));
        }
        if !(0.0..1.0).contains(&self.warmup_frac) {
            return Err(Error::config("warmup_frac", "must be in [0, 1)"));
        }
        NegativeMaker::new(&self.hard_negative_groups)?;
        for (key, weight) in [
            ("hard_negative_weight", self.hard_negative_weight),
            ("align_weight", self.align_weight),
        ] {
            if !(weight >= 0.0 && weight.is_finite()) {
                return Err(Error::config(key, "must be ≥ 0 and finite"));
            }
        }
        if self.hard_negative_weight > 0.0 && self.hard_negative_groups.is_empty() {
            return Err(Error::config(
                "hard_negative_weight",
                "ranks each caption against its hard negative; give hard_negative_groups \
                 (`--hard-negatives`) too, or set it to 0",
            ));
        }
        self.model.validate()
    }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    pub epochs: usize,
    pub train_images: usize,
    pub train_captions: usize,
    pub final_loss: f64,
    pub logit_scale: f64,
    pub train_seconds: f64,
    /// Retrieval on the held-out split (`eval_split`).
    pub eval_split: String,
    pub retrieval: Option<Retrieval>,
    /// Modality-gap statistics on the held-out split (each image with its first caption).
    pub gap: Option<GapStats>,
    /// Images that could not be used: (path, reason).
    pub skipped: Vec<(String, String)>,
    pub out_dir: PathBuf,
    /// Why training ended before its planned steps (`max_train_seconds`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
}

/// Learning rate at `step` (0-based): linear warmup to `lr`, then cosine decay to 0.
pub fn lr_at(step: usize, total: usize, warmup: usize, lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Symmetric InfoNCE over a square logit matrix whose diagonal holds the positives:
/// `(CE(logits, diag) + CE(logitsᵀ, diag)) / 2`.
///
/// `logits` may have extra columns after the first `n`: texts that are negatives only (hard
/// negatives). They enter the image→text term; the text→image term uses the paired `n × n`
/// block.
pub fn clip_loss(logits: &Tensor) -> Result<Tensor> {
    let (n, m) = logits.dims2()?;
    if m < n {
        return Err(Error::Shape {
            what: "logits".into(),
            expected: vec![n, n],
            got: vec![n, m],
        });
    }
    let eye = Tensor::eye(n, logits.dtype(), logits.device())?;
    let eye_wide = if m > n {
        Tensor::cat(
            &[
                &eye,
                &Tensor::zeros((n, m - n), logits.dtype(), logits.device())?,
            ],
            1,
        )?
    } else {
        eye.clone()
    };
    let paired = logits.narrow(1, 0, n)?;
    let a = (close_core::ops::log_softmax_last_dim(logits)? * &eye_wide)?.sum_all()?;
    let b = (close_core::ops::log_softmax_last_dim(&paired.t()?)? * &eye)?.sum_all()?;
    Ok(((a + b)? / (-2.0 * n as f64))?)
}

/// Mean over the `n` images of `softplus(logits[i, n + i] − logits[i, i])`: each image's
/// caption ranked against its own hard negative. `logits` is `[n, 2n]` (the paired texts,
/// then one negative per caption in the same order).
pub fn hard_negative_pair_loss(logits: &Tensor) -> Result<Tensor> {
    let (n, m) = logits.dims2()?;
    if m != 2 * n {
        return Err(Error::Shape {
            what: "logits with one hard negative per caption".into(),
            expected: vec![n, 2 * n],
            got: vec![n, m],
        });
    }
    let eye = Tensor::eye(n, logits.dtype(), logits.device())?;
    let pos = (logits.narrow(1, 0, n)? * &eye)?.sum(1)?;
    let neg = (logits.narrow(1, n, n)? * &eye)?.sum(1)?;
    let d = (neg - pos)?;
    // softplus(d) = max(d, 0) + ln(1 + e^−|d|), stable for any d
    let soft = (d.relu()? + ((d.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    Ok(soft.mean_all()?)
}

/// `1 − cos(image, its caption)`, mean over the `n` images: `img` holds `n` unit image
/// vectors and `txt` at least `n` unit text vectors, the first `n` of them the captions
/// (hard negatives may follow).
pub fn align_loss(img: &Tensor, txt: &Tensor) -> Result<Tensor> {
    let n = img.dim(0)?;
    let cos = (img * txt.narrow(0, 0, n)?)?.sum(1)?;
    Ok((1.0 - cos.mean_all()?)?)
}

/// Decoded, preprocessed images of a split with their captions.
struct Split {
    pixels: Vec<Vec<f32>>,
    captions: Vec<Vec<String>>,
}

fn load_split(
    data: &Karpathy,
    root: &Path,
    split: &str,
    proc: &ImageProcessor,
    limit: usize,
    progress: &dyn Progress,
    skipped: &mut Vec<(String, String)>,
) -> Result<Split> {
    let items: Vec<_> = data.split(split).take(limit).collect();
    progress.start(&format!("load {split}"), items.len() as u64);
    let loaded: Vec<_> = items
        .par_iter()
        .map(|im| {
            let p = root.join(im.rel_path());
            let r = load_image(&p).map(|img| proc.preprocess(&img));
            progress.inc(1);
            (p, r, im.captions().map(str::to_string).collect::<Vec<_>>())
        })
        .collect();
    progress.finish();
    let mut out = Split {
        pixels: Vec::new(),
        captions: Vec::new(),
    };
    for (p, r, caps) in loaded {
        match r {
            Ok(px) => {
                out.pixels.push(px);
                out.captions.push(caps);
            }
            Err(e) => {
                tracing::warn!("skipping {}: {e}", p.display());
                skipped.push((p.display().to_string(), e.to_string()));
            }
        }
    }
    Ok(out)
}

/// Train a CLIP from scratch on `data` (images under `image_root`) and write it to
/// `out_dir`. `tokenizer`: an existing tokenizer (else one is trained on the captions).
pub fn train_clip(
    data: &Karpathy,
    image_root: &Path,
    out_dir: &Path,
    cfg: &TrainConfig,
    tokenizer: Option<tokenizers::Tokenizer>,
    device: &Device,
    progress: &dyn Progress,
) -> Result<TrainReport> {
    cfg.validate()?;
    let job = Job {
        data,
        image_root,
        out_dir,
        cfg,
        device,
        progress,
    };
    let mut mcfg = cfg.model.clone();
    let pcfg = ImageProcessorConfig::for_size(mcfg.vision_config.image_size);
    let proc = ImageProcessor::new(pcfg.clone())?;
    let mut skipped = Vec::new();
    let train = job.load_train(&proc, &mut skipped)?;
    let tok = match tokenizer {
        Some(t) => t,
        None => train_word_level(
            train.captions.iter().flatten(),
            cfg.max_vocab,
            cfg.min_word_freq,
        )?,
    };
    let ctok = adopt_tokenizer(&mut mcfg, &tok)?;
    let ids = tokenize_captions(&ctok, &train.captions);
    let negatives = NegativeMaker::new(&cfg.hard_negative_groups)?;
    let varmap = VarMap::new();
    let model = build_model(&varmap, &mcfg, cfg, device)?;
    let mut opt = Optimizers::new(&varmap, cfg)?;
    let image_shape = (
        mcfg.vision_config.num_channels,
        mcfg.vision_config.image_size,
    );
    let run = Epochs {
        job: &job,
        model: &model,
        ctok: &ctok,
        negatives: &negatives,
        pixels: &train.pixels,
        ids: &ids,
        image_shape,
    }
    .run(&mut opt)?;
    job.save(&varmap, &mcfg, &tok, &pcfg)?;
    let (retrieval, gap) = job.evaluate(&proc, &ctok, image_shape, &mut skipped)?;
    let report = TrainReport {
        steps: run.steps,
        epochs: cfg.epochs,
        train_images: train.pixels.len(),
        train_captions: ids.iter().map(Vec::len).sum(),
        final_loss: run.ema.unwrap_or(run.last_loss),
        logit_scale: model.logit_scale()? as f64,
        train_seconds: run.train_seconds,
        eval_split: cfg.eval_split.clone(),
        retrieval,
        gap,
        skipped,
        out_dir: out_dir.to_path_buf(),
        stopped_early: run.stopped_early,
    };
    close_core::io::write_json_atomic(out_dir.join(REPORT_FILE), &report)?;
    Ok(report)
}

/// The inputs of a training run that its stages share.
struct Job<'a> {
    data: &'a Karpathy,
    image_root: &'a Path,
    out_dir: &'a Path,
    cfg: &'a TrainConfig,
    device: &'a Device,
    progress: &'a dyn Progress,
}

impl Job<'_> {
    /// The training split's images and captions; an error when fewer than two images load
    /// (the contrastive loss needs negatives).
    fn load_train(
        &self,
        proc: &ImageProcessor,
        skipped: &mut Vec<(String, String)>,
    ) -> Result<Split> {
        let split = &self.cfg.train_split;
        let train = load_split(
            self.data,
            self.image_root,
            split,
            proc,
            usize::MAX,
            self.progress,
            skipped,
        )?;
        if train.pixels.len() < 2 {
            return Err(Error::invalid(format!(
                "split `{split}` has {} usable images; need at least 2",
                train.pixels.len()
            )));
        }
        Ok(train)
    }

    /// Write the trained model in HF layout (weights, config, tokenizer, preprocessor) plus
    /// `clip_train.json` (this run's config with the final model shape).
    fn save(
        &self,
        varmap: &VarMap,
        mcfg: &ClipConfig,
        tok: &tokenizers::Tokenizer,
        pcfg: &ImageProcessorConfig,
    ) -> Result<()> {
        let out_dir = self.out_dir;
        let tensors: HashMap<String, Tensor> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap lock poisoned"))?;
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect()
        };
        save_model(out_dir, mcfg, &tensors)?;
        let tok_path = out_dir.join(TOKENIZER_FILE);
        let json = tok
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        close_core::io::write_atomic(&tok_path, json.as_bytes())?;
        close_core::io::write_json_atomic(
            out_dir.join("tokenizer_config.json"),
            &hf_tokenizer_config(mcfg.text_config.max_position_embeddings),
        )?;
        close_core::io::write_json_atomic(out_dir.join(PREPROCESSOR_FILE), &pcfg.to_hf_json())?;
        let mut saved_cfg = self.cfg.clone();
        saved_cfg.model = mcfg.clone();
        close_core::io::write_json_atomic(out_dir.join("clip_train.json"), &saved_cfg)
    }

    /// Held-out retrieval and modality gap of the saved model (reloaded, so that what is
    /// measured is what was written); `(None, None)` when the eval split is empty.
    fn evaluate(
        &self,
        proc: &ImageProcessor,
        ctok: &ClipTokenizer,
        image_shape: (usize, usize),
        skipped: &mut Vec<(String, String)>,
    ) -> Result<(Option<Retrieval>, Option<GapStats>)> {
        let cfg = self.cfg;
        if self.data.split(&cfg.eval_split).next().is_none() {
            tracing::warn!(
                "no images in split `{}`: retrieval not measured",
                cfg.eval_split
            );
            return Ok((None, None));
        }
        let frozen = crate::bundle::load_model(self.out_dir, self.device)?;
        let ev = load_split(
            self.data,
            self.image_root,
            &cfg.eval_split,
            proc,
            cfg.max_eval_images,
            self.progress,
            skipped,
        )?;
        let (r, g) = evaluate_retrieval(
            &frozen,
            ctok,
            &ev.pixels,
            &ev.captions,
            image_shape,
            self.device,
            self.progress,
        )?;
        Ok((Some(r), g))
    }
}

/// Fit the text config to the tokenizer (vocabulary size, special token ids) and wrap the
/// tokenizer for CLIP's fixed-length, EOS-pooled input.
fn adopt_tokenizer(mcfg: &mut ClipConfig, tok: &tokenizers::Tokenizer) -> Result<ClipTokenizer> {
    mcfg.text_config.vocab_size = tok.get_vocab_size(true);
    mcfg.text_config.pad_token_id = tok
        .token_to_id(crate::tokenizer::PAD)
        .or(mcfg.text_config.pad_token_id);
    mcfg.text_config.bos_token_id = tok
        .token_to_id(crate::tokenizer::BOS)
        .or(mcfg.text_config.bos_token_id);
    if let Some(eos) = tok.token_to_id(crate::tokenizer::EOS) {
        mcfg.text_config.eos_token_id = eos;
    }
    ClipTokenizer::new(
        tok.clone(),
        mcfg.text_config.max_position_embeddings,
        mcfg.text_config.eos_token_id,
    )
}

/// Token ids of one caption with its text (kept for hard negatives).
type Tokenized<'a> = (Vec<u32>, &'a str);

/// Tokenize every caption once, per image; captions that do not encode are dropped.
fn tokenize_captions<'a>(
    ctok: &ClipTokenizer,
    captions: &'a [Vec<String>],
) -> Vec<Vec<Tokenized<'a>>> {
    captions
        .iter()
        .map(|caps| {
            caps.iter()
                .filter_map(|c| ctok.encode(c).ok().map(|t| (t, c.as_str())))
                .collect()
        })
        .collect()
}

/// A freshly initialised model whose variables live in `varmap`: weights seeded from
/// (seed, variable name), since candle's CPU generator cannot be seeded; optionally the
/// vision position embeddings redrawn with `vision_position_init_std`.
fn build_model(
    varmap: &VarMap,
    mcfg: &ClipConfig,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<ClipModel> {
    let vb = VarBuilder::from_backend(
        Box::new(SeededInit::new(varmap.clone(), cfg.seed)),
        DType::F32,
        device.clone(),
    );
    let model = ClipModel::new(vb, mcfg)?;
    if let Some(std) = cfg.vision_position_init_std {
        let key = "vision_model.embeddings.position_embedding.weight";
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap lock poisoned"))?;
        let v = data
            .get(key)
            .ok_or_else(|| Error::invalid(format!("no `{key}` to initialise")))?;
        let t = v.as_tensor();
        let init = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let seed = name_seed(cfg.seed, "vision_position_init_std");
        v.set(&init_tensor(init, t.shape(), seed, t.dtype(), t.device())?)?;
    }
    Ok(model)
}

/// The two AdamW optimisers (weight decay on matrices only, not on embeddings, biases,
/// norms or the temperature) and the temperature variable, clamped after each step.
struct Optimizers {
    decay: AdamW,
    plain: AdamW,
    logit_scale: Option<Var>,
}

impl Optimizers {
    /// Split the variables of `varmap` (in name order) between the two optimisers.
    fn new(varmap: &VarMap, cfg: &TrainConfig) -> Result<Self> {
        type Named = Vec<(String, Var)>;
        let (decay, no_decay): (Named, Named) = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap lock poisoned"))?;
            let mut all: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.into_iter()
                .partition(|(k, v)| v.rank() >= 2 && !k.contains("embedding"))
        };
        let logit_scale = no_decay
            .iter()
            .find(|(k, _)| k == "logit_scale")
            .map(|(_, v)| v.clone());
        let adam = AdamWConfig {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: cfg.weight_decay,
            max_grad_norm: Some(1.0),
        };
        let decay = AdamW::new(decay, adam)?;
        let plain = AdamW::new(
            no_decay,
            AdamWConfig {
                weight_decay: 0.0,
                ..adam
            },
        )?;
        Ok(Optimizers {
            decay,
            plain,
            logit_scale,
        })
    }

    /// One update at learning rate `lr` from `loss`, then the temperature clamped to
    /// `[0, ln 100]`.
    fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        self.decay.set_lr(lr);
        self.plain.set_lr(lr);
        let grads = loss.backward()?;
        self.decay.step(&grads)?;
        self.plain.step(&grads)?;
        if let Some(v) = &self.logit_scale {
            // On the device: no read to the host per step.
            v.set(&v.as_tensor().clamp(0f32, 100f32.ln())?)?;
        }
        Ok(())
    }
}

/// The optimisation loop over the training data.
struct Epochs<'a> {
    job: &'a Job<'a>,
    model: &'a ClipModel,
    ctok: &'a ClipTokenizer,
    negatives: &'a NegativeMaker,
    /// Preprocessed training images (CHW f32 each).
    pixels: &'a [Vec<f32>],
    /// Tokenized captions of each training image.
    ids: &'a [Vec<Tokenized<'a>>],
    /// (channels, side) of the images.
    image_shape: (usize, usize),
}

/// One training batch.
struct Batch {
    /// Number of images.
    images: usize,
    /// Their pixels, concatenated.
    px: Vec<f32>,
    /// Token ids of one caption per image, then of the hard negatives (if on).
    rows: Vec<Vec<u32>>,
}

/// Steps between reads of the losses (and log lines). On a GPU a read waits for the
/// queued steps, so the loop does not read every step.
const LOG_EVERY: usize = 50;

/// Read the pending losses into `out` (last loss, moving average, progress message);
/// a loss that is not finite stops the training.
fn read_losses(book: &mut LossBook, out: &mut Outcome, progress: &dyn Progress) -> Result<()> {
    for StepLoss { step, lr, loss } in book.drain()? {
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "loss became {loss} at step {step}; lower --lr"
            )));
        }
        out.last_loss = loss;
        let e = out.ema.map_or(loss, |e| 0.95 * e + 0.05 * loss);
        out.ema = Some(e);
        progress.message(&format!("loss {e:.3} lr {lr:.1e}"));
    }
    Ok(())
}

/// What the optimisation loop did.
struct Outcome {
    steps: usize,
    last_loss: f64,
    /// Exponential moving average of the loss (the reported final loss).
    ema: Option<f64>,
    stopped_early: Option<String>,
    train_seconds: f64,
}

impl Epochs<'_> {
    /// All epochs: each shuffles the images (with captions) with the seeded RNG and takes
    /// full batches of distinct images; stops early at `max_train_seconds`.
    fn run(&self, opt: &mut Optimizers) -> Result<Outcome> {
        let (cfg, progress) = (self.job.cfg, self.job.progress);
        let n = self.pixels.len();
        let bs = cfg.batch_size.min(n);
        let total = (n / bs) * cfg.epochs;
        let warmup = ((total as f64) * cfg.warmup_frac).ceil() as usize;
        let mut out = Outcome {
            steps: 0,
            last_loss: f64::NAN,
            ema: None,
            stopped_early: None,
            train_seconds: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut book = LossBook::default();
        let start = Instant::now();
        progress.start("train clip", total as u64);
        'epochs: for _epoch in 0..cfg.epochs {
            let mut order: Vec<usize> = (0..n).filter(|&i| !self.ids[i].is_empty()).collect();
            order.shuffle(&mut rng);
            for chunk in order.chunks(bs) {
                if chunk.len() < bs {
                    continue;
                }
                if out.steps >= total {
                    break 'epochs;
                }
                let batch = self.batch(chunk, &order, &mut rng);
                let lr = lr_at(out.steps, total, warmup, cfg.lr);
                let loss = self.step(opt, batch, lr)?;
                out.steps += 1;
                let step = out.steps;
                book.push(step as u64, lr, &loss);
                progress.inc(1);
                close_core::pace::step();
                if let Some(limit) = cfg.max_train_seconds {
                    if start.elapsed().as_secs_f64() >= limit && step < total {
                        let why = format!(
                            "stopped by the time limit of {limit:.0} s after {step} of {total} planned steps"
                        );
                        tracing::warn!("CLIP training {why}");
                        out.stopped_early = Some(why);
                        break 'epochs;
                    }
                }
                if step.is_multiple_of(LOG_EVERY) {
                    read_losses(&mut book, &mut out, progress)?;
                    let el = start.elapsed().as_secs_f64();
                    tracing::info!(
                        "step {step}/{total} loss {:.3} lr {lr:.2e} logit_scale {:.1} ({:.2} s/step)",
                        out.ema.unwrap_or(f64::NAN),
                        self.model.logit_scale()?,
                        el / step as f64
                    );
                }
            }
        }
        read_losses(&mut book, &mut out, progress)?;
        progress.finish();
        out.train_seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// The pixels of a batch of images (`chunk`) and its text rows: one random caption per
    /// image, then (with hard negatives on) one negative per caption: the caption with
    /// words exchanged, or a random caption of a random image of `order` when it has none.
    fn batch(&self, chunk: &[usize], order: &[usize], rng: &mut ChaCha8Rng) -> Batch {
        let (c, s) = self.image_shape;
        let ids = self.ids;
        let bs = chunk.len();
        let mut px = Vec::with_capacity(bs * c * s * s);
        let mut rows = Vec::with_capacity(2 * bs);
        let mut texts = Vec::with_capacity(bs);
        for &i in chunk {
            px.extend_from_slice(&self.pixels[i]);
            let (t, text) = &ids[i][rng.random_range(0..ids[i].len())];
            rows.push(t.clone());
            texts.push(*text);
        }
        if !self.negatives.is_empty() {
            for text in texts {
                // A caption without exchangeable words gets a random caption instead.
                let neg = self
                    .negatives
                    .negative(text, rng)
                    .and_then(|t| self.ctok.encode(&t).ok());
                rows.push(match neg {
                    Some(t) => t,
                    None => {
                        let j = order[rng.random_range(0..order.len())];
                        ids[j][rng.random_range(0..ids[j].len())].0.clone()
                    }
                });
            }
        }
        Batch {
            images: bs,
            px,
            rows,
        }
    }

    /// One optimisation step on a batch; returns its loss, still on the device.
    fn step(&self, opt: &mut Optimizers, batch: Batch, lr: f64) -> Result<Tensor> {
        let device = self.job.device;
        let (c, s) = self.image_shape;
        let px = Tensor::from_vec(batch.px, (batch.images, c, s, s), device)?;
        let (logits, img, txt) =
            self.model
                .forward_rows(&px, &batch.rows, self.ctok.pad_id(), TEXT_GROUP_OVERHEAD)?;
        let mut loss = clip_loss(&logits)?;
        let a = self.job.cfg.align_weight;
        if a > 0.0 {
            loss = (loss + (align_loss(&img, &txt)? * a)?)?;
        }
        let w = self.job.cfg.hard_negative_weight;
        if w > 0.0 && !self.negatives.is_empty() {
            loss = (loss + (hard_negative_pair_loss(&logits)? * w)?)?;
        }
        opt.step(&loss, lr)?;
        Ok(loss)
    }
}

/// Retrieval recall of `model` on preprocessed images (CHW f32 each) and their captions, and
/// the modality gap between each image and its first caption (`None` with fewer than 2 such
/// pairs).
pub fn evaluate_retrieval(
    model: &ClipModel,
    tok: &ClipTokenizer,
    pixels: &[Vec<f32>],
    captions: &[Vec<String>],
    (c, s): (usize, usize),
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Retrieval, Option<GapStats>)> {
    let mut img = Vec::new();
    progress.start("eval", pixels.len() as u64);
    for chunk in pixels.chunks(64) {
        let px: Vec<f32> = chunk.iter().flatten().copied().collect();
        let px = Tensor::from_vec(px, (chunk.len(), c, s, s), device)?;
        img.push(model.image_features(&px)?);
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    let mut texts = Vec::new();
    let mut owner = Vec::new();
    let mut first_caption = Vec::new(); // (image, text row) of each image's first caption
    for (i, caps) in captions.iter().enumerate() {
        for cap in caps {
            if !cap.trim().is_empty() {
                if owner.last() != Some(&i) {
                    first_caption.push((i, texts.len()));
                }
                texts.push(cap.as_str());
                owner.push(i);
            }
        }
    }
    let mut txt = Vec::new();
    for chunk in texts.chunks(256) {
        txt.push(model.text_features_rows(
            &tok.encode_rows(chunk)?,
            tok.pad_id(),
            TEXT_GROUP_OVERHEAD,
        )?);
    }
    if img.is_empty() || txt.is_empty() {
        return Err(Error::invalid(
            "no images or captions to evaluate retrieval on",
        ));
    }
    let (img, txt) = (Tensor::cat(&img, 0)?, Tensor::cat(&txt, 0)?);
    let retrieval = retrieval_metrics(&img, &txt, &owner)?;
    let gap = if first_caption.len() >= 2 {
        let (iv, tv) = (img.to_vec2::<f32>()?, txt.to_vec2::<f32>()?);
        let (pi, pt): (Vec<_>, Vec<_>) = first_caption
            .iter()
            .map(|&(i, j)| (iv[i].clone(), tv[j].clone()))
            .unzip();
        Some(gap_stats(&pi, &pt, 1000, 0)?)
    } else {
        None
    };
    Ok((retrieval, gap))
}

/// Load a trained model dir plus a dataset split and measure retrieval (for `close clip eval`
/// style use and tests).
pub fn evaluate_dir(
    model_dir: &Path,
    data: &Karpathy,
    image_root: &Path,
    split: &str,
    limit: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Retrieval, Option<GapStats>)> {
    let clip = crate::bundle::Clip::load(model_dir, device)?;
    let mut skipped = Vec::new();
    let ev = load_split(
        data,
        image_root,
        split,
        &clip.processor,
        limit,
        progress,
        &mut skipped,
    )?;
    let vc = &clip.model.config().vision_config;
    evaluate_retrieval(
        &clip.model,
        &clip.tokenizer,
        &ev.pixels,
        &ev.captions,
        (vc.num_channels, vc.image_size),
        device,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 0.001);
        assert!(lr_at(55, 100, 10, 1.0) < lr_at(30, 100, 10, 1.0));
    }

    #[test]
    fn clip_loss_matches_cross_entropy_by_hand() -> Result<()> {
        let l = Tensor::new(&[[2f32, 0.0], [1.0, 3.0]], &Device::Cpu)?;
        let got = clip_loss(&l)?.to_scalar::<f32>()? as f64;
        let ce =
            |row: [f64; 2], k: usize| -> f64 { -(row[k] - (row[0].exp() + row[1].exp()).ln()) };
        let want = (ce([2., 0.], 0) + ce([1., 3.], 1) + ce([2., 1.], 0) + ce([0., 3.], 1)) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} {want}");
        Ok(())
    }

    #[test]
    fn hard_negative_columns_enter_only_the_image_to_text_term() -> Result<()> {
        // 2 images, 2 paired texts, 1 extra negative text (column 2)
        let l = Tensor::new(&[[2f32, 0.0, 1.5], [1.0, 3.0, -1.0]], &Device::Cpu)?;
        let got = clip_loss(&l)?.to_scalar::<f32>()? as f64;
        let ce = |row: &[f64], k: usize| -> f64 {
            -(row[k] - row.iter().map(|x| x.exp()).sum::<f64>().ln())
        };
        let want =
            (ce(&[2., 0., 1.5], 0) + ce(&[1., 3., -1.], 1) + ce(&[2., 1.], 0) + ce(&[0., 3.], 1))
                / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} {want}");
        let narrow = Tensor::new(&[[2f32], [1.0]], &Device::Cpu)?;
        assert!(clip_loss(&narrow).is_err());
        Ok(())
    }

    #[test]
    fn the_align_term_is_one_minus_the_mean_cosine_of_each_image_and_its_caption() -> Result<()> {
        let img = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
        // captions: the same as image 0, orthogonal to image 1; then a negative, ignored
        let txt = Tensor::new(&[[1f32, 0.0], [1.0, 0.0], [0.0, 1.0]], &Device::Cpu)?;
        let got = align_loss(&img, &txt)?.to_scalar::<f32>()?;
        assert!((got - 0.5).abs() < 1e-6, "{got}");
        Ok(())
    }

    #[test]
    fn the_pair_term_ranks_each_caption_against_its_own_negative_only() -> Result<()> {
        // 2 images; columns: caption 0, caption 1, negative of 0, negative of 1
        let l = Tensor::new(
            &[[2f32, 5.0, 1.0, -7.0], [0.5, 3.0, 9.0, 4.0]],
            &Device::Cpu,
        )?;
        let got = hard_negative_pair_loss(&l)?.to_scalar::<f32>()? as f64;
        let softplus = |x: f64| (1.0 + x.exp()).ln();
        // image 0: its negative (1.0) against its caption (2.0); image 1: 4.0 against 3.0.
        // The other columns (5.0, 9.0, ...) do not enter.
        let want = (softplus(1.0 - 2.0) + softplus(4.0 - 3.0)) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} {want}");
        // finite far from 0, where ln(1 + e^x) would overflow
        let big = Tensor::new(&[[-200f32, 200.0]], &Device::Cpu)?;
        let v = hard_negative_pair_loss(&big)?.to_scalar::<f32>()?;
        assert!((v - 400.0).abs() < 1e-3, "{v}");
        let wide = Tensor::new(&[[2f32, 0.0, 1.5], [1.0, 3.0, -1.0]], &Device::Cpu)?;
        assert!(hard_negative_pair_loss(&wide).is_err());
        Ok(())
    }
}
