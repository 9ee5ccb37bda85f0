//! CLIP configuration, read straight from an HF `config.json` (`model_type: "clip"`):
//! `text_config`, `vision_config`, `projection_dim`, `logit_scale_init_value`. Missing fields
//! take the defaults of HF transformers' `CLIPTextConfig` / `CLIPVisionConfig` (which are
//! openai/clip-vit-base-patch32's values). Legacy `text_config_dict` / `vision_config_dict`
//! entries override `text_config` / `vision_config` as transformers does.

use std::path::Path;

use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU with erf (HF `"gelu"`).
    Gelu,
    /// tanh approximation of GELU (HF `"gelu_new"` / `"gelu_pytorch_tanh"`).
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    Relu,
}

/// Text tower configuration (HF `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// EOS id used for pooling. `2` selects HF's legacy pooling (argmax of the token ids).
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: 49407,
        }
    }
}

/// Vision tower configuration (HF `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Sequence length: patches + the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Whole-model configuration (HF `CLIPConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// openai/clip-vit-base-patch32.
    pub fn vit_b32() -> Self {
        Self::default()
    }

    /// The shape of openai/clip-vit-large-patch14 (428M parameters, 768-d embeddings), the
    /// CLIP the paper uses.
    pub fn vit_l14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                ..Default::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                image_size: 224,
                patch_size: 14,
                ..Default::default()
            },
            projection_dim: 768,
            ..Self::default()
        }
    }

    /// A tiny model for unit tests (runs in milliseconds).
    pub fn tiny() -> Self {
        Self {
            text_config: ClipTextConfig {
                vocab_size: 64,
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                max_position_embeddings: 16,
                pad_token_id: Some(0),
                bos_token_id: Some(2),
                eos_token_id: 3,
                ..Default::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                image_size: 32,
                patch_size: 8,
                ..Default::default()
            },
            projection_dim: 16,
            logit_scale_init_value: 2.6592,
        }
    }

    /// The small CLIP trained from scratch on the shapes world: 63 px images in 21 px
    /// patches, so the 3×3 patch grid lines up with the world's 3×3 object grid (10 tokens);
    /// 4-layer vision / 3-layer text towers of width 128; `logit_scale` starts at ln 100
    /// (temperature 0.01, CLIP's clamp), where real CLIP ends its training. `vocab_size` is
    /// replaced by the trained tokenizer's size. Aligned patches and the low temperature
    /// together give both retrieval and a clear modality gap (`docs/demo.md`, CLIP).
    pub fn shapes() -> Self {
        Self {
            text_config: ClipTextConfig {
                vocab_size: 512,
                hidden_size: 128,
                intermediate_size: 512,
                num_hidden_layers: 3,
                num_attention_heads: 4,
                max_position_embeddings: 32,
                pad_token_id: Some(0),
                bos_token_id: Some(2),
                eos_token_id: 3,
                ..Default::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 128,
                intermediate_size: 512,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                image_size: 63,
                patch_size: 21,
                ..Default::default()
            },
            projection_dim: 128,
            logit_scale_init_value: std::f64::consts::LN_10 * 2.0,
        }
    }

    /// Check the invariants the model relies on, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let pos = |k: &str, x: usize| {
            if x == 0 {
                Err(Error::config(k, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("text_config.vocab_size", t.vocab_size)?;
        pos("text_config.hidden_size", t.hidden_size)?;
        pos("text_config.num_attention_heads", t.num_attention_heads)?;
        pos(
            "text_config.max_position_embeddings",
            t.max_position_embeddings,
        )?;
        pos("vision_config.hidden_size", v.hidden_size)?;
        pos("vision_config.num_attention_heads", v.num_attention_heads)?;
        pos("vision_config.patch_size", v.patch_size)?;
        pos("projection_dim", self.projection_dim)?;
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(Error::config(
                "text_config.hidden_size",
                format!(
                    "{} is not a multiple of num_attention_heads {}",
                    t.hidden_size, t.num_attention_heads
                ),
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(Error::config(
                "vision_config.hidden_size",
                format!(
                    "{} is not a multiple of num_attention_heads {}",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        if v.image_size < v.patch_size {
            return Err(Error::config(
                "vision_config.image_size",
                format!(
                    "{} is smaller than patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        Ok(())
    }

    /// Parse an HF `config.json` (merging legacy `*_config_dict` entries) and validate it.
    pub fn from_json_str(s: &str, path: &Path) -> Result<Self> {
        let mut v: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| Error::format(path, Some(e.line()), e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::format(path, None, "not a JSON object"))?;
        if let Some(mt) = obj.get("model_type").and_then(|m| m.as_str()) {
            if mt != "clip" {
                return Err(Error::format(
                    path,
                    None,
                    format!("model_type is `{mt}`, expected `clip`"),
                ));
            }
        }
        for side in ["text", "vision"] {
            let legacy = obj.remove(&format!("{side}_config_dict"));
            if let Some(serde_json::Value::Object(d)) = legacy {
                let key = format!("{side}_config");
                let entry = obj.entry(key).or_insert_with(|| serde_json::json!({}));
                if entry.is_null() {
                    *entry = serde_json::json!({});
                }
                if let Some(e) = entry.as_object_mut() {
                    for (k, val) in d {
                        e.insert(k, val);
                    }
                }
            }
            // Nulls mean "default" in HF configs.
            if let Some(serde_json::Value::Object(e)) = obj.get_mut(&format!("{side}_config")) {
                e.retain(|_, v| !v.is_null());
            }
        }
        obj.retain(|_, v| !v.is_null());
        let cfg: ClipConfig =
            serde_json::from_value(v).map_err(|e| Error::format(path, None, e.to_string()))?;
        cfg.validate()
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        Ok(cfg)
    }

    /// Read `config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&s, path)
    }

    /// The `config.json` HF transformers loads as a `CLIPModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut text = serde_json::to_value(&self.text_config).unwrap_or_default();
        let mut vision = serde_json::to_value(&self.vision_config).unwrap_or_default();
        if let Some(t) = text.as_object_mut() {
            t.insert("model_type".into(), "clip_text_model".into());
            t.insert("projection_dim".into(), self.projection_dim.into());
        }
        if let Some(v) = vision.as_object_mut() {
            v.insert("model_type".into(), "clip_vision_model".into());
            v.insert("projection_dim".into(), self.projection_dim.into());
        }
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "text_config": text,
            "vision_config": vision,
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "torch_dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_style_config_with_legacy_dicts() {
        let s = r#"{"model_type":"clip","projection_dim":512,
            "text_config":{"hidden_act":"quick_gelu","eos_token_id":2,"bos_token_id":null},
            "text_config_dict":{"hidden_size":512,"eos_token_id":49407},
            "vision_config":{"patch_size":16,"hidden_act":"gelu"}}"#;
        let c = ClipConfig::from_json_str(s, Path::new("config.json")).unwrap();
        assert_eq!(c.text_config.eos_token_id, 49407);
        assert_eq!(c.text_config.bos_token_id, Some(49406));
        assert_eq!(c.vision_config.patch_size, 16);
        assert_eq!(c.vision_config.hidden_act, Activation::Gelu);
        let back = ClipConfig::from_json_str(&c.to_hf_json().to_string(), Path::new("x")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_config_names_file_and_key() {
        let e = ClipConfig::from_json_str(
            r#"{"vision_config":{"hidden_size":30}}"#,
            Path::new("m/config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("vision_config.hidden_size"),
            "{e}"
        );
        let e = ClipConfig::from_json_str(
            r#"{"text_config":{"hidden_act":"swish"}}"#,
            Path::new("c.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.json") && e.contains("swish"), "{e}");
    }
}
