//! `close train`: train a CLOSE model for one task (text-only by default) into a run dir.

use std::path::PathBuf;

use close_clip::cache::EmbeddingCache;
use close_core::dist::{Backend, Collective};
use close_model::adapter::AdapterKind;
use close_model::config::{Precision, T5Init, TrainConfig};
use close_model::task::{DataPaths, Task, TaskData, TrainOn};

use close_model::hub::ModelKind;
use close_model::run::OutDir;

use crate::common::{resolve, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The task.
    #[arg(long, value_enum)]
    pub task: Task,
    /// Dataset dir (e.g. a `close world` output) with the standard file names.
    #[arg(long)]
    pub data: PathBuf,
    /// Override one data file: KEY=PATH (keys: karpathy, vqa_questions.train,
    /// vqa_annotations.val, vqae.train, ve.test, news.train, news_root, style_train, style_refs.test …).
    #[arg(long = "file", value_name = "KEY=PATH")]
    pub files: Vec<String>,
    /// Skip malformed records instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Embedding cache of caption texts (keyed by text).
    #[arg(long)]
    pub text_cache: PathBuf,
    /// Embedding cache of images (keyed by image id).
    #[arg(long)]
    pub image_cache: PathBuf,
    /// CLIP model dir or hub id: texts missing from --text-cache are embedded with it and
    /// added to the cache; recorded in the run for `close predict`.
    #[arg(long)]
    pub clip: Option<String>,
    /// Run dir to create (or continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an interrupted run in --out from its last checkpoint (a run killed before
    /// its first checkpoint starts again from the beginning).
    #[arg(long)]
    pub resume: bool,
    /// Delete the run already in --out and start a new one.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// What the model sees in training (default: --config's, else text).
    #[arg(long, value_enum)]
    pub train_on: Option<TrainOn>,
    /// What is done to the text vector in training (default: --config's, else noise).
    #[arg(long, value_enum)]
    pub adapter: Option<AdapterKind>,
    /// Noise level w (default: --config's unless --adapter is given, else the reference's
    /// value for the task and adapter).
    #[arg(long, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub noise: Option<f64>,
    /// Fitted adapter statistics (`close adapter fit --out DIR`).
    #[arg(long)]
    pub adapter_stats: Option<PathBuf>,
    /// T5: a preset to train from scratch (`small`, `tiny`, or a pretrained model's shape:
    /// `scratch:t5-small`, `scratch:t5-base`), or a pretrained HF dir / hub id (`t5-base`,
    /// `google/flan-t5-base`; taken from the HF cache, downloaded when missing).
    #[arg(long, default_value = "small")]
    pub t5: String,
    /// Tokenizer size when T5 is trained from scratch.
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub vocab: Option<usize>,
    /// A TrainConfig JSON to start from (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_examples_per_epoch: Option<usize>,
    /// Train on at most this many of an example's targets per step, drawn afresh each step
    /// (default: all, as the reference).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub targets_per_step: Option<usize>,
    #[arg(long, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Beams for validation decoding.
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub beams: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// Evaluate on at most N val items per epoch.
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_val: Option<usize>,
    /// Validate only every N epochs and after the last (long runs whose best epoch comes
    /// late).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub val_interval: Option<usize>,
    /// Skip the per-epoch validation (the last epoch becomes the best checkpoint).
    #[arg(long)]
    pub no_eval: bool,
    /// The dtype to train in: bf16 or f16 for GPUs, with f32 master weights in the
    /// optimizer (and a dynamic loss scale for f16). Default: the config's, else f32.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
    /// Log the loss every N steps (and at step 1).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub log_every: Option<usize>,
    /// How the ranks of `mpirun -np N close train …` sum their gradients: nccl on GPUs when
    /// built with the nccl feature, else mpi (docs/scale.md).
    #[arg(long, value_enum, default_value_t = AllReduce::Auto)]
    pub all_reduce: AllReduce,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// `--all-reduce`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllReduce {
    Auto,
    Mpi,
    Nccl,
}

impl From<AllReduce> for Backend {
    fn from(a: AllReduce) -> Self {
        match a {
            AllReduce::Auto => Backend::Auto,
            AllReduce::Mpi => Backend::Mpi,
            AllReduce::Nccl => Backend::Nccl,
        }
    }
}

fn parse_files(files: &[String], paths: &mut DataPaths) -> anyhow::Result<()> {
    for f in files {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--file {f}: expected KEY=PATH"))?;
        paths
            .overrides
            .insert(k.trim().to_string(), PathBuf::from(v));
    }
    Ok(())
}

pub fn data_paths(
    data: &std::path::Path,
    files: &[String],
    skip_bad: bool,
) -> anyhow::Result<DataPaths> {
    let mut paths = DataPaths::new(data);
    paths.skip_bad = skip_bad;
    parse_files(files, &mut paths)?;
    Ok(paths)
}

pub(crate) fn t5_init(
    spec: &str,
    vocab: Option<usize>,
    base: &TrainConfig,
    ctx: &Ctx,
) -> anyhow::Result<T5Init> {
    let preset = match spec {
        "small" => match &base.t5 {
            T5Init::Scratch { config, .. } => Some(config.clone()),
            _ => None,
        },
        "tiny" => Some(close_t5::T5Config::preset(spec)?),
        s if s.starts_with("scratch:") => Some(close_t5::T5Config::preset(&s["scratch:".len()..])?),
        _ => None,
    };
    match preset {
        Some(mut config) => {
            let vocab = vocab.unwrap_or(match &base.t5 {
                T5Init::Scratch { vocab, .. } => *vocab,
                _ => 400,
            });
            config.vocab_size = vocab;
            Ok(T5Init::Scratch {
                config,
                vocab,
                tokenizer: None,
            })
        }
        None => Ok(T5Init::Pretrained {
            dir: resolve(spec, ModelKind::T5, ctx)?,
        }),
    }
}

/// `close train`, alone or as one rank of `mpirun -np N close train …`. A rank that fails
/// ends every rank, so that none waits for it.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let (dist, device) = close_core::dist::connect(args.all_reduce.into(), args.device.spec)?;
    let result = run_rank(args, device, dist.as_ref(), ctx);
    if let (Err(e), true) = (&result, dist.size() > 1) {
        eprintln!("error on rank {} of {}: {e:#}", dist.rank(), dist.size());
        dist.abort(1);
    }
    result
}

fn run_rank(
    args: Args,
    device: close_core::DeviceSpec,
    dist: &dyn Collective,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let main = dist.is_main();
    let (resume, out_mode) = check_out(&args)?;
    let mut cfg = train_config(&args, ctx)?;
    let dev = device.open()?;
    let clip_dir = args
        .clip
        .as_deref()
        .map(|c| resolve(c, ModelKind::Clip, ctx))
        .transpose()?;
    cfg.clip = clip_dir.clone();

    let paths = data_paths(&args.data, &args.files, args.skip_bad)?;
    let data = TaskData::load(cfg.task, cfg.train_on, &paths)?;
    tracing::info!(
        "{}: {} training examples, {} val, {} test",
        cfg.task,
        data.train.len(),
        data.val.len(),
        data.test.len()
    );
    if let (Some(dir), TrainOn::Text, true) = (&clip_dir, cfg.train_on, main) {
        embed_missing_texts(dir, &data, &args.text_cache, &dev, ctx)?;
    }
    // Every rank has checked --out, and the text cache is complete.
    dist.barrier()?;
    let texts = EmbeddingCache::open(&args.text_cache)?;
    let images = EmbeddingCache::open(&args.image_cache)?;
    if let (Some(mode), true) = (out_mode, main) {
        // Only now, with every input loaded, may an old run be deleted.
        close_model::run::prepare_new_run(&args.out, mode)?;
    }
    let quiet = Ctx {
        quiet: ctx.quiet || !main,
    };
    let progress = quiet.progress();
    let inputs = close_model::train::TrainInputs {
        data: &data,
        texts: &texts,
        images: &images,
    };
    let summary = close_model::train::train_data_parallel(
        &cfg,
        inputs,
        &args.out,
        resume,
        (&dev, dist),
        progress.as_ref(),
    )?;
    if main {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// Check --out before any work: whether to resume, or how to prepare it for a new run.
fn check_out(args: &Args) -> anyhow::Result<(bool, Option<OutDir>)> {
    let resume = args.resume && close_model::run::has_checkpoint(&args.out)?;
    if args.resume && !resume {
        let out = args.out.display();
        tracing::info!("{out}: no checkpoint yet, starting from the beginning");
    }
    if resume {
        return Ok((true, None));
    }
    let mode = match args.force || args.resume {
        true => OutDir::Replace,
        false => OutDir::New,
    };
    close_model::run::check_new_run(&args.out, mode)?;
    Ok((false, Some(mode)))
}

/// The training config: --config (or the task's small default) with the flags applied.
fn train_config(args: &Args, ctx: &Ctx) -> anyhow::Result<TrainConfig> {
    let task = args.task;
    let mut cfg = match &args.config {
        Some(p) => close_core::io::read_json::<TrainConfig>(p)?,
        None => TrainConfig::small(task),
    };
    cfg.task = task;
    apply_method_flags(args, &mut cfg);
    if args.config.is_none() || args.t5 != "small" {
        cfg.t5 = t5_init(&args.t5, args.vocab, &cfg, ctx)?;
    }
    cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    cfg.warmup_steps = args.warmup_steps.unwrap_or(cfg.warmup_steps);
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    cfg.beams = args.beams.unwrap_or(cfg.beams);
    cfg.optim.lr = args.lr.unwrap_or(cfg.optim.lr);
    cfg.max_examples_per_epoch = args.max_examples_per_epoch.or(cfg.max_examples_per_epoch);
    cfg.targets_per_step = args.targets_per_step.or(cfg.targets_per_step);
    cfg.max_steps = args.max_steps.or(cfg.max_steps);
    cfg.max_val_examples = args.max_val.or(cfg.max_val_examples);
    cfg.val_interval = args.val_interval.unwrap_or(cfg.val_interval);
    cfg.eval_each_epoch &= !args.no_eval;
    cfg.dtype = args.dtype.unwrap_or(cfg.dtype);
    cfg.log_every = args.log_every.map_or(cfg.log_every, |n| n as u64);
    cfg.text_cache = Some(args.text_cache.clone());
    cfg.image_cache = Some(args.image_cache.clone());
    Ok(cfg)
}

/// --train-on, --adapter, --noise and --adapter-stats: each replaces the config's value only
/// when given, so a --config of an image-trained or noise-free run stays one. The noise
/// falls back to the task's reference value for the adapter when there is no --config or
/// --adapter is given.
fn apply_method_flags(args: &Args, cfg: &mut TrainConfig) {
    if let Some(on) = args.train_on {
        cfg.train_on = on;
    }
    if let Some(kind) = args.adapter {
        cfg.adapter.kind = kind;
    }
    let default_noise = match cfg.adapter.kind {
        AdapterKind::None => 0.0,
        _ => args.task.default_noise(),
    };
    cfg.adapter.noise = match args.noise {
        Some(w) => w,
        None if args.config.is_none() || args.adapter.is_some() => default_noise,
        None => cfg.adapter.noise,
    };
    if let Some(dir) = &args.adapter_stats {
        cfg.adapter_stats = Some(dir.clone());
    }
}

/// Embed the stand-in texts that --text-cache lacks with the CLIP in `dir`.
fn embed_missing_texts(
    dir: &std::path::Path,
    data: &TaskData,
    cache: &std::path::Path,
    dev: &candle_core::Device,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let existing = EmbeddingCache::open(cache).ok();
    let missing: Vec<(String, String)> = data
        .clip_texts()
        .into_iter()
        .filter(|t| existing.as_ref().is_none_or(|c| c.get(t).is_none()))
        .map(|t| (t.clone(), t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(
        "embedding {} texts missing from {}",
        missing.len(),
        cache.display()
    );
    let clip = close_clip::Clip::load(dir, dev)?;
    let p = ctx.progress();
    close_clip::cache::embed_texts(&clip, &missing, cache, 64, p.as_ref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// With `config`, an image-trained upper bound's config (else the small default), with
    /// the given flags applied.
    fn applied(config: bool, flags: &[&str]) -> TrainConfig {
        let mut argv = vec!["t", "--task", "ve", "--data", "d", "--out", "o"];
        argv.extend(["--text-cache", "t", "--image-cache", "i"]);
        if config {
            argv.extend(["--config", "c.json"]);
        }
        argv.extend(flags);
        let args = Cli::try_parse_from(argv).expect("flags parse").args;
        let mut cfg = TrainConfig::small(Task::Ve);
        if config {
            cfg.train_on = TrainOn::Images;
            cfg.adapter.kind = AdapterKind::None;
            cfg.adapter.noise = 0.0;
        }
        apply_method_flags(&args, &mut cfg);
        cfg
    }

    #[test]
    fn a_config_keeps_its_method_unless_a_flag_names_another() {
        let kept = applied(true, &[]);
        assert_eq!(kept.train_on, TrainOn::Images);
        assert_eq!(kept.adapter.kind, AdapterKind::None);
        assert_eq!(kept.adapter.noise, 0.0);

        let text = applied(true, &["--train-on", "text", "--adapter", "noise"]);
        assert_eq!(text.train_on, TrainOn::Text);
        assert_eq!(text.adapter.kind, AdapterKind::Noise);
        assert_eq!(text.adapter.noise, Task::Ve.default_noise());

        let w = applied(true, &["--train-on", "text", "--noise", "0.3"]);
        assert_eq!((w.adapter.kind, w.adapter.noise), (AdapterKind::None, 0.3));

        let plain = applied(false, &[]);
        assert_eq!(plain.train_on, TrainOn::Text);
        assert_eq!(plain.adapter.kind, AdapterKind::Noise);
        assert_eq!(plain.adapter.noise, Task::Ve.default_noise());
    }
}
