//! T5 hyper-parameters, read straight from a Hugging Face `config.json`.
//!
//! Field names are the ones of `transformers.T5Config`, so an HF `config.json` deserializes
//! directly (unknown keys are ignored). Presets: [`T5Config::tiny`] (tests),
//! [`T5Config::t5_small`] and [`T5Config::t5_base`] (the shapes of the published checkpoints).

use std::path::Path;

use close_core::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// Activation of the feed-forward block, parsed from `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU, HF `gelu`.
    GeluErf,
    /// tanh-approximated GELU, HF `gelu_new` (what `gated-gelu` means in T5 v1.1).
    GeluTanh,
    Silu,
}

/// The feed-forward variant: activation and whether it is gated (`wi_0`/`wi_1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    pub act: Activation,
    pub gated: bool,
}

/// T5 configuration (HF `T5Config` field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    /// Decoder depth; `None` (absent) means `num_layers`.
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub dropout_rate: f64,
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0), `gated-gelu` (T5 v1.1 / flan-t5), also `gelu`, `gelu_new`, `silu`
    /// and their `gated-` forms.
    pub feed_forward_proj: String,
    /// Tied: the LM head is the shared embedding and the decoder output is scaled by
    /// `d_model^-0.5` before it (T5 v1.0). Untied: separate `lm_head.weight`, no scaling.
    pub tie_word_embeddings: bool,
    pub pad_token_id: u32,
    #[serde(deserialize_with = "one_or_first")]
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    /// Longest source or target sequence accepted (T5 has relative positions only; HF
    /// configs carry `n_positions` = 512). Longer inputs are rejected with an error.
    pub n_positions: usize,
}

fn one_or_first<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => Ok(x),
        OneOrMany::Many(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("empty eos_token_id list")),
    }
}

impl Default for T5Config {
    fn default() -> Self {
        Self::t5_small()
    }
}

impl T5Config {
    /// A tiny model for tests (T5 v1.0 layout).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            d_model: 32,
            d_kv: 8,
            d_ff: 64,
            num_layers: 2,
            num_decoder_layers: None,
            num_heads: 4,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            dropout_rate: 0.0,
            ..Self::t5_small()
        }
    }

    /// The shape of `t5-small` (60M parameters, v1.0: ReLU, tied embeddings).
    pub fn t5_small() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            n_positions: 512,
        }
    }

    /// The shape of `t5-base` (220M parameters).
    pub fn t5_base() -> Self {
        Self {
            d_model: 768,
            d_ff: 3072,
            num_layers: 12,
            num_heads: 12,
            ..Self::t5_small()
        }
    }

    /// A named preset: `tiny`, `t5-small`, `t5-base`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "t5-small" | "t5_small" => Ok(Self::t5_small()),
            "t5-base" | "t5_base" => Ok(Self::t5_base()),
            _ => Err(Error::config(
                "t5 preset",
                format!("unknown preset `{name}` (expected tiny, t5-small or t5-base)"),
            )),
        }
    }

    /// Reads and validates an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, Some(e.line()), e.to_string()))?;
        cfg.validate()
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        Ok(cfg)
    }

    /// Decoder depth.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Width of the attention projections (`num_heads * d_kv`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Parses `feed_forward_proj`.
    pub fn feed_forward(&self) -> Result<FeedForward> {
        let s = self.feed_forward_proj.as_str();
        let (gated, act) = match s.strip_prefix("gated-") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let act = match (gated, act) {
            (_, "relu") => Activation::Relu,
            // HF maps `gated-gelu` to the tanh approximation ("gelu_new").
            (true, "gelu") | (_, "gelu_new") | (_, "gelu_pytorch_tanh") => Activation::GeluTanh,
            (false, "gelu") => Activation::GeluErf,
            (_, "silu") | (_, "swish") => Activation::Silu,
            _ => {
                return Err(Error::config(
                    "feed_forward_proj",
                    format!("unknown value `{s}` (expected relu, gated-gelu, gelu, gelu_new, silu or gated-<act>)"),
                ))
            }
        };
        Ok(FeedForward { act, gated })
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<()> {
        self.feed_forward()?;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            ("n_positions", self.n_positions),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be positive"));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(Error::config(
                "relative_attention_num_buckets",
                "must be at least 4",
            ));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err(Error::config(
                "relative_attention_max_distance",
                "must exceed relative_attention_num_buckets / 4",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(Error::config(
                "dropout_rate",
                format!("{} is not in [0, 1)", self.dropout_rate),
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(Error::config("layer_norm_epsilon", "must be positive"));
        }
        for (key, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(Error::config(
                    key,
                    format!("{id} is outside the vocabulary ({})", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_config_json() {
        let json = r#"{"architectures":["T5ForConditionalGeneration"],"d_ff":1024,"d_kv":64,
            "d_model":512,"decoder_start_token_id":0,"dropout_rate":0.1,"eos_token_id":[1],
            "feed_forward_proj":"gated-gelu","layer_norm_epsilon":1e-6,"model_type":"t5",
            "num_decoder_layers":8,"num_heads":6,"num_layers":8,"pad_token_id":0,
            "relative_attention_max_distance":128,"relative_attention_num_buckets":32,
            "tie_word_embeddings":false,"vocab_size":32128}"#;
        let c: T5Config = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.d_ff, 1024);
        assert_eq!(c.eos_token_id, 1);
        assert!(!c.tie_word_embeddings);
        assert_eq!(
            c.feed_forward().unwrap(),
            FeedForward {
                act: Activation::GeluTanh,
                gated: true
            }
        );
        assert_eq!(c.n_positions, 512);
    }

    #[test]
    fn unknown_activation_is_a_clear_error() {
        let c = T5Config {
            feed_forward_proj: "gated-banana".into(),
            ..T5Config::tiny()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("feed_forward_proj") && e.contains("gated-banana"),
            "{e}"
        );
    }

    #[test]
    fn presets_validate() {
        for p in ["tiny", "t5-small", "t5-base"] {
            T5Config::preset(p).unwrap().validate().unwrap();
        }
        assert!(T5Config::preset("t5-xxl").is_err());
    }
}
