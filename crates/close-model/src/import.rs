//! Import an official CLOSE checkpoint (allenai/close: `model.json` + `state-ep8.pth`) into
//! a run dir.
//!
//! The `.pth` is a PyTorch zip pickle of the state dict; it is read with candle's pickle
//! reader, a restricted interpreter that only rebuilds tensors and never executes code from
//! the file. Keys: `_t5_model.<HF T5 name>` → `<HF T5 name>`, `adapter.lin.{weight,bias}`
//! (the reference's `EmbeddingTokenizer`) → `prefix.lin.{weight,bias}`. CLIP is not in the
//! checkpoint (the reference stores it as non-persistent buffers). `model.json` names the T5
//! (`t5_model_name`), whose HF directory (config + tokenizer) the caller provides, and the
//! language adapter (`language_shift`), recorded in the run's config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use close_core::{io, Error, Result};
use close_t5::T5Config;

use crate::adapter::{AdapterConfig, AdapterKind};
use crate::config::{T5Init, TrainConfig};
use crate::model::{CloseModel, ModelConfig, PREFIX_BIAS, PREFIX_WEIGHT};
use crate::run;
use crate::task::Task;

/// What an import produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub run_dir: PathBuf,
    pub clip_model: Option<String>,
    pub t5_model_name: Option<String>,
    pub clip_dim: usize,
    pub n_prefix: usize,
    pub tensors: usize,
    /// Checkpoint keys that were not used (e.g. tied embedding copies).
    pub unused: Vec<String>,
}

/// Read every tensor of a PyTorch `.pth` (zip pickle) without executing code.
pub fn read_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    let all = candle_core::pickle::read_all(path).map_err(|e| {
        Error::format(
            path,
            None,
            format!("not a readable PyTorch checkpoint: {e}"),
        )
    })?;
    if all.is_empty() {
        return Err(Error::format(path, None, "no tensors in the checkpoint"));
    }
    Ok(all.into_iter().collect())
}

fn adapter_from_model_json(v: &serde_json::Value) -> AdapterConfig {
    let ls = v.get("language_shift");
    let kind = ls
        .and_then(|l| l.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let num = |k: &str| ls.and_then(|l| l.get(k)).and_then(|x| x.as_f64());
    match kind {
        "add-guassian-noise" | "add-gaussian-noise" => AdapterConfig {
            kind: AdapterKind::Noise,
            noise: num("scale").unwrap_or(0.0),
            ..Default::default()
        },
        "mean-shift" => AdapterConfig {
            kind: AdapterKind::MeanShift,
            noise: num("noise").unwrap_or(0.0),
            shift_scale: num("scale").unwrap_or(1.0),
            ..Default::default()
        },
        "cov-noise" => AdapterConfig {
            kind: AdapterKind::Cov,
            noise: num("scale").unwrap_or(0.0),
            ..Default::default()
        },
        "linear-adapter" => AdapterConfig {
            kind: AdapterKind::Linear,
            noise: num("noise").unwrap_or(0.0),
            ..Default::default()
        },
        _ => AdapterConfig {
            kind: AdapterKind::None,
            noise: 0.0,
            ..Default::default()
        },
    }
}

/// Import `model_json` + `pth` into `out`, with the T5 architecture and tokenizer of the HF
/// directory `t5_dir` (`config.json`; `tokenizer.json` unless `tokenizer` is given).
pub fn import_official(
    model_json: &Path,
    pth: &Path,
    t5_dir: &Path,
    tokenizer: Option<&Path>,
    task: Task,
    out: &Path,
) -> Result<ImportReport> {
    let params: serde_json::Value = io::read_json(model_json)?;
    let t5cfg = T5Config::from_file(t5_dir.join("config.json"))?;
    let raw = read_pth(pth)?;
    let file = pth.display().to_string();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut unused = Vec::new();
    for (k, t) in &raw {
        let t = t.to_dtype(DType::F32)?;
        if let Some(rest) = k.strip_prefix("_t5_model.") {
            tensors.insert(rest.to_string(), t);
        } else if k == "adapter.lin.weight" {
            tensors.insert(PREFIX_WEIGHT.into(), t);
        } else if k == "adapter.lin.bias" {
            tensors.insert(PREFIX_BIAS.into(), t);
        } else {
            unused.push(k.clone());
        }
    }
    let w = tensors
        .get(PREFIX_WEIGHT)
        .ok_or_else(|| Error::MissingKey {
            file: file.clone(),
            key: "adapter.lin.weight".into(),
        })?;
    let (rows, clip_dim) = w.dims2()?;
    if rows % t5cfg.d_model != 0 {
        return Err(Error::Shape {
            what: format!(
                "{file}: adapter.lin.weight rows vs d_model {}",
                t5cfg.d_model
            ),
            expected: vec![t5cfg.d_model * 4, clip_dim],
            got: vec![rows, clip_dim],
        });
    }
    let n_prefix = rows / t5cfg.d_model;
    if params
        .get("adapter")
        .and_then(|a| a.get("n_constant"))
        .and_then(|x| x.as_u64())
        .unwrap_or(0)
        > 0
    {
        return Err(Error::format(
            model_json,
            None,
            "adapter.n_constant > 0 (constant prefix tokens) is not supported",
        ));
    }
    let mcfg = ModelConfig {
        t5: t5cfg.clone(),
        clip_dim,
        n_prefix,
        reference_encoder_mask_quirk: false,
    };
    let model = CloseModel::new(mcfg.clone(), 0, &Device::Cpu)?;
    model.set_weights(&tensors, &file)?;
    let used: std::collections::HashSet<String> = model.tensors()?.into_keys().collect();
    for k in tensors.keys() {
        if !used.contains(k) {
            unused.push(k.clone());
        }
    }
    unused.sort();

    let tok_path = tokenizer
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| t5_dir.join("tokenizer.json"));
    let tok = close_t5::tokenizer::load(&tok_path)?;
    let mut cfg = TrainConfig::reference(task, t5_dir.to_path_buf());
    cfg.t5 = T5Init::Pretrained {
        dir: t5_dir.to_path_buf(),
    };
    cfg.adapter = adapter_from_model_json(&params);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    model.save(&out.join(run::MODEL_FILE))?;
    io::write_json_atomic(out.join(run::MODEL_CONFIG_FILE), &mcfg)?;
    io::write_json_atomic(out.join(run::CONFIG_FILE), &cfg)?;
    close_t5::tokenizer::save(&tok, out.join(run::TOKENIZER_FILE))?;
    io::write_json_atomic(
        out.join("imported_from.json"),
        &serde_json::json!({
            "model_json": model_json, "checkpoint": pth, "reference_params": params,
        }),
    )?;
    let report = ImportReport {
        run_dir: out.to_path_buf(),
        clip_model: params
            .get("clip_model")
            .and_then(|x| x.as_str())
            .map(String::from),
        t5_model_name: params
            .get("t5_model_name")
            .and_then(|x| x.as_str())
            .map(String::from),
        clip_dim,
        n_prefix,
        tensors: used.len(),
        unused,
    };
    Ok(report)
}
