//! The T5 encoder-decoder (`T5ForConditionalGeneration` of HF transformers), trainable.
//!
//! Ports the architecture of Raffel et al. (2020) as implemented by HF transformers
//! (`models/t5/modeling_t5.py`): pre-norm blocks with RMS layer norm, no attention scaling,
//! relative position buckets (bidirectional in the encoder, causal in the decoder) computed in
//! the first block and shared by all blocks of a stack, ReLU or gated-GELU feed-forward, and an
//! LM head that is either the shared embedding (v1.0, decoder output scaled by `d_model^-0.5`)
//! or a separate `lm_head` (v1.1). Parameter names are HF's, so checkpoints load without a
//! mapping table.
//!
//! Differences to candle's `t5.rs` that matter here: the encoder takes `inputs_embeds` and an
//! attention mask, the decoder returns logits for every target position, the loss ignores
//! padding, every op in the training path has a backward pass, tied logits are scaled by
//! `d_model^-0.5` (candle's multiplies by `sqrt(d_model)`), and the decoder uses causal
//! (unidirectional) buckets (candle's uses bidirectional ones).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use close_core::{Error, Result};

use crate::config::{Activation, FeedForward, T5Config};
use crate::fused;

/// `x [.., in] · wᵀ` for a weight `w [out, in]` (no bias, as in T5).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    close_core::fused::linear(x, w, None)
}

/// The most negative finite value of `dtype`, used as the additive attention mask (as HF).
fn mask_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// `[B, L]` 0/1 mask (any dtype) → additive bias `[B, 1, 1, L]` (0 or the dtype minimum).
fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?.ne(0f64)?.to_dtype(DType::F32)?;
    // (m - 1) * |min|: 0 where kept, min where masked.
    let bias = m
        .affine(-mask_min(dtype), mask_min(dtype))?
        .to_dtype(dtype)?;
    Ok(bias.reshape((b, 1, 1, l))?)
}

/// Relative position buckets (HF `_relative_position_bucket`), for query positions
/// `q_offset..q_offset+q_len` and key positions `0..k_len`; row-major `[q_len, k_len]`.
pub fn relative_position_buckets(
    q_len: usize,
    k_len: usize,
    q_offset: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(q_len * k_len);
    let nb = if bidirectional {
        num_buckets / 2
    } else {
        num_buckets
    };
    let max_exact = nb / 2;
    // The same float32 arithmetic as torch, so boundaries land in the same bucket.
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    for i in 0..q_len {
        let qpos = (i + q_offset) as i64;
        for j in 0..k_len {
            let rel = j as i64 - qpos;
            let (mut bucket, n) = if bidirectional {
                (if rel > 0 { nb as i64 } else { 0 }, rel.abs())
            } else {
                (0, (-rel).max(0))
            };
            if n < max_exact as i64 {
                bucket += n;
            } else {
                let large = (((n as f32) / (max_exact as f32)).ln() / log_ratio
                    * ((nb - max_exact) as f32)) as i64;
                bucket += (max_exact as i64 + large).min(nb as i64 - 1);
            }
            out.push(bucket as u32);
        }
    }
    out
}

/// Splits heads: `[B, L, H*dk]` → `[B, H, L, dk]` (contiguous).
fn split_heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, l, hd) = x.dims3()?;
    Ok(x.reshape((b, l, h, hd / h))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// Merges heads: `[B, H, L, dk]` → `[B, L, H*dk]`.
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, dk) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * dk))?)
}

fn dropout(x: &Tensor, p: f64, training: bool) -> Result<Tensor> {
    if training && p > 0.0 {
        close_core::fused::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

/// Multi-head attention of T5 (`SelfAttention` / `EncDecAttention`).
#[derive(Debug, Clone)]
struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// `[num_buckets, num_heads]`, only in the first block of each stack.
    relative_attention_bias: Option<Tensor>,
    n_heads: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl Attention {
    fn new(cfg: &T5Config, with_bias: bool, vb: VarBuilder) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        let std = |x: usize| Init::Randn {
            mean: 0.0,
            stdev: (x as f64).powf(-0.5),
        };
        let q = vb
            .pp("q")
            .get_with_hints((inner, d), "weight", std(d * cfg.d_kv))?;
        let k = vb.pp("k").get_with_hints((inner, d), "weight", std(d))?;
        let v = vb.pp("v").get_with_hints((inner, d), "weight", std(d))?;
        let o = vb
            .pp("o")
            .get_with_hints((d, inner), "weight", std(inner))?;
        let relative_attention_bias = if with_bias {
            Some(vb.pp("relative_attention_bias").get_with_hints(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "weight",
                std(d),
            )?)
        } else {
            None
        };
        Ok(Self {
            q,
            k,
            v,
            o,
            relative_attention_bias,
            n_heads: cfg.num_heads,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Position bias `[1, H, q_len, k_len]` for queries at `q_offset..`.
    fn position_bias(
        &self,
        q_len: usize,
        k_len: usize,
        q_offset: usize,
        bidirectional: bool,
    ) -> Result<Tensor> {
        let table = self.relative_attention_bias.as_ref().ok_or_else(|| {
            Error::invalid("position bias requested from a block without relative_attention_bias")
        })?;
        let ids = relative_position_buckets(
            q_len,
            k_len,
            q_offset,
            bidirectional,
            self.num_buckets,
            self.max_distance,
        );
        let ids = Tensor::from_vec(ids, q_len * k_len, table.device())?;
        let vals = table.index_select(&ids, 0)?; // [q*k, H]
        Ok(vals.t()?.reshape((1, self.n_heads, q_len, k_len))?)
    }

    /// Full-sequence attention of `x [B, Lq, D]` over `kv [B, Lk, D]` (itself when `None`) with
    /// an additive `bias` broadcastable to `[B, H, Lq, Lk]`.
    fn forward(
        &self,
        x: &Tensor,
        kv: Option<&Tensor>,
        bias: &Tensor,
        p: f64,
        training: bool,
    ) -> Result<Tensor> {
        let h = self.n_heads;
        let kv = kv.unwrap_or(x);
        let q = split_heads(&linear(x, &self.q)?, h)?;
        let k = split_heads(&linear(kv, &self.k)?, h)?;
        let v = split_heads(&linear(kv, &self.v)?, h)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = fused::softmax_last_dim(&scores)?;
        let probs = dropout(&probs, p, training)?;
        let out = merge_heads(&probs.matmul(&v)?)?;
        linear(&out, &self.o)
    }
}

#[derive(Debug, Clone)]
enum DenseAct {
    Plain {
        wi: Tensor,
        wo: Tensor,
    },
    Gated {
        wi_0: Tensor,
        wi_1: Tensor,
        wo: Tensor,
    },
}

#[derive(Debug, Clone)]
struct FeedForwardLayer {
    dense: DenseAct,
    act: Activation,
    layer_norm: Tensor,
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Relu => x.relu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
    })
}

impl FeedForwardLayer {
    fn new(cfg: &T5Config, ff: FeedForward, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let std = |x: usize| Init::Randn {
            mean: 0.0,
            stdev: (x as f64).powf(-0.5),
        };
        let dvb = vb.pp("DenseReluDense");
        let dense = if ff.gated {
            DenseAct::Gated {
                wi_0: dvb.pp("wi_0").get_with_hints((f, d), "weight", std(d))?,
                wi_1: dvb.pp("wi_1").get_with_hints((f, d), "weight", std(d))?,
                wo: dvb.pp("wo").get_with_hints((d, f), "weight", std(f))?,
            }
        } else {
            DenseAct::Plain {
                wi: dvb.pp("wi").get_with_hints((f, d), "weight", std(d))?,
                wo: dvb.pp("wo").get_with_hints((d, f), "weight", std(f))?,
            }
        };
        let layer_norm = vb
            .pp("layer_norm")
            .get_with_hints(d, "weight", Init::Const(1.0))?;
        Ok(Self {
            dense,
            act: ff.act,
            layer_norm,
        })
    }

    fn forward(&self, x: &Tensor, eps: f64, p: f64, training: bool) -> Result<Tensor> {
        let n = fused::rms_norm(x, &self.layer_norm, eps)?;
        let y = match &self.dense {
            DenseAct::Plain { wi, wo } => {
                let h = match self.act {
                    Activation::Relu => close_core::fused::linear_relu(&n, wi)?,
                    act => activate(&linear(&n, wi)?, act)?,
                };
                linear(&dropout(&h, p, training)?, wo)?
            }
            DenseAct::Gated { wi_0, wi_1, wo } => {
                let h = (activate(&linear(&n, wi_0)?, self.act)? * linear(&n, wi_1)?)?;
                let h = dropout(&h, p, training)?;
                linear(&h, wo)?
            }
        };
        Ok((x + dropout(&y, p, training)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    self_ln: Tensor,
    /// Decoder only: `EncDecAttention` and its layer norm.
    cross: Option<(Attention, Tensor)>,
    ff: FeedForwardLayer,
}

impl Block {
    fn new(
        cfg: &T5Config,
        ff: FeedForward,
        first: bool,
        decoder: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let lvb = vb.pp("layer");
        let self_attn = Attention::new(cfg, first, lvb.pp("0").pp("SelfAttention"))?;
        let self_ln =
            lvb.pp("0")
                .pp("layer_norm")
                .get_with_hints(cfg.d_model, "weight", Init::Const(1.0))?;
        let (cross, ff_idx) = if decoder {
            let a = Attention::new(cfg, false, lvb.pp("1").pp("EncDecAttention"))?;
            let ln = lvb.pp("1").pp("layer_norm").get_with_hints(
                cfg.d_model,
                "weight",
                Init::Const(1.0),
            )?;
            (Some((a, ln)), "2")
        } else {
            (None, "1")
        };
        let ff = FeedForwardLayer::new(cfg, ff, lvb.pp(ff_idx))?;
        Ok(Self {
            self_attn,
            self_ln,
            cross,
            ff,
        })
    }
}

#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<Block>,
    final_layer_norm: Tensor,
}

impl Stack {
    fn new(
        cfg: &T5Config,
        ff: FeedForward,
        n: usize,
        decoder: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let blocks = (0..n)
            .map(|i| Block::new(cfg, ff, i == 0, decoder, vb.pp("block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            vb.pp("final_layer_norm")
                .get_with_hints(cfg.d_model, "weight", Init::Const(1.0))?;
        Ok(Self {
            blocks,
            final_layer_norm,
        })
    }
}

/// Self-attention key/value cache of one decoder layer, plus its fixed cross-attention keys
/// and values. Shapes `[N, H, len, dk]`.
#[derive(Debug, Clone)]
pub(crate) struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    ck: Tensor,
    cv: Tensor,
}

/// Incremental decoding state for `N` rows (batch × beams).
#[derive(Debug, Clone)]
pub(crate) struct DecoderCache {
    layers: Vec<LayerCache>,
    /// `[B, 1, 1, L]` additive encoder mask (one per item, as the cross-attention cache).
    cross_bias: Tensor,
    /// Rows (beams) per item.
    expand: usize,
    /// Number of target positions already decoded.
    pub(crate) step: usize,
    /// The source row of each row's self-attention cache, when beams were reordered since
    /// the last step: applied while appending the next position (one copy, not two).
    reorder: Option<Vec<u32>>,
}

/// The T5 encoder-decoder with an LM head (`T5ForConditionalGeneration`).
#[derive(Debug, Clone)]
pub struct T5 {
    cfg: T5Config,
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    /// `None` when tied to `shared`.
    lm_head: Option<Tensor>,
    training: bool,
}

impl T5 {
    /// Builds the model from `vb` using HF parameter names (`shared.weight`,
    /// `encoder.block.0.layer.0.SelfAttention.q.weight`, ..., `lm_head.weight` when untied).
    /// With a `VarMap`-backed builder, missing parameters are initialised as HF does.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let ff = cfg.feed_forward()?;
        let shared = vb.pp("shared").get_with_hints(
            (cfg.vocab_size, cfg.d_model),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let encoder = Stack::new(cfg, ff, cfg.num_layers, false, vb.pp("encoder"))?;
        let decoder = Stack::new(cfg, ff, cfg.decoder_layers(), true, vb.pp("decoder"))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(vb.pp("lm_head").get_with_hints(
                (cfg.vocab_size, cfg.d_model),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            shared,
            encoder,
            decoder,
            lm_head,
            training: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        self.shared.device()
    }

    /// The parameter dtype.
    pub fn dtype(&self) -> DType {
        self.shared.dtype()
    }

    /// Training mode turns dropout on (rate `dropout_rate`); evaluation mode (the default) is
    /// deterministic.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Whether dropout is active.
    pub fn is_training(&self) -> bool {
        self.training
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::invalid(format!("{what}: empty sequence")));
        }
        if len > self.cfg.n_positions {
            return Err(Error::invalid(format!(
                "{what}: sequence length {len} exceeds the model limit n_positions = {}",
                self.cfg.n_positions
            )));
        }
        Ok(())
    }

    /// Ids outside the vocabulary are an error on the CPU. Elsewhere the check would cost a
    /// read to the host on every forward; there the tokenizer and the vocabulary are checked
    /// against each other when a run loads instead.
    fn check_ids(&self, what: &str, ids: &Tensor) -> Result<()> {
        if ids.elem_count() == 0 || !ids.device().is_cpu() {
            return Ok(());
        }
        let max = ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(Error::invalid(format!(
                "{what}: token id {max} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Token embeddings with the shared table. `ids [B, L]` (u32) → `[B, L, D]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        self.check_ids("embed_tokens", ids)?;
        self.embed_unchecked(ids, b, l)
    }

    fn embed_unchecked(&self, ids: &Tensor, b: usize, l: usize) -> Result<Tensor> {
        let flat = ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self
            .shared
            .index_select(&flat, 0)?
            .reshape((b, l, self.cfg.d_model))?)
    }

    /// Encoder over `inputs_embeds [B, L, D]` with attention `mask [B, L]` (1 = token,
    /// 0 = padding; any dtype) → hidden states `[B, L, D]`.
    pub fn encode(&self, inputs_embeds: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = inputs_embeds.dims3()?;
        if d != self.cfg.d_model {
            return Err(Error::Shape {
                what: "encode: inputs_embeds".into(),
                expected: vec![b, l, self.cfg.d_model],
                got: vec![b, l, d],
            });
        }
        if mask.dims() != [b, l] {
            return Err(Error::Shape {
                what: "encode: mask".into(),
                expected: vec![b, l],
                got: mask.dims().to_vec(),
            });
        }
        self.check_len("encode", l)?;
        let (eps, p, tr) = (
            self.cfg.layer_norm_epsilon,
            self.cfg.dropout_rate,
            self.training,
        );
        let dtype = inputs_embeds.dtype();
        let pos = self.encoder.blocks[0]
            .self_attn
            .position_bias(l, l, 0, true)?
            .to_dtype(dtype)?;
        let bias = pos.broadcast_add(&additive_mask(mask, dtype)?)?; // [B, H, L, L]
        let mut x = dropout(inputs_embeds, p, tr)?;
        for blk in &self.encoder.blocks {
            let n = fused::rms_norm(&x, &blk.self_ln, eps)?;
            let a = blk.self_attn.forward(&n, None, &bias, p, tr)?;
            x = (x + dropout(&a, p, tr)?)?;
            x = blk.ff.forward(&x, eps, p, tr)?;
        }
        let x = fused::rms_norm(&x, &self.encoder.final_layer_norm, eps)?;
        dropout(&x, p, tr)
    }

    /// Decoder hidden states (after the final layer norm) for teacher-forced
    /// `decoder_input_ids [B, T]` → `[B, T, D]`.
    pub fn decode_hidden(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Tensor> {
        let (b, l, d) = enc_out.dims3()?;
        if d != self.cfg.d_model {
            return Err(Error::Shape {
                what: "decode: enc_out".into(),
                expected: vec![b, l, self.cfg.d_model],
                got: vec![b, l, d],
            });
        }
        if enc_mask.dims() != [b, l] {
            return Err(Error::Shape {
                what: "decode: enc_mask".into(),
                expected: vec![b, l],
                got: enc_mask.dims().to_vec(),
            });
        }
        let (bt, t) = decoder_input_ids.dims2()?;
        if bt != b {
            return Err(Error::Shape {
                what: "decode: decoder_input_ids".into(),
                expected: vec![b, t],
                got: vec![bt, t],
            });
        }
        self.check_len("decode", t)?;
        self.check_ids("decode: decoder_input_ids", decoder_input_ids)?;
        let (eps, p, tr) = (
            self.cfg.layer_norm_epsilon,
            self.cfg.dropout_rate,
            self.training,
        );
        let dtype = enc_out.dtype();
        let pos = self.decoder.blocks[0]
            .self_attn
            .position_bias(t, t, 0, false)?
            .to_dtype(dtype)?;
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    if j > i {
                        mask_min(DType::F32) as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, t, t), enc_out.device())?.to_dtype(dtype)?;
        let self_bias = pos.broadcast_add(&causal)?; // [1, H, T, T]
        let cross_bias = additive_mask(enc_mask, dtype)?; // [B, 1, 1, L]
        let mut x = dropout(&self.embed_unchecked(decoder_input_ids, b, t)?, p, tr)?;
        for blk in &self.decoder.blocks {
            let n = fused::rms_norm(&x, &blk.self_ln, eps)?;
            let a = blk.self_attn.forward(&n, None, &self_bias, p, tr)?;
            x = (x + dropout(&a, p, tr)?)?;
            let (ca, cln) = blk
                .cross
                .as_ref()
                .ok_or_else(|| Error::invalid("decoder block without cross-attention"))?;
            let n = fused::rms_norm(&x, cln, eps)?;
            let a = ca.forward(&n, Some(enc_out), &cross_bias, p, tr)?;
            x = (x + dropout(&a, p, tr)?)?;
            x = blk.ff.forward(&x, eps, p, tr)?;
        }
        let x = fused::rms_norm(&x, &self.decoder.final_layer_norm, eps)?;
        dropout(&x, p, tr)
    }

    /// LM head over decoder hidden states `[.., D]` → logits `[.., V]`.
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            None => linear(
                &(hidden * (self.cfg.d_model as f64).powf(-0.5))?,
                &self.shared,
            ),
            Some(w) => linear(hidden, w),
        }
    }

    /// Teacher-forced decoder: logits `[B, T, V]` for `decoder_input_ids [B, T]` given the
    /// encoder output `[B, L, D]` and its mask `[B, L]`.
    pub fn decode(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Tensor> {
        self.lm_logits(&self.decode_hidden(enc_out, enc_mask, decoder_input_ids)?)
    }

    /// HF `_shift_right`: `[start, y_0, .., y_{T-2}]` from `labels [B, T]` whose padded
    /// positions (`label_mask` = 0) are replaced by the pad id.
    pub fn shift_right(&self, labels: &Tensor, label_mask: &Tensor) -> Result<Tensor> {
        let clean = self.clean_labels(labels, label_mask)?;
        let (b, t) = clean.dims2()?;
        let start = Tensor::full(self.cfg.decoder_start_token_id, (b, 1), clean.device())?;
        if t == 1 {
            return Ok(start);
        }
        Ok(Tensor::cat(&[&start, &clean.narrow(1, 0, t - 1)?], 1)?)
    }

    fn clean_labels(&self, labels: &Tensor, label_mask: &Tensor) -> Result<Tensor> {
        if labels.dims() != label_mask.dims() || labels.rank() != 2 {
            return Err(Error::Shape {
                what: "labels / label_mask".into(),
                expected: labels.dims().to_vec(),
                got: label_mask.dims().to_vec(),
            });
        }
        let labels = labels.to_dtype(DType::U32)?;
        let keep = label_mask.to_dtype(DType::F32)?.ne(0f64)?;
        let pad = Tensor::full(self.cfg.pad_token_id, labels.dims(), labels.device())?;
        Ok(keep.where_cond(&labels, &pad)?)
    }

    /// Training loss: cross-entropy of `labels [B, T]` (u32) where `label_mask [B, T]` is 1,
    /// averaged over those tokens (as HF with `-100` labels). The decoder input is the labels
    /// shifted right from `decoder_start_token_id`.
    pub fn loss(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        labels: &Tensor,
        label_mask: &Tensor,
    ) -> Result<Tensor> {
        let (logits, clean) = self.teacher_forced(enc_out, enc_mask, labels, label_mask)?;
        masked_cross_entropy(&logits, &clean, label_mask)
    }

    /// [`T5::loss`] summed over the label tokens instead of averaged.
    pub fn loss_sum(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        labels: &Tensor,
        label_mask: &Tensor,
    ) -> Result<Tensor> {
        let (logits, clean) = self.teacher_forced(enc_out, enc_mask, labels, label_mask)?;
        masked_nll_sum(&logits, &clean, label_mask)
    }

    /// The decoder's logits for `labels` (shifted right as its input) and the labels with
    /// padding cleaned, for the losses.
    fn teacher_forced(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        labels: &Tensor,
        label_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let dec_in = self.shift_right(labels, label_mask)?;
        let logits = self.decode(enc_out, enc_mask, &dec_in)?;
        Ok((logits, self.clean_labels(labels, label_mask)?))
    }

    /// Repeats encoder rows for several targets per input: row `i` of the result is row
    /// `target_mapping[i]` of `enc_out [B, L, D]` / `mask [B, L]`.
    pub fn repeat_for_targets(
        &self,
        enc_out: &Tensor,
        mask: &Tensor,
        target_mapping: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        repeat_rows(enc_out, mask, target_mapping)
    }

    // ---- incremental decoding (generation) ----

    /// Cache for decoding `expand` rows per row of `enc_out [B, L, D]` (beams).
    pub(crate) fn init_cache(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        expand: usize,
    ) -> Result<DecoderCache> {
        let (b, l, _) = enc_out.dims3()?;
        if enc_mask.dims() != [b, l] {
            return Err(Error::Shape {
                what: "generate: enc_mask".into(),
                expected: vec![b, l],
                got: enc_mask.dims().to_vec(),
            });
        }
        let h = self.cfg.num_heads;
        let mut layers = Vec::with_capacity(self.decoder.blocks.len());
        for blk in &self.decoder.blocks {
            let (ca, _) = blk
                .cross
                .as_ref()
                .ok_or_else(|| Error::invalid("decoder block without cross-attention"))?;
            // Decoding needs no gradients: a detached cache holds no graph, so nothing
            // computed before it stays alive (the weights may be trainable variables).
            // One copy per item: its beams share it (see `decode_attention`).
            let ck = split_heads(&linear(enc_out, &ca.k)?, h)?.detach();
            let cv = split_heads(&linear(enc_out, &ca.v)?, h)?.detach();
            layers.push(LayerCache {
                k: None,
                v: None,
                ck,
                cv,
            });
        }
        Ok(DecoderCache {
            layers,
            cross_bias: additive_mask(enc_mask, enc_out.dtype())?,
            expand,
            step: 0,
            reorder: None,
        })
    }

    /// One decoding step for `ids [N]` (u32): appends to the cache and returns log-probs
    /// `[N, V]` (f32) of the next token.
    pub(crate) fn decode_step(&self, cache: &mut DecoderCache, ids: &Tensor) -> Result<Tensor> {
        let n = ids.dim(0)?;
        let t = cache.step;
        let eps = self.cfg.layer_norm_epsilon;
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let dtype = self.dtype();
        let pos = self.decoder.blocks[0]
            .self_attn
            .position_bias(1, t + 1, t, false)?
            .to_dtype(dtype)?;
        let mut x = self.embed_unchecked(ids, n, 1)?;
        for (blk, lc) in self.decoder.blocks.iter().zip(cache.layers.iter_mut()) {
            let a = &blk.self_attn;
            let xn = candle_nn::ops::rms_norm(&x, &blk.self_ln, eps as f32)?;
            // One position: [N, 1, H*dk] and [N, H, 1, dk] share their memory layout.
            let q = linear(&xn, &a.q)?.reshape((n, h, 1, dk))?;
            let k = linear(&xn, &a.k)?.reshape((n, h, 1, dk))?;
            let v = linear(&xn, &a.v)?.reshape((n, h, 1, dk))?;
            let rows = cache.reorder.as_deref();
            let (k, v) = match (&lc.k, &lc.v) {
                (Some(pk), Some(pv)) => (
                    fused::gather_append(pk, rows, &k)?,
                    fused::gather_append(pv, rows, &v)?,
                ),
                _ => (k, v),
            };
            let o = fused::decode_attention(&q, (&k, &v), &pos, 1)?;
            x = (x + linear(&o.reshape((n, 1, h * dk))?, &a.o)?)?;
            lc.k = Some(k.detach());
            lc.v = Some(v.detach());
            let (ca, cln) = blk
                .cross
                .as_ref()
                .ok_or_else(|| Error::invalid("decoder block without cross-attention"))?;
            let xn = candle_nn::ops::rms_norm(&x, cln, eps as f32)?;
            let q = linear(&xn, &ca.q)?.reshape((n, h, 1, dk))?;
            let kv = (&lc.ck, &lc.cv);
            let o = fused::decode_attention(&q, kv, &cache.cross_bias, cache.expand)?;
            x = (x + linear(&o.reshape((n, 1, h * dk))?, &ca.o)?)?;
            x = blk.ff.forward(&x, eps, 0.0, false)?;
        }
        cache.step += 1;
        cache.reorder = None;
        let x = candle_nn::ops::rms_norm(&x, &self.decoder.final_layer_norm, eps as f32)?;
        let logits = self.lm_logits(&x.squeeze(1)?)?.to_dtype(DType::F32)?;
        close_core::fused::log_softmax_last_dim(&logits)
    }

    /// Reorders cache rows (beam search): row `i` becomes old row `rows[i]`. Cross-attention
    /// entries are left alone (beams only move within their batch item). The self-attention
    /// cache is reordered when the next step appends to it.
    pub(crate) fn reorder_cache(&self, cache: &mut DecoderCache, rows: Vec<u32>) {
        // Rows of earlier reorders not yet applied are composed with these.
        let rows = match cache.reorder.take() {
            Some(prev) => rows.iter().map(|&r| prev[r as usize]).collect(),
            None => rows,
        };
        cache.reorder = Some(rows);
    }
}

/// Row `i` of the results is row `mapping[i]` of `enc_out [B, L, D]` and `mask [B, L]`.
pub fn repeat_rows(enc_out: &Tensor, mask: &Tensor, mapping: &[usize]) -> Result<(Tensor, Tensor)> {
    let b = enc_out.dim(0)?;
    if let Some(&bad) = mapping.iter().find(|&&i| i >= b) {
        return Err(Error::invalid(format!(
            "target mapping index {bad} is out of range for a batch of {b}"
        )));
    }
    if mask.dim(0)? != b {
        return Err(Error::Shape {
            what: "repeat_for_targets: mask".into(),
            expected: vec![b],
            got: mask.dims().to_vec(),
        });
    }
    let idx: Vec<u32> = mapping.iter().map(|&i| i as u32).collect();
    let idx = Tensor::from_vec(idx, mapping.len(), enc_out.device())?;
    Ok((enc_out.index_select(&idx, 0)?, mask.index_select(&idx, 0)?))
}

/// Mean cross-entropy of `logits [B, T, V]` against `labels [B, T]` (u32) over the positions
/// where `mask [B, T]` is non-zero. Errors when the mask selects no token.
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (total, m) = masked_nll(logits, labels, mask)?;
    // The token count is read on the CPU only. Elsewhere the division stays on the device
    // (no read to the host), and an empty mask gives a NaN loss, which the trainer reports.
    let count = if m.device().is_cpu() {
        Some(m.sum_all()?.to_scalar::<f32>()?)
    } else {
        None
    };
    if count == Some(0.0) {
        return Err(Error::invalid(
            "loss: the label mask selects no target token",
        ));
    }
    Ok(match count {
        Some(c) => (total / c as f64)?,
        None => total.broadcast_div(&m.sum_all()?)?,
    })
}

/// The summed cross-entropy over the masked positions (the numerator of
/// [`masked_cross_entropy`]), for a loss whose count is known elsewhere (data-parallel
/// training divides each rank's sum by the whole batch's count).
pub fn masked_nll_sum(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(masked_nll(logits, labels, mask)?.0)
}

/// The summed masked NLL and the mask as 0/1 f32.
fn masked_nll(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, t, _v) = logits.dims3()?;
    if labels.dims() != [b, t] || mask.dims() != [b, t] {
        return Err(Error::Shape {
            what: "masked_cross_entropy: labels / mask".into(),
            expected: vec![b, t],
            got: labels.dims().to_vec(),
        });
    }
    let m = mask.to_dtype(DType::F32)?.ne(0f64)?.to_dtype(DType::F32)?;
    let nll = fused::nll_of_labels(&logits.to_dtype(DType::F32)?, &labels.to_dtype(DType::U32)?)?; // [B, T]
    let total = (nll * &m)?.sum_all()?;
    Ok((total, m))
}

/// Pads token lists into `labels [N, T]` (u32, pad where absent) and `mask [N, T]` (f32),
/// `T` = the longest list.
pub fn pad_targets(targets: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let t = targets.iter().map(|x| x.len()).max().unwrap_or(0);
    if t == 0 {
        return Err(Error::invalid("pad_targets: no target tokens"));
    }
    let n = targets.len();
    let mut ids = vec![pad; n * t];
    let mut mask = vec![0f32; n * t];
    for (i, tg) in targets.iter().enumerate() {
        for (j, &tok) in tg.iter().enumerate() {
            ids[i * t + j] = tok;
            mask[i * t + j] = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(ids, (n, t), device)?,
        Tensor::from_vec(mask, (n, t), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hf_values() {
        // Values computed with transformers' T5Attention._relative_position_bucket
        // (num_buckets=32, max_distance=128) for relative positions -3, 0, 5, 20, 200 from
        // query 0 keys at those offsets.
        // bidirectional: rel>0 adds 16; exact below 8; log buckets above.
        let b = relative_position_buckets(1, 201, 0, true, 32, 128);
        assert_eq!(b[0], 0);
        assert_eq!(b[5], 21);
        assert_eq!(
            b[20],
            16 + 8 + ((20f32 / 8.0).ln() / (16f32).ln() * 8.0) as u32
        );
        assert_eq!(b[200], 31);
        // causal: future keys get bucket 0, past keys count back.
        let c = relative_position_buckets(1, 6, 5, false, 32, 128);
        assert_eq!(c, vec![5, 4, 3, 2, 1, 0]);
    }
}
