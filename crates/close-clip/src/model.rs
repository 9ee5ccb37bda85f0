//! The CLIP model (Radford et al. 2021) as HF transformers' `CLIPModel` computes it: a ViT
//! vision tower (patch embedding, class token, pre-LN, post-LN on the class token), a causal
//! text transformer pooled at the EOS token, linear projections and `logit_scale`.
//!
//! Every submodule is built with `vb.pp("<HF name>")`, so checkpoints load by their own key
//! names (`vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...).
//!
//! One forward serves training and inference: when a tensor is tracked for gradients
//! (`Tensor::track_op`) the differentiable ops of `close_core::ops` are used, otherwise
//! candle's fused softmax / layer-norm kernels (no backward pass, but faster).

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Init, VarBuilder};

use close_core::{Error, Result};

use crate::config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
use crate::fused::softmax_last_dim;
use crate::ragged;

fn randn(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// `nn.Linear`: `x wᵀ + b` through the fused [`close_core::fused::linear`].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        close_core::fused::linear(x, &self.weight, self.bias.as_ref())
    }
}

fn linear(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool, std: f64) -> Result<Linear> {
    let w = vb.get_with_hints((d_out, d_in), "weight", randn(std))?;
    let b = if bias {
        Some(vb.get_with_hints(d_out, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// LayerNorm over the last dimension (HF `nn.LayerNorm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vb: VarBuilder, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            Ok(candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            )?)
        }
    }
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::QuickGelu => close_core::fused::quick_gelu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// Multi-head self-attention (`self_attn.{q,k,v,out}_proj`).
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    /// q/k/v fused into one matmul for inference (`None` when trainable).
    qkv: Option<Linear>,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, d: usize, heads: usize, layers: usize) -> Result<Self> {
        let in_std = (d as f64).powf(-0.5) * ((2 * layers) as f64).powf(-0.5);
        let out_std = (d as f64).powf(-0.5);
        let q = linear(vb.pp("q_proj"), d, d, true, in_std)?;
        let k = linear(vb.pp("k_proj"), d, d, true, in_std)?;
        let v = linear(vb.pp("v_proj"), d, d, true, in_std)?;
        let out = linear(vb.pp("out_proj"), d, d, true, out_std)?;
        let qkv = if q.weight().track_op() {
            None
        } else {
            let w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
            let b = match (q.bias(), k.bias(), v.bias()) {
                (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
                _ => None,
            };
            Some(Linear::new(w, b))
        };
        Ok(Self {
            q,
            k,
            v,
            qkv,
            out,
            heads,
            head_dim: d / heads,
        })
    }

    /// # Shapes
    /// `x`: `[batch, seq, d]`, `mask`: additive `[seq, seq]` → `[batch, seq, d]`.
    /// With `first_only`, only the first token attends (the queries of the other tokens are
    /// dropped): `[batch, 1, d]` out, all the pooled vision output needs from the last layer.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, first_only: bool) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let scale = (hd as f64).powf(-0.5);
        let (q, k, v) = match &self.qkv {
            Some(qkv) => {
                // [b, s, 3, h, hd] -> [3, b, h, s, hd]
                let t = qkv
                    .forward(x)?
                    .reshape((b, s, 3, h, hd))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                (t.i(0)?, t.i(1)?, t.i(2)?)
            }
            None => {
                let split = |l: &Linear| -> Result<Tensor> {
                    Ok(l.forward(x)?
                        .reshape((b, s, h, hd))?
                        .transpose(1, 2)?
                        .contiguous()?)
                };
                (split(&self.q)?, split(&self.k)?, split(&self.v)?)
            }
        };
        let (q, mask, s_q) = if first_only {
            let m = mask.map(|m| m.narrow(0, 0, 1)).transpose()?;
            (q.narrow(2, 0, 1)?.contiguous()?, m, 1)
        } else {
            (q, mask.cloned(), s)
        };
        let mut att = (q.matmul(&k.t()?)? * scale)?; // [b, h, s_q, s]
        if let Some(m) = &mask {
            att = att.broadcast_add(m)?;
        }
        let att = softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s_q, d))?;
        self.out.forward(&y)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    act: Activation,
}

impl EncoderLayer {
    fn new(
        vb: VarBuilder,
        d: usize,
        ff: usize,
        heads: usize,
        layers: usize,
        act: Activation,
        eps: f64,
    ) -> Result<Self> {
        let in_std = (d as f64).powf(-0.5) * ((2 * layers) as f64).powf(-0.5);
        let fc_std = ((2 * d) as f64).powf(-0.5);
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), d, heads, layers)?,
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d, eps)?,
            fc1: linear(vb.pp("mlp.fc1"), d, ff, true, fc_std)?,
            fc2: linear(vb.pp("mlp.fc2"), ff, d, true, in_std)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d, eps)?,
            act,
        })
    }

    /// `first_only`: compute the output of the first token only (`[batch, 1, d]`).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, first_only: bool) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask, first_only)?;
        let x = if first_only {
            x.narrow(1, 0, 1)?
        } else {
            x.clone()
        };
        let x = (x + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&activate(self.act, &h)?)?;
        Ok((x + h)?)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(
        vb: VarBuilder,
        d: usize,
        ff: usize,
        heads: usize,
        n: usize,
        act: Activation,
        eps: f64,
    ) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..n)
            .map(|i| EncoderLayer::new(vb.pp(i.to_string()), d, ff, heads, n, act, eps))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// With `first_token_only`, the last layer computes only the first token's output
    /// (`[batch, 1, d]`): it skips the queries, output projection and MLP of every other
    /// token, which a pooled vision output ignores (HF computes them).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, first_token_only: bool) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x, mask, first_token_only && i + 1 == n)?;
        }
        if first_token_only && n == 0 {
            x = x.narrow(1, 0, 1)?;
        }
        Ok(x)
    }
}

/// HF `CLIPTextTransformer` (`text_model.*`).
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    cfg: ClipTextConfig,
}

impl ClipTextTransformer {
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let e = vb.pp("embeddings");
        Ok(Self {
            token_embedding: e.pp("token_embedding").get_with_hints(
                (c.vocab_size, c.hidden_size),
                "weight",
                randn(0.02),
            )?,
            position_embedding: e.pp("position_embedding").get_with_hints(
                (c.max_position_embeddings, c.hidden_size),
                "weight",
                randn(0.02),
            )?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.num_hidden_layers,
                c.hidden_act,
                c.layer_norm_eps,
            )?,
            final_layer_norm: LayerNorm::new(
                vb.pp("final_layer_norm"),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            cfg: c.clone(),
        })
    }

    /// Pooling position of each row, as HF: with the legacy `eos_token_id == 2`, the argmax
    /// of the ids (first maximum); otherwise the first position holding `eos_token_id`
    /// (position 0 when absent, as `argmax` of an all-zero row).
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let eos = self.cfg.eos_token_id;
        ids.iter()
            .map(|row| {
                if eos == 2 {
                    let mut best = 0;
                    for (i, &t) in row.iter().enumerate() {
                        if t > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter().position(|&t| t == eos).unwrap_or(0)
                }
            })
            .collect()
    }

    /// Pooled (EOS) output after the final layer norm.
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` u32 with `seq ≤ max_position_embeddings` → `[batch, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if s > self.cfg.max_position_embeddings {
            return Err(Error::Shape {
                what: "text input_ids".into(),
                expected: vec![b, self.cfg.max_position_embeddings],
                got: vec![b, s],
            });
        }
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        if let Some(bad) = rows
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(Error::invalid(format!(
                "token id {bad} out of range for vocab_size {}",
                self.cfg.vocab_size
            )));
        }
        let d = self.cfg.hidden_size;
        let tok = self
            .token_embedding
            .embedding(&ids.flatten_all()?)?
            .reshape((b, s, d))?;
        let x = tok.broadcast_add(&self.position_embedding.narrow(0, 0, s)?.unsqueeze(0)?)?;
        let mask = causal_mask(s, x.device())?;
        let x = self.encoder.forward(&x, Some(&mask), false)?;
        // LayerNorm is per position: pool first, then normalise only the pooled rows.
        let pos = self.pool_positions(&rows);
        let idx: Vec<u32> = pos
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * s + p) as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        let pooled = x.reshape((b * s, d))?.index_select(&idx, 0)?;
        self.final_layer_norm.forward(&pooled)
    }
}

fn causal_mask(s: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (s, s), dev)?)
}

/// HF `CLIPVisionTransformer` (`vision_model.*`).
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    class_embedding: Tensor,
    /// Patch embedding as a matrix `[hidden, channels·patch·patch]` (the conv kernel flattened).
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: ClipVisionConfig,
}

impl ClipVisionTransformer {
    pub fn new(vb: VarBuilder, c: &ClipVisionConfig) -> Result<Self> {
        let e = vb.pp("embeddings");
        let d = c.hidden_size;
        let p = c.patch_size;
        let conv = e.pp("patch_embedding").get_with_hints(
            (d, c.num_channels, p, p),
            "weight",
            randn(0.02),
        )?;
        Ok(Self {
            class_embedding: e.get_with_hints(
                d,
                "class_embedding",
                randn((d as f64).powf(-0.5)),
            )?,
            patch_embedding: conv.reshape((d, c.num_channels * p * p))?,
            position_embedding: e.pp("position_embedding").get_with_hints(
                (c.num_positions(), d),
                "weight",
                randn(0.02),
            )?,
            pre_layrnorm: LayerNorm::new(vb.pp("pre_layrnorm"), d, c.layer_norm_eps)?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                d,
                c.intermediate_size,
                c.num_attention_heads,
                c.num_hidden_layers,
                c.hidden_act,
                c.layer_norm_eps,
            )?,
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    /// Pooled (class token) output after the post layer norm.
    ///
    /// # Shapes
    /// `pixels`: `[batch, channels, image_size, image_size]` f32 → `[batch, hidden]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, hh, ww) = pixels.dims4()?;
        if ch != c.num_channels || hh != c.image_size || ww != c.image_size {
            return Err(Error::Shape {
                what: "pixel_values".into(),
                expected: vec![b, c.num_channels, c.image_size, c.image_size],
                got: vec![b, ch, hh, ww],
            });
        }
        let (g, p, d) = (c.grid(), c.patch_size, c.hidden_size);
        // A stride-p convolution ignores a remainder of image_size % patch_size pixels.
        let pixels = if g * p != hh {
            pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?
        } else {
            pixels.clone()
        };
        // The stride-p convolution as one matmul over flattened patches.
        let patches = pixels
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, ch * p * p))?;
        let x = patches
            .matmul(&self.patch_embedding.t()?)?
            .reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x =
            Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let x = self.encoder.forward(&x, None, true)?;
        self.post_layernorm.forward(&x.squeeze(1)?.contiguous()?)
    }
}

/// HF `CLIPModel`: both towers, projections and the learnable temperature.
#[derive(Debug, Clone)]
pub struct ClipModel {
    pub text_model: ClipTextTransformer,
    pub vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
    cfg: ClipConfig,
}

impl ClipModel {
    /// Build from a `VarBuilder` (safetensors for a checkpoint, a `VarMap` to train from
    /// scratch with HF's initialisation).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        cfg.validate()?;
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        Ok(Self {
            text_model: ClipTextTransformer::new(vb.pp("text_model"), t)?,
            vision_model: ClipVisionTransformer::new(vb.pp("vision_model"), v)?,
            visual_projection: linear(
                vb.pp("visual_projection"),
                v.hidden_size,
                cfg.projection_dim,
                false,
                (v.hidden_size as f64).powf(-0.5),
            )?,
            text_projection: linear(
                vb.pp("text_projection"),
                t.hidden_size,
                cfg.projection_dim,
                false,
                (t.hidden_size as f64).powf(-0.5),
            )?,
            logit_scale: vb.get_with_hints(
                (),
                "logit_scale",
                Init::Const(cfg.logit_scale_init_value),
            )?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }

    /// Projected, unnormalised image features (HF `get_image_features`): `[b, projection_dim]`.
    pub fn get_image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.visual_projection
            .forward(&self.vision_model.forward(pixels)?)
    }

    /// Projected, unnormalised text features (HF `get_text_features`): `[b, projection_dim]`.
    pub fn get_text_features(&self, ids: &Tensor) -> Result<Tensor> {
        self.text_projection.forward(&self.text_model.forward(ids)?)
    }

    /// Unit-normalised image embeddings `[b, projection_dim]`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.get_image_features(pixels)?)
    }

    /// [`Self::image_features`] in calls of exactly `per_call` images (the last one filled
    /// with copies of its first image), so every call has one shape and an image's vector
    /// does not depend, down to the last bit, on how many images came with it.
    pub fn image_features_exact(&self, pixels: &Tensor, per_call: usize) -> Result<Tensor> {
        let per_call = per_call.max(1);
        let all: Vec<usize> = (0..pixels.dim(0)?).collect();
        let calls: Vec<Vec<usize>> = all.chunks(per_call).map(<[usize]>::to_vec).collect();
        let parts = calls
            .iter()
            .map(|c| {
                let mut idx: Vec<u32> = c.iter().map(|&i| i as u32).collect();
                idx.resize(per_call, idx[0]);
                let idx = Tensor::new(idx.as_slice(), pixels.device())?;
                let out = self.image_features(&pixels.index_select(&idx, 0)?)?;
                Ok(out.narrow(0, 0, c.len())?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.in_input_order(parts, &calls)
    }

    /// Unit-normalised text embeddings `[b, projection_dim]`.
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.get_text_features(ids)?)
    }

    /// [`Self::text_features`] of unpadded token rows, run in [`ragged::length_groups`]
    /// (each padded with `pad_id` to its own longest row); rows come out in input order.
    /// The values equal the padded batch's up to rounding (the matmuls' shapes differ).
    pub fn text_features_rows(
        &self,
        rows: &[Vec<u32>],
        pad_id: u32,
        overhead_tokens: usize,
    ) -> Result<Tensor> {
        let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let groups = ragged::length_groups(&lens, overhead_tokens);
        let dev = self.device();
        let parts = groups
            .iter()
            .map(|g| {
                let group: Vec<&[u32]> = g.iter().map(|&i| rows[i].as_slice()).collect();
                self.text_features(&ragged::pad_rows(&group, pad_id, dev)?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.in_input_order(parts, &groups)
    }

    /// [`Self::text_features`] of token rows, each row's vector a function of its own tokens
    /// only: rows of one length go through in calls of exactly `per_call` rows
    /// ([`ragged::exact_length_calls`]; a short call is filled with copies of its first
    /// row), so every call for a length has one shape and no row is padded. Which other
    /// rows share the call, and where the row sits in it, change nothing, down to the last
    /// bit; a cache built in several passes holds the same vectors as one built at once.
    pub fn text_features_exact(&self, rows: &[Vec<u32>], per_call: usize) -> Result<Tensor> {
        let per_call = per_call.max(1);
        let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let calls = ragged::exact_length_calls(&lens, per_call);
        let dev = self.device();
        let parts = calls
            .iter()
            .map(|c| {
                let mut call: Vec<&[u32]> = c.iter().map(|&i| rows[i].as_slice()).collect();
                call.resize(per_call, call[0]);
                let out = self.text_features(&ragged::pad_rows(&call, 0, dev)?)?;
                Ok(out.narrow(0, 0, c.len())?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.in_input_order(parts, &calls)
    }

    /// Concatenate the outputs of `groups` (row indices) and put the rows back in input
    /// order.
    fn in_input_order(&self, parts: Vec<Tensor>, groups: &[Vec<usize>]) -> Result<Tensor> {
        let dev = self.device();
        if parts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.cfg.projection_dim),
                self.logit_scale.dtype(),
                dev,
            )?);
        }
        let all = Tensor::cat(&parts, 0)?;
        let at = ragged::restore_order(groups);
        if at.iter().enumerate().all(|(i, &p)| p as usize == i) {
            return Ok(all);
        }
        Ok(all.index_select(&Tensor::new(at.as_slice(), dev)?, 0)?)
    }

    /// [`Self::forward`] with the text as unpadded rows ([`Self::text_features_rows`]).
    pub fn forward_rows(
        &self,
        pixels: &Tensor,
        rows: &[Vec<u32>],
        pad_id: u32,
        overhead_tokens: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let img = self.image_features(pixels)?;
        let txt = self.text_features_rows(rows, pad_id, overhead_tokens)?;
        let logits = img
            .matmul(&txt.t()?)?
            .broadcast_mul(&self.logit_scale.exp()?)?;
        Ok((logits, img, txt))
    }

    /// The temperature parameter (log scale) as a tensor (differentiable when trained).
    pub fn logit_scale_tensor(&self) -> &Tensor {
        &self.logit_scale
    }

    /// `exp(logit_scale)`.
    pub fn logit_scale(&self) -> Result<f32> {
        Ok(self
            .logit_scale
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?
            .exp())
    }

    /// `logits_per_image` `[n_img, n_txt]` (its transpose is `logits_per_text`) and the unit
    /// embeddings `(image_embeds, text_embeds)`, as HF `CLIPModel.forward`.
    pub fn forward(&self, pixels: &Tensor, ids: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let img = self.image_features(pixels)?;
        let txt = self.text_features(ids)?;
        let logits = img
            .matmul(&txt.t()?)?
            .broadcast_mul(&self.logit_scale.exp()?)?;
        Ok((logits, img, txt))
    }
}

/// Divide each row by its L2 norm (differentiable), as HF's CLIP does (no epsilon).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    close_core::ops::l2_normalize(x, 0.0)
}

/// Every tensor a CLIP checkpoint must hold for `cfg`, with its shape (HF names). Extra
/// tensors in a checkpoint (e.g. old `position_ids` buffers) are ignored.
pub fn expected_tensors(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let t = &cfg.text_config;
    let v = &cfg.vision_config;
    let layer = |out: &mut Vec<(String, Vec<usize>)>, pre: &str, d: usize, ff: usize| {
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{pre}.self_attn.{n}.weight"), vec![d, d]));
            out.push((format!("{pre}.self_attn.{n}.bias"), vec![d]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{pre}.{n}.weight"), vec![d]));
            out.push((format!("{pre}.{n}.bias"), vec![d]));
        }
        out.push((format!("{pre}.mlp.fc1.weight"), vec![ff, d]));
        out.push((format!("{pre}.mlp.fc1.bias"), vec![ff]));
        out.push((format!("{pre}.mlp.fc2.weight"), vec![d, ff]));
        out.push((format!("{pre}.mlp.fc2.bias"), vec![d]));
    };
    out.push((
        "text_model.embeddings.token_embedding.weight".into(),
        vec![t.vocab_size, t.hidden_size],
    ));
    out.push((
        "text_model.embeddings.position_embedding.weight".into(),
        vec![t.max_position_embeddings, t.hidden_size],
    ));
    for i in 0..t.num_hidden_layers {
        layer(
            &mut out,
            &format!("text_model.encoder.layers.{i}"),
            t.hidden_size,
            t.intermediate_size,
        );
    }
    out.push((
        "text_model.final_layer_norm.weight".into(),
        vec![t.hidden_size],
    ));
    out.push((
        "text_model.final_layer_norm.bias".into(),
        vec![t.hidden_size],
    ));
    let p = v.patch_size;
    out.push((
        "vision_model.embeddings.class_embedding".into(),
        vec![v.hidden_size],
    ));
    out.push((
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![v.hidden_size, v.num_channels, p, p],
    ));
    out.push((
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![v.num_positions(), v.hidden_size],
    ));
    for n in ["pre_layrnorm", "post_layernorm"] {
        out.push((format!("vision_model.{n}.weight"), vec![v.hidden_size]));
        out.push((format!("vision_model.{n}.bias"), vec![v.hidden_size]));
    }
    for i in 0..v.num_hidden_layers {
        layer(
            &mut out,
            &format!("vision_model.encoder.layers.{i}"),
            v.hidden_size,
            v.intermediate_size,
        );
    }
    out.push((
        "visual_projection.weight".into(),
        vec![cfg.projection_dim, v.hidden_size],
    ));
    out.push((
        "text_projection.weight".into(),
        vec![cfg.projection_dim, t.hidden_size],
    ));
    out.push(("logit_scale".into(), vec![]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// Rows `<bos> … <eos>` of lengths 3..=14 with varied ids.
    fn token_rows() -> Vec<Vec<u32>> {
        [7usize, 3, 12, 7, 5, 14, 3, 9, 12, 4]
            .iter()
            .enumerate()
            .map(|(r, &len)| {
                let mid = (0..len - 2).map(|i| 4 + ((r * 7 + i * 5) % 60) as u32);
                std::iter::once(2).chain(mid).chain([3]).collect()
            })
            .collect()
    }

    fn padded(rows: &[Vec<u32>]) -> Result<Tensor> {
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        ragged::pad_rows(&rows, 0, &Device::Cpu)
    }

    /// A tiny random model and its variables.
    fn tiny_model() -> Result<(VarMap, ClipModel)> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = ClipModel::new(vb, &ClipConfig::tiny())?;
        Ok((vm, m))
    }

    /// `got` equals `want` to 1e-5 in every element.
    fn assert_close(got: &Tensor, want: &[Vec<f32>], what: &str) -> Result<()> {
        for (g, w) in got.to_vec2::<f32>()?.iter().zip(want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
            }
        }
        Ok(())
    }

    #[test]
    fn grouped_text_rows_match_the_padded_batch_and_keep_gradients() -> Result<()> {
        let (vm, m) = tiny_model()?;
        let rows = token_rows();
        let want = m.text_features(&padded(&rows)?)?.to_vec2::<f32>()?;
        for overhead in [0, 6, 1000] {
            let got = m.text_features_rows(&rows, 0, overhead)?;
            assert_close(&got, &want, &format!("overhead {overhead}"))?;
            let grads = got.sum_all()?.backward()?;
            let data = vm.data().lock().unwrap();
            let emb = &data["text_model.embeddings.token_embedding.weight"];
            assert!(grads.get(emb).is_some(), "overhead {overhead}");
        }
        assert_eq!(m.text_features_rows(&[], 0, 0)?.dims(), &[0, 16]);
        Ok(())
    }

    #[test]
    fn exact_text_rows_do_not_depend_on_their_companions() -> Result<()> {
        let (_, m) = tiny_model()?;
        let rows = token_rows();
        let want = m.text_features(&padded(&rows)?)?.to_vec2::<f32>()?;
        let exact = m.text_features_exact(&rows, 3)?;
        assert_close(&exact, &want, "exact calls")?;
        let all = exact.to_vec2::<f32>()?;
        // Each row alone, and the rows in reverse order, give the same bits.
        let mut rev = rows.clone();
        rev.reverse();
        let rev_out = m.text_features_exact(&rev, 3)?.to_vec2::<f32>()?;
        for (i, row) in rows.iter().enumerate() {
            let alone = m.text_features_exact(std::slice::from_ref(row), 3)?;
            assert_eq!(alone.to_vec2::<f32>()?[0], all[i], "row {i} alone");
            assert_eq!(rev_out[rows.len() - 1 - i], all[i], "row {i} reversed");
        }
        Ok(())
    }

    #[test]
    fn expected_tensors_match_the_built_model() -> Result<()> {
        let cfg = ClipConfig::tiny();
        let vm = VarMap::new();
        let _m = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg)?;
        let data = vm.data().lock().unwrap();
        let mut got: Vec<(String, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        got.sort();
        let mut want = expected_tensors(&cfg);
        want.sort();
        assert_eq!(got, want);
        assert_eq!(want.len(), 16 * 4 + 4 + 7 + 3);
        Ok(())
    }

    #[test]
    fn image_size_not_divisible_by_patch_drops_the_remainder_like_conv() -> Result<()> {
        let dev = Device::Cpu;
        let mut c32 = ClipConfig::tiny();
        let vm = VarMap::new();
        ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &c32)?;
        let t: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let a = ClipModel::new(VarBuilder::from_tensors(t.clone(), DType::F32, &dev), &c32)?;
        c32.vision_config.image_size = 35;
        let b = ClipModel::new(VarBuilder::from_tensors(t, DType::F32, &dev), &c32)?;
        let px = Tensor::randn(0f32, 1., (2, 3, 35, 35), &dev)?;
        let ya = a.image_features(&px.narrow(2, 0, 32)?.narrow(3, 0, 32)?)?;
        let yb = b.image_features(&px)?;
        let d = (ya - yb)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "{d}");
        Ok(())
    }

    #[test]
    fn pooling_follows_hf() {
        let mut cfg = ClipConfig::tiny().text_config;
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let t = ClipTextTransformer::new(vb.clone(), &cfg).unwrap();
        let rows = vec![
            vec![2, 5, 9, 3, 3, 3],
            vec![2, 3, 0, 0, 0, 0],
            vec![2, 7, 7, 7, 7, 7],
        ];
        assert_eq!(t.pool_positions(&rows), vec![3, 1, 0]);
        cfg.eos_token_id = 2;
        let t = ClipTextTransformer::new(vb, &cfg).unwrap();
        assert_eq!(t.pool_positions(&rows), vec![2, 1, 1]);
    }
}
