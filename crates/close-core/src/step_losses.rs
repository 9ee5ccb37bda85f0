//! Per-step training losses kept on the device until a training loop reads them, and the
//! dynamic loss scale of f16 training.
//!
//! Reading a loss makes the host wait for the device to finish the step. Reading them in
//! batches, at log points and epoch ends, lets a GPU run steps back to back; on the CPU the
//! values and the log are the same either way.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;

/// A training loss read back to the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss {
    /// The optimizer step it belongs to (1-based).
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
}

/// Losses of finished steps not yet read.
#[derive(Default)]
pub struct LossBook {
    pending: Vec<(u64, f64, Tensor)>,
}

impl LossBook {
    /// Keep step `step`'s loss, detached so that its graph is freed.
    pub fn push(&mut self, step: u64, lr: f64, loss: &Tensor) {
        self.pending.push((step, lr, loss.detach()));
    }

    /// Every pending loss, read in one transfer, oldest first.
    pub fn drain(&mut self) -> Result<Vec<StepLoss>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let scalars = self
            .pending
            .iter()
            .map(|(_, _, t)| t.to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let values = Tensor::stack(&scalars, 0)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let read = self
            .pending
            .drain(..)
            .zip(values)
            .map(|((step, lr, _), v)| StepLoss {
                step,
                lr,
                loss: v as f64,
            })
            .collect();
        Ok(read)
    }
}

/// The loss multiplier of f16 training, as `torch.amp.GradScaler` by default: it starts
/// at 2^16, halves on a step whose gradients overflow (that step changes no weight) and
/// doubles after 2000 clean steps in a row. Saved with the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u64,
    /// Steps skipped for overflow so far.
    pub skipped_steps: u64,
}

const GROWTH_INTERVAL: u64 = 2000;

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            clean_steps: 0,
            skipped_steps: 0,
        }
    }
}

impl LossScale {
    /// Record whether the step went through (`false`: its gradients overflowed).
    pub fn update(&mut self, stepped: bool) {
        if stepped {
            self.clean_steps += 1;
            if self.clean_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
            self.skipped_steps += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_come_back_in_order_with_their_steps() -> Result<()> {
        let mut book = LossBook::default();
        assert!(book.drain()?.is_empty());
        for step in 1..=3u64 {
            let t = Tensor::new(step as f32 * 0.5, &Device::Cpu)?;
            book.push(step, 1e-3, &t);
        }
        let read = book.drain()?;
        let got: Vec<(u64, f64)> = read.iter().map(|r| (r.step, r.loss)).collect();
        assert_eq!(got, vec![(1, 0.5), (2, 1.0), (3, 1.5)]);
        assert!(book.drain()?.is_empty());
        Ok(())
    }

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_a_clean_run() {
        let mut s = LossScale::default();
        s.update(false);
        assert_eq!((s.scale, s.skipped_steps), (32768.0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
    }
}
