//! `close adapter fit`: fit modality-gap adapter statistics (mean-shift, cov, linear) from
//! embedding caches, over the (image, caption) pairs of a Karpathy split.

use std::path::PathBuf;

use close_clip::cache::EmbeddingCache;
use close_model::adapter::{fit_adapter, AdapterKind, FitSpec};

use crate::common::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum AdapterCommand {
    /// Fit statistics and write DIR/adapter.json + DIR/adapter.safetensors.
    Fit(FitArgs),
}

#[derive(clap::Args, Debug)]
pub struct FitArgs {
    /// mean-shift, cov or linear.
    #[arg(long, value_enum)]
    pub kind: AdapterKind,
    /// Image embedding cache (keyed by image id).
    #[arg(long)]
    pub image_cache: PathBuf,
    /// Text embedding cache (keyed by caption).
    #[arg(long)]
    pub text_cache: PathBuf,
    /// Karpathy json whose split gives the (image, caption) pairs.
    #[arg(long)]
    pub karpathy: PathBuf,
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Use N randomly chosen pairs (e.g. 1% of the data for `linear`); default all.
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub pairs: Option<usize>,
    /// Ridge strength for `linear` (relative to the mean eigenvalue of the Gram matrix).
    #[arg(long, default_value_t = 1e-2, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub ridge: f64,
    /// `cov` from unpaired image and caption sets (Σ_image + Σ_text).
    #[arg(long)]
    pub unpaired: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output dir (adapter.json + adapter.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace statistics already in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: AdapterCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        AdapterCommand::Fit(a) => {
            let kind = a.kind;
            close_core::io::check_output(
                &a.out.join(close_model::adapter::STATS_JSON),
                a.force,
                "pass --force to replace these statistics, or choose another --out",
            )?;
            let images = EmbeddingCache::open(&a.image_cache)?;
            let texts = EmbeddingCache::open(&a.text_cache)?;
            let pairs = close_model::task::caption_pairs(&a.karpathy, &a.split)?;
            let spec = FitSpec {
                kind,
                n_pairs: a.pairs,
                ridge: a.ridge,
                unpaired_cov: a.unpaired,
                seed: a.seed,
            };
            let stats = fit_adapter(&spec, &images, &texts, &pairs)?;
            stats.save(&a.out)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "kind": stats.kind, "dim": stats.dim, "out": a.out, "info": stats.info,
                }))?
            );
            Ok(())
        }
    }
}
