//! AdamW (decoupled weight decay, Loshchilov & Hutter), matching `torch.optim.AdamW`:
//! `m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; θ -= lr·wd·θ; θ -= lr · m̂ / (sqrt(v̂) + eps)`.
//! Optional global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).
//! The optimizer state can be exported / restored for `--resume`.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW hyper-parameters (defaults as PyTorch, except `weight_decay` = 0 as the CLOSE
/// reference trains).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global L2 norm of all gradients to this value (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 3e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: None }
    }
}

/// AdamW over a fixed list of named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// Optimizer for `vars` (name, variable); names key the exported state.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { cfg, vars, m, v, step: 0 })
    }

    /// All variables of a `VarMap`, sorted by name.
    pub fn from_varmap(varmap: &candle_nn::VarMap, cfg: AdamWConfig) -> Result<Self> {
        let data = varmap.data().lock().map_err(|_| Error::invalid("varmap lock poisoned"))?;
        let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        drop(data);
        Self::new(vars, cfg)
    }

    pub fn config(&self) -> &AdamWConfig { &self.cfg }
    pub fn lr(&self) -> f64 { self.cfg.lr }
    pub fn set_lr(&mut self, lr: f64) { self.cfg.lr = lr; }
    pub fn step_count(&self) -> u64 { self.step }

    /// Global L2 norm of the gradients of the optimizer's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update from `grads`. Variables without a gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let scale = match c.max_grad_norm {
            Some(max) => {
                let n = self.grad_norm(grads)?;
                if n > max { max / (n + 1e-6) } else { 1.0 }
            }
            None => 1.0,
        };
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = if scale != 1.0 { (g * scale)? } else { g.clone() };
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let theta = var.as_tensor();
            let theta = if c.weight_decay != 0.0 { (theta * (1.0 - c.lr * c.weight_decay))? } else { theta.clone() };
            let upd = (mhat / (vhat.sqrt()? + c.eps)?)?;
            var.set(&(theta - (upd * c.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// `loss.backward()` then [`AdamW::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// Optimizer state as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`) and the step.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{name}.exp_avg"), self.m[i].clone());
            out.insert(format!("{name}.exp_avg_sq"), self.v[i].clone());
        }
        (out, self.step)
    }

    /// Restore a state exported by [`AdamW::state`]; every variable must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = state.get(&key).ok_or_else(|| Error::MissingKey { file: "optimizer state".into(), key: key.clone() })?;
                if t.dims() != var.dims() {
                    return Err(Error::Shape { what: key, expected: var.dims().to_vec(), got: t.dims().to_vec() });
                }
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_torch_adamw_by_hand() -> Result<()> {
        // One parameter, two steps, checked against the closed-form AdamW recurrence.
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev)?;
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.01, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
        let (mut m, mut v, mut th) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for t in 1..=2 {
            let loss = w.as_tensor().sqr()?.sum_all()?;
            opt.backward_step(&loss)?;
            for i in 0..2 {
                let g = 2.0 * th[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                th[i] *= 1.0 - 0.1 * 0.01;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                th[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = w.as_tensor().to_vec1::<f32>()?;
        for i in 0..2 {
            assert!((got[i] as f64 - th[i]).abs() < 1e-5, "{got:?} vs {th:?}");
        }
        Ok(())
    }
}
