//! Fused, differentiable CPU LayerNorm for training (forward + a one-pass backward giving
//! dx, dweight, dbias); the fused softmax is the shared `close_core::fused` one. candle's
//! own fused kernels have no backward pass; the composed versions in `close_core::ops` are correct but run ~10 separate ops
//! (each a full memory pass) forward and ~20 backward. On non-CPU devices or non-f32 dtypes
//! these functions fall back to `close_core::ops`. Tests check values and gradients against
//! `close_core::ops`.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

pub use close_core::fused::softmax_last_dim;
use close_core::fused::{slice_named, use_fused};
use close_core::Result;

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "clip-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_named(s1, l1, "layer_norm x")?;
        let w = slice_named(s2, l2, "layer_norm weight")?;
        let b = slice_named(s3, l3, "layer_norm bias")?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(yr, xr)| {
                let mean = xr.iter().sum::<f32>() / d as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let rstd = 1.0 / (var + self.eps).sqrt();
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count() / d;
        let out = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = out.narrow(0, 0, n * d)?.reshape(x.shape())?;
        let dw = out.narrow(0, n * d, d)?;
        let db = out.narrow(0, n * d + d, d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward of LayerNorm: output is `[dx (n·d), dweight (d), dbias (d)]` flattened.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "clip-layer-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_named(s1, l1, "layer_norm x")?;
        let w = slice_named(s2, l2, "layer_norm weight")?;
        let g = slice_named(s3, l3, "layer_norm grad")?;
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; x.len() + 2 * d];
        let (dx, rest) = out.split_at_mut(n * d);
        // Per-chunk partial sums of dweight / dbias, reduced afterwards.
        let rows_per = n.div_ceil(close_core::fused::num_threads() * 4).max(1);
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(rows_per * d)
            .enumerate()
            .map(|(c, dxc)| {
                let mut dw = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                for (r, dxr) in dxc.chunks_mut(d).enumerate() {
                    let row = c * rows_per + r;
                    let xr = &x[row * d..(row + 1) * d];
                    let gr = &g[row * d..(row + 1) * d];
                    let mean = xr.iter().sum::<f32>() / d as f32;
                    let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    let rstd = 1.0 / (var + self.eps).sqrt();
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for i in 0..d {
                        xhat[i] = (xr[i] - mean) * rstd;
                        let dxh = gr[i] * w[i];
                        s1 += dxh;
                        s2 += dxh * xhat[i];
                        dw[i] += gr[i] * xhat[i];
                        db[i] += gr[i];
                    }
                    let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                    for i in 0..d {
                        dxr[i] = rstd * (gr[i] * w[i] - m1 - xhat[i] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let (dw, db) = rest.split_at_mut(d);
        for (pw, pb) in partials {
            for i in 0..d {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch), differentiable in `x`,
/// `weight` and `bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !use_fused(&[x, weight, bias]) {
        return close_core::ops::layer_norm(x, weight, Some(bias), eps);
    }
    let d = weight.dims1()?;
    if x.dim(D::Minus1)? != d || bias.dims1()? != d {
        return Err(close_core::Error::Shape {
            what: "layer_norm input".into(),
            expected: vec![d],
            got: x.dims().to_vec(),
        });
    }
    Ok(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn layer_norm_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0.5f32, 2., (3, 5, 16), &dev)?;
        let w = Var::randn(1f32, 0.3, 16, &dev)?;
        let b = Var::randn(0f32, 0.3, 16, &dev)?;
        let t = Tensor::randn(0f32, 1., (3, 5, 16), &dev)?;
        let a = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let c =
            close_core::ops::layer_norm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1e-5)?;
        assert!(maxdiff(&a, &c) < 1e-5);
        let ga = (a * &t)?.sum_all()?.backward()?;
        let gc = (c * &t)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let d = maxdiff(
                ga.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
        Ok(())
    }
}
