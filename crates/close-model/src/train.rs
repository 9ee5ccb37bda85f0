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

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use close_core::optim::AdamW;
use close_core::progress::Progress;
use close_core::{io, Error, Result};
use close_t5::T5Config;

use crate::adapter::{Adapter, AdapterStats};
use crate::config::{T5Init, TrainConfig};
use crate::embeddings::{lookup, mean_vector, stack_rows, Embeddings};
use crate::eval::{evaluate_examples, Metrics};
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        let tok = close_t5::tokenizer::load(dir.join(run::TOKENIZER_FILE))?;
        let codec = TextCodec::new(tok, mcfg.t5.pad_token_id, mcfg.t5.eos_token_id);
        return Ok((mcfg, codec, None));
    }
    let (t5, tok, weights) = match &cfg.t5 {
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
            (t5, tok, None)
        }
        T5Init::Pretrained { dir: t5dir } => {
            let (config, files) = close_t5::weights::checkpoint_files(t5dir)?;
            let t5 = T5Config::from_file(&config)?;
            let tok = close_t5::tokenizer::load(t5dir.join("tokenizer.json"))?;
            (t5, tok, Some(files))
        }
    };
    let mcfg = ModelConfig {
        t5,
        clip_dim,
        n_prefix: cfg.n_prefix,
        reference_encoder_mask_quirk: cfg.reference_encoder_mask_quirk,
    };
    let codec = TextCodec::new(tok, mcfg.t5.pad_token_id, mcfg.t5.eos_token_id);
    Ok((mcfg, codec, weights))
}

/// Train a CLOSE model on `data` into `out` (the run dir). `texts` holds the CLIP text
/// vectors (keyed by exact text), `images` the image vectors (keyed by image id); both
/// unit-normalized. With `resume`, continue the run in `out` from its `last/` checkpoint
/// (its saved config wins over `cfg`, except `epochs`, which may be raised).
// To become a trainer with prepare / resume / epoch / checkpoint steps (issue 21).
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &TrainConfig,
    data: &TaskData,
    texts: &dyn Embeddings,
    images: &dyn Embeddings,
    out: &Path,
    resume: bool,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunSummary> {
    train_until(
        cfg, data, texts, images, out, resume, None, device, progress,
    )
}

/// [`train`], stopping (as if killed) after `stop_after_epochs` completed epochs in total;
/// the run can then be continued with `resume`. Used to test resumption.
#[allow(clippy::too_many_arguments)]
pub fn train_until(
    cfg: &TrainConfig,
    data: &TaskData,
    texts: &dyn Embeddings,
    images: &dyn Embeddings,
    out: &Path,
    resume: bool,
    stop_after_epochs: Option<usize>,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let cfg = if resume {
        let mut saved: TrainConfig = io::read_json(out.join(run::CONFIG_FILE))?;
        saved.epochs = saved.epochs.max(cfg.epochs);
        saved
    } else {
        cfg.clone()
    };
    cfg.validate()?;
    let clip_dim = match cfg.train_on {
        TrainOn::Text => texts.dim(),
        TrainOn::Images => images.dim(),
    };
    if !data.val.is_empty() && images.dim() != clip_dim {
        return Err(Error::Shape {
            what: "image vs text embedding caches".into(),
            expected: vec![clip_dim],
            got: vec![images.dim()],
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    // Adapter statistics.
    let stats = if cfg.train_on == TrainOn::Text && cfg.adapter.kind.needs_stats() {
        let src = if resume {
            out.to_path_buf()
        } else {
            cfg.adapter_stats.clone().unwrap_or_default()
        };
        let s = AdapterStats::load(&src)?;
        if !resume {
            s.save(out)?;
        }
        Some(s)
    } else {
        None
    };
    let adapter = Adapter::new(
        if cfg.train_on == TrainOn::Text {
            cfg.adapter.clone()
        } else {
            crate::adapter::AdapterConfig {
                kind: crate::adapter::AdapterKind::None,
                ..cfg.adapter.clone()
            }
        },
        clip_dim,
        stats,
        device,
    )?;

    let (mcfg, codec, pretrained) = setup_model(&cfg, data, clip_dim, out, resume)?;
    let mut model = CloseModel::new(mcfg.clone(), cfg.seed, device)?;
    if let Some(files) = &pretrained {
        close_t5::weights::load_into_varmap(model.varmap(), files, |n| n.starts_with("prefix."))?;
    }
    model.set_training(true);
    if !resume {
        // Record what was resolved: the real vocabulary size and the tokenizer in use.
        let mut cfg = cfg.clone();
        if let T5Init::Scratch {
            config, tokenizer, ..
        } = &mut cfg.t5
        {
            config.vocab_size = mcfg.t5.vocab_size;
            *tokenizer = Some(out.join(run::TOKENIZER_FILE));
        }
        io::write_json_atomic(out.join(run::CONFIG_FILE), &cfg)?;
        io::write_json_atomic(out.join(run::MODEL_CONFIG_FILE), &mcfg)?;
        close_t5::tokenizer::save(&codec.tokenizer, out.join(run::TOKENIZER_FILE))?;
    }

    // Pre-tokenize, and check every CLIP key up front (a clear error before training).
    let prepared = data
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
            match &ex.clip {
                ClipSource::Texts(keys) => {
                    for k in keys {
                        lookup(texts, "text", k)?;
                    }
                    if keys.is_empty() {
                        return Err(Error::invalid("a training example has no stand-in text"));
                    }
                }
                ClipSource::Image(k) => {
                    lookup(images, "image", k)?;
                }
            }
            Ok(Prepared { input, targets })
        })
        .collect::<Result<Vec<_>>>()?;
    if cfg.train_on == TrainOn::Text
        && data
            .train
            .iter()
            .any(|e| matches!(e.clip, ClipSource::Image(_)))
    {
        return Err(Error::invalid(
            "train_on = text but the examples were built for images",
        ));
    }

    let n = data.train.len();
    let per_epoch = cfg.max_examples_per_epoch.map(|c| c.min(n)).unwrap_or(n);
    let steps_per_epoch = per_epoch.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let sched = LinearSchedule {
        peak: cfg.optim.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps,
        final_ratio: cfg.final_lr_ratio,
    };
    let mut opt = AdamW::from_varmap(model.varmap(), cfg.optim)?;

    let mut state = TrainState {
        epoch: 0,
        step: 0,
        best_epoch: None,
        best_metric: None,
        history: vec![],
        losses: vec![],
        seconds: 0.0,
    };
    let last = out.join(run::LAST_DIR);
    if resume {
        io::recover_dir(&last)?;
        model.load_weights(&last.join(run::MODEL_FILE))?;
        let opt_path = last.join(run::OPTIMIZER_FILE);
        let t = candle_core::safetensors::load(&opt_path, device)
            .map_err(|e| Error::format(&opt_path, None, e.to_string()))?;
        state = io::read_json(last.join(run::STATE_FILE))?;
        opt.load_state(&t, state.step)?;
        // Drop log lines written after the checkpoint (an interrupted epoch).
        let log_path = out.join(run::LOG_FILE);
        if let Ok(text) = std::fs::read_to_string(&log_path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= state.step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            io::write_atomic(&log_path, kept.as_bytes())?;
        }
        tracing::info!(
            "resuming {} at epoch {} (step {})",
            out.display(),
            state.epoch,
            state.step
        );
    } else {
        io::write_atomic(out.join(run::LOG_FILE), b"")?;
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out.join(run::LOG_FILE))
        .map_err(|e| Error::io(out.join(run::LOG_FILE), e))?;
    let mut log_line = |v: serde_json::Value| -> Result<()> {
        use std::io::Write;
        writeln!(log, "{v}").map_err(|e| Error::io(out.join(run::LOG_FILE), e))
    };

    let gen = close_t5::GenerateConfig::beam(cfg.beams, cfg.max_steps());
    let val: Vec<_> = match cfg.max_val_examples {
        Some(m) => data.val.iter().take(m).cloned().collect(),
        None => data.val.clone(),
    };
    let prior_seconds = state.seconds;
    let mut last_loss = f64::NAN;
    let end = stop_after_epochs
        .map(|s| s.min(cfg.epochs))
        .unwrap_or(cfg.epochs);
    for epoch in state.epoch..end {
        let te = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            cfg.seed,
            1,
            epoch as u64,
        )));
        order.truncate(per_epoch);
        progress.start(
            &format!("{} ep {}/{}", cfg.task, epoch + 1, cfg.epochs),
            steps_per_epoch,
        );
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        let mut lr = sched.lr(state.step);
        for batch in order.chunks(cfg.batch_size) {
            lr = sched.lr(state.step);
            opt.set_lr(lr);
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, 2, state.step));
            // Dropout masks follow the step too, so a resumed run replays them.
            close_core::fused::seed_dropout(derive_seed(cfg.seed, 3, state.step));
            // Stand-in vectors.
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
            let clip = stack_rows(&rows, clip_dim, device)?;
            let clip = adapter.train_forward(&clip, &mut rng)?;
            let input = if data.train[batch[0]].input_text.is_some() {
                let seqs: Vec<&[u32]> = batch
                    .iter()
                    .map(|&i| prepared[i].input.as_deref().unwrap_or(&[]))
                    .collect();
                Some(codec.batch(&seqs, device)?)
            } else {
                None
            };
            let mut targets = Vec::new();
            let mut mapping = Vec::new();
            // Its own stream, so sampling targets leaves the adapter's noise unchanged.
            let mut target_rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, 4, state.step));
            for (row, &i) in batch.iter().enumerate() {
                let all = &prepared[i].targets;
                match cfg.targets_per_step {
                    Some(k) if k < all.len() => {
                        for t in all.choose_multiple(&mut target_rng, k) {
                            targets.push(t.clone());
                            mapping.push(row);
                        }
                    }
                    _ => {
                        for t in all {
                            targets.push(t.clone());
                            mapping.push(row);
                        }
                    }
                }
            }
            let loss = model.loss(&clip, input.as_ref(), &targets, &mapping)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::invalid(format!(
                    "training diverged: loss {lv} at epoch {}, step {} (learning rate {lr:.2e}; \
                     the batch's embeddings are finite): lower --lr, or check the targets",
                    epoch + 1,
                    state.step + 1
                )));
            }
            opt.backward_step(&loss)?;
            close_core::pace::step();
            state.step += 1;
            loss_sum += lv;
            loss_n += 1;
            last_loss = lv;
            if state.step.is_multiple_of(cfg.log_every.max(1)) || state.step == 1 {
                state.losses.push((state.step, lv));
                log_line(
                    serde_json::json!({"step": state.step, "epoch": epoch + 1, "loss": lv, "lr": lr}),
                )?;
            }
            progress.inc(1);
            progress.message(&format!("loss {lv:.3} lr {lr:.2e}"));
        }
        progress.finish();
        let train_loss = loss_sum / loss_n.max(1) as f64;

        // Validation on images.
        let val_metrics = if cfg.eval_each_epoch && !val.is_empty() {
            model.set_training(false);
            progress.start(&format!("{} val", cfg.task), val.len() as u64);
            let (m, _) = evaluate_examples(
                cfg.task,
                &model,
                &codec,
                &val,
                images,
                &gen,
                cfg.max_input_tokens,
                cfg.eval_batch_size,
                None,
                progress,
            )?;
            progress.finish();
            model.set_training(true);
            Some(m)
        } else {
            None
        };
        let improved = match (&val_metrics, state.best_metric) {
            (Some(m), Some(b)) => m.primary > b,
            (Some(_), None) => true,
            (None, _) => true, // no validation: the last epoch is the best
        };
        if improved {
            state.best_epoch = Some(epoch + 1);
            state.best_metric = val_metrics.as_ref().map(|m| m.primary);
            model.save(&out.join(run::MODEL_FILE))?;
        }
        state.epoch = epoch + 1;
        state.seconds = prior_seconds + t0.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            steps: state.step,
            train_loss,
            lr,
            val: val_metrics.clone(),
            seconds: te.elapsed().as_secs_f64(),
        };
        log_line(serde_json::json!({
            "step": state.step, "epoch": epoch + 1, "train_loss": train_loss,
            "val": val_metrics.as_ref().map(|m| serde_json::json!({m.primary_name.clone(): m.primary})),
        }))?;
        tracing::info!(
            "{} epoch {}: loss {:.4}{}",
            cfg.task,
            epoch + 1,
            train_loss,
            val_metrics
                .as_ref()
                .map(|m| format!(", val {} {:.4}", m.primary_name, m.primary))
                .unwrap_or_default()
        );
        state.history.push(rec);
        // Last checkpoint: weights, optimizer and counters as one unit, so a kill at any
        // moment leaves a checkpoint whose three files belong to the same epoch.
        let (ost, _) = opt.state();
        io::replace_dir_atomic(&last, |dir| {
            model.save(&dir.join(run::MODEL_FILE))?;
            io::save_safetensors_atomic(dir.join(run::OPTIMIZER_FILE), &ost)?;
            io::write_json_atomic(dir.join(run::STATE_FILE), &state)
        })?;
        write_loss_plot(out, &state);
    }
    let summary = RunSummary {
        run_dir: out.to_path_buf(),
        task: cfg.task,
        epochs: cfg.epochs,
        steps: state.step,
        examples_per_epoch: per_epoch,
        best_epoch: state.best_epoch,
        best_metric: state.best_metric,
        final_train_loss: state
            .history
            .last()
            .map(|r| r.train_loss)
            .unwrap_or(last_loss),
        history: state.history.clone(),
        seconds: prior_seconds + t0.elapsed().as_secs_f64(),
    };
    io::write_json_atomic(out.join(run::METRICS_FILE), &summary)?;
    Ok(summary)
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
    let (m, _) = evaluate_examples(
        run.config.task,
        &run.model,
        &run.codec,
        examples,
        images,
        gen,
        run.config.max_input_tokens,
        run.config.eval_batch_size,
        Some(&dir),
        progress,
    )?;
    progress.finish();
    Ok(m)
}
