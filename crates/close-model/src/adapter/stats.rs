//! Fitted adapter statistics and their files (`adapter.json` + `adapter.safetensors`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use close_core::{io, Error, Result};

use super::AdapterKind;

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
