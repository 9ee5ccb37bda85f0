//! `close eval`: evaluate a trained run on a split's images; writes the standard results file
//! (COCO / VQA / SNLI-VE jsonl), predictions and metrics JSON, and prints the metrics.

use std::path::PathBuf;

use close_clip::cache::EmbeddingCache;
use close_model::run::Run;
use close_model::task::TaskData;

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run dir made by `close train` or `close import`.
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset dir (standard file names; see `close train --help`).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long = "file", value_name = "KEY=PATH")]
    pub files: Vec<String>,
    #[arg(long)]
    pub skip_bad: bool,
    /// Embedding cache of the split's images.
    #[arg(long)]
    pub image_cache: PathBuf,
    /// val or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Use the last epoch's weights instead of the best.
    #[arg(long)]
    pub last: bool,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub beams: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Output dir (default RUN/eval/SPLIT).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let dev = args.device.open()?;
    let weights = args
        .last
        .then(|| args.run.join("last").join("model.safetensors"));
    let mut run = Run::load_checkpoint(&args.run, weights.as_deref(), &dev)?;
    if let Some(b) = args.batch_size {
        run.config.eval_batch_size = b;
    }
    let paths = super::train::data_paths(&args.data, &args.files, args.skip_bad)?;
    let data = TaskData::load_eval(run.config.task, &paths)?;
    let images = EmbeddingCache::open(&args.image_cache)?;
    let gen = run.generate_config(args.beams, args.max_steps);
    let progress = ctx.progress();
    let m = close_model::train::evaluate(
        &run,
        &data,
        &args.split,
        &images,
        &gen,
        args.out.as_deref(),
        progress.as_ref(),
    )?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}
