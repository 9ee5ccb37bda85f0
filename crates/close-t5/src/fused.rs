//! Differentiable softmax, RMS norm and label log-likelihood used by the trained forward.
//! (first version: composed from `close_core::ops`)

use candle_core::{Tensor, D};
use close_core::Result;

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    close_core::ops::softmax_last_dim(x)
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    close_core::ops::rms_norm(x, w, eps)
}

/// `-log_softmax(logits)[label]`: `[B, T, V]`, `[B, T]` → `[B, T]`.
pub fn nll_of_labels(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lsm = close_core::ops::log_softmax_last_dim(logits)?;
    Ok(lsm.gather(&labels.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?.neg()?)
}
