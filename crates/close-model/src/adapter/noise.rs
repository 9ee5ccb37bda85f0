//! `none` (the "w/o noise" ablation) and `noise` (the CLOSE default).

use candle_core::Tensor;
use rand::RngCore;

use close_core::Result;

use super::{noised_unit, AdapterKind, LanguageAdapter};

/// Leaves the text vector as it is, in training too.
#[derive(Debug)]
pub struct Identity;

impl LanguageAdapter for Identity {
    fn kind(&self) -> AdapterKind {
        AdapterKind::None
    }
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn train_forward(&self, x: &Tensor, _rng: &mut dyn RngCore) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// `norm(x + w·ε)` in training; `x` at evaluation.
#[derive(Debug)]
pub struct Noise {
    /// The noise level `w`.
    pub w: f64,
}

impl LanguageAdapter for Noise {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Noise
    }
    fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn train_forward(&self, x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        noised_unit(x.clone(), self.w, rng)
    }
}
