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
            return Err(Error::format(path, None, "no .safetensors file in the checkpoint directory"));
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
pub fn load_into_varmap(varmap: &VarMap, files: &[PathBuf], skip: impl Fn(&str) -> bool) -> Result<usize> {
    let mut tensors: HashMap<String, (Tensor, usize)> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let map = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| Error::format(f, None, format!("cannot read safetensors: {e}")))?;
        for (k, t) in map {
            tensors.insert(k, (t, fi));
        }
    }
    let names = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let data = varmap.data().lock().map_err(|_| Error::invalid("varmap lock poisoned"))?;
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    let mut n = 0;
    for (name, var) in vars {
        if skip(name) {
            continue;
        }
        let found = tensors.get(name.as_str()).or_else(|| {
            (name == "shared.weight").then(|| tensors.get("encoder.embed_tokens.weight")).flatten()
        });
        let Some((t, fi)) = found else {
            return Err(Error::MissingKey { file: names.clone(), key: name.clone() });
        };
        if t.dims() != var.dims() {
            return Err(Error::Shape {
                what: format!("{}: tensor `{name}`", files[*fi].display()),
                expected: var.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        n += 1;
    }
    Ok(n)
}

impl T5 {
    /// Loads an HF checkpoint (see [`checkpoint_files`]) as trainable variables: returns the
    /// model, its configuration and the `VarMap` holding its parameters (for the optimizer).
    pub fn load_trainable(path: impl AsRef<Path>, device: &Device) -> Result<(T5, T5Config, VarMap)> {
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
