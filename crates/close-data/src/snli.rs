//! SNLI (`snli_1.0_*.jsonl`) and SNLI-VE (`snli_ve_*.jsonl`) in their official JSONL formats.
//! Pairs whose `gold_label` is `-` (no annotator majority) are left out and counted in
//! [`LoadReport::filtered`], as every SNLI user does.

use std::path::Path;

use serde::{Deserialize, Serialize};

use close_core::Result;

use crate::load::{parse_jsonl, FlexId, LoadOptions, LoadReport};

/// The three entailment labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Entailment,
    Neutral,
    Contradiction,
}

impl Label {
    pub const ALL: [Label; 3] = [Label::Entailment, Label::Neutral, Label::Contradiction];

    /// The label word (`entailment`, `neutral`, `contradiction`), also the CLOSE target.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Entailment => "entailment",
            Label::Neutral => "neutral",
            Label::Contradiction => "contradiction",
        }
    }

    /// Parse a label word (case-insensitive, surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Label> {
        match s.trim().to_ascii_lowercase().as_str() {
            "entailment" => Some(Label::Entailment),
            "neutral" => Some(Label::Neutral),
            "contradiction" => Some(Label::Contradiction),
            _ => None,
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an SNLI / SNLI-VE jsonl file as stored (extra keys are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnliRecord {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotator_labels: Vec<String>,
    #[serde(rename = "captionID", default, skip_serializing_if = "Option::is_none")]
    pub caption_id: Option<String>,
    pub gold_label: String,
    #[serde(rename = "pairID")]
    pub pair_id: String,
    pub sentence1: String,
    pub sentence2: String,
    /// SNLI-VE only: the Flickr30k image id (the premise image). A string in the official
    /// files; numbers are accepted.
    #[serde(
        rename = "Flickr30K_ID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub flickr30k_id: Option<FlexId>,
}

/// A usable SNLI pair.
#[derive(Debug, Clone, PartialEq)]
pub struct SnliPair {
    pub pair_id: String,
    pub premise: String,
    pub hypothesis: String,
    pub label: Label,
}

/// A usable SNLI-VE pair: premise image, premise caption, hypothesis, label.
#[derive(Debug, Clone, PartialEq)]
pub struct SnliVePair {
    pub pair_id: String,
    /// `Flickr30K_ID` (the image id; in the shapes world the COCO-style image id).
    pub image_id: String,
    /// `sentence1`: a caption of the image (CLOSE's text stand-in).
    pub premise: String,
    pub hypothesis: String,
    pub label: Label,
}

fn check(
    r: &SnliRecord,
    n: usize,
    report: &mut LoadReport,
) -> std::result::Result<Option<Label>, String> {
    if r.gold_label.trim() == "-" {
        report.filter(
            Some(n),
            format!("pairID {}: no gold label (`-`)", r.pair_id),
        );
        return Ok(None);
    }
    let label = Label::parse(&r.gold_label).ok_or_else(|| {
        format!(
            "pairID {}: unknown gold_label `{}`",
            r.pair_id, r.gold_label
        )
    })?;
    if r.sentence1.trim().is_empty() || r.sentence2.trim().is_empty() {
        return Err(format!(
            "pairID {}: empty sentence1 or sentence2",
            r.pair_id
        ));
    }
    Ok(Some(label))
}

/// Load an SNLI jsonl file.
pub fn load_snli(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<SnliPair>, LoadReport)> {
    parse_jsonl::<SnliRecord, _>(path.as_ref(), opts, |r, n, rep| {
        Ok(check(&r, n, rep)?.map(|label| SnliPair {
            pair_id: r.pair_id,
            premise: r.sentence1,
            hypothesis: r.sentence2,
            label,
        }))
    })
}

/// Load an SNLI-VE jsonl file (`Flickr30K_ID` is required).
pub fn load_snli_ve(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<SnliVePair>, LoadReport)> {
    parse_jsonl::<SnliRecord, _>(path.as_ref(), opts, |r, n, rep| {
        let Some(label) = check(&r, n, rep)? else {
            return Ok(None);
        };
        let image_id = r
            .flickr30k_id
            .ok_or_else(|| format!("pairID {}: missing `Flickr30K_ID`", r.pair_id))?;
        Ok(Some(SnliVePair {
            pair_id: r.pair_id,
            image_id: image_id.0,
            premise: r.sentence1,
            hypothesis: r.sentence2,
            label,
        }))
    })
}

/// Write records as jsonl atomically (one compact JSON object per line).
pub fn save_snli_jsonl(path: impl AsRef<Path>, records: &[SnliRecord]) -> Result<()> {
    let mut file = close_core::io::JsonLinesFile::create(path)?;
    for r in records {
        file.push(r)?;
    }
    file.finish()
}
