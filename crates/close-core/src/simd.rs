//! Vectorizable inner loops for the fused CPU kernels, and the choice of instruction set.
//!
//! The workspace builds for baseline x86-64 (SSE2), so plain loops get 4-wide SSE at best and
//! `f32::exp` is a scalar libm call per element. [`multiversion!`] compiles a loop three
//! times, for AVX-512, for AVX2 + FMA and for the baseline, and picks one at run time
//! ([`level`]): the best the CPU has, or the one named by `CLOSE_SIMD`. [`exp`] is an `f32`
//! exponential written without branches or calls, so that LLVM vectorizes loops that use
//! it. Kernels take whole slices (a chunk of rows) so that the choice is made once per
//! chunk, not per element.
//!
//! The bodies fix their order of floating-point operations (explicit accumulator lanes, no
//! `mul_add`), and LLVM does not reorder floating-point arithmetic, so every level gives
//! the same bits; only the speed differs. The matrix products are `gemm`'s, which makes
//! its own run-time choice (`crate::matmul`).

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the fused kernels are compiled for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The build target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 (F, BW, DQ, VL) with AVX2 and FMA.
    Avx512,
}

impl Level {
    /// Every level, in increasing order.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// The name `CLOSE_SIMD` takes: `baseline`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a [`Level::name`].
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The best level this CPU can run.
    pub fn detected() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Baseline
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Level> {
        Level::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// The level in use; 0 until first read.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level the kernels run at: the one `CLOSE_SIMD` names (`baseline`, `avx2`,
/// `avx512`), lowered to what the CPU can run, or else the best the CPU has. Read once.
pub fn level() -> Level {
    if let Some(l) = Level::from_code(LEVEL.load(Ordering::Relaxed)) {
        return l;
    }
    let detected = Level::detected();
    let wanted = std::env::var("CLOSE_SIMD")
        .ok()
        .and_then(|v| Level::from_name(v.trim()));
    let l = wanted.map_or(detected, |w| w.min(detected));
    LEVEL.store(l.code(), Ordering::Relaxed);
    l
}

/// Makes the kernels run at `wanted` from now on (for tests and benches); `Err` with the
/// best level when this CPU cannot run `wanted`.
pub fn set_level(wanted: Level) -> Result<(), Level> {
    let detected = Level::detected();
    if wanted > detected {
        return Err(detected);
    }
    LEVEL.store(wanted.code(), Ordering::Relaxed);
    Ok(())
}

/// Defines `fn NAME(args)` whose body is compiled for each [`Level`] and runs at
/// [`level`]. Closures inside the body that are not inlined do not inherit the features,
/// so bodies should be plain loops over slices.
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    inner($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` never exceeds what the running CPU has.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            inner($($arg),*)
        }
    };
}

/// Above this, [`exp`] returns +inf (the true value overflows near 88.72).
const EXP_HI: f32 = 88.0;
/// Below this, [`exp`] returns 0 (the true value is subnormal).
const EXP_LO: f32 = -87.336_54;

/// `e^x` in `f32`, branch-free so loops using it vectorize. Relative error below 3e-7 on
/// `[-87.3, 88]`; 0 below (where the true value is subnormal), +inf above 88, NaN for NaN.
///
/// Range reduction `x = n ln2 + r` with `|r| <= ln2 / 2` (ln 2 split in two for
/// Cody–Waite accuracy), a degree-6 Taylor polynomial for `e^r` (truncation error
/// `r^7 / 7! < 1.3e-7`), and `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // bits(shifted) = bits(ROUND) + n; the exponent field of 2^n is n + 127.
    let scale = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    let y = p * scale;
    let y = if x < EXP_LO { 0.0 } else { y };
    let y = if x > EXP_HI { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Sum with 8 independent accumulators (vectorizes; the order differs from a serial sum).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Dot product with 8 independent accumulators.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Maximum (NaN-ignoring, like `f32::max`) with 8 independent lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in rest {
        m = m.max(v);
    }
    m
}

multiversion! {
    /// Row-wise softmax of `x` into `y` (rows of `d`). A row that is entirely `-inf` (fully
    /// masked) gives zeros rather than NaN.
    pub fn softmax_rows(x: &[f32], y: &mut [f32], d: usize) {
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let m = max(xr);
            if m == f32::NEG_INFINITY {
                yr.iter_mut().for_each(|o| *o = 0.0);
                continue;
            }
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = exp(v - m);
            }
            let inv = 1.0 / sum(yr);
            yr.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

multiversion! {
    /// Backward of a row-wise softmax: `dx = y * (g - <g, y>)` per row of `d`.
    pub fn softmax_bwd_rows(y: &[f32], g: &[f32], dx: &mut [f32], d: usize) {
        for ((yr, gr), dr) in y.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let s = dot(yr, gr);
            for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - s);
            }
        }
    }
}

/// The constant of OpenAI CLIP's `quick_gelu(x) = x * sigmoid(1.702 x)`.
pub const QUICK_GELU_ALPHA: f32 = 1.702;

multiversion! {
    /// `y = x * sigmoid(1.702 x)`.
    pub fn quick_gelu(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v / (1.0 + exp(-QUICK_GELU_ALPHA * v));
        }
    }
}

multiversion! {
    /// `dx = g * (s + 1.702 x s (1 - s))` with `s = sigmoid(1.702 x)`.
    pub fn quick_gelu_bwd(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((o, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
            let s = 1.0 / (1.0 + exp(-QUICK_GELU_ALPHA * v));
            *o = gv * (s + QUICK_GELU_ALPHA * v * s * (1.0 - s));
        }
    }
}

multiversion! {
    /// `y = max(y, 0)` in place (candle's ReLU).
    pub fn relu(y: &mut [f32]) {
        for v in y.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

multiversion! {
    /// `dx = g` where the ReLU's output `y` is positive, else 0.
    pub fn relu_bwd(y: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((o, &v), &gv) in dx.iter_mut().zip(y).zip(g) {
            *o = if v > 0.0 { gv } else { 0.0 };
        }
    }
}

multiversion! {
    /// `out[r] = log Σ_j exp(x[r·d + j])` for each row of `d` (`-inf` for an all `-inf` row).
    pub fn logsumexp_rows(x: &[f32], d: usize, out: &mut [f32]) {
        for (xr, o) in x.chunks_exact(d).zip(out.iter_mut()) {
            let m = max(xr);
            if m == f32::NEG_INFINITY {
                *o = m;
                continue;
            }
            let mut acc = [0f32; 8];
            let chunks = xr.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for i in 0..8 {
                    acc[i] += exp(c[i] - m);
                }
            }
            let mut s = sum(&acc);
            for &v in rest {
                s += exp(v - m);
            }
            *o = m + s.ln();
        }
    }
}

multiversion! {
    /// Attention of one query per row, for the rows `r0..` of `out` (each `dk` long):
    /// `out = softmax(keys · q + bias) · values`. `shape = [dk, t, heads, group, r0]`: row `r`
    /// is head `r % heads` of query row `r / heads`, which reads key/value row
    /// `(r / heads) / group` (beams of one item share their encoder's keys). `keys` and
    /// `values` hold `t` vectors of `dk` and `bias` holds `t` values per key/value row and
    /// head; `q` holds this block's rows only.
    pub fn attend_rows(q: &[f32], keys: &[f32], values: &[f32], bias: &[f32], shape: [usize; 5], out: &mut [f32]) {
        let [dk, t, heads, group, r0] = shape;
        let mut p = vec![0f32; t];
        for (i, o) in out.chunks_exact_mut(dk).enumerate() {
            let r = r0 + i;
            let kr = (r / heads) / group * heads + r % heads;
            let (qr, br) = (&q[i * dk..(i + 1) * dk], &bias[kr * t..(kr + 1) * t]);
            let kv = kr * t * dk..(kr + 1) * t * dk;
            for ((s, kv_row), b) in p.iter_mut().zip(keys[kv.clone()].chunks_exact(dk)).zip(br) {
                *s = dot(kv_row, qr) + b;
            }
            let m = max(&p);
            let mut total = 0f32;
            for s in p.iter_mut() {
                *s = exp(*s - m);
                total += *s;
            }
            let inv = 1.0 / total;
            o.fill(0.0);
            for (s, vr) in p.iter().zip(values[kv].chunks_exact(dk)) {
                let w = s * inv;
                for (y, x) in o.iter_mut().zip(vr) {
                    *y += w * x;
                }
            }
        }
    }
}

multiversion! {
    /// `out[j] = scale · exp(x[j] - shift)`.
    pub fn scaled_exp(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = scale * exp(v - shift);
        }
    }
}

multiversion! {
    /// RMS norm of rows of `d`: `y = x / sqrt(mean(x²) + eps) · w`.
    pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let d = w.len();
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let r = 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt();
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = xv * r * wv;
            }
        }
    }
}

multiversion! {
    /// Backward of [`rms_norm_rows`] for rows of `d`: writes `dx` and adds into `dw`.
    pub fn rms_norm_bwd_rows(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
        let d = w.len();
        for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let r = 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt();
            let mut acc = 0f32;
            for j in 0..d {
                let xh = xr[j] * r;
                dw[j] += gr[j] * xh;
            }
            for ((&gv, &wv), &xv) in gr.iter().zip(w).zip(xr) {
                acc += gv * wv * xv;
            }
            let mean = acc * r / d as f32;
            for (((o, &gv), &wv), &xv) in dr.iter_mut().zip(gr).zip(w).zip(xr) {
                *o = r * (gv * wv - xv * r * mean);
            }
        }
    }
}

/// A 32-bit integer hash with good avalanche (the "lowbias32" constants), vectorizable.
#[inline(always)]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

multiversion! {
    /// Inverted dropout driven by a counter-based hash: element `offset + j` is kept when
    /// `hash(seed, offset + j) >= threshold` and scaled by `scale`, else zeroed. The same
    /// `(seed, offset)` gives the same mask, so the backward pass recomputes it.
    pub fn dropout(x: &[f32], offset: u32, seed: [u32; 2], threshold: u32, scale: f32, y: &mut [f32]) {
        for (j, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            let h = mix32(mix32(offset.wrapping_add(j as u32) ^ seed[0]) ^ seed[1]);
            *o = if h >= threshold { v * scale } else { 0.0 };
        }
    }
}

/// Scalars of one AdamW step (see `optim::AdamW`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub grad_scale: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub decay: f32,
    pub step_size: f32,
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
}

multiversion! {
    /// One AdamW update of parameters `t` with gradients `g` and moments `m`, `v`.
    pub fn adamw(t: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamWStep) {
        let n = t.len().min(g.len()).min(m.len()).min(v.len());
        let (t, g, m, v) = (&mut t[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for (((ti, &gi), mi), vi) in t.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gs = gi * c.grad_scale;
            let mn = c.beta1 * *mi + (1.0 - c.beta1) * gs;
            let vn = c.beta2 * *vi + (1.0 - c.beta2) * gs * gs;
            *mi = mn;
            *vi = vn;
            *ti = *ti * c.decay - c.step_size * mn / (vn.sqrt() * c.inv_sqrt_bc2 + c.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every multiversioned kernel on awkward sizes (rows of 67, a fully masked row), at
    /// the current level.
    fn all_kernel_outputs() -> Vec<(&'static str, Vec<f32>)> {
        let (d, rows) = (67, 13);
        let x: Vec<f32> = (0..d * rows)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) % 2000) as f32 / 250.0 - 4.0)
            .collect();
        let mut masked = x.clone();
        masked[..d].fill(f32::NEG_INFINITY);
        let g: Vec<f32> = x.iter().map(|v| (v * 1.3).sin()).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / d as f32).collect();
        let zeros = || vec![0f32; d * rows];
        let mut out = Vec::new();
        let mut y = zeros();
        softmax_rows(&masked, &mut y, d);
        let mut dx = zeros();
        softmax_bwd_rows(&y, &g, &mut dx, d);
        out.extend([("softmax", y), ("softmax_bwd", dx)]);
        let (mut y, mut dx) = (zeros(), zeros());
        quick_gelu(&x, &mut y);
        quick_gelu_bwd(&x, &g, &mut dx);
        out.extend([("quick_gelu", y), ("quick_gelu_bwd", dx)]);
        let (mut y, mut dx) = (x.clone(), zeros());
        relu(&mut y);
        relu_bwd(&y, &g, &mut dx);
        out.extend([("relu", y), ("relu_bwd", dx)]);
        let mut lse = vec![0f32; rows];
        logsumexp_rows(&x, d, &mut lse);
        let mut e = zeros();
        scaled_exp(&x, 1.5, 0.25, &mut e);
        out.extend([("logsumexp", lse), ("scaled_exp", e)]);
        let (mut y, mut dx, mut dw) = (zeros(), zeros(), vec![0f32; d]);
        rms_norm_rows(&x, &w, 1e-6, &mut y);
        rms_norm_bwd_rows(&x, &w, &g, 1e-6, &mut dx, &mut dw);
        out.extend([
            ("rms_norm", y),
            ("rms_norm_bwd dx", dx),
            ("rms_norm_bwd dw", dw),
        ]);
        let mut y = zeros();
        dropout(&x, 7, [11, 13], u32::MAX / 10, 1.0 / 0.9, &mut y);
        out.push(("dropout", y));
        let (mut t, mut m) = (x.clone(), g.clone());
        let mut v: Vec<f32> = x.iter().map(|a| a * a).collect();
        let c = AdamWStep {
            grad_scale: 0.5,
            beta1: 0.9,
            beta2: 0.999,
            decay: 0.99,
            step_size: 1e-3,
            inv_sqrt_bc2: 1.2,
            eps: 1e-8,
        };
        adamw(&mut t, &g, &mut m, &mut v, c);
        out.extend([("adamw t", t), ("adamw m", m), ("adamw v", v)]);
        out
    }

    fn bits(outputs: &[(&'static str, Vec<f32>)]) -> Vec<(&'static str, Vec<u32>)> {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        outputs.iter().map(|(n, v)| (*n, bits(v))).collect()
    }

    #[test]
    fn every_level_gives_the_same_bits() {
        let before = level();
        set_level(Level::Baseline).unwrap();
        let baseline = bits(&all_kernel_outputs());
        for l in Level::ALL.into_iter().filter(|&l| l <= Level::detected()) {
            set_level(l).unwrap();
            assert_eq!(level(), l);
            for (a, b) in bits(&all_kernel_outputs()).iter().zip(&baseline) {
                assert_eq!(a, b, "{} differs at {l:?}", a.0);
            }
        }
        set_level(before).unwrap();
        if Level::detected() < Level::Avx512 {
            assert_eq!(set_level(Level::Avx512), Err(Level::detected()));
        }
    }

    /// Run by [`close_simd_env_picks_the_level`] in a child process.
    #[test]
    #[ignore = "run in a child process with CLOSE_SIMD set"]
    fn child_reports_level_and_outputs() {
        let digest = bits(&all_kernel_outputs())
            .iter()
            .flat_map(|(_, b)| b.iter())
            .fold(0u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        println!("LEVEL={} DIGEST={digest:016x}", level().name());
    }

    #[test]
    fn close_simd_env_picks_the_level() {
        let exe = std::env::current_exe().unwrap();
        let mut digests = Vec::new();
        for wanted in Level::ALL {
            let out = std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
                .arg("simd::tests::child_reports_level_and_outputs")
                .env("CLOSE_SIMD", wanted.name())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            // libtest prints "test NAME ... " before the child's own output.
            let at = text
                .find("LEVEL=")
                .unwrap_or_else(|| panic!("no LEVEL in {text}"));
            let line = text[at..].lines().next().unwrap();
            let expected = wanted.min(Level::detected());
            assert!(
                line.starts_with(&format!("LEVEL={} ", expected.name())),
                "{line}"
            );
            digests.push(line.split("DIGEST=").nth(1).unwrap().to_string());
        }
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_serial() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 113) as f32 / 10.0 - 5.0)
            .collect();
        let y: Vec<f32> = (0..37).map(|i| ((i * 31) % 17) as f32 / 3.0).collect();
        assert!((sum(&x) - x.iter().sum::<f32>()).abs() < 1e-4);
        assert!((dot(&x, &y) - x.iter().zip(&y).map(|(a, b)| a * b).sum::<f32>()).abs() < 1e-3);
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }

    #[test]
    fn quick_gelu_matches_formula_and_derivative() {
        let x: Vec<f32> = (-60..60).map(|i| i as f32 * 0.37).collect();
        let mut y = vec![0f32; x.len()];
        quick_gelu(&x, &mut y);
        let g = vec![1f32; x.len()];
        let mut dx = vec![0f32; x.len()];
        quick_gelu_bwd(&x, &g, &mut dx);
        for (i, &v) in x.iter().enumerate() {
            let f = |t: f64| t / (1.0 + (-1.702 * t).exp());
            let v = v as f64;
            assert!((y[i] as f64 - f(v)).abs() < 1e-5 * (1.0 + f(v).abs()));
            let num = (f(v + 1e-4) - f(v - 1e-4)) / 2e-4;
            assert!(
                (dx[i] as f64 - num).abs() < 1e-4,
                "x {v}: {} vs {num}",
                dx[i]
            );
        }
    }
}
