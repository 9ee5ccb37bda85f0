//! Captioning evaluation as pycocoevalcap's `COCOEvalCap` runs it: PTB tokenization of the
//! raw references and hypotheses (two separate tokenizer runs, as in the original), then
//! BLEU-1..4, ROUGE-L, CIDEr-D and — only when the METEOR jar is given — METEOR. Scores
//! are on pycocoevalcap's 0–1 scale (CIDEr ×10 included) and keyed like it
//! (`Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr`).
//!
//! # Which images are scored; bad input
//! * The evaluated set is the set of images that have a hypothesis — the official example's
//!   `coco_eval.params['image_id'] = coco_result.getImgIds()`. CIDEr's document frequencies
//!   and `log N` use exactly this set. References of images without a hypothesis are ignored
//!   (the file loader logs how many; `require_all` turns this into an error).
//! * A hypothesis for an image without references: error (pycocotools' `loadRes` asserts
//!   the same).
//! * Two hypotheses for one image: error (pycocoevalcap asserts one hypothesis per image).
//! * Empty captions (hypothesis or reference) are scored as empty strings, as pycocoevalcap
//!   does (they tokenize to `""`).
//! * Malformed JSON, wrong types, missing keys: error naming the file (and line / entry).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use close_core::{Error, Result};
use serde::Deserialize;

use crate::{bleu, cider, meteor, ptb, rouge};

/// Scores of one image.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ImageScores {
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
    pub meteor: Option<f64>,
}

/// Corpus scores plus per-image scores.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionScores {
    /// BLEU-1..4 (corpus level).
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
    /// `None` when METEOR was not requested / not available.
    pub meteor: Option<f64>,
    pub per_image: BTreeMap<u64, ImageScores>,
}

impl CaptionScores {
    /// `{"Bleu_1":…,"Bleu_2":…,"Bleu_3":…,"Bleu_4":…,["METEOR":…,]"ROUGE_L":…,"CIDEr":…}`.
    pub fn to_json(&self) -> serde_json::Value {
        metric_map(&self.bleu, self.meteor, self.rouge_l, self.cider, None)
    }

    /// pycocoevalcap's `evalImgs`: `[{"image_id":…,"Bleu_1":…,…}, …]` in image-id order.
    pub fn per_image_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.per_image
                .iter()
                .map(|(id, s)| metric_map(&s.bleu, s.meteor, s.rouge_l, s.cider, Some(*id)))
                .collect(),
        )
    }
}

fn metric_map(b: &[f64; 4], m: Option<f64>, r: f64, c: f64, id: Option<u64>) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if let Some(id) = id {
        o.insert("image_id".into(), id.into());
    }
    for (k, v) in b.iter().enumerate() {
        o.insert(format!("Bleu_{}", k + 1), (*v).into());
    }
    if let Some(m) = m {
        o.insert("METEOR".into(), m.into());
    }
    o.insert("ROUGE_L".into(), r.into());
    o.insert("CIDEr".into(), c.into());
    serde_json::Value::Object(o)
}

/// Options of [`score_with`].
#[derive(Clone, Debug, Default)]
pub struct ScoreOptions {
    /// Path of `meteor-1.5.jar` (needs `java` on PATH); `None`: no METEOR.
    pub meteor_jar: Option<PathBuf>,
    /// Error if some image with references has no hypothesis.
    pub require_all: bool,
}

/// BLEU/ROUGE-L/CIDEr-D of raw hypotheses against raw references (PTB tokenization inside).
/// Scores the images of `hyps`; each must have at least one reference.
pub fn score(
    refs: &BTreeMap<u64, Vec<String>>,
    hyps: &BTreeMap<u64, String>,
) -> Result<CaptionScores> {
    score_with(refs, hyps, &ScoreOptions::default())
}

/// [`score`] with METEOR / strictness options.
pub fn score_with(
    refs: &BTreeMap<u64, Vec<String>>,
    hyps: &BTreeMap<u64, String>,
    opts: &ScoreOptions,
) -> Result<CaptionScores> {
    if hyps.is_empty() {
        return Err(Error::invalid("captioning: no hypotheses to score"));
    }
    let mut missing = Vec::new();
    for id in hyps.keys() {
        match refs.get(id) {
            None => missing.push(*id),
            Some(r) if r.is_empty() => {
                return Err(Error::invalid(format!(
                    "captioning: image {id} has no reference captions"
                )))
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "captioning: {} hypothesis image id(s) have no references, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        )));
    }
    if opts.require_all {
        let unscored: Vec<u64> = refs
            .keys()
            .filter(|id| !hyps.contains_key(id))
            .copied()
            .collect();
        if !unscored.is_empty() {
            return Err(Error::invalid(format!(
                "captioning: {} image(s) with references have no hypothesis, e.g. {:?}",
                unscored.len(),
                &unscored[..unscored.len().min(5)]
            )));
        }
    }
    let ids: Vec<u64> = hyps.keys().copied().collect();
    // Two tokenizer runs, references then hypotheses, in image order (as pycocoevalcap).
    let flat_refs: Vec<&str> = ids
        .iter()
        .flat_map(|id| refs[id].iter().map(|s| s.as_str()))
        .collect();
    let tok_flat = ptb::tokenize(&flat_refs);
    let mut it = tok_flat.into_iter();
    let tok_refs: Vec<Vec<String>> = ids
        .iter()
        .map(|id| it.by_ref().take(refs[id].len()).collect())
        .collect();
    let raw_hyps: Vec<&str> = ids.iter().map(|id| hyps[id].as_str()).collect();
    let tok_hyps = ptb::tokenize(&raw_hyps);
    score_tokenized_with(&ids, &tok_refs, &tok_hyps, opts.meteor_jar.as_deref())
}

/// Scores of already tokenized captions (`refs[i]` belong to `hyps[i]`, image id `ids[i]`).
pub fn score_tokenized(
    ids: &[u64],
    refs: &[Vec<String>],
    hyps: &[String],
) -> Result<CaptionScores> {
    score_tokenized_with(ids, refs, hyps, None)
}

fn score_tokenized_with(
    ids: &[u64],
    refs: &[Vec<String>],
    hyps: &[String],
    meteor_jar: Option<&Path>,
) -> Result<CaptionScores> {
    if ids.len() != refs.len() || ids.len() != hyps.len() {
        return Err(Error::invalid(format!(
            "captioning: {} ids, {} reference lists, {} hypotheses",
            ids.len(),
            refs.len(),
            hyps.len()
        )));
    }
    if let Some(i) = refs.iter().position(|r| r.is_empty()) {
        return Err(Error::invalid(format!(
            "captioning: image {} has no reference captions",
            ids[i]
        )));
    }
    let ((b, r), c) = rayon::join(
        || rayon::join(|| bleu::bleu(refs, hyps), || rouge::rouge_l(refs, hyps)),
        || cider::cider_d(refs, hyps),
    );
    let m = match meteor_jar {
        Some(jar) => Some(meteor::meteor(jar, refs, hyps)?),
        None => None,
    };
    let per_image = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                *id,
                ImageScores {
                    bleu: b.per_image[i],
                    rouge_l: r.per_image[i],
                    cider: c.per_image[i],
                    meteor: m.as_ref().map(|(_, per)| per[i]),
                },
            )
        })
        .collect();
    Ok(CaptionScores {
        bleu: b.corpus,
        rouge_l: r.corpus,
        cider: c.corpus,
        meteor: m.map(|(s, _)| s),
        per_image,
    })
}

#[derive(Deserialize)]
struct CocoAnnFile {
    #[serde(default)]
    images: Option<Vec<CocoImage>>,
    annotations: Vec<CocoAnn>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
}

#[derive(Deserialize)]
struct CocoAnn {
    image_id: u64,
    caption: String,
}

#[derive(Deserialize)]
struct CocoResult {
    image_id: u64,
    caption: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, Some(e.line()), e.to_string()))
}

/// References from a COCO captions annotation file (`captions_val2014.json` layout:
/// `{"images":[{"id"}], "annotations":[{"image_id","caption"}]}`), in file order per image.
/// Images listed in `images` without any caption get an empty list (an error if scored).
pub fn load_coco_annotations(path: impl AsRef<Path>) -> Result<BTreeMap<u64, Vec<String>>> {
    let path = path.as_ref();
    let f: CocoAnnFile = read_json(path)?;
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for img in f.images.unwrap_or_default() {
        out.entry(img.id).or_default();
    }
    for a in f.annotations {
        out.entry(a.image_id).or_default().push(a.caption);
    }
    Ok(out)
}

/// Hypotheses from a COCO results file (`[{"image_id":…,"caption":…}, …]`). A repeated
/// `image_id` is an error naming the id and both entries.
pub fn load_coco_results(path: impl AsRef<Path>) -> Result<BTreeMap<u64, String>> {
    let path = path.as_ref();
    let v: Vec<CocoResult> = read_json(path)?;
    let mut out = BTreeMap::new();
    let mut first: std::collections::HashMap<u64, usize> = Default::default();
    for (i, r) in v.into_iter().enumerate() {
        if let Some(j) = first.get(&r.image_id) {
            return Err(Error::format(
                path,
                None,
                format!("image_id {} appears twice (entries {j} and {i}); pycocoevalcap requires exactly one caption per image", r.image_id),
            ));
        }
        first.insert(r.image_id, i);
        out.insert(r.image_id, r.caption);
    }
    Ok(out)
}

/// Score a COCO results file against a COCO annotation file (see the module docs for the
/// handling of missing / extra / duplicate ids).
pub fn evaluate_files(
    annotations: &Path,
    results: &Path,
    opts: &ScoreOptions,
) -> Result<CaptionScores> {
    let refs = load_coco_annotations(annotations)?;
    let hyps = load_coco_results(results)?;
    let extra: Vec<u64> = hyps
        .keys()
        .filter(|id| !refs.contains_key(id))
        .copied()
        .collect();
    if !extra.is_empty() {
        return Err(Error::format(
            results,
            None,
            format!(
                "{} image id(s) are not in {} (e.g. {:?}); results must correspond to the annotation set",
                extra.len(),
                annotations.display(),
                &extra[..extra.len().min(5)]
            ),
        ));
    }
    let with_refs: HashSet<u64> = refs
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(k, _)| *k)
        .collect();
    let unscored = with_refs.iter().filter(|id| !hyps.contains_key(id)).count();
    if unscored > 0 && !opts.require_all {
        tracing::warn!(
            "{unscored} of {} annotated images have no result and are not scored (as pycocoevalcap with params['image_id'] = results' image ids)",
            with_refs.len()
        );
    }
    let refs: BTreeMap<u64, Vec<String>> = refs
        .into_iter()
        .filter(|(_, r)| !r.is_empty() || opts.require_all)
        .collect();
    score_with(&refs, &hyps, opts)
}
