//! Fitting the statistics of `mean-shift`, `cov` and `linear` from embedding arrays.

use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

use super::{AdapterKind, AdapterStats, FitInfo};
use crate::linalg::Mat;

fn check_dims<R: AsRef<[f32]>>(what: &str, rows: &[R], min: usize) -> Result<usize> {
    if rows.len() < min {
        return Err(Error::invalid(format!(
            "{what}: need at least {min} vectors, got {}",
            rows.len()
        )));
    }
    Ok(rows[0].as_ref().len())
}

/// `mean-shift` statistics from unpaired unit image and text vectors:
/// `shift = mean(images) − mean(texts)`.
pub fn fit_mean_shift<A: AsRef<[f32]>, B: AsRef<[f32]>>(
    images: &[A],
    texts: &[B],
) -> Result<AdapterStats> {
    let d = check_dims("images", images, 1)?;
    check_dims("texts", texts, 1)?;
    let mi = Mat::from_rows(images)?.col_mean();
    let mt = Mat::from_rows(texts)?;
    if mt.cols != d {
        return Err(Error::Shape {
            what: "text vectors".into(),
            expected: vec![d],
            got: vec![mt.cols],
        });
    }
    let mt = mt.col_mean();
    let shift = mi.iter().zip(&mt).map(|(a, b)| (a - b) as f32).collect();
    Ok(AdapterStats {
        kind: AdapterKind::MeanShift,
        dim: d,
        shift: Some(shift),
        cov: None,
        weight: None,
        bias: None,
        info: FitInfo {
            n_images: images.len(),
            n_texts: texts.len(),
            ..Default::default()
        },
    })
}

/// `cov` statistics from paired vectors (image i described by text i): mean and covariance
/// of the differences `image_i − text_i`.
pub fn fit_cov<A: AsRef<[f32]>, B: AsRef<[f32]>>(
    images: &[A],
    texts: &[B],
) -> Result<AdapterStats> {
    if images.len() != texts.len() {
        return Err(Error::invalid(format!(
            "cov: {} image vectors but {} paired text vectors",
            images.len(),
            texts.len()
        )));
    }
    let d = check_dims("pairs", images, 2)?;
    let i = Mat::from_rows(images)?;
    let t = Mat::from_rows(texts)?;
    if t.cols != d {
        return Err(Error::Shape {
            what: "text vectors".into(),
            expected: vec![d],
            got: vec![t.cols],
        });
    }
    let diff = Mat {
        rows: i.rows,
        cols: d,
        data: i.data.iter().zip(&t.data).map(|(a, b)| a - b).collect(),
    };
    let (mean, cov) = diff.covariance()?;
    Ok(AdapterStats {
        kind: AdapterKind::Cov,
        dim: d,
        shift: Some(mean.iter().map(|&v| v as f32).collect()),
        cov: Some(cov.to_f32()),
        weight: None,
        bias: None,
        info: FitInfo {
            n_pairs: images.len(),
            note: "paired differences".into(),
            ..Default::default()
        },
    })
}

/// `cov` statistics without pairs: for independent image and text vectors,
/// `E[i − t] = μ_i − μ_t` and `Cov(i − t) = Σ_i + Σ_t`.
pub fn fit_cov_unpaired<A: AsRef<[f32]>, B: AsRef<[f32]>>(
    images: &[A],
    texts: &[B],
) -> Result<AdapterStats> {
    let d = check_dims("images", images, 2)?;
    check_dims("texts", texts, 2)?;
    let (mi, ci) = Mat::from_rows(images)?.covariance()?;
    let (mt, ct) = Mat::from_rows(texts)?.covariance()?;
    if ct.cols != d {
        return Err(Error::Shape {
            what: "text vectors".into(),
            expected: vec![d],
            got: vec![ct.cols],
        });
    }
    Ok(AdapterStats {
        kind: AdapterKind::Cov,
        dim: d,
        shift: Some(mi.iter().zip(&mt).map(|(a, b)| (a - b) as f32).collect()),
        cov: Some(
            ci.data
                .iter()
                .zip(&ct.data)
                .map(|(a, b)| (a + b) as f32)
                .collect(),
        ),
        weight: None,
        bias: None,
        info: FitInfo {
            n_images: images.len(),
            n_texts: texts.len(),
            note: "unpaired: Σ_image + Σ_text".into(),
            ..Default::default()
        },
    })
}

/// `linear` statistics by ridge-regularised least squares on paired vectors:
/// `min_W,b Σ |W tᵢ + b − iᵢ|² + λ|W|²` with `λ = ridge · tr(TcᵀTc)/d` (bias not penalised),
/// solved by the normal equations on centred data with a Cholesky factorisation in f64.
// The indices mirror the least-squares formulas.
#[allow(clippy::needless_range_loop)]
pub fn fit_linear<A: AsRef<[f32]>, B: AsRef<[f32]>>(
    images: &[A],
    texts: &[B],
    ridge: f64,
) -> Result<AdapterStats> {
    if images.len() != texts.len() {
        return Err(Error::invalid(format!(
            "linear: {} image vectors but {} paired text vectors",
            images.len(),
            texts.len()
        )));
    }
    if ridge.is_nan() || ridge < 0.0 {
        return Err(Error::config("ridge", format!("must be ≥ 0, got {ridge}")));
    }
    let d = check_dims("pairs", images, 2)?;
    let y = Mat::from_rows(images)?;
    let x = Mat::from_rows(texts)?;
    if x.cols != d {
        return Err(Error::Shape {
            what: "text vectors".into(),
            expected: vec![d],
            got: vec![x.cols],
        });
    }
    let mx = x.col_mean();
    let my = y.col_mean();
    let xc = x.centered(&mx);
    let yc = y.centered(&my);
    let mut g = xc.t_matmul(&xc)?; // [d, d]
    let lambda = (ridge * g.trace() / d as f64).max(1e-12);
    g.add_diag(lambda);
    let l = g.cholesky()?;
    let wt = Mat::cholesky_solve(&l, &xc.t_matmul(&yc)?)?; // Wᵀ [d_in, d_out]
    let w = wt.transpose();
    let b: Vec<f64> = (0..d)
        .map(|o| my[o] - (0..d).map(|k| w.get(o, k) * mx[k]).sum::<f64>())
        .collect();
    let pred = x.matmul(&wt)?;
    let mut mse = 0.0;
    for r in 0..y.rows {
        for c in 0..d {
            let e = pred.get(r, c) + b[c] - y.get(r, c);
            mse += e * e;
        }
    }
    mse /= (y.rows * d) as f64;
    Ok(AdapterStats {
        kind: AdapterKind::Linear,
        dim: d,
        shift: None,
        cov: None,
        weight: Some(w.to_f32()),
        bias: Some(b.iter().map(|&v| v as f32).collect()),
        info: FitInfo {
            n_pairs: images.len(),
            ridge: Some(ridge),
            train_mse: Some(mse),
            ..Default::default()
        },
    })
}

/// How to fit adapter statistics from embedding stores (`close adapter fit`, the demo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSpec {
    pub kind: AdapterKind,
    /// Paired examples to use (sampled with `seed`); None = all. `linear` on few pairs is the
    /// paper's "1% paired data" setting.
    pub n_pairs: Option<usize>,
    /// Ridge strength of `linear`, relative to the mean eigenvalue of the text Gram matrix.
    pub ridge: f64,
    /// `cov` without pairs: Σ_image + Σ_text instead of the covariance of paired differences.
    pub unpaired_cov: bool,
    pub seed: u64,
}

impl Default for FitSpec {
    fn default() -> Self {
        Self {
            kind: AdapterKind::MeanShift,
            n_pairs: None,
            ridge: 1e-2,
            unpaired_cov: false,
            seed: 0,
        }
    }
}

/// Fit statistics from `(image key, text key)` pairs of a training split: `mean-shift` uses
/// the distinct images and the distinct texts as two unpaired sets; `cov` the paired
/// differences (or the unpaired sets with `unpaired_cov`); `linear` least squares on the
/// (sampled) pairs.
pub fn fit_adapter(
    spec: &FitSpec,
    images: &dyn crate::embeddings::Embeddings,
    texts: &dyn crate::embeddings::Embeddings,
    pairs: &[(String, String)],
) -> Result<AdapterStats> {
    use crate::embeddings::lookup;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if pairs.is_empty() {
        return Err(Error::invalid("adapter fit: no (image, caption) pairs"));
    }
    if images.dim() != texts.dim() {
        return Err(Error::Shape {
            what: "image vs text embeddings".into(),
            expected: vec![images.dim()],
            got: vec![texts.dim()],
        });
    }
    let mut sel: Vec<&(String, String)> = pairs.iter().collect();
    if let Some(n) = spec.n_pairs {
        if n == 0 {
            return Err(Error::config("pairs", "must be at least 1"));
        }
        sel.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed));
        sel.truncate(n);
    }
    type Vectors = Vec<Vec<f32>>;
    let unpaired = |sel: &[&(String, String)]| -> Result<(Vectors, Vectors)> {
        let mut ik: Vec<&str> = sel.iter().map(|p| p.0.as_str()).collect();
        let mut tk: Vec<&str> = sel.iter().map(|p| p.1.as_str()).collect();
        ik.sort();
        ik.dedup();
        tk.sort();
        tk.dedup();
        let i = ik
            .iter()
            .map(|k| lookup(images, "image", k).map(|v| v.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let t = tk
            .iter()
            .map(|k| lookup(texts, "text", k).map(|v| v.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        Ok((i, t))
    };
    let paired = |sel: &[&(String, String)]| -> Result<(Vectors, Vectors)> {
        let i = sel
            .iter()
            .map(|p| lookup(images, "image", &p.0).map(|v| v.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let t = sel
            .iter()
            .map(|p| lookup(texts, "text", &p.1).map(|v| v.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        Ok((i, t))
    };
    let mut stats = match spec.kind {
        AdapterKind::MeanShift => {
            let (i, t) = unpaired(&sel)?;
            fit_mean_shift(&i, &t)?
        }
        AdapterKind::Cov if spec.unpaired_cov => {
            let (i, t) = unpaired(&sel)?;
            fit_cov_unpaired(&i, &t)?
        }
        AdapterKind::Cov => {
            let (i, t) = paired(&sel)?;
            fit_cov(&i, &t)?
        }
        AdapterKind::Linear => {
            let (i, t) = paired(&sel)?;
            fit_linear(&i, &t, spec.ridge)?
        }
        AdapterKind::None | AdapterKind::Noise => {
            return Err(Error::config(
                "kind",
                format!(
                    "`{}` has no statistics to fit (mean-shift, cov, linear)",
                    spec.kind
                ),
            ))
        }
    };
    stats.info.n_pairs = stats
        .info
        .n_pairs
        .max(if matches!(spec.kind, AdapterKind::MeanShift) {
            0
        } else {
            sel.len()
        });
    Ok(stats)
}

/// Lower Cholesky factor of a covariance, adding a growing diagonal jitter when it is only
/// semi-definite (e.g. fitted from fewer pairs than dimensions).
pub fn cholesky_with_jitter(cov: &Mat) -> Result<Mat> {
    let scale = (cov.trace() / cov.rows.max(1) as f64).abs().max(1e-12);
    let mut jitter = 0.0;
    for _ in 0..12 {
        let mut c = cov.clone();
        c.add_diag(jitter);
        if let Ok(l) = c.cholesky() {
            if jitter > 0.0 {
                tracing::debug!("cov adapter: added jitter {jitter:e} to the covariance diagonal");
            }
            return Ok(l);
        }
        jitter = if jitter == 0.0 {
            scale * 1e-8
        } else {
            jitter * 10.0
        };
    }
    Err(Error::invalid(
        "cov adapter: covariance is not positive semi-definite",
    ))
}
