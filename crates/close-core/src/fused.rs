//! Fused, differentiable CPU kernels shared by the trained models (CLIP, T5), and the
//! helpers that CPU kernels of those crates build on. Each kernel is one candle `CustomOp`
//! with a hand-written backward pass, replacing several elementary graph nodes (each of
//! which costs a zero-filled gradient buffer and an add in candle's backprop). On other
//! devices or dtypes they fall back to the composed, differentiable [`crate::ops`]. Tests
//! check values and gradients against those.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor, D};

use crate::Result;

/// Elements below which a kernel runs on one thread.
const PAR_MIN: usize = 1 << 14;

pub fn use_fused(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32)
}

/// Runs `f(first_row, rows_chunk)` over `out` split into whole rows of `row` elements.
pub fn par_rows<F>(out: &mut [f32], row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let n_rows = out.len() / row.max(1);
    let threads = candle_core::utils::get_num_threads().max(1);
    if threads == 1 || out.len() < PAR_MIN || n_rows < 2 {
        f(0, out);
        return;
    }
    let rows_per = n_rows.div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        for (i, chunk) in out.chunks_mut(rows_per * row).enumerate() {
            s.spawn(move || f(i * rows_per, chunk));
        }
    });
}

/// The contiguous f32 data of a CPU storage under `layout`.
pub fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    slice_named(s, l, "fused op")
}

/// [`slice`], with errors naming the operand `what`.
pub fn slice_named<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Calls `f` with the f32 data of a CPU tensor (made contiguous if needed).
pub fn with_data<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*st else {
        candle_core::bail!("fused op: expected a CPU tensor")
    };
    f(slice(s, l)?)
}

/// Softmax of one row into `y`. A row that is entirely `-inf` (fully masked) gives zeros
/// rather than NaN.
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        y.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let mut sum = 0f32;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|o| *o *= inv);
}

// ---------------------------------------------------------------- softmax

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "close-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, d, |r0, ys| {
            for (i, yr) in ys.chunks_mut(d).enumerate() {
                let o = (r0 + i) * d;
                softmax_row(&x[o..o + d], yr);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let d = res.dim(D::Minus1)?;
        let out = with_data(res, |y| {
            with_data(grad, |g| {
                let mut dx = vec![0f32; y.len()];
                par_rows(&mut dx, d, |r0, dxs| {
                    for (i, dr) in dxs.chunks_mut(d).enumerate() {
                        let o = (r0 + i) * d;
                        let (yr, gr) = (&y[o..o + d], &g[o..o + d]);
                        let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                        for j in 0..d {
                            dr[j] = yr[j] * (gr[j] - dot);
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, res.shape(), res.device())?))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !use_fused(&[x]) {
        return crate::ops::softmax_last_dim(x);
    }
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn softmax_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Large enough to take the multi-threaded path, with masked (-inf) entries.
        for shape in [(2usize, 3usize, 7usize), (8, 64, 96)] {
            let x = Var::randn(0f32, 3., shape, &dev)?;
            let mut m = vec![0f32; shape.2];
            m[2] = f32::NEG_INFINITY;
            m[shape.2 - 1] = f32::NEG_INFINITY;
            let xm = x.as_tensor().broadcast_add(&Tensor::new(m.as_slice(), &dev)?)?;
            let t = Tensor::randn(0f32, 1., shape, &dev)?;
            let a = softmax_last_dim(&xm)?;
            let c = crate::ops::softmax_last_dim(&xm)?;
            assert!(maxdiff(&a, &c) < 1e-6);
            let ga = (a * &t)?.sum_all()?.backward()?;
            let gc = (c * &t)?.sum_all()?.backward()?;
            assert!(maxdiff(ga.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap()) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn fully_masked_row_gives_zeros_not_nan() -> Result<()> {
        let x = Tensor::new(&[[f32::NEG_INFINITY, f32::NEG_INFINITY], [0.0, 0.0]], &Device::Cpu)?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(y, vec![vec![0.0, 0.0], vec![0.5, 0.5]]);
        Ok(())
    }
}
