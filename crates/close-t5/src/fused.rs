//! Fused, differentiable CPU kernels for the hot spots of the training step: softmax over
//! the last dimension, T5's RMS norm, and the label negative log-likelihood (log-softmax +
//! gather). Each is one candle `CustomOp` with a hand-written backward pass, replacing 5–10
//! elementary graph nodes (each of which costs a zero-filled gradient buffer and an add in
//! candle's backprop). On other devices or dtypes they fall back to the composed,
//! differentiable `close_core::ops`. Tests check values and gradients against those.

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp2, Layout, Shape, Tensor, D,
};
use close_core::fused::{par_rows, slice, use_fused, with_data};
pub use close_core::fused::softmax_last_dim;
use close_core::Result;

// ---------------------------------------------------------------- linear

/// `y = x wᵀ` for `x [M, K]`, `w [N, K]` whose backward writes the weight gradient directly
/// in `[N, K]` layout (`gᵀ x`), instead of candle's `(xᵀ g)ᵀ` plus a strided add.
struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "t5-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("t5-linear: input width {k} vs weight width {k2}");
        }
        let wt = l2.transpose(0, 1)?;
        let y = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = g.matmul(&w.detach())?;
        let dw = g.t()?.matmul(&x.detach())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x [M, K] · wᵀ` for `w [N, K]` → `[M, N]`.
pub fn linear2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !use_fused(&[x, w]) {
        return Ok(x.matmul(&w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Linear)?)
}

// ---------------------------------------------------------------- RMS norm

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "t5-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        let eps = self.eps;
        par_rows(&mut y, d, |r0, ys| {
            for (i, yr) in ys.chunks_mut(d).enumerate() {
                let o = (r0 + i) * d;
                let xr = &x[o..o + d];
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for j in 0..d {
                    yr[j] = xr[j] * r * w[j];
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // xhat = x r, y = xhat w;  dw = Σ_rows g xhat;  dx = r (g w - xhat mean(g w xhat))
        let d = w.elem_count();
        let eps = self.eps;
        let partial_dw: Mutex<Vec<f32>> = Mutex::new(vec![0f32; d]);
        let dx = with_data(x, |x| {
            with_data(w, |w| {
                with_data(grad, |g| {
                    let mut dx = vec![0f32; x.len()];
                    par_rows(&mut dx, d, |r0, dxs| {
                        let mut dw = vec![0f32; d];
                        for (i, dr) in dxs.chunks_mut(d).enumerate() {
                            let o = (r0 + i) * d;
                            let (xr, gr) = (&x[o..o + d], &g[o..o + d]);
                            let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                            let r = 1.0 / (ms + eps).sqrt();
                            let mut dot = 0f32;
                            for j in 0..d {
                                let xh = xr[j] * r;
                                dw[j] += gr[j] * xh;
                                dot += gr[j] * w[j] * xh;
                            }
                            let mean = dot / d as f32;
                            for j in 0..d {
                                dr[j] = r * (gr[j] * w[j] - xr[j] * r * mean);
                            }
                        }
                        if let Ok(mut acc) = partial_dw.lock() {
                            acc.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                        }
                    });
                    Ok(dx)
                })
            })
        })?;
        let dw = partial_dw
            .into_inner()
            .map_err(|_| candle_core::Error::Msg("rms-norm: poisoned".into()))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// T5 RMS norm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !use_fused(&[x, w]) {
        return close_core::ops::rms_norm(x, w, eps);
    }
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

// ---------------------------------------------------------------- label NLL

/// `-log softmax(logits)[label]` per row; remembers the log-sum-exp of each row for the
/// backward pass.
struct LabelNll {
    lse: Mutex<Vec<f32>>,
}

impl CustomOp2 for LabelNll {
    fn name(&self) -> &'static str {
        "t5-label-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1)?;
        let CpuStorage::U32(lab) = s2 else {
            candle_core::bail!("label-nll: labels must be u32")
        };
        let (a, b) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("label-nll: labels not contiguous".into()))?;
        let lab = &lab[a..b];
        let v = l1.dims()[l1.dims().len() - 1];
        let n = lab.len();
        if n * v != x.len() {
            candle_core::bail!("label-nll: {n} labels for {} logits of width {v}", x.len());
        }
        if let Some(&bad) = lab.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("label-nll: label {bad} outside the vocabulary ({v})");
        }
        // lse per row computed in parallel (rows are independent).
        let mut lse = vec![0f32; n];
        par_rows(&mut lse, 1, |r0, out| {
            for (i, o) in out.iter_mut().enumerate() {
                let row = &x[(r0 + i) * v..(r0 + i + 1) * v];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&t| (t - max).exp()).sum();
                *o = max + sum.ln();
            }
        });
        let nll: Vec<f32> = (0..n)
            .map(|r| lse[r] - x[r * v + lab[r] as usize])
            .collect();
        if let Ok(mut g) = self.lse.lock() {
            *g = lse;
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d logits = g_r (softmax(x_r) - onehot(label_r))
        let v = logits.dim(D::Minus1)?;
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("label-nll: poisoned".into()))?
            .clone();
        let lab = labels.flatten_all()?.to_vec1::<u32>()?;
        let dx = with_data(logits, |x| {
            with_data(grad, |g| {
                let mut dx = vec![0f32; x.len()];
                par_rows(&mut dx, v, |r0, dxs| {
                    for (i, dr) in dxs.chunks_mut(v).enumerate() {
                        let r = r0 + i;
                        let (gr, l) = (g[r], lse[r]);
                        if gr == 0.0 {
                            continue;
                        }
                        let xr = &x[r * v..(r + 1) * v];
                        for j in 0..v {
                            dr[j] = gr * (xr[j] - l).exp();
                        }
                        dr[lab[r] as usize] -= gr;
                    }
                });
                Ok(dx)
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, logits.shape(), logits.device())?),
            None,
        ))
    }
}

/// `-log_softmax(logits)[label]`: `[B, T, V]`, `[B, T]` (u32) → `[B, T]`.
pub fn nll_of_labels(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if !use_fused(&[logits]) {
        let lsm = close_core::ops::log_softmax_last_dim(logits)?;
        return Ok(lsm
            .gather(&labels.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            .neg()?);
    }
    let flat = logits.reshape((b * t, v))?.contiguous()?;
    let lab = labels.flatten_all()?.contiguous()?;
    let op = LabelNll {
        lse: Mutex::new(Vec::new()),
    };
    Ok(flat.apply_op2(&lab, op)?.reshape((b, t))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// max |a - b| / max(1, max |b|)
    fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0)
    }

    /// Values and gradients of the fused kernels equal the composed `close_core::ops`, on
    /// sizes that take the single- and multi-threaded paths.
    #[test]
    fn fused_kernels_match_composed_ops_with_gradients() {
        let dev = Device::Cpu;
        for (rows, d) in [(3usize, 7usize), (300, 130)] {
            let x = Var::randn(0f32, 2., (rows, d), &dev).unwrap();
            let w = Var::randn(1f32, 0.3, d, &dev).unwrap();
            let up = Tensor::randn(0f32, 1., (rows, d), &dev).unwrap();
            let lab: Vec<u32> = (0..rows).map(|i| (i * 7 % d) as u32).collect();
            let lab = Tensor::from_vec(lab, (1, rows), &dev).unwrap();
            let run = |fused: bool| {
                let (s, n, l) = if fused {
                    (
                        softmax_last_dim(x.as_tensor()).unwrap(),
                        rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
                        nll_of_labels(&x.as_tensor().unsqueeze(0).unwrap(), &lab).unwrap(),
                    )
                } else {
                    let lsm = close_core::ops::log_softmax_last_dim(x.as_tensor()).unwrap();
                    let l = lsm
                        .gather(&lab.t().unwrap(), D::Minus1)
                        .unwrap()
                        .t()
                        .unwrap()
                        .neg()
                        .unwrap();
                    (
                        close_core::ops::softmax_last_dim(x.as_tensor()).unwrap(),
                        close_core::ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
                        l,
                    )
                };
                let loss = ((&s * &up).unwrap().sum_all().unwrap()
                    + (&n * &up).unwrap().sqr().unwrap().sum_all().unwrap()
                    + (l.sqr().unwrap().sum_all().unwrap()))
                .unwrap();
                let g = loss.backward().unwrap();
                (
                    s,
                    n,
                    l,
                    g.get(x.as_tensor()).unwrap().clone(),
                    g.get(w.as_tensor()).unwrap().clone(),
                )
            };
            let a = run(true);
            let b = run(false);
            assert!(maxdiff(&a.0, &b.0) < 1e-6);
            assert!(maxdiff(&a.1, &b.1) < 1e-5);
            assert!(maxdiff(&a.2.flatten_all().unwrap(), &b.2.flatten_all().unwrap()) < 1e-4);
            assert!(maxdiff(&a.3, &b.3) < 1e-5, "dx {}", maxdiff(&a.3, &b.3));
            assert!(maxdiff(&a.4, &b.4) < 1e-5, "dw {}", maxdiff(&a.4, &b.4));
        }
    }

    #[test]
    fn fused_linear_matches_matmul_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (37, 24), &dev).unwrap();
        let w = Var::randn(0f32, 1., (19, 24), &dev).unwrap();
        let up = Tensor::randn(0f32, 1., (37, 19), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                linear2d(x.as_tensor(), w.as_tensor()).unwrap()
            } else {
                x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap()
            };
            let g = (&y * &up)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                y,
                g.get(x.as_tensor()).unwrap().clone(),
                g.get(w.as_tensor()).unwrap().clone(),
            )
        };
        let (a, b) = (run(true), run(false));
        assert!(maxdiff(&a.0, &b.0) < 1e-6);
        assert!(maxdiff(&a.1, &b.1) < 1e-5);
        assert!(maxdiff(&a.2, &b.2) < 1e-5);
    }
}
