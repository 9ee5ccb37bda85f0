//! T5 tokenization with the `tokenizers` crate.
//!
//! Real T5 checkpoints ship an HF `tokenizer.json` (a SentencePiece Unigram model whose post
//! processor appends `</s>`): [`load`] reads it. For the built-in shapes world,
//! [`train_tokenizer`] trains a small byte-pair-encoding model on a text corpus with the T5
//! conventions (`<pad>` = 0, `</s>` = 1, `<unk>` = 2, Metaspace pre-tokenization, `</s>`
//! appended). BPE rather than Unigram: on small corpora the `tokenizers` Unigram trainer
//! stops far below the requested size (92–158 pieces of 400 on the shapes world) and splits
//! common words ("contradiction", "red") into characters; BPE fills the requested size and
//! keeps every frequent word whole.

use std::path::Path;

use close_core::{Error, Result};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{NormalizerWrapper, NFKC};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// The special tokens of T5, in id order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// Loads an HF `tokenizer.json`.
pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
        ));
    }
    Tokenizer::from_file(path)
        .map_err(|e| Error::format(path, None, format!("not a tokenizer.json: {e}")))
}

/// Saves `tok` as `tokenizer.json` (atomically).
pub fn save(tok: &Tokenizer, path: impl AsRef<Path>) -> Result<()> {
    let json = tok.to_string(true)?;
    close_core::io::write_atomic(path, json.as_bytes())
}

/// Trains a T5-style BPE tokenizer of at most `vocab_size` pieces on `lines`.
pub fn train_tokenizer<I, S>(lines: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Send,
{
    if vocab_size <= SPECIAL_TOKENS.len() {
        return Err(Error::config(
            "vocab_size",
            format!("{vocab_size} leaves no room beside the special tokens"),
        ));
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .filter(|s| !s.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return Err(Error::invalid(
            "train_tokenizer: the corpus has no non-empty line",
        ));
    }
    let model = BPE::builder()
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(NormalizerWrapper::NFKC(NFKC)))?;
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(Metaspace::new(
        '▁',
        PrependScheme::Always,
        true,
    ))));
    tok.with_decoder(Some(DecoderWrapper::Metaspace(Metaspace::new(
        '▁',
        PrependScheme::Always,
        true,
    ))));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    tok.train(&mut trainer, lines.into_iter())?;
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .try_pair("$A </s> $B </s>")
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .special_tokens(vec![("</s>", 1)])
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_post_processor(Some(PostProcessorWrapper::Template(post)));
    for (id, s) in SPECIAL_TOKENS.iter().enumerate() {
        if tok.token_to_id(s) != Some(id as u32) {
            return Err(Error::Tokenizer(format!(
                "special token {s} did not get id {id}"
            )));
        }
    }
    Ok(tok)
}

/// Token ids of `text`, with `</s>` appended by the post-processor.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, true)?.get_ids().to_vec())
}

/// Text of `ids`, special tokens skipped.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    Ok(tok.decode(ids, true)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let colors = ["red", "green", "blue", "yellow"];
        let shapes = ["circle", "square", "triangle"];
        let mut v = Vec::new();
        for c in colors {
            for s in shapes {
                v.push(format!("a {c} {s} on the left"));
                v.push(format!("two {c} {s}s next to a small {s}"));
            }
        }
        v
    }

    #[test]
    fn trains_with_t5_conventions_and_round_trips() {
        let tok = train_tokenizer(corpus(), 60).unwrap();
        assert_eq!(tok.token_to_id("<pad>"), Some(0));
        assert_eq!(tok.token_to_id("</s>"), Some(1));
        assert_eq!(tok.token_to_id("<unk>"), Some(2));
        let ids = encode(&tok, "a red circle on the left").unwrap();
        assert_eq!(*ids.last().unwrap(), 1);
        assert_eq!(decode(&tok, &ids).unwrap(), "a red circle on the left");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        save(&tok, &p).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(
            encode(&back, "two blue squares").unwrap(),
            encode(&tok, "two blue squares").unwrap()
        );
    }

    #[test]
    fn frequent_words_stay_whole() {
        // A corpus like the shapes world's VE text: a few hundred distinct words, the label
        // words frequent. The old Unigram trainer split "contradiction" into 9 pieces here.
        let mut lines = corpus();
        for i in 0..300 {
            lines.push(format!(
                "entailment neutral contradiction yes no w{i}x{}",
                i * 7
            ));
        }
        let tok = train_tokenizer(lines, 400).unwrap();
        assert!(
            tok.get_vocab_size(true) > 300,
            "{}",
            tok.get_vocab_size(true)
        );
        for w in ["contradiction", "entailment", "neutral", "red", "triangle"] {
            let ids = encode(&tok, w).unwrap();
            assert_eq!(
                ids.len(),
                2,
                "{w} → {:?}",
                tok.encode(w, true).unwrap().get_tokens()
            );
        }
        // Unseen characters map to <unk> instead of failing.
        let ids = encode(&tok, "a red ☃").unwrap();
        assert!(ids.contains(&2), "{ids:?}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(load(dir.path().join("missing.json"))
            .unwrap_err()
            .to_string()
            .contains("missing.json"));
    }
}
