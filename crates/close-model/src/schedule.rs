//! Learning-rate schedule: linear warmup from 0 to the peak, then linear decay to
//! `final_ratio · peak` at the last step.
//!
//! The reference intended a linear decay but stepped its scheduler per batch against a total
//! counted in examples, so its rate stayed almost constant (see CLOSE.md, "bugs not to
//! copy"). Here the total is in optimizer steps and the decay really happens.

use serde::{Deserialize, Serialize};

/// Warmup + linear decay, evaluated per optimizer step (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The rate at the last step as a fraction of `peak` (0 = decay to zero).
    pub final_ratio: f64,
}

impl LinearSchedule {
    /// The learning rate used for step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let done = (step - self.warmup_steps.min(step)).min(decay_steps) as f64;
        // Progress in [0, 1] from the first to the last step after warmup.
        let p = if decay_steps > 1 {
            done / (decay_steps - 1) as f64
        } else {
            0.0
        };
        self.peak * (1.0 - p.min(1.0) * (1.0 - self.final_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_really_decays() {
        let s = LinearSchedule {
            peak: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            final_ratio: 0.0,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!(s.lr(60) < 0.51e-3 && s.lr(60) > 0.49e-3);
        assert_eq!(s.lr(109), 0.0);
        assert_eq!(s.lr(500), 0.0);
        for t in 10..109 {
            assert!(s.lr(t + 1) < s.lr(t));
        }
        let c = LinearSchedule {
            peak: 3e-4,
            warmup_steps: 0,
            total_steps: 5,
            final_ratio: 0.1,
        };
        assert!((c.lr(0) - 3e-4).abs() < 1e-15);
        assert!((c.lr(4) - 3e-5).abs() < 1e-15);
    }
}
