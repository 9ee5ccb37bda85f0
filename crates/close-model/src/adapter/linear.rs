//! `linear`: a least-squares map text → image fitted on a few pairs, then noise.

use candle_core::Tensor;
use rand::RngCore;

use close_core::{Error, Result};

use super::{noised_unit, row, AdapterConfig, AdapterKind, AdapterStats, LanguageAdapter};

/// `x' = x·Wᵀ + b` (renormalized if configured); training adds `w·ε` and renormalizes.
#[derive(Debug)]
pub struct Linear {
    /// `Wᵀ`, `[D_in, D_out]`.
    weight_t: Tensor,
    /// `b`, `[1, D]`.
    bias: Tensor,
    renorm: bool,
    w: f64,
}

impl Linear {
    pub fn new(
        cfg: &AdapterConfig,
        stats: &AdapterStats,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let lacks = |what: &str| Error::invalid(format!("linear statistics lack `{what}`"));
        let w = stats.weight.as_ref().ok_or_else(|| lacks("weight"))?;
        let b = stats.bias.as_ref().ok_or_else(|| lacks("bias"))?;
        let d = stats.dim;
        Ok(Self {
            weight_t: Tensor::from_slice(w, (d, d), device)?.t()?.contiguous()?,
            bias: row(b, device)?,
            renorm: cfg.renorm,
            w: cfg.noise,
        })
    }
}

impl LanguageAdapter for Linear {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Linear
    }
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
        match self.renorm {
            true => close_core::ops::l2_normalize(&y, super::NORM_EPS),
            false => Ok(y),
        }
    }
    fn train_forward(&self, x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        noised_unit(self.eval_forward(x)?, self.w, rng)
    }
}
