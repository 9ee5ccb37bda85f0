//! `close experiment`: the paper's Tables 1, 3 and 4 on any dataset in the standard formats
//! (COCO Karpathy, VQA v2, VQA-E, SNLI-VE, Visual News, a text corpus), with a CLIP and a
//! T5, in one resumable command.
//!
//! Stages, each a function in its own module taking the previous stage's output:
//! [`data`] (find and load the tasks) → [`priors`] (text-only floors) → [`embed`] (caches)
//! → [`clip_eval`] (retrieval and modality gap) → [`adapters`] (mean-shift, cov, linear)
//! → [`plan`] + [`runs`] (upper bound, noise sweep, adapter rows; resumable) → [`tuning`]
//! (the val-picked row) → [`report`] (`results.json`, `REPORT.md`, PNGs).
//!
//! Every amount of work comes from [`ExperimentConfig`], so one config and seed give the same
//! `results.json` on a fast machine and a slow one.

pub mod adapters;
pub mod clip_eval;
pub mod config;
pub mod data;
pub mod embed;
pub mod plan;
pub mod priors;
pub mod report;
pub mod results;
pub mod runs;
pub mod tuning;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use close_core::progress::Progress;
use close_core::{io, Error, Result};
use close_data::coco::Karpathy;
use close_model::config::T5Init;
use close_model::task::{DataPaths, Task};

pub use config::{ExperimentConfig, TaskSettings};
pub use results::{Results, RunRecord, RunResult};

use crate::adapters::FittedAdapters;
use crate::data::{Dropped, Skipped, TaskInputs};
use crate::embed::Caches;
use crate::priors::TextPriors;
use crate::results::{DataInfo, SplitCounts};
use crate::runs::{Job, JobInputs};

/// The settings file written into OUT (and read back by `--config`).
pub const CONFIG_FILE: &str = "experiment.json";

/// Where the data and the CLIP are.
#[derive(Debug, Clone)]
pub struct ExperimentInputs {
    /// The data dir with its file names (and overrides).
    pub data: DataPaths,
    /// Root of the images named in the Karpathy file.
    pub images: PathBuf,
    /// A CLIP in HF layout.
    pub clip: PathBuf,
    /// The user named the tasks: a missing file is an error instead of a skip.
    pub explicit_tasks: bool,
}

/// Seconds per stage, in order (this machine's; `stages.json`, never `results.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTimes(pub Vec<(String, f64)>);

/// Times consecutive stages.
pub struct Stopwatch {
    start: Instant,
    pub times: StageTimes,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            times: StageTimes::default(),
        }
    }

    /// The stage `name` ended now.
    pub fn lap(&mut self, name: &str) {
        let total = self.start.elapsed().as_secs_f64();
        let before: f64 = self.times.0.iter().map(|x| x.1).sum();
        self.times.0.push((name.to_string(), total - before));
        tracing::info!("{name}: {:.1} s", total - before);
    }
}

/// Everything an experiment produced.
pub struct ExperimentOutput {
    pub results: Results,
    pub records: Vec<RunRecord>,
    /// Runs that failed (`task / label: error`); the experiment goes on without them.
    pub failures: Vec<String>,
    pub priors: TextPriors,
    pub stages: StageTimes,
    pub skipped: Vec<Skipped>,
    pub dropped: Vec<Dropped>,
    /// Per task, the factor on its text-only runs' examples per epoch (tasks at 1 left out).
    pub text_run_scales: BTreeMap<String, f64>,
    /// The tasks that ran, in order.
    pub tasks: Vec<Task>,
}

/// The embedding caches' directory under OUT (`images/`, `texts/`).
pub fn cache_dir(out: &Path) -> PathBuf {
    out.join("cache")
}

fn split_counts(k: &Karpathy) -> SplitCounts {
    SplitCounts {
        train: k.split("train").count(),
        val: k.split("val").count(),
        test: k.split("test").count(),
    }
}

/// Run the experiment into `out`; `sw` times its stages (a caller may have timed its own).
pub fn run_experiment(
    cfg: &ExperimentConfig,
    inputs: &ExperimentInputs,
    out: &Path,
    device: &Device,
    progress: &dyn Progress,
    mut sw: Stopwatch,
) -> Result<ExperimentOutput> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    io::write_json_atomic(out.join(CONFIG_FILE), cfg)?;
    let wanted: Vec<Task> = cfg.tasks.keys().copied().collect();
    let (found, skipped) = data::discover(&wanted, &inputs.data, inputs.explicit_tasks)?;
    for s in &skipped {
        tracing::warn!("skipping task {}: no {}", s.task, s.missing.display());
    }
    let (karpathy, _) = Karpathy::load_with(inputs.data.file("karpathy", ""), &inputs.data.opts())?;
    let mut tasks = data::load_tasks(&found, &inputs.data)?;
    let priors = priors::text_priors(&tasks, &inputs.data)?;
    sw.lap("data");

    let clip = close_clip::Clip::load(&inputs.clip, device)?;
    let caches = embed::embed_all(
        &clip,
        &karpathy,
        &inputs.images,
        &tasks,
        &cache_dir(out),
        cfg.embed_batch,
        progress,
    )?;
    drop(clip);
    let dropped = data::retain_embedded(&mut tasks, &caches.texts, &caches.images)?;
    sw.lap("embed");
    let clip_info =
        clip_eval::clip_on_test(&karpathy, &caches, cfg.seed, &out.join("gap_pca.png"))?;
    sw.lap("clip");
    let adapters = adapters::fit_adapters(cfg, &karpathy, &caches, &out.join("adapters"))?;
    sw.lap("adapters");

    let (jobs, text_run_scales) = build_jobs(cfg, &tasks, &adapters, &caches, &out.join("runs"))?;
    let (records, failures) = runs::run_jobs(cfg, &jobs, &caches, device, progress)?;
    drop(jobs);
    sw.lap("runs");
    let results = Results {
        data: DataInfo {
            seed: cfg.seed,
            images: split_counts(&karpathy),
        },
        clip: clip_info,
        runs: tuning::table_rows(cfg, &found, &records, &test_items(&records, &tasks)),
    };
    Ok(ExperimentOutput {
        results,
        records,
        failures,
        priors,
        stages: sw.times,
        skipped,
        dropped,
        text_run_scales,
        tasks: found,
    })
}

/// The per-item test scores of every run that has them.
fn test_items(records: &[RunRecord], tasks: &[TaskInputs]) -> tuning::TestItems {
    records
        .iter()
        .filter_map(|r| {
            let task = r.result.task;
            let input = tasks.iter().find(|t| t.task == task)?;
            let items = runs::test_items(&r.run_dir, task, &input.text.test)?;
            Some((r.run_dir.clone(), items))
        })
        .collect()
}

/// A from-scratch T5's tokenizer for `input`'s task, trained on its text and written to
/// `runs_dir/<task>/tokenizer.json` (rewritten only when it changes), with the SHA-256 of
/// that file; None for a pretrained T5, whose own tokenizer is used.
fn task_tokenizer(
    cfg: &ExperimentConfig,
    input: &TaskInputs,
    runs_dir: &Path,
) -> Result<Option<(PathBuf, String)>> {
    let T5Init::Scratch { vocab, .. } = &cfg.t5 else {
        return Ok(None);
    };
    let path = runs_dir.join(input.task.name()).join("tokenizer.json");
    let tok = close_t5::tokenizer::train_tokenizer(input.text.tokenizer_corpus(), *vocab)?;
    let json = tok
        .to_string(true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(json.as_str()) {
        io::write_atomic(&path, json.as_bytes())?;
    }
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json.as_bytes()));
    Ok(Some((path, hash)))
}

/// Every task's runs as jobs, and the equal-targets factors that are not 1.
fn build_jobs<'a>(
    cfg: &ExperimentConfig,
    tasks: &'a [TaskInputs],
    adapters: &FittedAdapters,
    caches: &Caches,
    runs_dir: &Path,
) -> Result<(Vec<Job<'a>>, BTreeMap<String, f64>)> {
    let clip_hash = caches.images.model_hash().to_string();
    let mut jobs = Vec::new();
    let mut scales = BTreeMap::new();
    for input in tasks {
        let task = input.task;
        let scale = plan::text_run_scale(cfg, task, &input.text, input.images.as_ref());
        if scale != 1.0 {
            tracing::info!("{task}: text-only runs get {scale:.2}x the image run's examples per epoch (equal targets)");
            scales.insert(task.to_string(), scale);
        }
        let tokenizer = task_tokenizer(cfg, input, runs_dir)?;
        let text_hash = runs::data_hash(&input.text)?;
        let image_hash = input.images.as_ref().map(runs::data_hash).transpose()?;
        for p in plan::plans(cfg, task, input.images.is_some()) {
            let (data, scale, hash) = match (p.train_on, &input.images, &image_hash) {
                (close_model::task::TrainOn::Images, Some(d), Some(h)) => (d, 1.0, h),
                (close_model::task::TrainOn::Images, _, _) => {
                    return Err(Error::invalid(format!("{task}: no image-trained data")))
                }
                (close_model::task::TrainOn::Text, _, _) => (&input.text, scale, &text_hash),
            };
            let inp = JobInputs {
                cfg,
                data_hash: hash,
                clip_hash: &clip_hash,
                tokenizer: tokenizer.as_ref().map(|(p, h)| (p.as_path(), h.as_str())),
                adapter: adapters.get(p.adapter),
                runs_dir,
            };
            jobs.push(runs::job(p, data, scale, &inp)?);
        }
    }
    Ok((jobs, scales))
}
