//! AdamW (decoupled weight decay, Loshchilov & Hutter), matching `torch.optim.AdamW`:
//! `m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; θ -= lr·wd·θ; θ -= lr · m̂ / (sqrt(v̂) + eps)`.
//! Optional global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).
//! The optimizer state can be exported / restored for `--resume`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var,
};
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
        Self {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: None,
        }
    }
}

/// First and second moments of one variable. For contiguous f32 variables on the CPU they
/// live in plain buffers and the update runs in place, fused and multi-threaded; elsewhere
/// (GPU, half precision) it is written with tensor ops.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

fn host_eligible(var: &Var) -> bool {
    matches!(var.device(), Device::Cpu)
        && var.dtype() == DType::F32
        && var.as_tensor().is_contiguous()
}

/// AdamW over a fixed list of named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    moments: Vec<Moments>,
    step: u64,
}

/// Elements below which a single thread does the work.
const PAR_MIN: usize = 1 << 15;

/// Runs `f` over matching chunks of the four buffers on up to [`crate::fused::num_threads`] threads.
fn par_zip4<F>(theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], f: F)
where
    F: Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
{
    use rayon::prelude::*;
    let n = theta.len();
    let threads = crate::fused::num_threads();
    if threads == 1 || n < PAR_MIN {
        f(theta, g, m, v);
        return;
    }
    let chunk = n.div_ceil(threads);
    theta
        .par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(m.par_chunks_mut(chunk))
        .zip(v.par_chunks_mut(chunk))
        .for_each(|(((t, g), m), v)| f(t, g, m, v));
}

/// Sum of squares of a slice, multi-threaded for large slices.
fn sum_sq(x: &[f32]) -> f64 {
    let seq = |x: &[f32]| x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>();
    let threads = crate::fused::num_threads();
    if threads == 1 || x.len() < PAR_MIN {
        return seq(x);
    }
    use rayon::prelude::*;
    let chunk = x.len().div_ceil(threads);
    x.par_chunks(chunk).map(seq).sum()
}

/// Applies `f` to the contiguous f32 data of a CPU tensor (made contiguous if needed).
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        t.to_dtype(DType::F32)?
    };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(Error::invalid("optimizer: expected a CPU f32 gradient"));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::invalid("optimizer: non-contiguous gradient"))?;
    Ok(f(&data[a..b]))
}

/// The fused in-place AdamW update of one CPU f32 variable.
struct HostUpdate<'a> {
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
    scale: f32,
    beta1: f32,
    beta2: f32,
    decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
}

impl InplaceOp2 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-host"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adamw-host: expected f32 storages");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw-host: expected contiguous tensors");
        };
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw-host: poisoned".into()))?;
        let (m, v) = &mut *guard;
        let theta = &mut theta[t0..t1];
        let g = &g[g0..g1];
        if theta.len() != g.len() || m.len() != g.len() || v.len() != g.len() {
            candle_core::bail!("adamw-host: size mismatch");
        }
        let (scale, b1, b2, decay, step, ib2, eps) = (
            self.scale,
            self.beta1,
            self.beta2,
            self.decay,
            self.step_size,
            self.inv_sqrt_bc2,
            self.eps,
        );
        let step = crate::simd::AdamWStep {
            grad_scale: scale,
            beta1: b1,
            beta2: b2,
            decay,
            step_size: step,
            inv_sqrt_bc2: ib2,
            eps,
        };
        par_zip4(theta, g, m, v, |t, g, m, v| {
            crate::simd::adamw(t, g, m, v, step)
        });
        Ok(())
    }
}

impl AdamW {
    /// Optimizer for `vars` (name, variable); names key the exported state.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| {
                Ok(if host_eligible(v) {
                    Moments::Host {
                        m: vec![0f32; v.elem_count()],
                        v: vec![0f32; v.elem_count()],
                    }
                } else {
                    Moments::Tensors {
                        m: v.zeros_like()?,
                        v: v.zeros_like()?,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            vars,
            moments,
            step: 0,
        })
    }

    /// All variables of a `VarMap`, sorted by name.
    pub fn from_varmap(varmap: &candle_nn::VarMap, cfg: AdamWConfig) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap lock poisoned"))?;
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        drop(data);
        Self::new(vars, cfg)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Global L2 norm of the gradients of the optimizer's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += if matches!(g.device(), Device::Cpu) && g.dtype() == DType::F32 {
                    with_host_f32(g, sum_sq)?
                } else {
                    g.to_dtype(DType::F32)?
                        .sqr()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                };
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
                if n > max {
                    max / (n + 1e-6)
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            match &mut self.moments[i] {
                Moments::Host { m, v } => {
                    let g = if g.dtype() == DType::F32 && g.is_contiguous() {
                        g.clone()
                    } else {
                        g.to_dtype(DType::F32)?.contiguous()?
                    };
                    let op = HostUpdate {
                        moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                        scale: scale as f32,
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        decay: (1.0 - c.lr * c.weight_decay) as f32,
                        step_size: (c.lr / bc1) as f32,
                        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                        eps: c.eps as f32,
                    };
                    var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Tensors { m, v } => {
                    let g = if scale != 1.0 {
                        (g * scale)?
                    } else {
                        g.clone()
                    };
                    let m_new = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v_new = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let theta = var.as_tensor();
                    let theta = if c.weight_decay != 0.0 {
                        (theta * (1.0 - c.lr * c.weight_decay))?
                    } else {
                        theta.clone()
                    };
                    let denom = ((v_new.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let upd = ((&m_new / denom)? * (c.lr / bc1))?;
                    var.set(&(theta - upd)?)?;
                    *m = m_new;
                    *v = v_new;
                }
            }
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
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let (m, v) = match &self.moments[i] {
                Moments::Host { m, v } => {
                    let mk = |x: &Vec<f32>| Tensor::from_slice(x, var.shape(), var.device());
                    match (mk(m), mk(v)) {
                        (Ok(m), Ok(v)) => (m, v),
                        _ => continue,
                    }
                }
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("{name}.exp_avg"), m);
            out.insert(format!("{name}.exp_avg_sq"), v);
        }
        (out, self.step)
    }

    /// Restore a state exported by [`AdamW::state`]; every variable must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let mut restored = Vec::with_capacity(self.vars.len());
        for (name, var) in self.vars.iter() {
            let mut pair = Vec::with_capacity(2);
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{name}.{suffix}");
                let t = state.get(&key).ok_or_else(|| Error::MissingKey {
                    file: "optimizer state".into(),
                    key: key.clone(),
                })?;
                if t.dims() != var.dims() {
                    return Err(Error::Shape {
                        what: key,
                        expected: var.dims().to_vec(),
                        got: t.dims().to_vec(),
                    });
                }
                pair.push(t);
            }
            restored.push(if host_eligible(var) {
                Moments::Host {
                    m: pair[0]
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                    v: pair[1]
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                }
            } else {
                Moments::Tensors {
                    m: pair[0].to_device(var.device())?.to_dtype(var.dtype())?,
                    v: pair[1].to_device(var.device())?.to_dtype(var.dtype())?,
                }
            });
        }
        self.moments = restored;
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
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
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

    /// The fused CPU path and the tensor-op path agree (large tensor: multi-threaded chunks;
    /// small: single thread), with clipping and weight decay, and the state round-trips.
    #[test]
    fn host_path_matches_tensor_path() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            max_grad_norm: Some(0.5),
            ..Default::default()
        };
        let init_big = Tensor::randn(0f32, 1., (300, 257), &dev)?;
        let init_small = Tensor::randn(0f32, 1., (7,), &dev)?;
        let mk = || -> Result<(Var, Var)> {
            Ok((
                Var::from_tensor(&init_big.copy()?)?,
                Var::from_tensor(&init_small.copy()?)?,
            ))
        };
        let (a1, a2) = mk()?;
        let (b1, b2) = mk()?;
        let mut fast = AdamW::new(
            vec![("a".into(), a1.clone()), ("b".into(), a2.clone())],
            cfg,
        )?;
        let mut slow = AdamW::new(
            vec![("a".into(), b1.clone()), ("b".into(), b2.clone())],
            cfg,
        )?;
        // Force the tensor-op path on the reference optimizer.
        for (i, (_, var)) in slow.vars.iter().enumerate() {
            slow.moments[i] = Moments::Tensors {
                m: var.zeros_like()?,
                v: var.zeros_like()?,
            };
        }
        assert!(matches!(fast.moments[0], Moments::Host { .. }));
        let target = Tensor::randn(0f32, 1., (300, 257), &dev)?;
        for _ in 0..3 {
            for (x, y, opt) in [(&a1, &a2, &mut fast), (&b1, &b2, &mut slow)] {
                let loss = ((x.as_tensor() - &target)?.sqr()?.sum_all()?
                    + y.as_tensor().powf(3.0)?.sum_all()?)?;
                opt.backward_step(&loss)?;
            }
        }
        let d1 = (a1.as_tensor() - b1.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let d2 = (a2.as_tensor() - b2.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d1 < 1e-5 && d2 < 1e-5, "{d1} {d2}");
        let moved = (a1.as_tensor() - &init_big)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(moved > 1e-3);
        // state round trip
        let (st, step) = fast.state();
        let (st2, _) = slow.state();
        let dm = (&st["a.exp_avg_sq"] - &st2["a.exp_avg_sq"])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(dm < 1e-5);
        let mut again = AdamW::new(
            vec![("a".into(), a1.clone()), ("b".into(), a2.clone())],
            cfg,
        )?;
        again.load_state(&st, step)?;
        assert_eq!(again.step_count(), 3);
        let (st3, _) = again.state();
        assert_eq!(
            st3["b.exp_avg"].to_vec1::<f32>()?,
            st["b.exp_avg"].to_vec1::<f32>()?
        );
        Ok(())
    }
}
