//! Text side of CLIP: an HF `tokenizer.json` through the `tokenizers` crate, truncated to the
//! model's `max_position_embeddings` (the post-processor's `<|startoftext|>` / `<|endoftext|>`
//! are kept, as HF's `truncation=True`), padded to the longest row of a batch. Padding after
//! EOS never changes the pooled embedding (the text transformer is causal), so padding to
//! the batch's longest row equals HF's `padding="max_length"`.
//!
//! [`train_word_level`] builds a lowercase word-level tokenizer from a caption corpus for
//! CLIPs trained from scratch (the shapes world's vocabulary is a few hundred words).

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, ModelWrapper, Tokenizer, TruncationParams};

use close_core::{Error, Result};

/// Special tokens of tokenizers trained here, in id order (0..=3).
pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// A CLIP tokenizer: encodes texts into `[batch, seq]` u32 ids.
#[derive(Clone)]
pub struct ClipTokenizer {
    tok: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl ClipTokenizer {
    /// Wrap a tokenizer; `max_len` is the model's `max_position_embeddings`, `eos_id` the
    /// fallback pad id when the tokenizer declares none.
    pub fn new(mut tok: Tokenizer, max_len: usize, eos_id: u32) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::config("max_position_embeddings", "must be ≥ 2"));
        }
        let pad_id = tok
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tok.token_to_id(PAD))
            .or_else(|| tok.token_to_id(EOS))
            .unwrap_or(eos_id);
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self {
            tok,
            max_len,
            pad_id,
        })
    }

    /// Load an HF `tokenizer.json`.
    pub fn load(path: impl AsRef<Path>, max_len: usize, eos_id: u32) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let tok =
            Tokenizer::from_file(path).map_err(|e| Error::format(path, None, e.to_string()))?;
        Self::new(tok, max_len, eos_id)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Ids of one text (special tokens added, truncated). Empty / whitespace-only text is an
    /// error: it would embed as the bare start/end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(Error::invalid("empty text"));
        }
        let enc = self.tok.encode(text, true)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode and right-pad a batch to its longest row: `[batch, seq]` u32 on `device`.
    /// The error names the index of an empty text.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        self.pad(&self.encode_rows(texts)?, device)
    }

    /// Ids of each text, unpadded. The error names the index of an empty text.
    pub fn encode_rows<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.encode(t.as_ref())
                    .map_err(|e| Error::invalid(format!("text {i}: {e}")))
            })
            .collect()
    }

    /// Right-pad encoded rows into `[batch, seq]`.
    pub fn pad(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        crate::ragged::pad_rows(&rows, self.pad_id, device)
    }
}

/// Train a lowercase word-level tokenizer (`<pad>`=0, `<unk>`=1, `<|startoftext|>`=2,
/// `<|endoftext|>`=3, then words by frequency) on `texts`, wrapping every encoding as
/// `<|startoftext|> … <|endoftext|>`. Words seen fewer than `min_frequency` times map to
/// `<unk>`.
pub fn train_word_level<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    max_vocab: usize,
    min_frequency: u64,
) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = [PAD, UNK, BOS, EOS]
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let trainer = WordLevelTrainer::builder()
        .special_tokens(specials)
        .vocab_size(max_vocab)
        .min_frequency(min_frequency)
        .show_progress(false)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let model = WordLevel::builder()
        .unk_token(UNK.into())
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(ModelWrapper::WordLevel(model));
    tok.with_normalizer(Some(Lowercase))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let mut trainer = TrainerWrapper::WordLevelTrainer(trainer);
    tok.train(&mut trainer, texts)?;
    for (i, s) in [PAD, UNK, BOS, EOS].iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            return Err(Error::Tokenizer(format!(
                "special token {s} did not get id {i}"
            )));
        }
    }
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A {EOS}"))
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .special_tokens(vec![(BOS, 2u32), (EOS, 3u32)])
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// Read an HF `tokenizer.json` (errors name the file).
pub fn load_hf_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Tokenizer::from_file(path).map_err(|e| Error::format(path, None, e.to_string()))
}

/// The `tokenizer_config.json` that lets HF transformers load a trained `tokenizer.json`.
pub fn hf_tokenizer_config(max_len: usize) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
        "model_max_length": max_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_wraps_truncates_and_pads() -> Result<()> {
        let texts = [
            "A red circle.",
            "a blue square",
            "A red square left of a blue circle",
        ];
        let tok = train_word_level(texts.iter(), 100, 1)?;
        let ct = ClipTokenizer::new(tok, 5, 3)?;
        let ids = ct.encode("a red circle")?;
        assert_eq!(ids.len(), 5);
        assert_eq!((ids[0], ids[4]), (2, 3));
        let long = ct.encode("a red square left of a blue circle")?;
        assert_eq!(long.len(), 5);
        assert_eq!(long[4], 3, "EOS survives truncation");
        assert_eq!(ct.encode("purple")?, vec![2, 1, 3]);
        assert!(ct.encode("  ").is_err());
        let t = ct.encode_batch(&["red", "a red circle"], &Device::Cpu)?;
        assert_eq!(t.to_vec2::<u32>()?[0][3..], [0, 0]);
        let e = ct
            .encode_batch(&["red", ""], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("text 1"), "{e}");
        Ok(())
    }
}
