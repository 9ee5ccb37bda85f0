//! The trainer: text-only (or image) training of a CLOSE model for one task.
//!
//! Per epoch: the training examples are reshuffled with a ChaCha stream seeded by
//! (seed, epoch) and capped at `max_examples_per_epoch`; for every batch the stand-in CLIP
//! vectors are read from the embedding caches (captions of a VQA image averaged, then
//! normalized), passed through the adapter with noise drawn from a stream seeded by
//! (seed, step), mapped to the prefix, and T5 is trained on all targets (AdamW, warmup +
//! linear decay per optimizer step). After every epoch the model is evaluated on the val
//! images with the task metric; the best epoch is `model.safetensors`, the last epoch (with
//! optimizer state and counters) is `last/`. `--resume` continues from `last/` and — because
//! every random draw is a function of (seed, epoch, step) — ends with the same weights and
//! metrics as an uninterrupted run (dropout must be 0 for bit-identical results, since
//! candle's dropout draws from an unseeded generator).
//!
//! Data-parallel ([`train_data_parallel`]): every rank draws the same order and noise,
//! computes the loss of its slice of each batch (its summed NLL over the whole batch's
//! token count), and the gradients are summed over the ranks before AdamW, so the steps
//! are those of one process with the whole batch. Rank 0 validates and writes every file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use close_core::dist::{self, Collective};
use close_core::optim::AdamW;
use close_core::progress::Progress;
use close_core::step_losses::{LossBook, LossScale, StepLoss};
use close_core::{io, Error, Result};
use close_t5::T5Config;

use crate::adapter::{Adapter, AdapterStats};
use crate::config::{T5Init, TrainConfig};
use crate::embeddings::{lookup, mean_vector, stack_rows, Embeddings};
use crate::eval::{evaluate_examples, Evaluator, Metrics};
use crate::model::{CloseModel, ModelConfig};
use crate::run::{self, TextCodec};
use crate::schedule::LinearSchedule;
use crate::task::{ClipSource, TaskData, TrainOn};

/// One epoch's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: u64,
    pub train_loss: f64,
    pub lr: f64,
    pub val: Option<Metrics>,
    pub seconds: f64,
}

/// Counters saved in `last/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimizer steps.
    pub step: u64,
    pub best_epoch: Option<usize>,
    pub best_metric: Option<f64>,
    pub history: Vec<EpochRecord>,
    /// (step, loss) of every logged step.
    pub losses: Vec<(u64, f64)>,
    pub seconds: f64,
    /// The loss scale of f16 training (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

/// What [`train`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub task: crate::task::Task,
    pub epochs: usize,
    pub steps: u64,
    pub examples_per_epoch: usize,
    pub best_epoch: Option<usize>,
    /// The best val value of the task metric (None without val data / eval).
    pub best_metric: Option<f64>,
    pub history: Vec<EpochRecord>,
    pub final_train_loss: f64,
    pub seconds: f64,
}

fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ b.wrapping_mul(0x94D0_49BB_1331_11EB)
}

/// A training example pre-tokenized once.
struct Prepared {
    input: Option<Vec<u32>>,
    targets: Vec<Vec<u32>>,
}

/// Build (or load, on resume) the tokenizer and the model configuration.
fn setup_model(
    cfg: &TrainConfig,
    data: &TaskData,
    clip_dim: usize,
    dir: &Path,
    resume: bool,
) -> Result<(ModelConfig, TextCodec, Option<Vec<PathBuf>>)> {
    if resume {
        let mcfg: ModelConfig = io::read_json(dir.join(run::MODEL_CONFIG_FILE))?;
        let tok_path = dir.join(run::TOKENIZER_FILE);
        let tok = close_t5::tokenizer::load(&tok_path)?;
        let codec = TextCodec::for_model(tok, &mcfg.t5, &tok_path)?;
        return Ok((mcfg, codec, None));
    }
    let (t5, tok, weights, tok_path) = match &cfg.t5 {
        T5Init::Scratch {
            config,
            vocab,
            tokenizer,
        } => {
            let tok = match tokenizer {
                Some(p) => close_t5::tokenizer::load(p)?,
                None => close_t5::tokenizer::train_tokenizer(data.tokenizer_corpus(), *vocab)?,
            };
            let t5 = T5Config {
                vocab_size: tok.get_vocab_size(true),
                ..config.clone()
            };
            let from = tokenizer
                .clone()
                .unwrap_or_else(|| "the trained tokenizer".into());
            (t5, tok, None, from)
        }
        T5Init::Pretrained { dir: t5dir } => {
            let (config, files) = close_t5::weights::checkpoint_files(t5dir)?;
            let t5 = T5Config::from_file(&config)?;
            let tok_path = t5dir.join("tokenizer.json");
            let tok = close_t5::tokenizer::load(&tok_path)?;
            (t5, tok, Some(files), tok_path)
        }
    };
    let mcfg = ModelConfig {
        t5,
        clip_dim,
        n_prefix: cfg.n_prefix,
        reference_encoder_mask_quirk: cfg.reference_encoder_mask_quirk,
    };
    let codec = TextCodec::for_model(tok, &mcfg.t5, &tok_path)?;
    Ok((mcfg, codec, weights))
}

/// What a run trains on: the task's examples and the embedding caches their CLIP keys
/// point into (`texts` keyed by exact text, `images` by image id; both unit-normalized).
#[derive(Clone, Copy)]
pub struct TrainInputs<'a> {
    pub data: &'a TaskData,
    pub texts: &'a dyn Embeddings,
    pub images: &'a dyn Embeddings,
}

/// Train a CLOSE model on `inputs` into `out` (the run dir). With `resume`, continue the
/// run in `out` from its `last/` checkpoint (its saved config wins over `cfg`, except
/// `epochs`, which may be raised).
pub fn train(
    cfg: &TrainConfig,
    inputs: TrainInputs,
    out: &Path,
    resume: bool,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunSummary> {
    Trainer::prepare(cfg, inputs, out, resume, device)?.run(None, progress)
}

/// [`train`] as one rank of a data-parallel run over `dist` (every rank calls it with the
/// same arguments). Only rank 0 writes into `out`.
pub fn train_data_parallel(
    cfg: &TrainConfig,
    inputs: TrainInputs,
    out: &Path,
    resume: bool,
    (device, dist): (&Device, &dyn Collective),
    progress: &dyn Progress,
) -> Result<RunSummary> {
    Trainer::prepare_rank(cfg, inputs, out, resume, device, dist)?.run(None, progress)
}

/// One training run, step by step: [`Trainer::prepare`] (config, adapter, model,
/// tokenized examples, optimizer, and the checkpoint on resume), then per epoch the
/// training steps, validation and the `last/` checkpoint ([`Trainer::run`]).
pub struct Trainer<'a> {
    cfg: TrainConfig,
    inputs: TrainInputs<'a>,
    out: PathBuf,
    device: Device,
    clip_dim: usize,
    adapter: Adapter,
    model: CloseModel,
    codec: TextCodec,
    prepared: Vec<Prepared>,
    /// The trained variables, sorted by name (the order the ranks' all-reduce shares).
    vars: Vec<Var>,
    opt: AdamW,
    sched: LinearSchedule,
    per_epoch: usize,
    steps_per_epoch: u64,
    state: TrainState,
    /// The run's log (rank 0 only).
    log: Option<std::fs::File>,
    dist: &'a dyn Collective,
    started: Instant,
    prior_seconds: f64,
    last_loss: f64,
    /// Losses of this epoch's steps not yet read from the device.
    pending: LossBook,
    /// (sum, count) of this epoch's read losses.
    epoch_loss: (f64, usize),
}

impl<'a> Trainer<'a> {
    /// Everything before the first step. Every CLIP key is checked here, so a missing or
    /// broken embedding is an error before any training.
    pub fn prepare(
        cfg: &TrainConfig,
        inputs: TrainInputs<'a>,
        out: &Path,
        resume: bool,
        device: &Device,
    ) -> Result<Self> {
        Self::prepare_rank(cfg, inputs, out, resume, device, &dist::LOCAL)
    }

    /// [`Trainer::prepare`] for one rank of a data-parallel run; fails unless every rank
    /// starts from the same weights, examples and step.
    pub fn prepare_rank(
        cfg: &TrainConfig,
        inputs: TrainInputs<'a>,
        out: &Path,
        resume: bool,
        device: &Device,
        dist: &'a dyn Collective,
    ) -> Result<Self> {
        let main = dist.is_main();
        if dist.size() > 1 {
            // Before any collective that only one kind of start makes (resume's barrier).
            dist::check_same(
                dist,
                "choice to resume (whether --out has a checkpoint)",
                resume as u64,
            )?;
        }
        let cfg = resolved_config(cfg, out, resume)?;
        let clip_dim = check_dims(&cfg, &inputs)?;
        if main {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        let adapter = build_adapter(&cfg, clip_dim, (out, resume, main), device)?;
        let (mcfg, codec, pretrained) = setup_model(&cfg, inputs.data, clip_dim, out, resume)?;
        let model = match &pretrained {
            Some(files) => {
                let model = CloseModel::for_pretrained_t5(mcfg.clone(), cfg.seed, device)?;
                let skip = |n: &str| n.starts_with("prefix.");
                close_t5::weights::load_into_varmap(model.varmap(), files, skip)?;
                model
            }
            // Resuming loads every weight from `last/`.
            None if resume => CloseModel::to_be_loaded(mcfg.clone(), device)?,
            None => CloseModel::new(mcfg.clone(), cfg.seed, device)?,
        };
        let mut model = model.into_dtype(cfg.dtype.dtype())?;
        model.set_training(true);
        if !resume && main {
            record_run(&cfg, &mcfg, &codec, out)?;
        }
        let prepared = prepare_examples(&cfg, &inputs, &codec)?;
        let n = inputs.data.train.len();
        let per_epoch = cfg.max_examples_per_epoch.map(|c| c.min(n)).unwrap_or(n);
        let steps_per_epoch = per_epoch.div_ceil(cfg.batch_size) as u64;
        let sched = LinearSchedule {
            peak: cfg.optim.lr,
            warmup_steps: cfg.warmup_steps,
            total_steps: steps_per_epoch * cfg.epochs as u64,
            final_ratio: cfg.final_lr_ratio,
        };
        let opt = AdamW::from_varmap(model.varmap(), cfg.optim)?;
        let log_path = out.join(run::LOG_FILE);
        if !resume && main {
            io::write_atomic(&log_path, b"")?;
        }
        let mut trainer = Self {
            log: main.then(|| open_log(&log_path)).transpose()?,
            vars: opt.vars(),
            dist,
            cfg,
            inputs,
            out: out.to_path_buf(),
            device: device.clone(),
            clip_dim,
            adapter,
            model,
            codec,
            prepared,
            opt,
            sched,
            per_epoch,
            steps_per_epoch,
            state: TrainState::default(),
            started: Instant::now(),
            prior_seconds: 0.0,
            last_loss: f64::NAN,
            pending: LossBook::default(),
            epoch_loss: (0.0, 0),
        };
        if resume {
            trainer.resume()?;
        } else if trainer.cfg.dtype == crate::config::Precision::F16 {
            trainer.state.loss_scale = Some(LossScale::default());
        }
        trainer.check_ranks_agree()?;
        Ok(trainer)
    }

    /// With several ranks: the same config, examples, step and weights on every one.
    fn check_ranks_agree(&self) -> Result<()> {
        if self.dist.size() == 1 {
            return Ok(());
        }
        let config = serde_json::to_vec(&self.cfg).map_err(|e| Error::invalid(e.to_string()))?;
        let d = self.dist;
        dist::check_same(d, "config", dist::digest(&config))?;
        dist::check_same(d, "number of training examples", self.prepared.len() as u64)?;
        dist::check_same(d, "checkpoint step", self.state.step)?;
        dist::check_same(d, "starting weights", dist::fingerprint(&self.vars)?)
    }

    /// Load `last/` (weights, optimizer, counters) and drop the log lines written after it.
    fn resume(&mut self) -> Result<()> {
        let last = self.out.join(run::LAST_DIR);
        // Rank 0 finishes an interrupted checkpoint replacement before anyone reads it.
        if self.dist.is_main() {
            io::recover_dir(&last)?;
        }
        self.dist.barrier()?;
        self.model.load_weights(&last.join(run::MODEL_FILE))?;
        let opt_path = last.join(run::OPTIMIZER_FILE);
        let t = candle_core::safetensors::load(&opt_path, &self.device)
            .map_err(|e| Error::format(&opt_path, None, e.to_string()))?;
        self.state = io::read_json(last.join(run::STATE_FILE))?;
        self.opt.load_state(&t, self.state.step)?;
        if self.dist.is_main() {
            let log_path = self.out.join(run::LOG_FILE);
            truncate_log(&log_path, self.state.step)?;
            // The truncated log is a new file: append to it, not to the replaced one.
            self.log = Some(open_log(&log_path)?);
        }
        self.prior_seconds = self.state.seconds;
        tracing::info!(
            "resuming {} at epoch {} (step {})",
            self.out.display(),
            self.state.epoch,
            self.state.step
        );
        Ok(())
    }

    /// Train the remaining epochs, or stop (as if killed) once `stop_after_epochs` epochs
    /// are complete in total; the run can then be continued with resume (used to test it).
    pub fn run(
        mut self,
        stop_after_epochs: Option<usize>,
        progress: &dyn Progress,
    ) -> Result<RunSummary> {
        let end = stop_after_epochs
            .map(|s| s.min(self.cfg.epochs))
            .unwrap_or(self.cfg.epochs);
        for epoch in self.state.epoch..end {
            let te = Instant::now();
            let (train_loss, lr) = self.train_epoch(epoch, progress)?;
            let val = self.validate(epoch, progress)?;
            self.finish_epoch(epoch, (train_loss, lr), val, te)?;
        }
        self.summary()
    }

    /// One pass over this epoch's shuffled (and capped) examples; returns the mean loss and
    /// the last learning rate.
    fn train_epoch(&mut self, epoch: usize, progress: &dyn Progress) -> Result<(f64, f64)> {
        let mut order: Vec<usize> = (0..self.inputs.data.train.len()).collect();
        let seed = derive_seed(self.cfg.seed, 1, epoch as u64);
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        order.truncate(self.per_epoch);
        let stage = format!("{} ep {}/{}", self.cfg.task, epoch + 1, self.cfg.epochs);
        progress.start(&stage, self.steps_per_epoch);
        self.epoch_loss = (0.0, 0);
        let mut lr = self.sched.lr(self.state.step);
        for batch in order.chunks(self.cfg.batch_size) {
            lr = self.sched.lr(self.state.step);
            self.train_step(batch, lr)?;
            progress.inc(1);
            if self.is_log_step(self.state.step) {
                self.read_losses(epoch, progress)?;
            }
        }
        self.read_losses(epoch, progress)?;
        progress.finish();
        let (sum, n) = self.epoch_loss;
        Ok((sum / n.max(1) as f64, lr))
    }

    /// One optimizer step on `batch` (indices into the training examples). Its loss is
    /// kept on the device for [`Trainer::read_losses`].
    fn train_step(&mut self, batch: &[usize], lr: f64) -> Result<()> {
        let (seed, step) = (self.cfg.seed, self.state.step);
        self.opt.set_lr(lr);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 2, step));
        // Dropout masks follow the step too, so a resumed run replays them (each rank has
        // its own stream; rank 0's is one process's).
        let rank = self.dist.rank() as u64;
        close_core::fused::seed_dropout(derive_seed(seed, 3, step).wrapping_add(rank));
        // Every rank draws the whole batch's noise and targets, then takes its rows.
        let clip = self.stand_in_vectors(batch)?;
        let clip = self.adapter.train_forward(&clip, &mut rng)?;
        let targets = self.batch_targets(batch);
        let loss = self.rank_loss(batch, &clip, targets)?;
        let loss = self.optimize(&loss)?;
        close_core::pace::step();
        self.state.step += 1;
        self.pending.push(self.state.step, lr, &loss);
        close_core::pace::rank_step_done(self.dist.rank(), self.state.step);
        Ok(())
    }

    /// This rank's share of the batch's mean loss: the summed NLL of its rows' targets over
    /// the token count of the whole batch's (so that the ranks' shares add up to it).
    fn rank_loss(
        &self,
        batch: &[usize],
        clip: &Tensor,
        (targets, mapping): (Vec<Vec<u32>>, Vec<usize>),
    ) -> Result<Tensor> {
        let tokens: usize = targets.iter().map(Vec::len).sum();
        if tokens == 0 {
            return Err(Error::invalid("loss: the batch's targets have no token"));
        }
        let rows = dist::rank_rows(batch.len(), self.dist.rank(), self.dist.size());
        if rows.is_empty() {
            return Ok(Tensor::zeros((), DType::F32, &self.device)?);
        }
        let clip = clip.narrow(0, rows.start, rows.len())?;
        let input = self.batch_inputs(&batch[rows.clone()])?;
        let (targets, mapping): (Vec<Vec<u32>>, Vec<usize>) = targets
            .into_iter()
            .zip(mapping)
            .filter(|(_, row)| rows.contains(row))
            .map(|(t, row)| (t, row - rows.start))
            .unzip();
        let sum = self
            .model
            .loss_sum(&clip, input.as_ref(), &targets, &mapping)?;
        Ok((sum / tokens as f64)?)
    }

    /// Whether step `step` (1-based) is logged: the first and every `log_every`-th.
    fn is_log_step(&self, step: u64) -> bool {
        step == 1 || step.is_multiple_of(self.cfg.log_every.max(1))
    }

    /// Backward, the sum over the ranks, and AdamW (with f16, through the dynamic loss
    /// scale); returns the loss summed over the ranks (the batch's).
    fn optimize(&mut self, loss: &Tensor) -> Result<Tensor> {
        let scale = self.state.loss_scale.as_ref().map(|ls| ls.scale);
        let mut grads = match scale {
            Some(s) => (loss * s)?.backward()?,
            None => loss.backward()?,
        };
        let loss = dist::all_reduce_grads(self.dist, &self.vars, &mut grads, loss)?;
        match &mut self.state.loss_scale {
            None => self.opt.step(&grads)?,
            Some(ls) => {
                let stepped = self.opt.step_unscaled(&grads, ls.scale)?;
                ls.update(stepped);
            }
        }
        Ok(loss)
    }

    /// Read the pending losses: stop on a non-finite one (a NaN step is never
    /// checkpointed: every checkpoint comes after a read), add them to the epoch's mean, and
    /// log the steps that `log_every` picks.
    fn read_losses(&mut self, epoch: usize, progress: &dyn Progress) -> Result<()> {
        let read = self.pending.drain()?;
        for StepLoss { step, lr, loss } in read {
            if !loss.is_finite() {
                return Err(Error::invalid(format!(
                    "training diverged: loss {loss} at epoch {}, step {step} (learning rate \
                     {lr:.2e}; the batch's embeddings are finite): lower --lr, or check the \
                     targets",
                    epoch + 1
                )));
            }
            self.epoch_loss.0 += loss;
            self.epoch_loss.1 += 1;
            self.last_loss = loss;
            if self.is_log_step(step) {
                self.state.losses.push((step, loss));
                let line =
                    serde_json::json!({"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr});
                self.log_line(line)?;
            }
            progress.message(&format!("loss {loss:.3} lr {lr:.2e}"));
        }
        Ok(())
    }

    /// The batch's CLIP vectors: a caption's text vector, the normalized mean of an
    /// image's caption vectors, or the image vector (upper bound).
    fn stand_in_vectors(&self, batch: &[usize]) -> Result<candle_core::Tensor> {
        let TrainInputs {
            data,
            texts,
            images,
        } = self.inputs;
        let rows = batch
            .iter()
            .map(|&i| match &data.train[i].clip {
                ClipSource::Texts(keys) if keys.len() == 1 => {
                    lookup(texts, "text", &keys[0]).map(|v| v.to_vec())
                }
                ClipSource::Texts(keys) => mean_vector(texts, "text", keys),
                ClipSource::Image(k) => lookup(images, "image", k).map(|v| v.to_vec()),
            })
            .collect::<Result<Vec<_>>>()?;
        stack_rows(&rows, self.clip_dim, &self.device)
    }

    /// The batch's extra input text (question, hypothesis, article), if the task has one.
    fn batch_inputs(&self, batch: &[usize]) -> Result<Option<crate::model::TextInput>> {
        if self.inputs.data.train[batch[0]].input_text.is_none() {
            return Ok(None);
        }
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|&i| self.prepared[i].input.as_deref().unwrap_or(&[]))
            .collect();
        Ok(Some(self.codec.batch(&seqs, &self.device)?))
    }

    /// Every target of the batch (or `targets_per_step` of each, drawn afresh), with the
    /// row of the example each belongs to.
    fn batch_targets(&self, batch: &[usize]) -> (Vec<Vec<u32>>, Vec<usize>) {
        let (mut targets, mut mapping) = (Vec::new(), Vec::new());
        // Its own stream, so sampling targets leaves the adapter's noise unchanged.
        let seed = derive_seed(self.cfg.seed, 4, self.state.step);
        let mut target_rng = ChaCha8Rng::seed_from_u64(seed);
        for (row, &i) in batch.iter().enumerate() {
            let all = &self.prepared[i].targets;
            let picked: Vec<&Vec<u32>> = match self.cfg.targets_per_step {
                Some(k) if k < all.len() => all.choose_multiple(&mut target_rng, k).collect(),
                _ => all.iter().collect(),
            };
            for t in picked {
                targets.push(t.clone());
                mapping.push(row);
            }
        }
        (targets, mapping)
    }

    /// Val items checked after each epoch: 0 when the config asks for no check, and on the
    /// ranks other than the main one (it alone evaluates).
    fn val_count(&self) -> usize {
        if !self.dist.is_main() || !self.cfg.eval_each_epoch {
            return 0;
        }
        let n = self.cfg.max_val_examples.unwrap_or(usize::MAX);
        n.min(self.inputs.data.val.len())
    }

    /// The task metric on the (capped) val images after `epoch` (0-based), when the config
    /// asks for it then: every `val_interval`-th epoch and the last.
    fn validate(&mut self, epoch: usize, progress: &dyn Progress) -> Result<Option<Metrics>> {
        let n = self.val_count();
        let done = epoch + 1;
        let due = done.is_multiple_of(self.cfg.val_interval.max(1)) || done == self.cfg.epochs;
        if n == 0 || !due {
            return Ok(None);
        }
        let data = self.inputs.data;
        let gen = close_t5::GenerateConfig::beam(self.cfg.beams, self.cfg.max_steps());
        self.model.set_training(false);
        progress.start(&format!("{} val", self.cfg.task), n as u64);
        let ev = Evaluator {
            task: self.cfg.task,
            model: &self.model,
            codec: &self.codec,
            max_input_tokens: self.cfg.max_input_tokens,
            batch_size: self.cfg.eval_batch_size,
        };
        let images = self.inputs.images;
        let (m, _) = evaluate_examples(&ev, &data.val[..n], (images, &gen), None, progress)?;
        progress.finish();
        self.model.set_training(true);
        Ok(Some(m))
    }

    /// Record the epoch, keep the best weights, and write the `last/` checkpoint.
    fn finish_epoch(
        &mut self,
        epoch: usize,
        (train_loss, lr): (f64, f64),
        val: Option<Metrics>,
        started: Instant,
    ) -> Result<()> {
        let improved = match (&val, self.state.best_metric) {
            (Some(m), Some(b)) => m.primary > b,
            (Some(_), None) => true,
            // No validation at all: the last epoch is the best. An epoch between val checks
            // keeps the best so far.
            (None, _) => self.val_count() == 0,
        };
        if improved {
            self.state.best_epoch = Some(epoch + 1);
            self.state.best_metric = val.as_ref().map(|m| m.primary);
            if self.dist.is_main() {
                self.model.save(&self.out.join(run::MODEL_FILE))?;
            }
        }
        self.state.epoch = epoch + 1;
        self.state.seconds = self.prior_seconds + self.started.elapsed().as_secs_f64();
        let primary = val.as_ref().map(|m| (m.primary_name.clone(), m.primary));
        self.log_line(serde_json::json!({
            "step": self.state.step, "epoch": epoch + 1, "train_loss": train_loss,
            "val": primary.as_ref().map(|(k, v)| serde_json::json!({k.clone(): v})),
        }))?;
        let shown = primary.map(|(k, v)| format!(", val {k} {v:.4}"));
        let task = self.cfg.task;
        tracing::info!(
            "{task} epoch {}: loss {train_loss:.4}{}",
            epoch + 1,
            shown.unwrap_or_default()
        );
        self.state.history.push(EpochRecord {
            epoch: epoch + 1,
            steps: self.state.step,
            train_loss,
            lr,
            val: val.as_ref().map(Metrics::summary),
            seconds: started.elapsed().as_secs_f64(),
        });
        self.checkpoint()
    }

    /// The `last/` checkpoint: weights, optimizer and counters as one unit, so a kill at
    /// any moment leaves a checkpoint whose three files belong to the same epoch. With
    /// several ranks, first a check that their weights are still the same.
    fn checkpoint(&self) -> Result<()> {
        if self.dist.size() > 1 {
            dist::check_same(self.dist, "weights", dist::fingerprint(&self.vars)?)?;
        }
        if !self.dist.is_main() {
            return Ok(());
        }
        let (ost, _) = self.opt.state();
        io::replace_dir_atomic(&self.out.join(run::LAST_DIR), |dir| {
            self.model.save(&dir.join(run::MODEL_FILE))?;
            io::save_safetensors_atomic(dir.join(run::OPTIMIZER_FILE), &ost)?;
            io::write_json_atomic(dir.join(run::STATE_FILE), &self.state)
        })?;
        write_loss_plot(&self.out, &self.state);
        Ok(())
    }

    fn log_line(&mut self, v: serde_json::Value) -> Result<()> {
        use std::io::Write;
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        writeln!(log, "{v}").map_err(|e| Error::io(self.out.join(run::LOG_FILE), e))
    }

    /// Write `metrics.json` and return the summary.
    fn summary(&self) -> Result<RunSummary> {
        let state = &self.state;
        let summary = RunSummary {
            run_dir: self.out.clone(),
            task: self.cfg.task,
            epochs: self.cfg.epochs,
            steps: state.step,
            examples_per_epoch: self.per_epoch,
            best_epoch: state.best_epoch,
            best_metric: state.best_metric,
            final_train_loss: state
                .history
                .last()
                .map(|r| r.train_loss)
                .unwrap_or(self.last_loss),
            history: state.history.clone(),
            seconds: self.prior_seconds + self.started.elapsed().as_secs_f64(),
        };
        if self.dist.is_main() {
            io::write_json_atomic(self.out.join(run::METRICS_FILE), &summary)?;
        }
        Ok(summary)
    }
}

/// The config to train with: `cfg`, or on resume the run's saved one with `epochs` raised
/// to `cfg.epochs` if that is more.
fn resolved_config(cfg: &TrainConfig, out: &Path, resume: bool) -> Result<TrainConfig> {
    let cfg = if resume {
        let mut saved: TrainConfig = io::read_json(out.join(run::CONFIG_FILE))?;
        saved.epochs = saved.epochs.max(cfg.epochs);
        saved
    } else {
        cfg.clone()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The CLIP dimension the model gets; the image cache must match it when there are val
/// images to evaluate on.
fn check_dims(cfg: &TrainConfig, inputs: &TrainInputs) -> Result<usize> {
    let clip_dim = match cfg.train_on {
        TrainOn::Text => inputs.texts.dim(),
        TrainOn::Images => inputs.images.dim(),
    };
    if !inputs.data.val.is_empty() && inputs.images.dim() != clip_dim {
        return Err(Error::Shape {
            what: "image vs text embedding caches".into(),
            expected: vec![clip_dim],
            got: vec![inputs.images.dim()],
        });
    }
    Ok(clip_dim)
}

/// The adapter of a text-only run (its statistics copied into the run dir), or none for
/// the image-trained upper bound.
/// A new run's statistics are copied into `out` where `write` (rank 0).
fn build_adapter(
    cfg: &TrainConfig,
    clip_dim: usize,
    (out, resume, write): (&Path, bool, bool),
    device: &Device,
) -> Result<Adapter> {
    let on_text = cfg.train_on == TrainOn::Text;
    let stats = if on_text && cfg.adapter.kind.needs_stats() {
        let src = match resume {
            true => out.to_path_buf(),
            false => cfg.adapter_stats.clone().unwrap_or_default(),
        };
        let s = AdapterStats::load(&src)?;
        if !resume && write {
            s.save(out)?;
        }
        Some(s)
    } else {
        None
    };
    let mut acfg = cfg.adapter.clone();
    if !on_text {
        acfg.kind = crate::adapter::AdapterKind::None;
    }
    Adapter::new(acfg, clip_dim, stats, device)
}

/// Record what was resolved: the config with the real vocabulary size and the tokenizer
/// in use, the model config, and the tokenizer.
fn record_run(cfg: &TrainConfig, mcfg: &ModelConfig, codec: &TextCodec, out: &Path) -> Result<()> {
    let mut cfg = cfg.clone();
    if let T5Init::Scratch {
        config, tokenizer, ..
    } = &mut cfg.t5
    {
        config.vocab_size = mcfg.t5.vocab_size;
        *tokenizer = Some(out.join(run::TOKENIZER_FILE));
    }
    io::write_json_atomic(out.join(run::CONFIG_FILE), &cfg)?;
    io::write_json_atomic(out.join(run::MODEL_CONFIG_FILE), mcfg)?;
    close_t5::tokenizer::save(&codec.tokenizer, out.join(run::TOKENIZER_FILE))
}

/// Tokenize every training example once, and check each one's CLIP keys up front.
fn prepare_examples(
    cfg: &TrainConfig,
    inputs: &TrainInputs,
    codec: &TextCodec,
) -> Result<Vec<Prepared>> {
    let prepared = inputs
        .data
        .train
        .iter()
        .map(|ex| {
            let input = ex
                .input_text
                .as_ref()
                .map(|t| codec.encode(t, cfg.max_input_tokens))
                .transpose()?;
            let targets = ex
                .targets
                .iter()
                .map(|t| codec.encode(t, cfg.max_target_tokens))
                .collect::<Result<Vec<_>>>()?;
            if targets.is_empty() {
                return Err(Error::invalid("a training example has no target"));
            }
            check_clip_keys(&ex.clip, inputs)?;
            Ok(Prepared { input, targets })
        })
        .collect::<Result<Vec<_>>>()?;
    let has_images = inputs
        .data
        .train
        .iter()
        .any(|e| matches!(e.clip, ClipSource::Image(_)));
    if cfg.train_on == TrainOn::Text && has_images {
        return Err(Error::invalid(
            "train_on = text but the examples were built for images",
        ));
    }
    Ok(prepared)
}

fn check_clip_keys(clip: &ClipSource, inputs: &TrainInputs) -> Result<()> {
    match clip {
        ClipSource::Texts(keys) => {
            for k in keys {
                lookup(inputs.texts, "text", k)?;
            }
            if keys.is_empty() {
                return Err(Error::invalid("a training example has no stand-in text"));
            }
        }
        ClipSource::Image(k) => {
            lookup(inputs.images, "image", k)?;
        }
    }
    Ok(())
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Drop log lines written after the checkpoint at `step` (an interrupted epoch's).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    io::write_atomic(path, kept.as_bytes())
}

fn write_loss_plot(out: &Path, state: &TrainState) {
    if state.losses.len() < 2 {
        return;
    }
    let s = close_core::plot::Series::new(
        "train loss",
        state.losses.iter().map(|&(s, l)| (s as f64, l)).collect(),
    );
    if let Err(e) = close_core::plot::line_chart(
        &out.join(run::LOSS_PNG),
        "training loss",
        "step",
        "loss",
        &[s],
    ) {
        tracing::warn!("loss plot: {e}");
    }
}

/// Evaluate a loaded run on `split` (`val` / `test`) of `data` from image vectors; writes
/// the results file, predictions and `metrics.json` under `RUN/eval/<split>/` (or `out`).
pub fn evaluate(
    run: &crate::run::Run,
    data: &TaskData,
    split: &str,
    images: &dyn Embeddings,
    gen: &close_t5::GenerateConfig,
    out: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Metrics> {
    let examples = data.eval_split(split)?;
    if examples.is_empty() {
        return Err(Error::invalid(format!(
            "no {split} examples for task {}",
            run.config.task
        )));
    }
    let dir = out
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| run.dir.join("eval").join(split));
    progress.start(
        &format!("{} {split}", run.config.task),
        examples.len() as u64,
    );
    let ev = Evaluator {
        task: run.config.task,
        model: &run.model,
        codec: &run.codec,
        max_input_tokens: run.config.max_input_tokens,
        batch_size: run.config.eval_batch_size,
    };
    let (m, _) = evaluate_examples(&ev, examples, (images, gen), Some(&dir), progress)?;
    progress.finish();
    Ok(m)
}
