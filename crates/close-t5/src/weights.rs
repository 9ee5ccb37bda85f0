//! Loading HF safetensors checkpoints into a `VarMap` by HF parameter names, with errors that
//! name the file and key of a missing or mis-shaped tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_core::{Error, Result};

use crate::config::T5Config;
use crate::model::T5;

/// The checkpoint behind `path`: a directory with `config.json` and `*.safetensors`, or a
/// `.safetensors` file with `config.json` beside it. Returns (config.json, safetensors files).
pub fn checkpoint_files(path: impl AsRef<Path>) -> Result<(PathBuf, Vec<PathBuf>)> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::format(
                path,
                None,
                "no .safetensors file in the checkpoint directory",
            ));
        }
        Ok((path.join("config.json"), files))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok((dir.join("config.json"), vec![path.to_path_buf()]))
    }
}

/// Sets every variable of `varmap` whose name is not `skip`ped from the tensors in `files`.
/// `shared.weight` falls back to `encoder.embed_tokens.weight` (older exports). Tensors in the
/// files that the model does not use are ignored. Returns the number of variables set.
pub fn load_into_varmap(
    varmap: &VarMap,
    files: &[PathBuf],
    skip: impl Fn(&str) -> bool,
) -> Result<usize> {
    let mut tensors: HashMap<String, (Tensor, usize)> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let map = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| Error::format(f, None, format!("cannot read safetensors: {e}")))?;
        for (k, t) in map {
            tensors.insert(k, (t, fi));
        }
    }
    let names = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::invalid("varmap lock poisoned"))?;
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    let mut n = 0;
    for (name, var) in vars {
        if skip(name) {
            continue;
        }
        let found = tensors.get(name.as_str()).or_else(|| {
            (name == "shared.weight")
                .then(|| tensors.get("encoder.embed_tokens.weight"))
                .flatten()
        });
        let Some((t, fi)) = found else {
            return Err(Error::MissingKey {
                file: names.clone(),
                key: name.clone(),
            });
        };
        if t.dims() != var.dims() {
            return Err(Error::Shape {
                what: format!("{}: tensor `{name}`", files[*fi].display()),
                expected: var.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
        close_core::check::weight(&files[*fi].display().to_string(), name, t)?;
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        n += 1;
    }
    Ok(n)
}

impl T5 {
    /// Loads an HF checkpoint (see [`checkpoint_files`]) as trainable variables: returns the
    /// model, its configuration and the `VarMap` holding its parameters (for the optimizer).
    pub fn load_trainable(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(T5, T5Config, VarMap)> {
        let (config, files) = checkpoint_files(path)?;
        let cfg = T5Config::from_file(&config)?;
        let varmap = VarMap::new();
        let model = T5::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        load_into_varmap(&varmap, &files, |_| false)?;
        Ok((model, cfg, varmap))
    }

    /// Loads an HF checkpoint (directory with `config.json` and `*.safetensors`, or a
    /// safetensors file with `config.json` beside it).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<(T5, T5Config)> {
        let (m, c, _) = Self::load_trainable(path, device)?;
        Ok((m, c))
    }
}

/// The standard deviation HF's `T5PreTrainedModel._init_weights` (factor 1) uses for the T5
/// parameter `name`, or `None` for layer norms (initialised to one) and for names that are not
/// T5 parameters.
fn init_std(name: &str, cfg: &T5Config) -> Option<Option<f64>> {
    let inv_sqrt = |x: usize| Some((x as f64).powf(-0.5));
    let parts: Vec<&str> = name.rsplit('.').collect(); // ["weight", module, ...]
    if parts.first() != Some(&"weight") {
        return None;
    }
    let module = *parts.get(1)?;
    Some(match module {
        "shared" | "lm_head" => Some(1.0),
        "layer_norm" | "final_layer_norm" => None,
        "q" => inv_sqrt(cfg.d_model * cfg.d_kv),
        "k" | "v" | "wi" | "wi_0" | "wi_1" | "relative_attention_bias" => inv_sqrt(cfg.d_model),
        "o" => inv_sqrt(cfg.inner_dim()),
        "wo" => inv_sqrt(cfg.d_ff),
        _ => return None,
    })
}

/// Re-initialises the T5 parameters in `varmap` from `seed`, with HF's initial distributions
/// (normal with the per-parameter standard deviation, layer norms at one), so that a random
/// model is identical across runs (candle's CPU generator cannot be seeded). Variables that
/// are not T5 parameters are left alone. Returns the number of variables set.
pub fn init_seeded(varmap: &VarMap, cfg: &T5Config, seed: u64) -> Result<usize> {
    use rand::{Rng, SeedableRng};
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::invalid("varmap lock poisoned"))?;
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    for (name, var) in vars {
        let Some(std) = init_std(name, cfg) else {
            continue;
        };
        let count = var.elem_count();
        let values: Vec<f32> = match std {
            None => vec![1.0; count],
            Some(s) => (0..count)
                .map(|_| {
                    // Box-Muller
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random::<f64>();
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * s) as f32
                })
                .collect(),
        };
        let t = Tensor::from_vec(values, var.shape(), &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_init_is_reproducible_and_covers_every_parameter() {
        let cfg = T5Config {
            tie_word_embeddings: false,
            feed_forward_proj: "gated-gelu".into(),
            ..T5Config::tiny()
        };
        let dev = Device::Cpu;
        let make = |seed| {
            let vm = VarMap::new();
            T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
            let n = init_seeded(&vm, &cfg, seed).unwrap();
            assert_eq!(
                n,
                vm.all_vars().len(),
                "every T5 parameter has an init rule"
            );
            let w = vm.data().lock().unwrap()["encoder.block.0.layer.0.SelfAttention.q.weight"]
                .as_tensor()
                .flatten_all()
                .unwrap();
            w.to_vec1::<f32>().unwrap()
        };
        let (a, b, c) = (make(1), make(1), make(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let std = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        let want = ((cfg.d_model * cfg.d_kv) as f32).powf(-0.5);
        assert!((std / want - 1.0).abs() < 0.15, "std {std} vs {want}");
    }
}
