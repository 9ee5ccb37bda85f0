//! `close world`: generate the built-in shapes world (images, captions, VQA, VQA-E,
//! SNLI-VE, style corpus) in the standard dataset formats.

use std::path::PathBuf;

use close_data::world::{generate, WorldConfig};

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (created; must be new or empty unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Write into a non-empty --out, replacing the world files there.
    #[arg(long)]
    pub force: bool,
    /// Random seed; the same seed and settings give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of images over all splits (10% val, 10% test).
    #[arg(long, default_value_t = 10_000, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Most objects per image (1..=9).
    #[arg(long, default_value_t = 3, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_objects: usize,
    /// Fewest objects per image.
    #[arg(long, default_value_t = 1, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub min_objects: usize,
    /// Fraction of images in val.
    #[arg(long, default_value_t = 0.1, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Fraction of images in test.
    #[arg(long, default_value_t = 0.1, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub test_fraction: f64,
    /// SNLI-VE hypotheses per label per image.
    #[arg(long, default_value_t = 1, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub hypotheses_per_label: usize,
    /// How far an object may move from its cell's centre, as a fraction of the free space
    /// around it (0..=1).
    #[arg(long, default_value_t = 0.3, value_parser = crate::common::unit_interval, allow_negative_numbers = true)]
    pub position_jitter: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn config(&self) -> WorldConfig {
        WorldConfig {
            seed: self.seed,
            images: self.images,
            size: self.size,
            min_objects: self.min_objects,
            max_objects: self.max_objects,
            val_fraction: self.val_fraction,
            test_fraction: self.test_fraction,
            hypotheses_per_label: self.hypotheses_per_label,
            position_jitter: self.position_jitter,
            ..WorldConfig::default()
        }
    }
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    close_core::io::check_output(
        &args.out,
        args.force,
        "pass --force to write the world over it, or choose another --out",
    )?;
    let progress = ctx.progress();
    let s = generate(&cfg, &args.out, progress.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "shapes world → {} ({:.1}s, seed {})",
        args.out.display(),
        s.seconds,
        cfg.seed
    );
    println!(
        "{:<6} {:>7} {:>9} {:>10} {:>7} {:>9} {:>5}",
        "split", "images", "captions", "questions", "vqa-e", "ve pairs", "news"
    );
    for (name, sp) in &s.splits {
        println!(
            "{name:<6} {:>7} {:>9} {:>10} {:>7} {:>9} {:>5}",
            sp.images, sp.captions, sp.questions, sp.vqae, sp.ve_pairs, sp.news
        );
    }
    let pct = |x: Option<f64>| {
        x.map(|v| format!("{:.1}%", 100.0 * v))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "shortcut baselines (test): hypothesis-only VE {} (chance 33.3%), question-only VQA {}",
        pct(s.ve_hypothesis_only_accuracy),
        pct(s.vqa_question_only_accuracy)
    );
    Ok(())
}
