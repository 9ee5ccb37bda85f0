//! Language adapters: what is done to the unit CLIP *text* vector during training so that a
//! model trained on text transfers to image vectors (CLOSE §3, reference
//! `close/model/language_adapters.py`). Image vectors never pass through an adapter.
//!
//! | kind | training forward | eval forward (text input) |
//! |---|---|---|
//! | `none` | `x` | `x` |
//! | `noise` | `norm(x + w·ε)` | `x` |
//! | `mean-shift` | `x' = x + s·shift` (opt. renorm), then `norm(x' + w·ε)` | `x'` |
//! | `cov` | `norm(x + μ_diff + c·z + w·ε)`, `z ~ N(0, Σ_diff)` | `x` |
//! | `linear` | `x' = x·Wᵀ + b` (opt. renorm), then `norm(x' + w·ε)` | `x'` |
//!
//! `ε ~ N(0, I)` is drawn fresh for every batch from a seeded ChaCha stream, so runs are
//! reproducible. The reference ships the statistics only as pickles; here they are fitted by
//! [`fit_mean_shift`], [`fit_cov`], [`fit_cov_unpaired`] and [`fit_linear`] from embedding
//! arrays and stored in a run dir as `adapter.json` + `adapter.safetensors`.
//!
//! Each kind is one type implementing [`LanguageAdapter`], in its own file; [`Adapter`]
//! builds the right one from an [`AdapterConfig`] and fitted [`AdapterStats`].
mod cov;
mod fit;
mod linear;
mod mean_shift;
mod noise;
mod stats;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{Rng, RngCore};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

pub use cov::Cov;
pub use fit::{
    cholesky_with_jitter, fit_adapter, fit_cov, fit_cov_unpaired, fit_linear, fit_mean_shift,
    FitSpec,
};
pub use linear::Linear;
pub use mean_shift::MeanShift;
pub use noise::{Identity, Noise};
pub use stats::{AdapterStats, FitInfo, STATS_JSON, STATS_TENSORS};

/// Adapter kinds (names as in the paper's tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum AdapterKind {
    /// No change (the "w/o noise" ablation).
    None,
    /// Gaussian noise + renormalize (the CLOSE default).
    #[default]
    Noise,
    /// Add the mean image − mean text difference, then noise.
    MeanShift,
    /// Mean difference + structured noise from the covariance of image − text differences.
    #[serde(alias = "cov-noise")]
    #[cfg_attr(feature = "clap", value(alias = "cov-noise"))]
    Cov,
    /// A least-squares linear map text → image, then noise.
    Linear,
}

impl AdapterKind {
    pub fn name(&self) -> &'static str {
        match self {
            AdapterKind::None => "none",
            AdapterKind::Noise => "noise",
            AdapterKind::MeanShift => "mean-shift",
            AdapterKind::Cov => "cov",
            AdapterKind::Linear => "linear",
        }
    }

    /// Whether this kind needs fitted statistics.
    pub fn needs_stats(&self) -> bool {
        matches!(
            self,
            AdapterKind::MeanShift | AdapterKind::Cov | AdapterKind::Linear
        )
    }
}

impl std::str::FromStr for AdapterKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => AdapterKind::None,
            "noise" => AdapterKind::Noise,
            "mean-shift" => AdapterKind::MeanShift,
            "cov" | "cov-noise" => AdapterKind::Cov,
            "linear" => AdapterKind::Linear,
            _ => {
                return Err(Error::config(
                    "adapter",
                    format!("unknown adapter `{s}` (none, noise, mean-shift, cov, linear)"),
                ))
            }
        })
    }
}

impl std::fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Adapter hyper-parameters (saved in the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterConfig {
    pub kind: AdapterKind,
    /// Gaussian noise standard deviation `w` per dimension (paper: 0.08 default).
    pub noise: f64,
    /// Scale of the mean shift (`mean-shift`).
    pub shift_scale: f64,
    /// Renormalize after the shift / linear map, before the noise (`mean-shift`, `linear`).
    pub renorm: bool,
    /// Multiplier of the covariance sample (`cov`; the reference uses 3).
    pub cov_scale: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            kind: AdapterKind::Noise,
            noise: 0.08,
            shift_scale: 1.0,
            renorm: false,
            cov_scale: 3.0,
        }
    }
}

impl AdapterConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::config(
                "adapter.noise",
                format!("must be ≥ 0, got {}", self.noise),
            ));
        }
        if !self.shift_scale.is_finite() || self.cov_scale.is_nan() || self.cov_scale < 0.0 {
            return Err(Error::config(
                "adapter",
                "shift_scale must be finite and cov_scale ≥ 0",
            ));
        }
        Ok(())
    }
}

/// What an adapter does to unit CLIP text vectors `[B, D]`.
pub trait LanguageAdapter: std::fmt::Debug + Send + Sync {
    fn kind(&self) -> AdapterKind;
    /// The vector the model sees for a text at evaluation (deterministic).
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The training forward, with every random term drawn from `rng`.
    fn train_forward(&self, x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor>;
}

/// A ready-to-use adapter: the configured kind with its statistics as tensors on the
/// training device.
#[derive(Debug, Clone)]
pub struct Adapter {
    cfg: AdapterConfig,
    dim: usize,
    stats: Option<AdapterStats>,
    inner: Arc<dyn LanguageAdapter>,
}

impl Adapter {
    /// Build from a config and (for mean-shift / cov / linear) fitted statistics.
    pub fn new(
        cfg: AdapterConfig,
        dim: usize,
        stats: Option<AdapterStats>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let inner: Arc<dyn LanguageAdapter> = match cfg.kind {
            AdapterKind::None => Arc::new(Identity),
            AdapterKind::Noise => Arc::new(Noise { w: cfg.noise }),
            kind => {
                let s = checked_stats(&cfg, dim, stats.as_ref())?;
                match kind {
                    AdapterKind::MeanShift => Arc::new(MeanShift::new(&cfg, s, device)?),
                    AdapterKind::Cov => Arc::new(Cov::new(&cfg, s, device)?),
                    _ => Arc::new(Linear::new(&cfg, s, device)?),
                }
            }
        };
        let stats = stats.filter(|_| cfg.kind.needs_stats());
        Ok(Self {
            cfg,
            dim,
            stats,
            inner,
        })
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.cfg
    }
    pub fn stats(&self) -> Option<&AdapterStats> {
        self.stats.as_ref()
    }

    /// Training forward for unit text vectors `x` `[B, D]`; noise comes from `rng`.
    pub fn train_forward<R: Rng>(&self, x: &Tensor, rng: &mut R) -> Result<Tensor> {
        self.check_input(x)?;
        self.inner.train_forward(x, rng)
    }

    /// Evaluation forward for text vectors (image vectors never go through an adapter).
    pub fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.eval_forward(x)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (b, d) = x.dims2()?;
        if d != self.dim {
            return Err(Error::Shape {
                what: "adapter input".into(),
                expected: vec![b, self.dim],
                got: vec![b, d],
            });
        }
        Ok(())
    }
}

/// The statistics a kind needs: present, of that kind, and of dimension `dim`.
fn checked_stats<'s>(
    cfg: &AdapterConfig,
    dim: usize,
    stats: Option<&'s AdapterStats>,
) -> Result<&'s AdapterStats> {
    let kind = cfg.kind;
    let stats = stats.ok_or_else(|| {
        let msg = format!("`{kind}` needs fitted statistics (`close adapter fit --kind {kind}`)");
        Error::config("adapter", msg)
    })?;
    if stats.kind != kind {
        let msg = format!(
            "statistics are for `{}`, config asks for `{kind}`",
            stats.kind
        );
        return Err(Error::config("adapter", msg));
    }
    if stats.dim != dim {
        return Err(Error::Shape {
            what: "adapter statistics".into(),
            expected: vec![dim],
            got: vec![stats.dim],
        });
    }
    Ok(stats)
}

/// Guards the division of the renormalization.
const NORM_EPS: f64 = 1e-12;

/// `norm(y + w·ε)`: the noise every kind but `none` adds in training (none at `w = 0`),
/// then back to the unit sphere.
fn noised_unit(y: Tensor, w: f64, rng: &mut dyn RngCore) -> Result<Tensor> {
    let y = if w > 0.0 {
        let (b, d) = y.dims2()?;
        (&y + gaussian(rng, b, d, w, y.device())?)?
    } else {
        y
    };
    close_core::ops::l2_normalize(&y, NORM_EPS)
}

/// A statistics vector as a `[1, D]` row.
fn row(v: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, (1, v.len()), device)?)
}

/// `σ·N(0, I)` of shape `[b, d]` from `rng` (deterministic for a seeded rng).
pub fn gaussian<R: Rng + ?Sized>(
    rng: &mut R,
    b: usize,
    d: usize,
    sigma: f64,
    device: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = (0..b * d)
        .map(|_| (rng.sample::<f64, _>(StandardNormal) * sigma) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (b, d), device)?)
}

#[cfg(test)]
mod tests;
