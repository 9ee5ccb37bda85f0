//! Fused, differentiable CPU kernels for the hot spots of the training step: softmax over
//! the last dimension, T5's RMS norm, and the label negative log-likelihood (log-softmax +
//! gather). Each is one candle `CustomOp` with a hand-written backward pass, replacing 5–10
//! elementary graph nodes (each of which costs a zero-filled gradient buffer and an add in
//! candle's backprop). On other devices or dtypes they fall back to the composed,
//! differentiable `close_core::ops`. Tests check values and gradients against those.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, D};
pub use close_core::fused::softmax_last_dim;
use close_core::fused::{par_rows, slice, use_fused, with_data};
use close_core::Result;

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
            let o = r0 * d;
            close_core::simd::rms_norm_rows(&x[o..o + ys.len()], w, eps, ys);
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
                        let (o, n) = (r0 * d, dxs.len());
                        close_core::simd::rms_norm_bwd_rows(
                            &x[o..o + n],
                            w,
                            &g[o..o + n],
                            eps,
                            dxs,
                            &mut dw,
                        );
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
        // lse per row, rows in parallel (a few hundred rows of a whole vocabulary each).
        let mut lse = vec![0f32; n];
        {
            use rayon::prelude::*;
            let per = n.div_ceil(4 * close_core::fused::num_threads()).max(1);
            lse.par_chunks_mut(per).enumerate().for_each(|(c, out)| {
                let r0 = c * per;
                close_core::simd::logsumexp_rows(&x[r0 * v..(r0 + out.len()) * v], v, out);
            });
        }
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
                        close_core::simd::scaled_exp(&x[r * v..(r + 1) * v], l, gr, dr);
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

// ---------------------------------------------------------------- decoding attention

/// Attention of the one new position while decoding (no gradient): `softmax(q kᵀ + bias) v`
/// for `q [N, H, 1, dk]`, where each `group` consecutive rows of `q` (the beams of one
/// item) share one row of `k`, `v [N / group, H, T, dk]` and of `bias`, which broadcasts to
/// `[N / group, H, 1, T]` (T5 does not scale the scores). On the CPU one pass per (row,
/// head) instead of a batch of tiny matrix products; elsewhere each item's beams are one
/// `[group, dk] · [dk, T]` product per head.
pub fn decode_attention(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    bias: &Tensor,
    group: usize,
) -> Result<Tensor> {
    let (n, h, one, dk) = q.dims4()?;
    let (nk, _, t, _) = k.dims4()?;
    if one != 1 || group == 0 || nk * group != n {
        return Err(close_core::Error::Shape {
            what: "decode_attention: keys for the queries".into(),
            expected: vec![n / group.max(1), h, t, dk],
            got: k.dims().to_vec(),
        });
    }
    if !use_fused(&[q, k, v]) {
        let qg = q
            .reshape((nk, group, h, dk))?
            .transpose(1, 2)?
            .contiguous()?;
        let s = qg.matmul(&k.t()?)?.broadcast_add(bias)?;
        let o = candle_nn::ops::softmax_last_dim(&s)?.matmul(v)?; // [nk, H, group, dk]
        return Ok(o.transpose(1, 2)?.contiguous()?.reshape((n, h, 1, dk))?);
    }
    let bias = bias
        .broadcast_as((nk, h, 1, t))?
        .to_dtype(candle_core::DType::F32)?;
    let mut out = vec![0f32; n * h * dk];
    with_data(q, |q| {
        with_data(k, |k| {
            with_data(v, |v| {
                with_data(&bias, |b| {
                    par_rows(&mut out, dk, |r0, rows| {
                        let qs = &q[r0 * dk..r0 * dk + rows.len()];
                        let shape = [dk, t, h, group, r0];
                        close_core::simd::attend_rows(qs, k, v, b, shape, rows);
                    });
                    Ok(())
                })
            })
        })
    })?;
    Ok(Tensor::from_vec(out, (n, h, 1, dk), q.device())?)
}

/// `prev [N, H, T, dk]` with its rows picked by `rows` (row `i` ← `rows[i]`; all in order
/// when `None`), and `new [N, H, 1, dk]` appended along T: the decoder's self-attention
/// cache after a step, in one copy.
pub fn gather_append(prev: &Tensor, rows: Option<&[u32]>, new: &Tensor) -> Result<Tensor> {
    let (n, h, t, dk) = prev.dims4()?;
    if let Some(&bad) = rows.and_then(|r| r.iter().find(|&&r| r as usize >= n)) {
        return Err(close_core::Error::invalid(format!(
            "gather_append: row {bad} of {n}"
        )));
    }
    if !use_fused(&[prev, new]) {
        let prev = match rows {
            Some(r) => prev.index_select(&Tensor::new(r, prev.device())?, 0)?,
            None => prev.clone(),
        };
        return Ok(Tensor::cat(&[&prev, new], 2)?);
    }
    let mut out = vec![0f32; n * h * (t + 1) * dk];
    with_data(prev, |p| {
        with_data(new, |x| {
            let row = h * (t + 1) * dk;
            par_rows(&mut out, row, |r0, block| {
                for (i, o) in block.chunks_mut(row).enumerate() {
                    let r = r0 + i;
                    let src = rows.map_or(r, |rows| rows[r] as usize);
                    for (hh, oh) in o.chunks_mut((t + 1) * dk).enumerate() {
                        let from = (src * h + hh) * t * dk;
                        oh[..t * dk].copy_from_slice(&p[from..from + t * dk]);
                        let at = (r * h + hh) * dk;
                        oh[t * dk..].copy_from_slice(&x[at..at + dk]);
                    }
                }
            });
            Ok(())
        })
    })?;
    Ok(Tensor::from_vec(out, (n, h, t + 1, dk), prev.device())?)
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
                close_core::fused::linear(x.as_tensor(), w.as_tensor(), None).unwrap()
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

    /// The one-pass decoding attention against the batched products it replaces, with a
    /// per-head position bias (self-attention) and a per-row mask (cross-attention).
    #[test]
    fn decode_attention_matches_the_composed_products() -> Result<()> {
        let dev = Device::Cpu;
        let (n, h, t, dk) = (3, 2, 5, 8);
        let q = Tensor::randn(0f32, 1., (n, h, 1, dk), &dev)?;
        let k = Tensor::randn(0f32, 1., (n, h, t, dk), &dev)?;
        let v = Tensor::randn(0f32, 1., (n, h, t, dk), &dev)?;
        let pos = Tensor::randn(0f32, 1., (1, h, 1, t), &dev)?;
        let mask: Vec<f32> = (0..n * t)
            .map(|i| if i % t >= t - i / t { -1e9 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (n, 1, 1, t), &dev)?;
        for bias in [&pos, &mask] {
            let fused = decode_attention(&q, (&k, &v), bias, 1)?;
            let composed =
                close_core::fused::with_composed_ops(|| decode_attention(&q, (&k, &v), bias, 1))?;
            assert!(maxdiff(&fused, &composed) < 1e-5);
        }
        // Beams sharing their item's keys: the same as each beam with a copy of them.
        let group = 3;
        let qb = Tensor::randn(0f32, 1., (n * group, h, 1, dk), &dev)?;
        let rows: Vec<u32> = (0..n * group).map(|r| (r / group) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), &dev)?;
        let copies = |t: &Tensor| t.index_select(&rows, 0);
        let want = decode_attention(&qb, (&copies(&k)?, &copies(&v)?), &copies(&mask)?, 1)?;
        for composed in [false, true] {
            let shared = || decode_attention(&qb, (&k, &v), &mask, group);
            let got = match composed {
                false => shared()?,
                true => close_core::fused::with_composed_ops(shared)?,
            };
            assert!(maxdiff(&got, &want) < 1e-5, "composed: {composed}");
        }
        Ok(())
    }

    #[test]
    fn gather_append_matches_index_select_and_cat() -> Result<()> {
        let dev = Device::Cpu;
        let prev = Tensor::randn(0f32, 1., (4, 3, 5, 2), &dev)?;
        let new = Tensor::randn(0f32, 1., (4, 3, 1, 2), &dev)?;
        for rows in [None, Some(&[2u32, 2, 0, 3][..])] {
            let fused = gather_append(&prev, rows, &new)?;
            let composed =
                close_core::fused::with_composed_ops(|| gather_append(&prev, rows, &new))?;
            assert_eq!(maxdiff(&fused, &composed), 0.0);
        }
        assert!(gather_append(&prev, Some(&[0, 1, 2, 4]), &new).is_err());
        Ok(())
    }
}
