//! `mean-shift`: add the mean image − mean text difference, then noise.

use candle_core::Tensor;
use rand::RngCore;

use close_core::{Error, Result};

use super::{noised_unit, row, AdapterConfig, AdapterKind, AdapterStats, LanguageAdapter};

/// `x' = x + s·shift` (renormalized if configured); training adds `w·ε` and renormalizes.
#[derive(Debug)]
pub struct MeanShift {
    /// `s·shift`, `[1, D]`.
    shift: Tensor,
    renorm: bool,
    w: f64,
}

impl MeanShift {
    pub fn new(
        cfg: &AdapterConfig,
        stats: &AdapterStats,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let s = stats
            .shift
            .as_ref()
            .ok_or_else(|| Error::invalid("mean-shift statistics lack `shift`"))?;
        Ok(Self {
            shift: (row(s, device)? * cfg.shift_scale)?,
            renorm: cfg.renorm,
            w: cfg.noise,
        })
    }
}

impl LanguageAdapter for MeanShift {
    fn kind(&self) -> AdapterKind {
        AdapterKind::MeanShift
    }
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_add(&self.shift)?;
        match self.renorm {
            true => close_core::ops::l2_normalize(&y, super::NORM_EPS),
            false => Ok(y),
        }
    }
    fn train_forward(&self, x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        noised_unit(self.eval_forward(x)?, self.w, rng)
    }
}
