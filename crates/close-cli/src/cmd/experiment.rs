//! `close experiment`: the paper's Tables 1, 3 and 4 on a dataset in the standard formats.

use std::path::PathBuf;

use anyhow::Context;

use close_experiment::report::{summary_table, write_outputs, ReportHeader};
use close_experiment::{ExperimentConfig, ExperimentInputs, Stopwatch};
use close_model::config::TrainConfig;
use close_model::hub::ModelKind;
use close_model::task::Task;

use crate::common::{resolve, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset dir with the standard file names (dataset_coco.json,
    /// v2_OpenEnded_mscoco_{split}_questions.json, snli_ve_{split}.jsonl, ...).
    #[arg(long)]
    data: PathBuf,
    /// Root of the image paths in the Karpathy file (default: --data).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Override one data file: KEY=PATH (keys: karpathy, vqa_questions.train, ve.test, ...).
    #[arg(long = "file", value_name = "KEY=PATH")]
    files: Vec<String>,
    /// Skip malformed records instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// CLIP model dir or hub id (e.g. openai/clip-vit-large-patch14).
    #[arg(long)]
    clip: String,
    /// T5: `small`, `tiny`, `scratch:t5-base` (from scratch) or a pretrained HF dir / hub id
    /// [default: small].
    #[arg(long)]
    t5: Option<String>,
    /// Output dir; a rerun into it skips finished runs and resumes interrupted ones.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated tasks (default: every task whose files are in --data).
    #[arg(long, value_enum, value_delimiter = ',')]
    tasks: Vec<Task>,
    /// An experiment.json (as a run writes it) with every setting, T5 and seed included
    /// (so it does not go with --t5, --quick or --seed).
    #[arg(long)]
    config: Option<PathBuf>,
    /// One epoch of ≤ 1,200 examples per run, w ∈ {0, 0.08}, no adapter rows.
    #[arg(long)]
    quick: bool,
    /// Seed of every run [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    device: crate::common::DeviceArg,
}

fn config(args: &Args, tasks: &[Task], ctx: &Ctx) -> anyhow::Result<ExperimentConfig> {
    if let Some(p) = &args.config {
        if args.t5.is_some() || args.quick || args.seed.is_some() {
            anyhow::bail!("--config {} holds the T5, the amounts of work and the seed: leave out --t5, --quick and --seed (or edit the file)", p.display());
        }
        let mut cfg: ExperimentConfig = close_core::io::read_json(p)
            .with_context(|| format!("reading the experiment config --config {}", p.display()))?;
        if !args.tasks.is_empty() {
            cfg.tasks.retain(|t, _| tasks.contains(t));
        }
        return Ok(cfg);
    }
    let spec = args.t5.as_deref().unwrap_or("small");
    let t5 = crate::cmd::train::t5_init(spec, None, &TrainConfig::small(Task::SCap), ctx)?;
    Ok(ExperimentConfig::new(
        t5,
        tasks,
        args.quick,
        args.seed.unwrap_or(0),
    ))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let explicit = !args.tasks.is_empty();
    let tasks: Vec<Task> = if explicit {
        args.tasks.clone()
    } else {
        Task::ALL.to_vec()
    };
    let cfg = config(&args, &tasks, ctx)?;
    let inputs = ExperimentInputs {
        data: crate::cmd::train::data_paths(&args.data, &args.files, args.skip_bad)?,
        images: args.images.clone().unwrap_or_else(|| args.data.clone()),
        clip: resolve(&args.clip, ModelKind::Clip, ctx)?,
        explicit_tasks: explicit,
    };
    let dev = args.device.open()?;
    let progress = ctx.progress();
    let output = close_experiment::run_experiment(
        &cfg,
        &inputs,
        &args.out,
        &dev,
        progress.as_ref(),
        Stopwatch::start(),
    )?;
    let header = ReportHeader {
        title: format!("CLOSE on {}", args.data.display()),
        setup: format!("Produced by `close experiment` (seed {}).\n\n", cfg.seed),
        clip_sections: String::new(),
    };
    write_outputs(&cfg, &output, &args.out, &header)?;
    if !ctx.quiet {
        for s in &output.skipped {
            println!("skipped {}: no {}", s.task, s.missing.display());
        }
        println!("{}", summary_table(&output.results.runs));
        if !output.failures.is_empty() {
            println!("{} runs failed (see REPORT.md)", output.failures.len());
        }
        println!(
            "Wrote {}/results.json, REPORT.md, experiment.json and PNGs.",
            args.out.display()
        );
    }
    Ok(())
}
