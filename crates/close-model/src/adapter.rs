//! Language adapters: what is done to the unit CLIP *text* vector during training so that a
//! model trained on text transfers to image vectors (CLOSE §3, reference
//! `close/model/language_adapters.py`). Image vectors never pass through an adapter.
//!
//! | kind | training forward | eval forward (text input) |
//! |---|---|---|
//! | `none` | `x` | `x` |
//! | `noise` | `norm(x + w·ε)` | `x` |
//! | `mean-shift` | `x' = x + s·shift` (opt. renorm), then `norm(x' + w·ε)` | `x'` |
//! | `cov` | `norm(x + μ_diff + c·z + w·ε)`, `z ~ N(0, Σ_diff)` | `x` |
//! | `linear` | `x' = x·Wᵀ + b` (opt. renorm), then `norm(x' + w·ε)` | `x'` |
//!
//! `ε ~ N(0, I)` is drawn fresh for every batch from a seeded ChaCha stream, so runs are
//! reproducible. The reference ships the statistics only as pickles; here they are fitted by
//! [`fit_mean_shift`], [`fit_cov`], [`fit_cov_unpaired`] and [`fit_linear`] from embedding
//! arrays and stored in a run dir as `adapter.json` + `adapter.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use close_core::{io, Error, Result};

use crate::linalg::Mat;

/// Adapter kinds (names as in the paper's tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// No change (the "w/o noise" ablation).
    None,
    /// Gaussian noise + renormalize (the CLOSE default).
    #[default]
    Noise,
    /// Add the mean image − mean text difference, then noise.
    MeanShift,
    /// Mean difference + structured noise from the covariance of image − text differences.
    #[serde(alias = "cov-noise")]
    Cov,
    /// A least-squares linear map text → image, then noise.
    Linear,
}

impl AdapterKind {
    pub fn name(&self) -> &'static str {
        match self {
            AdapterKind::None => "none",
            AdapterKind::Noise => "noise",
            AdapterKind::MeanShift => "mean-shift",
            AdapterKind::Cov => "cov",
            AdapterKind::Linear => "linear",
        }
    }

    /// Whether this kind needs fitted statistics.
    pub fn needs_stats(&self) -> bool {
        matches!(
            self,
            AdapterKind::MeanShift | AdapterKind::Cov | AdapterKind::Linear
        )
    }
}

impl std::str::FromStr for AdapterKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => AdapterKind::None,
            "noise" => AdapterKind::Noise,
            "mean-shift" => AdapterKind::MeanShift,
            "cov" | "cov-noise" => AdapterKind::Cov,
            "linear" => AdapterKind::Linear,
            _ => {
                return Err(Error::config(
                    "adapter",
                    format!("unknown adapter `{s}` (none, noise, mean-shift, cov, linear)"),
                ))
            }
        })
    }
}

impl std::fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Adapter hyper-parameters (saved in the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterConfig {
    pub kind: AdapterKind,
    /// Gaussian noise standard deviation `w` per dimension (paper: 0.08 default).
    pub noise: f64,
    /// Scale of the mean shift (`mean-shift`).
    pub shift_scale: f64,
    /// Renormalize after the shift / linear map, before the noise (`mean-shift`, `linear`).
    pub renorm: bool,
    /// Multiplier of the covariance sample (`cov`; the reference uses 3).
    pub cov_scale: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            kind: AdapterKind::Noise,
            noise: 0.08,
            shift_scale: 1.0,
            renorm: false,
            cov_scale: 3.0,
        }
    }
}

impl AdapterConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::config(
                "adapter.noise",
                format!("must be ≥ 0, got {}", self.noise),
            ));
        }
        if !self.shift_scale.is_finite() || self.cov_scale.is_nan() || self.cov_scale < 0.0 {
            return Err(Error::config(
                "adapter",
                "shift_scale must be finite and cov_scale ≥ 0",
            ));
        }
        Ok(())
    }
}

/// How the statistics were fitted (recorded in `adapter.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FitInfo {
    pub n_images: usize,
    pub n_texts: usize,
    pub n_pairs: usize,
    pub ridge: Option<f64>,
    /// Mean squared error of the fit on its training pairs (linear).
    pub train_mse: Option<f64>,
    pub note: String,
}

/// Fitted adapter statistics (f32 on the CPU; `dim` = CLIP dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterStats {
    pub kind: AdapterKind,
    pub dim: usize,
    /// `mean-shift`: mean image − mean text. `cov`: mean of the differences.
    pub shift: Option<Vec<f32>>,
    /// `cov`: covariance of the differences, `[dim, dim]` row-major.
    pub cov: Option<Vec<f32>>,
    /// `linear`: `W` `[dim_out, dim_in]` row-major.
    pub weight: Option<Vec<f32>>,
    /// `linear`: `b` `[dim_out]`.
    pub bias: Option<Vec<f32>>,
    pub info: FitInfo,
}

#[derive(Serialize, Deserialize)]
struct StatsJson {
    kind: AdapterKind,
    dim: usize,
    info: FitInfo,
}

/// File names inside a run dir / adapter dir.
pub const STATS_JSON: &str = "adapter.json";
pub const STATS_TENSORS: &str = "adapter.safetensors";

impl AdapterStats {
    /// Save as `dir/adapter.json` + `dir/adapter.safetensors` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut t = HashMap::new();
        let d = self.dim;
        let dev = Device::Cpu;
        if let Some(s) = &self.shift {
            t.insert("shift".to_string(), Tensor::from_slice(s, d, &dev)?);
        }
        if let Some(c) = &self.cov {
            t.insert("cov".to_string(), Tensor::from_slice(c, (d, d), &dev)?);
        }
        if let Some(w) = &self.weight {
            t.insert("weight".to_string(), Tensor::from_slice(w, (d, d), &dev)?);
        }
        if let Some(b) = &self.bias {
            t.insert("bias".to_string(), Tensor::from_slice(b, d, &dev)?);
        }
        io::save_safetensors_atomic(dir.join(STATS_TENSORS), &t)?;
        io::write_json_atomic(
            dir.join(STATS_JSON),
            &StatsJson {
                kind: self.kind,
                dim: self.dim,
                info: self.info.clone(),
            },
        )
    }

    /// Load what [`AdapterStats::save`] wrote, checking shapes.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta: StatsJson = io::read_json(dir.join(STATS_JSON))?;
        let path = dir.join(STATS_TENSORS);
        let t = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::format(&path, None, e.to_string()))?;
        let d = meta.dim;
        let file = path.display().to_string();
        let get = |key: &str, shape: &[usize], needed: bool| -> Result<Option<Vec<f32>>> {
            match t.get(key) {
                None if needed => Err(Error::MissingKey {
                    file: file.clone(),
                    key: key.into(),
                }),
                None => Ok(None),
                Some(x) => {
                    if x.dims() != shape {
                        return Err(Error::Shape {
                            what: format!("{file}: {key}"),
                            expected: shape.to_vec(),
                            got: x.dims().to_vec(),
                        });
                    }
                    Ok(Some(
                        x.flatten_all()?
                            .to_dtype(candle_core::DType::F32)?
                            .to_vec1::<f32>()?,
                    ))
                }
            }
        };
        let k = meta.kind;
        Ok(Self {
            kind: k,
            dim: d,
            shift: get(
                "shift",
                &[d],
                matches!(k, AdapterKind::MeanShift | AdapterKind::Cov),
            )?,
            cov: get("cov", &[d, d], k == AdapterKind::Cov)?,
            weight: get("weight", &[d, d], k == AdapterKind::Linear)?,
            bias: get("bias", &[d], k == AdapterKind::Linear)?,
            info: meta.info,
        })
    }
}

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

/// A ready-to-use adapter: config + statistics as tensors on the training device.
#[derive(Debug, Clone)]
pub struct Adapter {
    cfg: AdapterConfig,
    dim: usize,
    stats: Option<AdapterStats>,
    shift: Option<Tensor>,    // [1, D]
    chol_t: Option<Tensor>,   // Lᵀ [D, D]: z·Lᵀ ~ N(0, Σ) for z ~ N(0, I)
    weight_t: Option<Tensor>, // Wᵀ [D_in, D_out]
    bias: Option<Tensor>,     // [1, D]
}

impl Adapter {
    /// Build from a config and (for mean-shift / cov / linear) fitted statistics.
    pub fn new(
        cfg: AdapterConfig,
        dim: usize,
        stats: Option<AdapterStats>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut a = Self {
            cfg: cfg.clone(),
            dim,
            stats: None,
            shift: None,
            chol_t: None,
            weight_t: None,
            bias: None,
        };
        if !cfg.kind.needs_stats() {
            return Ok(a);
        }
        let stats = stats.ok_or_else(|| {
            Error::config(
                "adapter",
                format!(
                    "`{}` needs fitted statistics (`close adapter fit --kind {}`)",
                    cfg.kind, cfg.kind
                ),
            )
        })?;
        if stats.kind != cfg.kind {
            return Err(Error::config(
                "adapter",
                format!(
                    "statistics are for `{}`, config asks for `{}`",
                    stats.kind, cfg.kind
                ),
            ));
        }
        if stats.dim != dim {
            return Err(Error::Shape {
                what: "adapter statistics".into(),
                expected: vec![dim],
                got: vec![stats.dim],
            });
        }
        let row = |v: &Vec<f32>| Tensor::from_slice(v, (1, dim), device);
        match cfg.kind {
            AdapterKind::MeanShift => {
                let s = stats
                    .shift
                    .as_ref()
                    .ok_or_else(|| Error::invalid("mean-shift statistics lack `shift`"))?;
                a.shift = Some((row(s)? * cfg.shift_scale)?);
            }
            AdapterKind::Cov => {
                let s = stats
                    .shift
                    .as_ref()
                    .ok_or_else(|| Error::invalid("cov statistics lack `shift`"))?;
                let c = stats
                    .cov
                    .as_ref()
                    .ok_or_else(|| Error::invalid("cov statistics lack `cov`"))?;
                a.shift = Some(row(s)?);
                let cov = Mat {
                    rows: dim,
                    cols: dim,
                    data: c.iter().map(|&v| v as f64).collect(),
                };
                let l = cholesky_with_jitter(&cov)?;
                a.chol_t = Some(Tensor::from_vec(
                    l.transpose().to_f32(),
                    (dim, dim),
                    device,
                )?);
            }
            AdapterKind::Linear => {
                let w = stats
                    .weight
                    .as_ref()
                    .ok_or_else(|| Error::invalid("linear statistics lack `weight`"))?;
                let b = stats
                    .bias
                    .as_ref()
                    .ok_or_else(|| Error::invalid("linear statistics lack `bias`"))?;
                a.weight_t = Some(
                    Tensor::from_slice(w, (dim, dim), device)?
                        .t()?
                        .contiguous()?,
                );
                a.bias = Some(row(b)?);
            }
            AdapterKind::None | AdapterKind::Noise => {}
        }
        a.stats = Some(stats);
        Ok(a)
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.cfg
    }
    pub fn stats(&self) -> Option<&AdapterStats> {
        self.stats.as_ref()
    }

    fn deterministic(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.cfg.kind {
            AdapterKind::MeanShift => {
                x.broadcast_add(self.shift.as_ref().expect("checked in new"))?
            }
            AdapterKind::Linear => x
                .matmul(self.weight_t.as_ref().expect("checked in new"))?
                .broadcast_add(self.bias.as_ref().expect("checked in new"))?,
            _ => return Ok(x.clone()),
        };
        if self.cfg.renorm {
            l2_normalize(&y)
        } else {
            Ok(y)
        }
    }

    /// Training forward for unit text vectors `x` `[B, D]`; noise comes from `rng`.
    pub fn train_forward<R: Rng>(&self, x: &Tensor, rng: &mut R) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        if d != self.dim {
            return Err(Error::Shape {
                what: "adapter input".into(),
                expected: vec![b, self.dim],
                got: vec![b, d],
            });
        }
        if self.cfg.kind == AdapterKind::None {
            return Ok(x.clone());
        }
        let mut y = self.deterministic(x)?;
        if self.cfg.kind == AdapterKind::Cov {
            let z = gaussian(rng, b, d, 1.0, x.device())?;
            let sample = z.matmul(self.chol_t.as_ref().expect("checked in new"))?;
            y = (y.broadcast_add(self.shift.as_ref().expect("checked in new"))?
                + (sample * self.cfg.cov_scale)?)?;
        }
        if self.cfg.noise > 0.0 {
            y = (y + gaussian(rng, b, d, self.cfg.noise, x.device())?)?;
        }
        l2_normalize(&y)
    }

    /// Evaluation forward for text vectors (image vectors never go through an adapter).
    pub fn eval_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.deterministic(x)
    }
}

/// `σ·N(0, I)` of shape `[b, d]` from `rng` (deterministic for a seeded rng).
pub fn gaussian<R: Rng>(
    rng: &mut R,
    b: usize,
    d: usize,
    sigma: f64,
    device: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = (0..b * d)
        .map(|_| (rng.sample::<f64, _>(StandardNormal) * sigma) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (b, d), device)?)
}

/// Row-wise L2 normalization of `[B, D]`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&(n + 1e-12)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn unit_rows(rng: &mut ChaCha8Rng, n: usize, d: usize, offset: &[f32]) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..d)
                    .map(|k| rng.sample::<f32, _>(StandardNormal) * 0.3 + offset[k])
                    .collect();
                crate::embeddings::normalized(&v).unwrap()
            })
            .collect()
    }

    fn to_tensor(rows: &[Vec<f32>]) -> Tensor {
        crate::embeddings::stack_rows(rows, rows[0].len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn noise_norm_statistics() -> Result<()> {
        // x + w·ε before renormalisation: |w·ε| ≈ w·√d, and cos(out, x) ≈ 1/√(1 + w²d).
        let d = 768;
        let w = 0.08;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let e = gaussian(&mut rng, 256, d, w, &Device::Cpu)?;
        let norms = e.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
        let mean = norms.iter().sum::<f32>() as f64 / norms.len() as f64;
        assert!(
            (mean - w * (d as f64).sqrt()).abs() < 0.02,
            "noise norm {mean}"
        );
        let x = to_tensor(&unit_rows(&mut rng, 256, d, &vec![0.0; d]));
        let a = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::Noise,
                noise: w,
                ..Default::default()
            },
            d,
            None,
            &Device::Cpu,
        )?;
        let y = a.train_forward(&x, &mut rng)?;
        let yn = y.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
        assert!(yn.iter().all(|n| (n - 1.0).abs() < 1e-4), "renormalized");
        let cos = (&y * &x)?.sum(1)?.mean_all()?.to_scalar::<f32>()? as f64;
        let expect = 1.0 / (1.0 + w * w * d as f64).sqrt(); // ≈ 0.41 as in the paper's note
        assert!((cos - expect).abs() < 0.02, "cos {cos} vs {expect}");
        // Eval is the identity; fresh draws differ; the same seed reproduces.
        assert_eq!(a.eval_forward(&x)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        let y2 = a.train_forward(&x, &mut rng)?;
        assert!((&y - &y2)?.abs()?.sum_all()?.to_scalar::<f32>()? > 1.0);
        let mut r1 = ChaCha8Rng::seed_from_u64(9);
        let mut r2 = ChaCha8Rng::seed_from_u64(9);
        assert_eq!(
            a.train_forward(&x, &mut r1)?.to_vec2::<f32>()?,
            a.train_forward(&x, &mut r2)?.to_vec2::<f32>()?
        );
        // none: identity even in training.
        let n = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::None,
                ..Default::default()
            },
            d,
            None,
            &Device::Cpu,
        )?;
        assert_eq!(
            n.train_forward(&x, &mut rng)?.to_vec2::<f32>()?,
            x.to_vec2::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn mean_shift_moves_text_centroid_onto_image_centroid() -> Result<()> {
        let d = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut oi = vec![0f32; d];
        let mut ot = vec![0f32; d];
        oi[0] = 1.0;
        ot[1] = 1.0;
        let images = unit_rows(&mut rng, 400, d, &oi);
        let texts = unit_rows(&mut rng, 500, d, &ot);
        let stats = fit_mean_shift(&images, &texts)?;
        let a = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::MeanShift,
                noise: 0.0,
                ..Default::default()
            },
            d,
            Some(stats),
            &Device::Cpu,
        )?;
        let shifted = a
            .eval_forward(&to_tensor(&texts))?
            .mean(0)?
            .to_vec1::<f32>()?;
        let ci = to_tensor(&images).mean(0)?.to_vec1::<f32>()?;
        let ct = to_tensor(&texts).mean(0)?.to_vec1::<f32>()?;
        let dist = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt()
        };
        assert!(dist(&ct, &ci) > 0.5, "a real gap to close");
        assert!(
            dist(&shifted, &ci) < 1e-5,
            "centroid after shift {}",
            dist(&shifted, &ci)
        );
        Ok(())
    }

    #[test]
    fn linear_fit_recovers_known_map() -> Result<()> {
        let d = 8;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let w: Vec<f32> = (0..d * d)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let b: Vec<f32> = (0..d)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let texts: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                (0..d)
                    .map(|_| rng.sample::<f32, _>(StandardNormal))
                    .collect()
            })
            .collect();
        let images: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                (0..d)
                    .map(|o| (0..d).map(|k| w[o * d + k] * t[k]).sum::<f32>() + b[o])
                    .collect()
            })
            .collect();
        let s = fit_linear(&images, &texts, 1e-9)?;
        let fw = s.weight.as_ref().unwrap();
        let fb = s.bias.as_ref().unwrap();
        for i in 0..d * d {
            assert!((fw[i] - w[i]).abs() < 1e-3, "W[{i}] {} vs {}", fw[i], w[i]);
        }
        for i in 0..d {
            assert!((fb[i] - b[i]).abs() < 1e-3, "b[{i}]");
        }
        assert!(s.info.train_mse.unwrap() < 1e-8);
        // Through the adapter: eval applies the map.
        let a = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::Linear,
                noise: 0.0,
                ..Default::default()
            },
            d,
            Some(s),
            &Device::Cpu,
        )?;
        let out = a.eval_forward(&to_tensor(&texts[..3]))?.to_vec2::<f32>()?;
        for r in 0..3 {
            for c in 0..d {
                assert!((out[r][c] - images[r][c]).abs() < 1e-3);
            }
        }
        Ok(())
    }

    #[test]
    fn cov_samples_have_the_fitted_covariance_and_stats_round_trip() -> Result<()> {
        let d = 4;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // Differences with a known covariance: diag(0.04, 0.01, 0.0025, 0) + mean 0.1·e0.
        let scales = [0.2f32, 0.1, 0.05, 0.0];
        let texts: Vec<Vec<f32>> = (0..4000)
            .map(|_| {
                (0..d)
                    .map(|_| rng.sample::<f32, _>(StandardNormal))
                    .collect()
            })
            .collect();
        let images: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                (0..d)
                    .map(|k| {
                        t[k] + scales[k] * rng.sample::<f32, _>(StandardNormal)
                            + if k == 0 { 0.1 } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        let s = fit_cov(&images, &texts)?;
        let c = s.cov.as_ref().unwrap();
        for k in 0..d {
            let want = scales[k] * scales[k];
            assert!(
                (c[k * d + k] - want).abs() < 0.1 * want + 1e-4,
                "var {k}: {}",
                c[k * d + k]
            );
        }
        assert!((s.shift.as_ref().unwrap()[0] - 0.1).abs() < 0.02);
        let dir = tempfile::tempdir().unwrap();
        s.save(dir.path())?;
        let back = AdapterStats::load(dir.path())?;
        assert_eq!(back, s);
        // Sampled perturbations (before renorm) follow cov_scale² Σ: check through chol.
        let a = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::Cov,
                noise: 0.0,
                cov_scale: 1.0,
                ..Default::default()
            },
            d,
            Some(back),
            &Device::Cpu,
        )?;
        let z =
            gaussian(&mut rng, 20000, d, 1.0, &Device::Cpu)?.matmul(a.chol_t.as_ref().unwrap())?;
        let var = z.sqr()?.mean(0)?.to_vec1::<f32>()?;
        for k in 0..3 {
            let want = scales[k] * scales[k];
            assert!(
                (var[k] - want).abs() < 0.1 * want,
                "sample var {k}: {} vs {want}",
                var[k]
            );
        }
        let x = to_tensor(
            &texts[..5]
                .iter()
                .map(|t| crate::embeddings::normalized(t).unwrap())
                .collect::<Vec<_>>(),
        );
        let y = a.train_forward(&x, &mut rng)?;
        assert!(y
            .sqr()?
            .sum(1)?
            .to_vec1::<f32>()?
            .iter()
            .all(|n| (n - 1.0).abs() < 1e-4));
        // Missing statistics → a clear error.
        let e = Adapter::new(
            AdapterConfig {
                kind: AdapterKind::Cov,
                ..Default::default()
            },
            d,
            None,
            &Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("adapter fit"), "{e}");
        Ok(())
    }
}
