//! `close`: teach vision-language tasks from text alone (CLOSE, Gu et al. ICCV 2023).
//!
//! A thin layer: each subcommand in `cmd/` turns its clap arguments into a library config in
//! one step and calls the library; errors are printed with `{:#}`.

mod cmd;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "close",
    version,
    about = "Train vision-language models from text alone (CLOSE)"
)]
struct Cli {
    /// Hide progress bars and informational logs.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log filter (tracing env-filter syntax), e.g. `debug` or `close_model=trace`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate the built-in shapes world (images, captions, VQA, VQA-E, SNLI-VE, news, styles).
    World(cmd::world::Args),
    /// Score predictions against references (captioning, VQA, visual entailment).
    #[command(subcommand)]
    Score(cmd::score::ScoreCommand),
    /// CLIP: train from scratch, score image–text pairs.
    #[command(subcommand)]
    Clip(cmd::clip::ClipCommand),
    /// Encode images and/or captions into an embedding cache.
    Embed(cmd::embed::Args),
    /// Fit modality-gap adapters (mean-shift, cov, linear) from embedding caches.
    #[command(subcommand)]
    Adapter(cmd::adapter::AdapterCommand),
    /// Train a CLOSE model (text-only by default).
    Train(cmd::train::Args),
    /// Evaluate a trained run on a split's images and write standard results files.
    Eval(cmd::eval::Args),
    /// Predict for a list of images with a trained run.
    Predict(cmd::predict::Args),
    /// Import an official CLOSE checkpoint (model.json + state-ep8.pth) into a run dir.
    Import(cmd::import::Args),
    /// The paper's experiment (upper bound, noise sweep tuned on val, adapters) on a dataset.
    Experiment(cmd::experiment::Args),
    /// The whole method end-to-end on the shapes world, with the paper's ablations.
    Demo(cmd::demo::Args),
    /// Caption images (files or folders) with a trained run.
    Caption(cmd::infer::CaptionArgs),
    /// Answer a question about an image with a trained VQA run.
    Vqa(cmd::infer::VqaArgs),
    /// Decide whether an image entails a hypothesis with a trained VE run.
    Entail(cmd::infer::EntailArgs),
    /// Serve trained runs over HTTP with a small web page.
    Serve(cmd::serve::Args),
}

close_core::global_allocator!();

fn main() {
    close_core::threads::init();
    close_core::alloc::init();
    let cli = Cli::parse();
    common::init_logging(&cli.log, cli.quiet);
    let ctx = common::Ctx { quiet: cli.quiet };
    if let Err(e) = run(cli.command, &ctx) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command, ctx: &common::Ctx) -> anyhow::Result<()> {
    match command {
        Command::World(a) => cmd::world::run(a, ctx),
        Command::Score(a) => cmd::score::run(a, ctx),
        Command::Clip(a) => cmd::clip::run(a, ctx),
        Command::Embed(a) => cmd::embed::run(a, ctx),
        Command::Adapter(a) => cmd::adapter::run(a, ctx),
        Command::Train(a) => cmd::train::run(a, ctx),
        Command::Experiment(a) => cmd::experiment::run(a, ctx),
        Command::Eval(a) => cmd::eval::run(a, ctx),
        Command::Predict(a) => cmd::predict::run(a, ctx),
        Command::Import(a) => cmd::import::run(a, ctx),
        Command::Demo(a) => cmd::demo::run(a, ctx),
        Command::Caption(a) => cmd::infer::caption(a, ctx),
        Command::Vqa(a) => cmd::infer::vqa(a, ctx),
        Command::Entail(a) => cmd::infer::entail(a, ctx),
        Command::Serve(a) => cmd::serve::run(a, ctx),
    }
}
