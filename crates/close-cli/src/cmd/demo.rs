//! `close demo`: the whole CLOSE method end-to-end on the built-in shapes world.

use std::path::PathBuf;

use anyhow::Context;

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (world, CLIP, caches, runs, results.json, REPORT.md, PNGs).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// A smaller world, fewer epochs and a shorter sweep (≤ 2 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Seed of the world, CLIP and every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A full demo config json (the `demo_config.json` a run writes), edited: overrides
    /// `--quick` and `--seed`. Stages whose outputs in `--out` match it are reused.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    device: crate::common::DeviceArg,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let cfg = match &args.config {
        Some(p) => close_core::io::read_json::<close_demo::DemoConfig>(p)
            .with_context(|| format!("reading the demo config --config {}", p.display()))?,
        None => close_demo::DemoConfig::new(args.quick, args.seed),
    };
    let progress = ctx.progress();
    let output = close_demo::run_demo(&cfg, &args.out, &device, progress.as_ref())?;
    let machine = format!(
        "{} CPU threads ({})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.device.spec
    );
    close_demo::report::write_demo_outputs(&cfg, &output, &args.out, &machine)?;
    if !ctx.quiet {
        println!(
            "{}",
            close_experiment::report::summary_table(&output.experiment.results.runs)
        );
        println!(
            "Wrote {}/results.json, REPORT.md and PNGs.",
            args.out.display()
        );
    }
    Ok(())
}
