//! Fused, differentiable CPU kernels shared by the trained models (CLIP, T5), and the
//! helpers that CPU kernels of those crates build on. Each kernel is one candle `CustomOp`
//! with a hand-written backward pass, replacing several elementary graph nodes (each of
//! which costs a zero-filled gradient buffer and an add in candle's backprop). On other
//! devices or dtypes they fall back to the composed, differentiable [`crate::ops`]. Tests
//! check values and gradients against those.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D,
};

use crate::matmul::Operand;
use crate::Result;

/// Elements below which a kernel runs on one thread.
const PAR_MIN: usize = 1 << 14;

/// Threads the CPU kernels may use: those of the rayon pool the caller runs in (the global
/// pool, sized by `RAYON_NUM_THREADS` or the core count, unless the caller is inside a
/// [`rayon::ThreadPool::install`], e.g. one single-threaded pool per job when several
/// small trainings run side by side).
pub fn num_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Whether the fused CPU kernels apply to `ts`: f32 on the CPU, unless the composed path is
/// forced ([`with_composed_ops`], or `CLOSE_FUSED=0` for the whole process).
pub fn use_fused(ts: &[&Tensor]) -> bool {
    !COMPOSED.get()
        && !composed_by_env()
        && ts
            .iter()
            .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32)
}

thread_local! {
    static COMPOSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn composed_by_env() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("CLOSE_FUSED").is_ok_and(|v| v.trim() == "0"))
}

/// Run `f` with the fused kernels off on this thread: every op takes the composed candle
/// path that other devices (GPUs) and dtypes run. For parity tests of that path on a CPU,
/// and for debugging. Forward and backward passes must both run inside `f`.
pub fn with_composed_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED.set(self.0);
        }
    }
    let _restore = Restore(COMPOSED.replace(true));
    f()
}

/// Runs `f(first_row, rows_chunk)` over `out` split into whole rows of `row` elements, on
/// rayon's pool (candle's own CPU ops run there too).
pub fn par_rows<F>(out: &mut [f32], row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    use rayon::prelude::*;
    let n_rows = out.len() / row.max(1);
    let threads = num_threads();
    if threads == 1 || out.len() < PAR_MIN || n_rows < 2 {
        f(0, out);
        return;
    }
    let rows_per = n_rows.div_ceil(threads);
    out.par_chunks_mut(rows_per * row)
        .enumerate()
        .for_each(|(i, chunk)| f(i * rows_per, chunk));
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
            let o = r0 * d;
            crate::simd::softmax_rows(&x[o..o + ys.len()], ys, d);
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
                    let (o, n) = (r0 * d, dxs.len());
                    crate::simd::softmax_bwd_rows(&y[o..o + n], &g[o..o + n], dxs, d);
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

// ---------------------------------------------------------------- log-softmax

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "close-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, d, |r0, ys| {
            let xs = &x[r0 * d..r0 * d + ys.len()];
            let mut lse = vec![0f32; ys.len() / d];
            crate::simd::logsumexp_rows(xs, d, &mut lse);
            for ((yr, xr), l) in ys.chunks_exact_mut(d).zip(xs.chunks_exact(d)).zip(lse) {
                yr.iter_mut().zip(xr).for_each(|(y, x)| *y = x - l);
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
        // dx = g - exp(y) · sum(g)
        let d = res.dim(D::Minus1)?;
        let out = with_data(res, |y| {
            with_data(grad, |g| {
                let mut dx = vec![0f32; y.len()];
                par_rows(&mut dx, d, |r0, ds| {
                    for (i, dr) in ds.chunks_exact_mut(d).enumerate() {
                        let o = (r0 + i) * d;
                        let gr = &g[o..o + d];
                        crate::simd::scaled_exp(&y[o..o + d], 0.0, crate::simd::sum(gr), dr);
                        dr.iter_mut().zip(gr).for_each(|(v, g)| *v = g - *v);
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, res.shape(), res.device())?))
    }
}

/// Log-softmax over the last dimension, differentiable; one pass per row on the CPU.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !use_fused(&[x]) {
        return crate::ops::log_softmax_last_dim(x);
    }
    Ok(x.contiguous()?.apply_op1(LogSoftmax)?)
}

// ---------------------------------------------------------------- quick GELU

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "close-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, ELEMWISE_CHUNK, |r0, ys| {
            let o = r0 * ELEMWISE_CHUNK;
            crate::simd::quick_gelu(&x[o..o + ys.len()], ys);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(elementwise2(arg, grad, crate::simd::quick_gelu_bwd)?))
    }
}

/// Elementwise kernels split their data into "rows" of this many elements for threading.
const ELEMWISE_CHUNK: usize = 4096;

/// `kernel(a, b, out)` over two tensors of one shape, split over the threads in chunks of
/// [`ELEMWISE_CHUNK`]; the result has `a`'s shape.
fn elementwise2(
    a: &Tensor,
    b: &Tensor,
    kernel: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> candle_core::Result<Tensor> {
    let out = with_data(a, |xs| {
        with_data(b, |ys| {
            let mut out = vec![0f32; xs.len()];
            par_rows(&mut out, ELEMWISE_CHUNK, |r0, os| {
                let (o, n) = (r0 * ELEMWISE_CHUNK, os.len());
                kernel(&xs[o..o + n], &ys[o..o + n], os);
            });
            Ok(out)
        })
    })?;
    Tensor::from_vec(out, a.shape(), a.device())
}

/// `x * sigmoid(1.702 x)` (OpenAI CLIP's `quick_gelu`), one pass forward and backward.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if !use_fused(&[x]) {
        return Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?);
    }
    Ok(x.contiguous()?.apply_op1(QuickGelu)?)
}

// ---------------------------------------------------------------- linear

/// Gradients of `y = x wᵀ` from `g = dL/dy` for `x [M, K]`, `w [N, K]`: `dx = g w`, and
/// `dw = gᵀ x` written directly in `[N, K]` layout (candle's matmul backward gives
/// `(xᵀ g)ᵀ` plus a strided add). Also returns the contiguous `g`.
fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let g = g.contiguous()?;
    if !use_fused(&[x, w, &g]) {
        let dx = g.matmul(&w.detach())?;
        let dw = g.t()?.matmul(&x.detach())?;
        return Ok((dx, dw, g));
    }
    let ((m, k), (n, _)) = (x.dims2()?, w.dims2()?);
    let (dx, dw) = with_data(x, |xs| {
        with_data(w, |ws| {
            with_data(&g, |gs| {
                let mut dx = vec![0f32; m * k];
                let mut dw = vec![0f32; n * k];
                let (gm, gt) = (Operand::row_major(gs, n), Operand::transposed(gs, n));
                crate::matmul::matmul((m, k, n), gm, Operand::row_major(ws, k), &mut dx, false)
                    .and_then(|()| {
                        let xm = Operand::row_major(xs, k);
                        crate::matmul::matmul((n, k, m), gt, xm, &mut dw, false)
                    })
                    .map_err(candle_core::Error::wrap)?;
                Ok((dx, dw))
            })
        })
    })?;
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, (m, k), dev)?,
        Tensor::from_vec(dw, (n, k), dev)?,
        g,
    ))
}

/// Sum over the rows of `g [M, N]` (a bias's gradient): one pass over the rows in memory
/// order, where candle's `sum(0)` reduces along the strided dimension (a tenth of a CLIP
/// training step, docs/performance.md).
fn column_sums(g: &Tensor) -> candle_core::Result<Tensor> {
    if !use_fused(&[g]) {
        return g.sum(0);
    }
    let n = g.dim(1)?;
    let sums = with_data(g, |gs| {
        let mut acc = vec![0f32; n];
        for row in gs.chunks_exact(n) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        Ok(acc)
    })?;
    Tensor::from_vec(sums, n, g.device())
}

/// `y = x wᵀ + b` for `x [M, K]`, `w [N, K]`, `b [N]`: the bias is written into the output
/// first and the matmul accumulates onto it (one pass less than matmul + broadcast add).
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "close-linear"
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
        let x = slice_named(s1, l1, "linear input")?;
        let w = slice_named(s2, l2, "linear weight")?;
        let b = slice_named(s3, l3, "linear bias")?;
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 || b.len() != n {
            candle_core::bail!(
                "linear: input [{m}, {k}], weight [{n}, {k2}], bias [{}] do not fit",
                b.len()
            );
        }
        // The output starts as the bias in every row (no zero-fill pass).
        let mut y = Vec::with_capacity(m * n);
        for _ in 0..m {
            y.extend_from_slice(b);
        }
        crate::matmul::matmul(
            (m, n, k),
            Operand::row_major(x, k),
            Operand::transposed(w, k),
            &mut y,
            true,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, g) = linear_grads(x, w, g)?;
        Ok((Some(dx), Some(dw), Some(column_sums(&g)?)))
    }
}

/// `y = x wᵀ` for `x [M, K]`, `w [N, K]` (backward: [`linear_grads`]).
struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "close-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_named(s1, l1, "linear input")?;
        let w = slice_named(s2, l2, "linear weight")?;
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input width {k} vs weight width {k2}");
        }
        let mut y = vec![0f32; m * n];
        crate::matmul::matmul(
            (m, n, k),
            Operand::row_major(x, k),
            Operand::transposed(w, k),
            &mut y,
            false,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_grads(x, w, g)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `relu(x wᵀ)` for `x [M, K]`, `w [N, K]`. The backward pass reads the ReLU's mask from
/// the output, so the pre-activation `[M, N]` is never kept for it (a linear layer and a
/// ReLU apart would hold both).
struct LinearRelu;

impl CustomOp2 for LinearRelu {
    fn name(&self) -> &'static str {
        "close-linear-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (storage, shape) = LinearNoBias.cpu_fwd(s1, l1, s2, l2)?;
        let CpuStorage::F32(mut y) = storage else {
            candle_core::bail!("linear-relu: the linear output is not f32")
        };
        par_rows(&mut y, ELEMWISE_CHUNK, |_, ys| crate::simd::relu(ys));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let masked = elementwise2(res, g, crate::simd::relu_bwd)?;
        let (dx, dw, _) = linear_grads(x, w, &masked)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x [.., K]` as the rows `[M, K]` of a product with `w [N, K]`, the product `f` of those
/// rows, and its result `[M, N]` back in the leading dimensions of `x`.
fn over_rows(x: &Tensor, w: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims
        .last()
        .ok_or_else(|| crate::Error::invalid("linear: a scalar input"))?;
    let (n, k2) = w.dims2()?;
    if k != k2 {
        return Err(crate::Error::Shape {
            what: "linear: input width vs weight".into(),
            expected: vec![n, k],
            got: w.dims().to_vec(),
        });
    }
    let m = x.elem_count() / k.max(1);
    let y = f(&x.reshape((m, k))?)?;
    let mut out = dims;
    let last = out.len() - 1; // non-empty: `k` came from it
    out[last] = n;
    Ok(y.reshape(out)?)
}

/// `x wᵀ (+ b)` over the last dimension of `x [.., K]` for `w [N, K]`, `b [N]` (PyTorch's
/// `nn.Linear`), differentiable. Leading dimensions are flattened into one matmul.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    over_rows(x, w, |x2| {
        Ok(match b {
            Some(b) if use_fused(&[x, w, b]) => {
                x2.contiguous()?
                    .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearBias)?
            }
            Some(b) => x2.matmul(&w.t()?)?.broadcast_add(b)?,
            None if use_fused(&[x, w]) => {
                x2.contiguous()?.apply_op2(&w.contiguous()?, LinearNoBias)?
            }
            None => x2.matmul(&w.t()?)?,
        })
    })
}

/// `relu(x wᵀ)` over the last dimension of `x [.., K]` for `w [N, K]`, differentiable; the
/// fused form keeps no pre-activation for the backward pass.
pub fn linear_relu(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    over_rows(x, w, |x2| {
        Ok(if use_fused(&[x, w]) {
            x2.contiguous()?.apply_op2(&w.contiguous()?, LinearRelu)?
        } else {
            x2.matmul(&w.t()?)?.relu()?
        })
    })
}

// ---------------------------------------------------------------- dropout

static DROPOUT_STATE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0x243f_6a88_85a3_08d3);

/// Seeds the masks of [`dropout`] (each call draws the next seed from this state), so that
/// training with the same seed drops the same units.
pub fn seed_dropout(seed: u64) {
    DROPOUT_STATE.store(splitmix64(seed), std::sync::atomic::Ordering::Relaxed);
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next_dropout_seed() -> [u32; 2] {
    let s = DROPOUT_STATE.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    let z = splitmix64(s);
    [z as u32, (z >> 32) as u32]
}

struct Dropout {
    seed: [u32; 2],
    threshold: u32,
    scale: f32,
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, ELEMWISE_CHUNK, |r0, ys| {
            let o = r0 * ELEMWISE_CHUNK;
            crate::simd::dropout(
                &x[o..o + ys.len()],
                o as u32,
                self.seed,
                self.threshold,
                self.scale,
                ys,
            );
        });
        y
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "close-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.apply(slice(s, l)?)), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d x = g · mask · scale: the same masked scaling applied to the gradient.
        let dx = with_data(grad, |g| Ok(self.apply(g)))?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Inverted dropout with probability `p` (kept units scaled by `1 / (1 - p)`), one pass
/// forward and backward; masks come from [`seed_dropout`]'s state. Tensors of more than
/// 2³² elements, other devices and dtypes use candle's dropout.
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::invalid(format!(
            "dropout probability {p} is not in [0, 1)"
        )));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    if !use_fused(&[x]) || x.elem_count() > u32::MAX as usize {
        return Ok(candle_nn::ops::dropout(x, p as f32)?);
    }
    let op = Dropout {
        seed: next_dropout_seed(),
        threshold: (p * 4_294_967_296.0).min(u32::MAX as f64) as u32,
        scale: (1.0 / (1.0 - p)) as f32,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::Var;

    #[test]
    fn composed_ops_are_forced_on_this_thread_only_and_restored() {
        if composed_by_env() {
            return; // CLOSE_FUSED=0 switches every thread
        }
        let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        assert!(use_fused(&[&x]));
        with_composed_ops(|| {
            assert!(!use_fused(&[&x]));
            let y = x.clone();
            let other = std::thread::spawn(move || use_fused(&[&y])).join().unwrap();
            assert!(other, "another thread was switched too");
        });
        assert!(use_fused(&[&x]));
        let r = std::panic::catch_unwind(|| with_composed_ops(|| panic!("inside")));
        assert!(r.is_err());
        assert!(use_fused(&[&x]), "not restored after a panic");
    }

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
    fn softmax_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Large enough to take the multi-threaded path, with masked (-inf) entries.
        for shape in [(2usize, 3usize, 7usize), (8, 64, 96)] {
            let x = Var::randn(0f32, 3., shape, &dev)?;
            let mut m = vec![0f32; shape.2];
            m[2] = f32::NEG_INFINITY;
            m[shape.2 - 1] = f32::NEG_INFINITY;
            let xm = x
                .as_tensor()
                .broadcast_add(&Tensor::new(m.as_slice(), &dev)?)?;
            let t = Tensor::randn(0f32, 1., shape, &dev)?;
            let a = softmax_last_dim(&xm)?;
            let c = crate::ops::softmax_last_dim(&xm)?;
            assert!(maxdiff(&a, &c) < 1e-6);
            let ga = (a * &t)?.sum_all()?.backward()?;
            let gc = (c * &t)?.sum_all()?.backward()?;
            assert!(
                maxdiff(
                    ga.get(x.as_tensor()).unwrap(),
                    gc.get(x.as_tensor()).unwrap()
                ) < 1e-5
            );
        }
        Ok(())
    }

    #[test]
    fn log_softmax_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [(2usize, 3usize, 7usize), (8, 64, 96)] {
            let x = Var::randn(0f32, 3., shape, &dev)?;
            let t = Tensor::randn(0f32, 1., shape, &dev)?;
            let a = log_softmax_last_dim(x.as_tensor())?;
            let c = crate::ops::log_softmax_last_dim(x.as_tensor())?;
            assert!(maxdiff(&a, &c) < 1e-5);
            let ga = (a * &t)?.sum_all()?.backward()?;
            let gc = (c * &t)?.sum_all()?.backward()?;
            let (ga, gc) = (
                ga.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            // dx = g - softmax · Σg: entries reach |Σg| (about 10 here), so the tolerance
            // is relative to the largest one.
            let scale = gc.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = maxdiff(ga, gc);
            assert!(diff < 2e-6 * (1.0 + scale), "{diff} at scale {scale}");
        }
        Ok(())
    }

    #[test]
    fn fully_masked_row_gives_zeros_not_nan() -> Result<()> {
        let x = Tensor::new(
            &[[f32::NEG_INFINITY, f32::NEG_INFINITY], [0.0, 0.0]],
            &Device::Cpu,
        )?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(y, vec![vec![0.0, 0.0], vec![0.5, 0.5]]);
        Ok(())
    }

    #[test]
    fn quick_gelu_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [(3usize, 5usize), (64, 700)] {
            let x = Var::randn(0f32, 3., shape, &dev)?;
            let t = Tensor::randn(0f32, 1., shape, &dev)?;
            let a = quick_gelu(x.as_tensor())?;
            let c = (x.as_tensor() * candle_nn::ops::sigmoid(&(x.as_tensor() * 1.702)?)?)?;
            assert!(maxdiff(&a, &c) < 1e-5);
            let ga = (a * &t)?.sum_all()?.backward()?;
            let gc = (c * &t)?.sum_all()?.backward()?;
            let (ga, gc) = (
                ga.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(maxdiff(ga, gc) < 1e-5, "{}", maxdiff(ga, gc));
        }
        Ok(())
    }

    #[test]
    fn linear_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 7, 33), &dev)?;
        let w = Var::randn(0f32, 1., (19, 33), &dev)?;
        let b = Var::randn(0f32, 1., 19, &dev)?;
        let t = Tensor::randn(0f32, 1., (2, 7, 19), &dev)?;
        let a = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
        let c = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        assert_eq!(a.dims(), &[2, 7, 19]);
        assert!(maxdiff(&a, &c) < 1e-4);
        let ga = (a * &t)?.sum_all()?.backward()?;
        let gc = (&c * &t)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let d = maxdiff(
                ga.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
        // Without bias, and a shape error that names the operands.
        let nb = linear(x.as_tensor(), w.as_tensor(), None)?;
        assert!(maxdiff(&nb, &(c.broadcast_sub(b.as_tensor())?)) < 1e-4);
        let e = linear(
            x.as_tensor(),
            &Tensor::zeros((4, 5), DType::F32, &dev)?,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("linear"), "{e}");
        Ok(())
    }

    #[test]
    fn linear_relu_values_and_gradients_match_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 7, 33), &dev)?;
        let w = Var::randn(0f32, 1., (19, 33), &dev)?;
        let t = Tensor::randn(0f32, 1., (2, 7, 19), &dev)?;
        let a = linear_relu(x.as_tensor(), w.as_tensor())?;
        let c = with_composed_ops(|| linear_relu(x.as_tensor(), w.as_tensor()))?;
        assert_eq!(a.dims(), &[2, 7, 19]);
        assert!(maxdiff(&a, &c) < 1e-4);
        let zeros = a.flatten_all()?.to_vec1::<f32>()?;
        let zeros = zeros.iter().filter(|&&v| v == 0.0).count();
        assert!(zeros > 50 && zeros < 250, "{zeros} of 266 outputs clipped");
        let ga = (a * &t)?.sum_all()?.backward()?;
        let gc = (&c * &t)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let d = maxdiff(
                ga.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
        Ok(())
    }

    #[test]
    fn dropout_drops_the_right_fraction_and_backward_uses_the_same_mask() -> Result<()> {
        let dev = Device::Cpu;
        seed_dropout(3);
        let x = Var::ones((256, 300), DType::F32, &dev)?;
        let y = dropout(x.as_tensor(), 0.1)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        let kept = v.iter().filter(|&&a| a != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.9).abs() < 1e-6));
        let g = y.sum_all()?.backward()?;
        let gv = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(gv, v, "gradient mask differs from the forward mask");
        // Another call draws another mask; the same seed replays the same masks.
        let y2 = dropout(x.as_tensor(), 0.1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_ne!(y2, v);
        seed_dropout(3);
        assert_eq!(
            dropout(x.as_tensor(), 0.1)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            v
        );
        assert!(dropout(x.as_tensor(), 1.0).is_err());
        Ok(())
    }
}
