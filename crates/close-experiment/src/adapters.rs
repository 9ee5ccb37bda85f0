//! Stage: fit the adapter statistics from the training split's caches. Mean-shift needs no
//! pairs (mean image vs mean caption); cov and linear are the paper's adapters "with paired
//! data", both fitted on the same small sample of (image, caption) pairs.

use std::path::{Path, PathBuf};

use close_core::Result;
use close_data::coco::Karpathy;
use close_model::adapter::{fit_adapter, AdapterKind, FitSpec};
use close_model::embeddings::Embeddings;

use crate::config::ExperimentConfig;
use crate::embed::Caches;

/// The fitted statistics: the directory and the fit's spec of each adapter kind.
#[derive(Debug, Clone, Default)]
pub struct FittedAdapters(pub Vec<(PathBuf, FitSpec)>);

impl FittedAdapters {
    /// The statistics dir and fit spec of `kind`, if fitted.
    pub fn get(&self, kind: AdapterKind) -> Option<&(PathBuf, FitSpec)> {
        self.0.iter().find(|(_, spec)| spec.kind == kind)
    }
}

/// Every training (image key, caption) pair of the Karpathy file.
fn train_pairs(karpathy: &Karpathy) -> Vec<(String, String)> {
    karpathy
        .split("train")
        .flat_map(|im| {
            im.captions()
                .map(move |c| (im.image_id().to_string(), c.to_string()))
        })
        .collect()
}

/// Fit `cfg.adapters` into `dir/<kind>`.
pub fn fit_adapters(
    cfg: &ExperimentConfig,
    karpathy: &Karpathy,
    caches: &Caches,
    dir: &Path,
) -> Result<FittedAdapters> {
    let mut out = FittedAdapters::default();
    if cfg.adapters.is_empty() {
        return Ok(out);
    }
    let pairs = train_pairs(karpathy);
    let n_paired = ((pairs.len() as f64 * cfg.paired_fraction).round() as usize).max(8);
    for &kind in &cfg.adapters {
        let spec = FitSpec {
            kind,
            n_pairs: (kind != AdapterKind::MeanShift).then_some(n_paired),
            seed: cfg.seed,
            ..Default::default()
        };
        let stats = fit_adapter(
            &spec,
            &caches.images as &dyn Embeddings,
            &caches.texts as &dyn Embeddings,
            &pairs,
        )?;
        let at = dir.join(kind.name());
        stats.save(&at)?;
        out.0.push((at, spec));
    }
    Ok(out)
}
