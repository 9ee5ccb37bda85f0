//! AdamW (decoupled weight decay, Loshchilov & Hutter), matching `torch.optim.AdamW`:
//! `m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; θ -= lr·wd·θ; θ -= lr · m̂ / (sqrt(v̂) + eps)`.
//! Optional global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).
//! The optimizer state can be exported / restored for `--resume`.
//!
//! Half-precision variables (bf16, f16) get an f32 master copy: the update runs on the
//! master and the variable receives it rounded, so steps far below the half type's
//! resolution still accumulate (mixed precision with master weights).
//!
//! On a GPU a step never reads a value back to the host: the clipping factor stays a
//! device scalar. [`AdamW::step_unscaled`] (for f16 loss scaling) is the exception: it must
//! know whether the gradients overflowed, which costs one read per step.

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

/// Whether a variable's update can take the fused host path: a contiguous f32 parameter
/// (the variable itself, or its master copy) on the CPU.
fn host_eligible(var: &Var) -> bool {
    matches!(var.device(), Device::Cpu) && var.as_tensor().is_contiguous()
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// The f32 master copy of a half-precision variable (None for f32 variables).
fn master_of(var: &Var) -> Result<Option<Tensor>> {
    if !is_half(var.dtype()) {
        return Ok(None);
    }
    // `copy` gives the master its own storage: the fused update writes it in place.
    Ok(Some(var.as_tensor().to_dtype(DType::F32)?.copy()?))
}

/// How much to scale the gradients by before the update: global-norm clipping (and, for a
/// loss-scaled step, the inverse loss scale), on the host or as a device scalar.
enum GradScale {
    Host(f64),
    Device(Tensor),
}

impl GradScale {
    fn host(&self) -> Result<f32> {
        Ok(match self {
            GradScale::Host(s) => *s as f32,
            GradScale::Device(t) => t.to_scalar::<f32>()?,
        })
    }

    fn apply(&self, g: &Tensor) -> Result<Tensor> {
        Ok(match self {
            GradScale::Host(s) if *s == 1.0 => g.clone(),
            GradScale::Host(s) => (g * *s)?,
            GradScale::Device(t) => g.broadcast_mul(t)?,
        })
    }
}

/// AdamW over a fixed list of named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    /// f32 master weights of the half-precision variables, by index into `vars`.
    masters: Vec<Option<Tensor>>,
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

/// Applies `f` to the contiguous f32 data of a CPU tensor (made contiguous and f32 if
/// needed).
pub fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
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
        return Err(Error::invalid("expected a CPU tensor"));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::invalid("non-contiguous tensor"))?;
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
        let masters = vars
            .iter()
            .map(|(_, v)| master_of(v))
            .collect::<Result<Vec<_>>>()?;
        let moments = vars
            .iter()
            .map(|(_, v)| fresh_moments(v))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            vars,
            masters,
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

    /// The variables, in the order of the optimizer state (by name, from a varmap).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
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

    /// Global L2 norm of the gradients of the optimizer's variables (read to the host).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        self.sum_sq_on_host(grads).map(f64::sqrt)
    }

    /// Sum of squared gradients, read to the host.
    fn sum_sq_on_host(&self, grads: &GradStore) -> Result<f64> {
        if self.all_host() {
            return self.host_sum_sq(grads);
        }
        match self.device_sum_sq(grads)? {
            Some(t) => Ok(t.to_scalar::<f32>()? as f64),
            None => Ok(0.0),
        }
    }

    fn all_host(&self) -> bool {
        self.moments
            .iter()
            .all(|m| matches!(m, Moments::Host { .. }))
    }

    fn host_sum_sq(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += with_host_f32(g, sum_sq)?;
            }
        }
        Ok(total)
    }

    /// Sum of squared gradients as an f32 scalar on the variables' device (no host read).
    fn device_sum_sq(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        Ok(total)
    }

    /// The gradient factor for this step: `unscale` (1 / loss scale) times the clipping
    /// factor `min(1, max_norm / (norm + 1e-6))` of the unscaled gradients.
    fn grad_scale(&self, grads: &GradStore, unscale: f64) -> Result<GradScale> {
        let Some(max) = self.cfg.max_grad_norm else {
            return Ok(GradScale::Host(unscale));
        };
        if self.all_host() {
            let n = self.host_sum_sq(grads)?.sqrt() * unscale;
            return Ok(GradScale::Host(clip_factor(max, n) * unscale));
        }
        let Some(sum_sq) = self.device_sum_sq(grads)? else {
            return Ok(GradScale::Host(unscale));
        };
        let norm = (sum_sq.sqrt()? * unscale)?;
        let clip = ((norm + 1e-6)?.recip()? * max)?.clamp(0f32, 1f32)?;
        Ok(GradScale::Device((clip * unscale)?))
    }

    /// One update from `grads`. Variables without a gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let scale = self.grad_scale(grads, 1.0)?;
        self.update(grads, &scale)
    }

    /// One update from gradients of a loss that was multiplied by `loss_scale` (f16
    /// training): the gradients are divided by it first. When any of them is not finite
    /// (the scaled loss overflowed), nothing changes and `false` comes back, so that the
    /// caller can lower the scale. Reads one value to the host.
    pub fn step_unscaled(&mut self, grads: &GradStore, loss_scale: f64) -> Result<bool> {
        // The one read: it decides the overflow and, being on the host, the clipping too.
        let sum_sq = self.sum_sq_on_host(grads)?;
        if !sum_sq.is_finite() {
            return Ok(false);
        }
        let unscale = 1.0 / loss_scale;
        let clip = match self.cfg.max_grad_norm {
            Some(max) => clip_factor(max, sum_sq.sqrt() * unscale),
            None => 1.0,
        };
        self.update(grads, &GradScale::Host(clip * unscale))?;
        Ok(true)
    }

    fn update(&mut self, grads: &GradStore, scale: &GradScale) -> Result<()> {
        self.step += 1;
        for i in 0..self.vars.len() {
            let var = self.vars[i].1.clone();
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let param = match &self.masters[i] {
                Some(m) => m.clone(),
                None => var.as_tensor().clone(),
            };
            match &mut self.moments[i] {
                Moments::Host { m, v } => {
                    host_update(&self.cfg, self.step, &param, g, scale.host()?, m, v)?;
                }
                Moments::Tensors { m, v } => {
                    let g = scale.apply(&g.to_dtype(DType::F32)?)?;
                    let theta = tensor_update(&self.cfg, self.step, &param, &g, m, v)?;
                    match &mut self.masters[i] {
                        Some(master) => *master = theta,
                        None => var.set(&theta)?,
                    }
                }
            }
            if let Some(master) = &self.masters[i] {
                var.set(&master.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// `loss.backward()` then [`AdamW::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// Optimizer state as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`, and
    /// `{name}.master` for half-precision variables) and the step.
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
            if let Some(master) = &self.masters[i] {
                out.insert(format!("{name}.master"), master.clone());
            }
        }
        (out, self.step)
    }

    /// Restore a state exported by [`AdamW::state`]; every variable must be present. A
    /// half-precision variable without a saved master takes its master from its value.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let mut restored = Vec::with_capacity(self.vars.len());
        let mut masters = Vec::with_capacity(self.vars.len());
        for (name, var) in self.vars.iter() {
            let m = state_tensor(state, &format!("{name}.exp_avg"), var)?;
            let v = state_tensor(state, &format!("{name}.exp_avg_sq"), var)?;
            restored.push(if host_eligible(var) {
                let host = |t: &Tensor| -> Result<Vec<f32>> {
                    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
                };
                Moments::Host {
                    m: host(m)?,
                    v: host(v)?,
                }
            } else {
                let dev = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.to_device(var.device())?.to_dtype(DType::F32)?)
                };
                Moments::Tensors {
                    m: dev(m)?,
                    v: dev(v)?,
                }
            });
            let key = format!("{name}.master");
            masters.push(match master_of(var)? {
                Some(_) if state.contains_key(&key) => Some(
                    state_tensor(state, &key, var)?
                        .to_device(var.device())?
                        .to_dtype(DType::F32)?
                        .copy()?,
                ),
                m => m,
            });
        }
        self.moments = restored;
        self.masters = masters;
        self.step = step;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_`'s factor for a global norm `n`: 1 up to `max`, then
/// `max / (n + 1e-6)`.
fn clip_factor(max: f64, n: f64) -> f64 {
    if n > max {
        max / (n + 1e-6)
    } else {
        1.0
    }
}

fn fresh_moments(var: &Var) -> Result<Moments> {
    Ok(if host_eligible(var) {
        Moments::Host {
            m: vec![0f32; var.elem_count()],
            v: vec![0f32; var.elem_count()],
        }
    } else {
        let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
        Moments::Tensors {
            m: zeros()?,
            v: zeros()?,
        }
    })
}

/// The fused in-place update of a contiguous f32 CPU parameter (`param` shares storage
/// with the variable or its master).
fn host_update(
    c: &AdamWConfig,
    step: u64,
    param: &Tensor,
    g: &Tensor,
    scale: f32,
    m: &mut [f32],
    v: &mut [f32],
) -> Result<()> {
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2 = 1.0 - c.beta2.powi(step as i32);
    let g = if g.dtype() == DType::F32 && g.is_contiguous() {
        g.clone()
    } else {
        g.to_dtype(DType::F32)?.contiguous()?
    };
    let op = HostUpdate {
        moments: Mutex::new((m, v)),
        scale,
        beta1: c.beta1 as f32,
        beta2: c.beta2 as f32,
        decay: (1.0 - c.lr * c.weight_decay) as f32,
        step_size: (c.lr / bc1) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        eps: c.eps as f32,
    };
    param.inplace_op2(&g, &op)?;
    Ok(())
}

/// The update written with tensor ops (GPU): new moments in `m`, `v`; returns the new
/// parameter (f32).
fn tensor_update(
    c: &AdamWConfig,
    step: u64,
    param: &Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) -> Result<Tensor> {
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2 = 1.0 - c.beta2.powi(step as i32);
    let m_new = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
    let v_new = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let theta = param.to_dtype(DType::F32)?;
    let theta = if c.weight_decay != 0.0 {
        (theta * (1.0 - c.lr * c.weight_decay))?
    } else {
        theta
    };
    let denom = ((v_new.sqrt()? / bc2.sqrt())? + c.eps)?;
    let upd = ((&m_new / denom)? * (c.lr / bc1))?;
    *m = m_new;
    *v = v_new;
    Ok((theta - upd)?)
}

/// `key` from a saved optimizer state, with the variable's shape.
fn state_tensor<'a>(
    state: &'a HashMap<String, Tensor>,
    key: &str,
    var: &Var,
) -> Result<&'a Tensor> {
    let t = state.get(key).ok_or_else(|| Error::MissingKey {
        file: "optimizer state".into(),
        key: key.to_string(),
    })?;
    if t.dims() != var.dims() {
        return Err(Error::Shape {
            what: key.to_string(),
            expected: var.dims().to_vec(),
            got: t.dims().to_vec(),
        });
    }
    Ok(t)
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

    #[test]
    fn half_precision_variables_step_through_an_f32_master() -> Result<()> {
        // 40 steps of lr 1e-4 on a weight of 1.0: each step is below bf16's resolution
        // there (2^-8 relative), so only a master copy lets them add up.
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, -1.0], &dev)?.to_dtype(DType::BF16)?)?;
        let cfg = AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
        for _ in 0..40 {
            let loss = w.as_tensor().to_dtype(DType::F32)?.sum_all()?;
            opt.backward_step(&loss)?;
        }
        // Adam with a constant gradient moves by lr per step.
        let (st, step) = opt.state();
        let master = st["w.master"].to_vec1::<f32>()?;
        assert!((master[0] - (1.0 - 40e-4)).abs() < 1e-5, "{master:?}");
        assert!((master[1] - (-1.0 - 40e-4)).abs() < 1e-5, "{master:?}");
        let rounded = st["w.master"].to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
        let got = w.as_tensor().to_dtype(DType::F32)?;
        assert_eq!(got.to_vec1::<f32>()?, rounded.to_vec1::<f32>()?);
        assert_ne!(got.to_vec1::<f32>()?, vec![1.0, -1.0]);
        // The master survives a state round trip.
        let mut again = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
        again.load_state(&st, step)?;
        assert_eq!(again.state().0["w.master"].to_vec1::<f32>()?, master);
        Ok(())
    }

    #[test]
    fn a_loss_scaled_step_equals_the_plain_step_and_skips_overflow() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = AdamWConfig {
            lr: 1e-2,
            max_grad_norm: Some(0.3),
            ..Default::default()
        };
        let init = Tensor::new(&[0.5f32, -2.0, 3.0], &dev)?;
        let (a, b) = (
            Var::from_tensor(&init.copy()?)?,
            Var::from_tensor(&init.copy()?)?,
        );
        let mut plain = AdamW::new(vec![("w".into(), a.clone())], cfg)?;
        let mut scaled = AdamW::new(vec![("w".into(), b.clone())], cfg)?;
        for _ in 0..3 {
            plain.backward_step(&a.as_tensor().sqr()?.sum_all()?)?;
            let grads = (b.as_tensor().sqr()?.sum_all()? * 1024.0)?.backward()?;
            assert!(scaled.step_unscaled(&grads, 1024.0)?);
        }
        let d = (a.as_tensor() - b.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "{d}");
        let before = b.as_tensor().to_vec1::<f32>()?;
        let grads = (b.as_tensor().sqr()?.sum_all()? * f64::INFINITY)?.backward()?;
        assert!(!scaled.step_unscaled(&grads, 1024.0)?);
        assert_eq!(b.as_tensor().to_vec1::<f32>()?, before);
        assert_eq!(scaled.step_count(), 3);
        Ok(())
    }
}
