//! Stage: train and score every planned run, resumably.
//!
//! A run's directory is named by a hash of everything that decides its result (the resolved
//! trainer config, the data, the CLIP, the adapter fit, the tokenizer, the beam width). On a
//! rerun into the same OUT:
//! - a run whose `result.json` carries its key is taken as it is (nothing re-scored);
//! - an interrupted run continues from its last checkpoint (`close train --resume`, which
//!   ends with the same weights as an uninterrupted run);
//! - each evaluation (val, test, greedy test) is kept in `eval/<name>/score.json` once done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use close_core::progress::{NoProgress, Progress};
use close_core::{io, Error, Result};
use close_model::adapter::FitSpec;
use close_model::config::{T5Init, TrainConfig};
use close_model::eval::{Metrics, Prediction};
use close_model::run::{self, Run};
use close_model::task::{EvalExample, MetricKind, Task, TaskData};
use close_model::train::TrainInputs;

use crate::config::ExperimentConfig;
use crate::embed::Caches;
use crate::plan::Plan;
use crate::results::{RunRecord, RunResult};

/// A finished run's record, with the key it was made under.
const RESULT_FILE: &str = "result.json";
/// An evaluation's metrics, beside its predictions.
const SCORE_FILE: &str = "score.json";

/// One run, ready to execute.
pub struct Job<'a> {
    pub plan: Plan,
    pub data: &'a TaskData,
    /// The resolved trainer config.
    pub train: TrainConfig,
    /// Hash of everything that decides the result.
    pub key: String,
    pub dir: PathBuf,
}

/// What besides the trainer config decides a run's result (hashed into its key).
#[derive(Serialize)]
struct RunKey<'a> {
    train: &'a TrainConfig,
    beams: usize,
    data: &'a str,
    clip: &'a str,
    adapter_fit: Option<&'a FitSpec>,
    tokenizer: Option<&'a str>,
}

/// The inputs a job is built from besides its plan.
pub struct JobInputs<'a> {
    pub cfg: &'a ExperimentConfig,
    /// Hash of the task data the run trains on.
    pub data_hash: &'a str,
    /// The CLIP's model hash (of the caches).
    pub clip_hash: &'a str,
    /// A from-scratch T5's tokenizer file and its SHA-256.
    pub tokenizer: Option<(&'a Path, &'a str)>,
    pub adapter: Option<&'a (PathBuf, FitSpec)>,
    pub runs_dir: &'a Path,
}

/// An `io::Write` that hashes what is written (JSON is streamed into it, never held whole).
struct Hasher(sha2::Sha256);

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sha256_json<T: Serialize>(v: &T) -> Result<String> {
    let mut h = Hasher(<sha2::Sha256 as sha2::Digest>::new());
    serde_json::to_writer(&mut h, v)?;
    Ok(hex::encode(sha2::Digest::finalize(h.0)))
}

/// Hash of a task's examples (part of every run key).
pub fn data_hash(data: &TaskData) -> Result<String> {
    sha256_json(data)
}

/// Resolve `plan` into a job: its trainer config, key and directory. `scale` multiplies
/// the examples-per-epoch cap (equal targets).
pub fn job<'a>(plan: Plan, data: &'a TaskData, scale: f64, inp: &JobInputs) -> Result<Job<'a>> {
    let settings = inp.cfg.settings(plan.task)?;
    let mut tc = inp.cfg.train_config(plan.task, settings);
    tc.train_on = plan.train_on;
    tc.adapter.kind = plan.adapter;
    tc.adapter.noise = plan.noise;
    tc.max_examples_per_epoch = tc
        .max_examples_per_epoch
        .map(|n| ((n as f64 * scale).round() as usize).max(1));
    let adapter = if plan.adapter.needs_stats() {
        let a = inp.adapter.ok_or_else(|| {
            Error::invalid(format!("adapter {} was not fitted", plan.adapter.name()))
        })?;
        Some(a)
    } else {
        None
    };
    let key = sha256_json(&RunKey {
        train: &tc,
        beams: inp.cfg.beams,
        data: inp.data_hash,
        clip: inp.clip_hash,
        adapter_fit: adapter.map(|a| &a.1),
        tokenizer: inp.tokenizer.map(|(_, hash)| hash),
    })?;
    tc.adapter_stats = adapter.map(|a| a.0.clone());
    if let (T5Init::Scratch { tokenizer: t, .. }, Some((p, _))) = (&mut tc.t5, inp.tokenizer) {
        *t = Some(p.to_path_buf());
    }
    let name = format!(
        "{}-{}-w{}-{}",
        plan.train_on.name(),
        plan.adapter.name(),
        plan.noise,
        &key[..10]
    );
    let dir = inp.runs_dir.join(plan.task.name()).join(name);
    Ok(Job {
        plan,
        data,
        train: tc,
        key,
        dir,
    })
}

/// A progress sink that names the run in every stage it reports (`run 3/19 s-cap ep 1/7`).
struct RunProgress<'a> {
    inner: &'a dyn Progress,
    prefix: String,
}

impl Progress for RunProgress<'_> {
    fn start(&self, stage: &str, total: u64) {
        self.inner.start(&format!("{} {stage}", self.prefix), total);
    }
    fn inc(&self, n: u64) {
        self.inner.inc(n);
    }
    fn message(&self, msg: &str) {
        self.inner.message(msg);
    }
    fn finish(&self) {
        self.inner.finish();
    }
}

/// Run `jobs` one after the other, each run's epochs and evaluations on their own bars.
fn run_sequentially(
    cfg: &ExperimentConfig,
    jobs: &[Job],
    caches: &Caches,
    device: &Device,
    progress: &dyn Progress,
) -> Vec<Option<Result<RunRecord>>> {
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let p = RunProgress {
                inner: progress,
                prefix: format!("run {}/{}", i + 1, jobs.len()),
            };
            Some(run_one(cfg, job, caches, device, &p))
        })
        .collect()
}

/// Run `jobs` on `cfg.jobs` workers, each with its own rayon pool (a tiny model's kernels
/// are too small to split across threads, so runs side by side use the cores better), under
/// one bar that counts finished runs.
fn run_in_parallel(
    cfg: &ExperimentConfig,
    jobs: &[Job],
    caches: &Caches,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Vec<Option<Result<RunRecord>>>> {
    progress.start("CLOSE runs", jobs.len() as u64);
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<RunRecord>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let workers = cfg.jobs.max(1);
    // The global pool's size (`RAYON_NUM_THREADS`, the one thread knob): matmuls split their
    // work by thread count, so the float rounding, and the results, follow it.
    let cores = rayon::current_num_threads();
    let pools = (0..workers)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads((cores / workers).max(1))
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("cannot start the CLOSE run workers: {e}")))?;
    std::thread::scope(|scope| {
        for pool in &pools {
            let worker = || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let r = run_one(cfg, job, caches, device, &NoProgress);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
                progress.inc(1);
                progress.message(&format!("{} {}", job.plan.task, job.plan.label));
            };
            scope.spawn(move || pool.install(worker));
        }
    });
    progress.finish();
    Ok(slots
        .into_iter()
        .map(|s| s.into_inner().ok().flatten())
        .collect())
}

/// Run every job (side by side when `cfg.jobs` > 1). Returns the records in job order and
/// the failures (`task / label: error`); a failed run does not stop the others.
pub fn run_jobs(
    cfg: &ExperimentConfig,
    jobs: &[Job],
    caches: &Caches,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Vec<RunRecord>, Vec<String>)> {
    let outcomes = if cfg.jobs <= 1 {
        run_sequentially(cfg, jobs, caches, device, progress)
    } else {
        run_in_parallel(cfg, jobs, caches, device, progress)?
    };
    let (mut records, mut failures) = (Vec::new(), Vec::new());
    for (job, outcome) in jobs.iter().zip(outcomes) {
        let what = format!("{} / {}", job.plan.task, job.plan.label);
        match outcome {
            Some(Ok(r)) => records.push(r),
            Some(Err(e)) => {
                tracing::error!("run {what} failed: {e}");
                failures.push(format!("{what}: {e}"));
            }
            None => failures.push(format!("{what}: did not run")),
        }
    }
    Ok((records, failures))
}

#[derive(Serialize, Deserialize)]
struct SavedResult {
    key: String,
    record: RunRecord,
}

fn run_one(
    cfg: &ExperimentConfig,
    job: &Job,
    caches: &Caches,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunRecord> {
    if let Ok(saved) = io::read_json::<SavedResult>(job.dir.join(RESULT_FILE)) {
        if saved.key == job.key {
            // The run is where the job is now, wherever OUT was when it ran.
            let run_dir = job.dir.clone();
            return Ok(RunRecord {
                run_dir,
                ..saved.record
            });
        }
    }
    let resume = run::has_checkpoint(&job.dir)?;
    tracing::info!(
        "run {} ({}){}",
        job.dir.display(),
        job.plan.label,
        if resume { ", resumed" } else { "" }
    );
    let (texts, images) = (&caches.texts, &caches.images);
    let inputs = TrainInputs {
        data: job.data,
        texts,
        images,
    };
    let summary =
        close_model::train::train(&job.train, inputs, &job.dir, resume, device, progress)?;
    let run = Run::load(&job.dir, device)?;
    let val = if job.data.val.is_empty() {
        None
    } else {
        Some(scored(
            &run,
            job,
            ("val", cfg.beams, "val"),
            caches,
            progress,
        )?)
    };
    let test = scored(&run, job, ("test", cfg.beams, "test"), caches, progress)?;
    let mut metrics = result_metrics(job.plan.task, &test);
    if metrics.contains_key("CIDEr") {
        let greedy = match cfg.beams {
            1 => test.primary,
            _ => scored(&run, job, ("test", 1, "test-greedy"), caches, progress)?.primary,
        };
        metrics.insert("CIDEr_greedy".into(), serde_json::json!(greedy));
    }
    let state: Option<close_model::train::TrainState> =
        io::read_json(job.dir.join(run::LAST_DIR).join(run::STATE_FILE)).ok();
    let record = RunRecord {
        result: RunResult {
            task: job.plan.task,
            train_on: job.plan.train_on,
            adapter: job.plan.adapter,
            noise: job.plan.noise,
            metrics,
            label: Some(job.plan.label.clone()),
            ratio_stderr: None,
        },
        val: val.as_ref().map(|m| m.primary),
        val_stderr: val.as_ref().and_then(val_stderr),
        losses: state
            .map(|s| s.losses.iter().map(|&(a, b)| (a as f64, b)).collect())
            .unwrap_or_default(),
        seconds: summary.seconds,
        run_dir: job.dir.clone(),
    };
    io::write_json_atomic(
        job.dir.join(RESULT_FILE),
        &SavedResult {
            key: job.key.clone(),
            record: record.clone(),
        },
    )?;
    Ok(record)
}

/// The metrics of `run` on `split` at `beams` (`what`: split, beams, output name), from
/// `eval/<name>/score.json` when an earlier attempt already scored it.
fn scored(
    run: &Run,
    job: &Job,
    (split, beams, name): (&str, usize, &str),
    caches: &Caches,
    progress: &dyn Progress,
) -> Result<Metrics> {
    let dir = job.dir.join("eval").join(name);
    if let Ok(m) = io::read_json::<Metrics>(dir.join(SCORE_FILE)) {
        return Ok(m);
    }
    let gen = run.generate_config(Some(beams), None);
    let m = close_model::train::evaluate(
        run,
        job.data,
        split,
        &caches.images,
        &gen,
        Some(&dir),
        progress,
    )?;
    io::write_json_atomic(dir.join(SCORE_FILE), &m)?;
    Ok(m)
}

/// The per-item test scores of the run in `run_dir` (`eval/test/score.json`). A run scored
/// before per-item scores were kept has its saved predictions scored again against
/// `examples` (its test items), and its `score.json` rewritten with them. None when it was
/// not scored, or when the predictions no longer give the score it had.
pub fn test_items(run_dir: &Path, task: Task, examples: &[EvalExample]) -> Option<Vec<f64>> {
    let dir = run_dir.join("eval").join("test");
    let m: Metrics = io::read_json(dir.join(SCORE_FILE)).ok()?;
    if !m.items.is_empty() {
        return Some(m.items);
    }
    let preds: Vec<Prediction> = io::read_json(dir.join("predictions.json")).ok()?;
    let again = close_model::eval::score(task, examples, &preds).ok()?;
    if again.primary != m.primary {
        tracing::warn!(
            "{}: its saved predictions no longer give its score; no per-item scores",
            dir.display()
        );
        return None;
    }
    if let Err(e) = io::write_json_atomic(dir.join(SCORE_FILE), &again) {
        tracing::warn!("{e}");
    }
    Some(again.items)
}

/// Standard error of a val metric: CIDEr's from its per-image scores; an accuracy's (0–100)
/// binomial one (VQA's soft accuracy is bounded by it).
fn val_stderr(m: &Metrics) -> Option<f64> {
    if m.task.metric() == MetricKind::Caption {
        return m.scores.get("CIDEr_stderr").and_then(|v| v.as_f64());
    }
    if m.count == 0 {
        return None;
    }
    let p = (m.primary / 100.0).clamp(0.0, 1.0);
    Some(100.0 * (p * (1.0 - p) / m.count as f64).sqrt())
}

/// A run's test metrics in `results.json`'s convention.
fn result_metrics(
    task: Task,
    m: &Metrics,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    match task.metric() {
        MetricKind::Vqa => {
            out.insert("accuracy".into(), serde_json::json!(m.primary));
            if let Some(c) = m.scores.get("explanation").and_then(|e| e.get("CIDEr")) {
                out.insert("explanation_CIDEr".into(), c.clone());
            }
            for k in ["perQuestionType", "perAnswerType"] {
                if let Some(q) = m.scores.get(k) {
                    out.insert(k.into(), q.clone());
                }
            }
        }
        MetricKind::Entailment => {
            out.insert("accuracy".into(), serde_json::json!(m.primary));
        }
        MetricKind::Caption => {
            for k in ["CIDEr", "Bleu_4", "ROUGE_L"] {
                if let Some(v) = m.scores.get(k) {
                    out.insert(k.into(), v.clone());
                }
            }
        }
    }
    out
}
