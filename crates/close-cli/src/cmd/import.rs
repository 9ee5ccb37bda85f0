//! `close import`: convert an official CLOSE checkpoint (`model.json` + `state-ep8.pth`) into
//! a run dir, reading the pickle without executing code.

use std::path::PathBuf;

use close_model::hub::ModelKind;

use crate::common::{resolve, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reference's `model.json`.
    #[arg(long)]
    pub model_json: PathBuf,
    /// The reference's `state-ep8.pth` (PyTorch zip pickle).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The T5 the checkpoint was trained from (`t5_model_name` in model.json): HF dir or hub id.
    #[arg(long)]
    pub t5: String,
    /// A tokenizer.json to use instead of the T5 dir's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The task the checkpoint was trained for.
    #[arg(long, value_enum)]
    pub task: close_model::task::Task,
    /// CLIP model dir / hub id matching model.json's `clip_model` (recorded for predict).
    #[arg(long)]
    pub clip: Option<String>,
    /// Run dir to write (new or empty, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Delete the run already in --out first.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let mode = match args.force {
        true => close_model::run::OutDir::Replace,
        false => close_model::run::OutDir::New,
    };
    close_model::run::check_new_run(&args.out, mode)?;
    let t5 = resolve(&args.t5, ModelKind::T5, ctx)?;
    let task = args.task;
    close_model::run::prepare_new_run(&args.out, mode)?;
    let rep = close_model::import::import_official(
        &args.model_json,
        &args.checkpoint,
        &t5,
        args.tokenizer.as_deref(),
        task,
        &args.out,
    )?;
    if let Some(c) = &args.clip {
        let dir = resolve(c, ModelKind::Clip, ctx)?;
        let p = args.out.join("config.json");
        let mut cfg: close_model::config::TrainConfig = close_core::io::read_json(&p)?;
        cfg.clip = Some(dir);
        close_core::io::write_json_atomic(&p, &cfg)?;
    }
    println!("{}", serde_json::to_string_pretty(&rep)?);
    Ok(())
}
