//! Differentiable building blocks.
//!
//! candle's fused `softmax_last_dim`, `layer_norm` and `rms_norm` kernels (and
//! `candle_nn::LayerNorm` on contiguous input) have no backward pass: gradients through them
//! silently vanish. These versions are written with elementary ops that all have backward
//! passes; use them in every forward that is trained. Inference-only code may use the fused
//! kernels where they are faster (the results agree to ~1e-6).

use candle_core::{DType, Tensor, D};

use crate::Result;

/// Softmax over the last dimension (numerically stabilised, differentiable).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Log-softmax over the last dimension (differentiable).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Divide each row by its L2 norm (differentiable). `eps` > 0 is added to the norm first
/// (guards all-zero rows); CLIP's own normalization uses none, as HF does.
pub fn l2_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    let n = if eps > 0.0 { (n + eps)? } else { n };
    Ok(x.broadcast_div(&n)?)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`
/// (biased variance, as PyTorch). Computed in f32 when the input is half precision.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = if dtype == DType::F32 || dtype == DType::F64 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    let y = xhat.broadcast_mul(weight)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// T5-style RMS norm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, no mean
/// subtraction, no bias; the variance is computed in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = if dtype == DType::F32 || dtype == DType::F64 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    Ok(y.broadcast_mul(weight)?)
}

/// Names of the variables in `varmap` whose gradient in `grads` is missing or all zero.
/// Used by the "every parameter trains" tests of each model.
pub fn vars_without_gradient(
    varmap: &candle_nn::VarMap,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<String>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::invalid("varmap lock poisoned"))?;
    let mut missing = Vec::new();
    for (name, var) in data.iter() {
        match grads.get(var.as_tensor()) {
            None => missing.push(name.clone()),
            Some(g) => {
                let nz = g
                    .abs()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                if nz == 0.0 || !nz.is_finite() {
                    missing.push(name.clone());
                }
            }
        }
    }
    missing.sort();
    Ok(missing)
}

/// The variables of `varmap` whose gradients differ between two backward passes (e.g. the
/// fused and the composed path): `(name, max |a − b| / scale)` for every variable above
/// `rel_tol`, sorted by name. `scale` is the variable's largest gradient, but at least a
/// thousandth of the largest gradient of any variable: gradients that are zero in exact
/// arithmetic (an attention key bias's, since softmax ignores a per-row constant) then do
/// not compare their rounding noise. A gradient in one pass only is reported as infinity.
pub fn gradient_differences(
    varmap: &candle_nn::VarMap,
    a: &candle_core::backprop::GradStore,
    b: &candle_core::backprop::GradStore,
    rel_tol: f64,
) -> Result<Vec<(String, f64)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::invalid("varmap lock poisoned"))?;
    let max = |t: &Tensor| -> Result<f64> {
        Ok(t.abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    let mut pairs = Vec::new();
    let mut largest = 0f64;
    for (name, var) in data.iter() {
        let (ga, gb) = (a.get(var.as_tensor()), b.get(var.as_tensor()));
        if let Some(x) = ga {
            largest = largest.max(max(x)?);
        }
        pairs.push((name, ga, gb));
    }
    let mut out = Vec::new();
    for (name, ga, gb) in pairs {
        let rel = match (ga, gb) {
            (None, None) => continue,
            (Some(x), Some(y)) => max(&(x - y)?)? / max(x)?.max(largest * 1e-3).max(1e-30),
            _ => f64::INFINITY,
        };
        if rel.is_nan() || rel > rel_tol {
            out.push((name.clone(), rel));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_fused_kernels() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3., (2, 5, 7), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 7, &dev)?;
        let b = Tensor::randn(0f32, 0.1, 7, &dev)?;
        assert!(
            close(
                &softmax_last_dim(&x)?,
                &candle_nn::ops::softmax_last_dim(&x)?
            ) < 1e-6
        );
        assert!(
            close(
                &layer_norm(&x, &w, Some(&b), 1e-5)?,
                &candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)?
            ) < 1e-5
        );
        assert!(
            close(
                &rms_norm(&x, &w, 1e-6)?,
                &candle_nn::ops::rms_norm(&x, &w, 1e-6)?
            ) < 1e-5
        );
        let lsm = log_softmax_last_dim(&x)?;
        assert!(close(&lsm.exp()?, &softmax_last_dim(&x)?) < 1e-6);
        Ok(())
    }

    #[test]
    fn gradients_flow_through_every_op() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (3, 4), &dev)?;
        let w = Var::randn(1f32, 0.1, 4, &dev)?;
        let b = Var::randn(0f32, 0.1, 4, &dev)?;
        let t = Tensor::randn(0f32, 1., (3, 4), &dev)?;
        let y = layer_norm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1e-5)?;
        let y = rms_norm(&y, w.as_tensor(), 1e-6)?;
        let y = softmax_last_dim(&y)?;
        let loss = (y * &t)?.sum_all()?;
        let g = loss.backward()?;
        for v in [&x, &w, &b] {
            let s = g
                .get(v.as_tensor())
                .expect("grad")
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert!(s > 0.0);
        }
        Ok(())
    }
}
