//! `cov`: the mean image − text difference plus structured noise drawn from the
//! covariance of the differences, then noise.

use candle_core::Tensor;
use rand::RngCore;

use close_core::{Error, Result};

use super::fit::cholesky_with_jitter;
use super::{
    gaussian, noised_unit, row, AdapterConfig, AdapterKind, AdapterStats, LanguageAdapter,
};
use crate::linalg::Mat;

/// Training: `norm(x + μ_diff + c·z + w·ε)` with `z ~ N(0, Σ_diff)`; evaluation: `x`.
#[derive(Debug)]
pub struct Cov {
    /// `μ_diff`, `[1, D]`.
    shift: Tensor,
    /// `Lᵀ` `[D, D]` of `Σ_diff = L·Lᵀ`: `z·Lᵀ ~ N(0, Σ)` for `z ~ N(0, I)`.
    pub(super) chol_t: Tensor,
    scale: f64,
    w: f64,
}

impl Cov {
    pub fn new(
        cfg: &AdapterConfig,
        stats: &AdapterStats,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let lacks = |what: &str| Error::invalid(format!("cov statistics lack `{what}`"));
        let s = stats.shift.as_ref().ok_or_else(|| lacks("shift"))?;
        let c = stats.cov.as_ref().ok_or_else(|| lacks("cov"))?;
        let d = stats.dim;
        let cov = Mat {
            rows: d,
            cols: d,
            data: c.iter().map(|&v| v as f64).collect(),
        };
        let l = cholesky_with_jitter(&cov)?;
        Ok(Self {
            shift: row(s, device)?,
            chol_t: Tensor::from_vec(l.transpose().to_f32(), (d, d), device)?,
            scale: cfg.cov_scale,
            w: cfg.noise,
        })
    }
}

impl LanguageAdapter for Cov {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Cov
    }
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn train_forward(&self, x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let z = gaussian(rng, b, d, 1.0, x.device())?;
        let sample = z.matmul(&self.chol_t)?;
        let y = (x.broadcast_add(&self.shift)? + (sample * self.scale)?)?;
        noised_unit(y, self.w, rng)
    }
}
