//! The CLOSE model (reference `close/model/clip_t5_model.py`, `ClipT5Model`):
//!
//! ```text
//! clip vector [B, C] ──(adapter: training on text only)──► prefix.lin: Linear(C, n·D)
//!        ──► [B, n, D] ++ T5 embeddings of the extra text [B, L, D]  (mask [B, n + L])
//!        ──► T5 encoder ──► T5 decoder ──► target tokens
//! ```
//!
//! The prefix mapping is the reference's `EmbeddingTokenizer` (one linear layer with bias,
//! no norm, no activation); its weights are stored as `prefix.lin.weight` / `prefix.lin.bias`
//! next to T5's own HF names (`shared.weight`, `encoder.block.0...`) in `model.safetensors`.
//! The encoder gets a real attention mask (the reference passes none to the encoder; set
//! [`ModelConfig::reference_encoder_mask_quirk`] to reproduce that). Several targets per input
//! are handled by running the encoder once and repeating its rows (`target_mapping`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use close_core::init::SeededInit;
use close_core::{Error, Result};
use close_t5::{GenerateConfig, Hypothesis, T5Config, T5};

/// Architecture of a CLOSE model (saved in the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub t5: T5Config,
    /// CLIP embedding dimension.
    pub clip_dim: usize,
    /// Number of prefix vectors the CLIP vector is mapped to (reference: 4).
    #[serde(default = "default_prefix")]
    pub n_prefix: usize,
    /// Reproduce the reference's missing encoder attention mask (padded question tokens are
    /// attended by the encoder; the decoder's cross-attention still masks them).
    #[serde(default)]
    pub reference_encoder_mask_quirk: bool,
}

fn default_prefix() -> usize {
    4
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        self.t5.validate()?;
        if self.clip_dim == 0 {
            return Err(Error::config("model.clip_dim", "must be positive"));
        }
        if self.n_prefix == 0 {
            return Err(Error::config("model.n_prefix", "must be at least 1"));
        }
        Ok(())
    }
}

/// Extra text fed to the T5 encoder after the prefix: token ids `[B, L]` (u32) and mask
/// `[B, L]` (f32, 1 = token).
#[derive(Debug, Clone)]
pub struct TextInput {
    pub ids: Tensor,
    pub mask: Tensor,
}

/// The CLOSE model: prefix mapping + T5 (CLIP is not part of it).
pub struct CloseModel {
    cfg: ModelConfig,
    t5: T5,
    prefix_w: Tensor, // [n·D, C]
    prefix_b: Tensor, // [n·D]
    varmap: VarMap,
    /// The weights of a frozen model (empty for a trainable one, whose weights are the
    /// varmap's variables).
    constants: HashMap<String, Tensor>,
}

/// An initialiser that starts every variable as zeros, for weights that are all loaded next.
fn zeros(varmap: VarMap) -> SeededInit {
    SeededInit::new(varmap, 0).zeros_for(|_| true)
}

/// Checkpoint key of the prefix weight.
pub const PREFIX_WEIGHT: &str = "prefix.lin.weight";
/// Checkpoint key of the prefix bias.
pub const PREFIX_BIAS: &str = "prefix.lin.bias";

impl CloseModel {
    /// A freshly initialised model (deterministic for `seed`). Every parameter is a
    /// trainable variable in [`CloseModel::varmap`].
    pub fn new(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::initialised(cfg, device, DType::F32, |vm| SeededInit::new(vm, seed))
    }

    /// A model whose every weight is loaded next ([`CloseModel::load_weights`] checks that
    /// all are present): zeros instead of a random draw.
    pub fn to_be_loaded(cfg: ModelConfig, device: &Device) -> Result<Self> {
        Self::initialised(cfg, device, DType::F32, zeros)
    }

    /// A model about to receive pretrained T5 weights: the prefix is initialised as by
    /// [`CloseModel::new`], the T5 variables start as zeros (every one of them must then be
    /// loaded, as `close_t5::weights::load_into_varmap` checks).
    pub fn for_pretrained_t5(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::initialised(cfg, device, DType::F32, |vm| {
            SeededInit::new(vm, seed).zeros_for(|n| !n.starts_with("prefix."))
        })
    }

    /// A model with variables in `dtype`, created in a new varmap by the initialiser
    /// `init` makes for it.
    fn initialised(
        cfg: ModelConfig,
        device: &Device,
        dtype: DType,
        init: impl FnOnce(VarMap) -> SeededInit,
    ) -> Result<Self> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_backend(Box::new(init(varmap.clone())), dtype, device.clone());
        Self::build(cfg, vb, varmap)
    }

    fn build(cfg: ModelConfig, vb: VarBuilder, varmap: VarMap) -> Result<Self> {
        let t5 = T5::new(&cfg.t5, vb.clone())?;
        // torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (cfg.clip_dim as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let out = cfg.n_prefix * cfg.t5.d_model;
        let lin = vb.pp("prefix").pp("lin");
        let prefix_w = lin.get_with_hints((out, cfg.clip_dim), "weight", init)?;
        let prefix_b = lin.get_with_hints(out, "bias", init)?;
        Ok(Self {
            cfg,
            t5,
            prefix_w,
            prefix_b,
            varmap,
            constants: HashMap::new(),
        })
    }

    /// This model with every parameter converted to `dtype`, as new variables (for half
    /// precision training from the same initial weights). An f32 model asked for f32 is
    /// returned as it is.
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        if self.prefix_w.dtype() == dtype {
            return Ok(self);
        }
        let device = self.prefix_w.device().clone();
        let mut converted = Self::initialised(self.cfg.clone(), &device, dtype, zeros)?;
        converted.set_weights(&self.tensors()?, "the initial weights")?;
        converted.set_training(self.t5.is_training());
        Ok(converted)
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.prefix_w.dtype()
    }

    /// A model for inference with the weights of the safetensors file `path` (every tensor
    /// must be present with the right shape; extra tensors are ignored). Its weights are
    /// constants ([`CloseModel::frozen`]).
    pub fn load(cfg: ModelConfig, path: &Path, device: &Device) -> Result<Self> {
        let m = Self::to_be_loaded(cfg, device)?;
        m.load_weights(path)?;
        m.frozen()
    }

    /// This model with its weights as constants instead of variables, sharing their memory.
    /// An op on a variable records its inputs for backprop, so a forward pass through a
    /// trainable model keeps every activation alive as long as its output lives; a frozen
    /// model keeps none. Its [`CloseModel::varmap`] is empty.
    pub fn frozen(self) -> Result<Self> {
        let tensors = close_core::init::constants(&self.varmap)?;
        let device = self.prefix_w.device().clone();
        let vb = VarBuilder::from_tensors(tensors.clone(), self.dtype(), &device);
        let mut m = Self::build(self.cfg.clone(), vb, VarMap::new())?;
        m.set_training(self.t5.is_training());
        m.constants = tensors;
        Ok(m)
    }

    /// Overwrite all parameters from a safetensors file, naming missing / mis-shaped keys.
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::format(path, None, format!("cannot read safetensors: {e}")))?;
        self.set_weights(&tensors, &path.display().to_string())
    }

    /// Overwrite all parameters from named tensors (`file` names the source in errors).
    /// A frozen model cannot be overwritten: load a new one.
    pub fn set_weights(&self, tensors: &HashMap<String, Tensor>, file: &str) -> Result<()> {
        if !self.constants.is_empty() {
            return Err(Error::invalid(format!(
                "{file}: this model's weights are constants (loaded for inference); \
                 load the file as a new model"
            )));
        }
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap lock poisoned"))?;
        for (name, var) in data.iter() {
            let t = tensors.get(name).or_else(|| {
                (name == "shared.weight")
                    .then(|| tensors.get("encoder.embed_tokens.weight"))
                    .flatten()
            });
            let t = t.ok_or_else(|| Error::MissingKey {
                file: file.into(),
                key: name.clone(),
            })?;
            if t.dims() != var.dims() {
                return Err(Error::Shape {
                    what: format!("{file}: `{name}`"),
                    expected: var.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            close_core::check::weight(file, name, t)?;
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// All parameters by name (T5's HF names + `prefix.lin.*`).
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        if !self.constants.is_empty() {
            return Ok(self.constants.clone());
        }
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap lock poisoned"))?;
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect())
    }

    /// Save all parameters as safetensors (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        close_core::io::save_safetensors_atomic(path, &self.tensors()?)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn t5(&self) -> &T5 {
        &self.t5
    }
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    pub fn device(&self) -> &Device {
        self.t5.device()
    }

    /// Dropout on (training) or off.
    pub fn set_training(&mut self, training: bool) {
        self.t5.set_training(training);
    }

    /// Prefix vectors: `clip [B, C]` → `[B, n_prefix, D]`.
    pub fn prefix(&self, clip: &Tensor) -> Result<Tensor> {
        let (b, c) = clip.dims2()?;
        if c != self.cfg.clip_dim {
            return Err(Error::Shape {
                what: "CLIP vectors".into(),
                expected: vec![b, self.cfg.clip_dim],
                got: vec![b, c],
            });
        }
        let y = clip
            .to_dtype(self.prefix_w.dtype())?
            .matmul(&self.prefix_w.t()?)?
            .broadcast_add(&self.prefix_b)?;
        Ok(y.reshape((b, self.cfg.n_prefix, self.cfg.t5.d_model))?)
    }

    /// Encoder input embeddings and mask: prefix (always attended) followed by the extra
    /// text's token embeddings. Returns `([B, n + L, D], [B, n + L])`.
    pub fn encoder_inputs(
        &self,
        clip: &Tensor,
        text: Option<&TextInput>,
    ) -> Result<(Tensor, Tensor)> {
        let prefix = self.prefix(clip)?;
        let (b, n, _) = prefix.dims3()?;
        let ones = Tensor::ones((b, n), DType::F32, clip.device())?;
        match text {
            None => Ok((prefix, ones)),
            Some(t) => {
                let (tb, l) = t.ids.dims2()?;
                if tb != b || t.mask.dims() != [b, l] {
                    return Err(Error::Shape {
                        what: "extra text ids / mask".into(),
                        expected: vec![b, l],
                        got: t.mask.dims().to_vec(),
                    });
                }
                let emb = self.t5.embed_tokens(&t.ids)?;
                let x = Tensor::cat(&[&prefix, &emb], 1)?;
                let m = Tensor::cat(&[&ones, &t.mask.to_dtype(DType::F32)?], 1)?;
                Ok((x, m))
            }
        }
    }

    /// Encoder output `[B, n + L, D]` and the mask the decoder must use `[B, n + L]`.
    pub fn encode(&self, clip: &Tensor, text: Option<&TextInput>) -> Result<(Tensor, Tensor)> {
        let (x, mask) = self.encoder_inputs(clip, text)?;
        let enc_mask = if self.cfg.reference_encoder_mask_quirk {
            mask.ones_like()?
        } else {
            mask.clone()
        };
        let enc = self.t5.encode(&x, &enc_mask)?;
        Ok((enc, mask))
    }

    /// Training loss: mean cross-entropy over all target tokens. `targets[i]` are token ids
    /// (with EOS) of a target of input row `mapping[i]`.
    pub fn loss(
        &self,
        clip: &Tensor,
        text: Option<&TextInput>,
        targets: &[Vec<u32>],
        mapping: &[usize],
    ) -> Result<Tensor> {
        // The count comes from the targets on the host: no read from the device.
        let tokens: usize = targets.iter().map(Vec::len).sum();
        Ok((self.loss_sum(clip, text, targets, mapping)? / tokens as f64)?)
    }

    /// [`CloseModel::loss`] summed over the target tokens instead of averaged (for a
    /// caller that divides by a count of its own, as data-parallel training does).
    pub fn loss_sum(
        &self,
        clip: &Tensor,
        text: Option<&TextInput>,
        targets: &[Vec<u32>],
        mapping: &[usize],
    ) -> Result<Tensor> {
        if targets.len() != mapping.len() || targets.is_empty() {
            return Err(Error::invalid(format!(
                "loss: {} targets for {} mapping entries",
                targets.len(),
                mapping.len()
            )));
        }
        let (enc, mask) = self.encode(clip, text)?;
        let (enc, mask) = self.t5.repeat_for_targets(&enc, &mask, mapping)?;
        let (labels, label_mask) =
            close_t5::pad_targets(targets, self.cfg.t5.pad_token_id, clip.device())?;
        self.t5.loss_sum(&enc, &mask, &labels, &label_mask)
    }

    /// Beam search / greedy decoding; per input row, the hypotheses best first.
    pub fn generate(
        &self,
        clip: &Tensor,
        text: Option<&TextInput>,
        gen: &GenerateConfig,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        // No gradients here: detaching drops the encoder's recorded graph (and with it
        // every encoder activation) before decoding starts.
        let (enc, mask) = {
            let (enc, mask) = self.encode(clip, text)?;
            (enc.detach(), mask)
        };
        self.t5.generate(&enc, &mask, gen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(clip_dim: usize) -> ModelConfig {
        ModelConfig {
            t5: T5Config::tiny(),
            clip_dim,
            n_prefix: 4,
            reference_encoder_mask_quirk: false,
        }
    }

    fn text(dev: &Device) -> TextInput {
        TextInput {
            ids: Tensor::new(&[[5u32, 6, 1, 0], [7, 8, 9, 1]], dev).unwrap(),
            mask: Tensor::new(&[[1f32, 1., 1., 0.], [1., 1., 1., 1.]], dev).unwrap(),
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let m = CloseModel::new(tiny(16), 1, &dev)?;
        let clip = Tensor::randn(0f32, 1., (2, 16), &dev)?;
        let loss = m.loss(
            &clip,
            Some(&text(&dev)),
            &[vec![3, 4, 1], vec![5, 1], vec![6, 7, 8, 1]],
            &[0, 0, 1],
        )?;
        let grads = loss.backward()?;
        let missing = close_core::ops::vars_without_gradient(m.varmap(), &grads)?;
        assert!(missing.is_empty(), "no gradient: {missing:?}");
        assert!(m.tensors()?.contains_key(PREFIX_WEIGHT));
        Ok(())
    }

    /// The composed candle ops that GPUs run (the fused CPU kernels switched off) give the
    /// same CLOSE loss, gradients (prefix included) and generated tokens as the fused path.
    #[test]
    fn the_composed_path_matches_the_fused_one() -> Result<()> {
        let dev = Device::Cpu;
        let m = CloseModel::new(tiny(16), 1, &dev)?;
        let v: Vec<f32> = (0..32)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let clip = Tensor::from_vec(v, (2, 16), &dev)?;
        let pass = || -> Result<_> {
            let targets = [vec![3, 4, 1], vec![5, 1], vec![6, 7, 8, 1]];
            let loss = m.loss(&clip, Some(&text(&dev)), &targets, &[0, 0, 1])?;
            let grads = loss.backward()?;
            let gen = m.generate(&clip, Some(&text(&dev)), &GenerateConfig::beam(3, 6))?;
            let tokens: Vec<Vec<Vec<u32>>> = gen
                .into_iter()
                .map(|hs| hs.into_iter().map(|h| h.tokens).collect())
                .collect();
            Ok((loss.to_scalar::<f32>()?, grads, tokens))
        };
        let (la, ga, ta) = pass()?;
        let (lb, gb, tb) = close_core::fused::with_composed_ops(pass)?;
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "loss {la} vs {lb}"
        );
        let diff = close_core::ops::gradient_differences(m.varmap(), &ga, &gb, 1e-4)?;
        assert!(diff.is_empty(), "gradients differ: {diff:?}");
        assert_eq!(ta, tb, "generated tokens differ");
        Ok(())
    }

    #[test]
    fn seeded_init_is_reproducible_and_save_load_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let a = CloseModel::new(tiny(8), 7, &dev)?;
        let b = CloseModel::new(tiny(8), 7, &dev)?;
        let c = CloseModel::new(tiny(8), 8, &dev)?;
        let ta = a.tensors()?;
        let w = |m: &HashMap<String, Tensor>| {
            m[PREFIX_WEIGHT]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&ta), w(&b.tensors()?));
        assert_ne!(w(&ta), w(&c.tensors()?));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        a.save(&p)?;
        let back = CloseModel::load(tiny(8), &p, &dev)?;
        let clip = Tensor::randn(0f32, 1., (2, 8), &dev)?;
        let x = a.encode(&clip, None)?.0.flatten_all()?.to_vec1::<f32>()?;
        let y = back
            .encode(&clip, None)?
            .0
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(x, y);
        // A missing key is named.
        let mut t = a.tensors()?;
        t.remove(PREFIX_BIAS);
        let e = c.set_weights(&t, "x.safetensors").unwrap_err().to_string();
        assert!(e.contains(PREFIX_BIAS), "{e}");
        // A loaded model is frozen: no variables, the same weights, and no overwriting.
        assert!(back.varmap().all_vars().is_empty());
        assert_eq!(w(&ta), w(&back.tensors()?));
        let e = back
            .set_weights(&ta, "y.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("constants"), "{e}");
        Ok(())
    }

    #[test]
    fn padded_text_does_not_change_the_encoding_of_real_tokens() -> Result<()> {
        // With the mask, extra padding after the question leaves every real position's
        // encoder output unchanged.
        let dev = Device::Cpu;
        let m = CloseModel::new(tiny(8), 3, &dev)?;
        let clip = Tensor::randn(0f32, 1., (1, 8), &dev)?;
        let short = TextInput {
            ids: Tensor::new(&[[5u32, 6, 1]], &dev)?,
            mask: Tensor::new(&[[1f32, 1., 1.]], &dev)?,
        };
        let long = TextInput {
            ids: Tensor::new(&[[5u32, 6, 1, 0, 0]], &dev)?,
            mask: Tensor::new(&[[1f32, 1., 1., 0., 0.]], &dev)?,
        };
        let (a, ma) = m.encode(&clip, Some(&short))?;
        let (b, mb) = m.encode(&clip, Some(&long))?;
        assert_eq!(ma.dims(), &[1, 7]);
        assert_eq!(
            mb.to_vec2::<f32>()?,
            vec![vec![1., 1., 1., 1., 1., 1., 1., 0., 0.]]
        );
        let diff = (a - b.narrow(1, 0, 7)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
