//! COCO formats: Karpathy splits (`dataset_coco.json`), COCO caption annotations
//! (`captions_*.json`) and COCO caption results (`[{image_id, caption}]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::load::write_json_compact as write_json_atomic;
use close_core::{Error, Result};

use crate::load::{
    parse_doc, parse_records, parse_records_with, read_text, LoadOptions, LoadReport,
};

/// One caption of a Karpathy image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KarpathySentence {
    pub raw: String,
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentid: Option<u64>,
}

/// One image of a Karpathy split file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KarpathyImage {
    /// `train`, `restval`, `val` or `test`.
    pub split: String,
    #[serde(default)]
    pub filepath: String,
    pub filename: String,
    pub imgid: u64,
    /// COCO image id (present in `dataset_coco.json`; used as `image_id` in results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cocoid: Option<u64>,
    pub sentences: Vec<KarpathySentence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentids: Vec<u64>,
}

impl KarpathyImage {
    /// The id used in COCO annotations / results: `cocoid` when present, else `imgid`.
    pub fn image_id(&self) -> u64 {
        self.cocoid.unwrap_or(self.imgid)
    }

    /// The image path relative to an image root: `filepath/filename`.
    pub fn rel_path(&self) -> PathBuf {
        Path::new(&self.filepath).join(&self.filename)
    }

    /// The caption strings.
    pub fn captions(&self) -> impl Iterator<Item = &str> {
        self.sentences.iter().map(|s| s.raw.as_str())
    }

    /// Whether this image belongs to `split` (`train` also matches `restval`, as in the
    /// Karpathy convention of training on train + restval).
    pub fn in_split(&self, split: &str) -> bool {
        self.split == split || (split == "train" && self.split == "restval")
    }
}

/// A Karpathy split file (`dataset_coco.json`, `dataset_flickr30k.json`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Karpathy {
    #[serde(default)]
    pub dataset: String,
    pub images: Vec<KarpathyImage>,
}

const KARPATHY_SPLITS: [&str; 4] = ["train", "restval", "val", "test"];

impl Karpathy {
    /// Load and validate a Karpathy json file; the first malformed image is an error naming
    /// the file and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_with(path, &LoadOptions::strict())?.0)
    }

    /// Load with explicit [`LoadOptions`]; malformed images (missing keys, no sentences,
    /// unknown split, empty caption) are errors or skipped and reported.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        #[derive(Deserialize)]
        struct Doc<'a> {
            #[serde(default)]
            dataset: String,
            #[serde(borrow)]
            images: Vec<&'a RawValue>,
        }
        let path = path.as_ref();
        let text = read_text(path)?;
        let doc: Doc = parse_doc(path, &text)?;
        let mut report = LoadReport::new(path);
        // Image ids key the embedding caches and results: a repeated one would silently
        // stand for two images.
        let mut first_of = std::collections::HashMap::new();
        let parsed: Vec<KarpathyImage> = parse_records_with(
            &text,
            &doc.images,
            "images",
            opts,
            &mut report,
            |i, im: &KarpathyImage| {
                if let Some(j) = first_of.get(&im.image_id()) {
                    Err(format!(
                        "{}: duplicate image id {} (cocoid, else imgid; first used by images[{j}])",
                        im.filename,
                        im.image_id()
                    ))
                } else if im.sentences.is_empty() {
                    Err(format!("{} has no sentences", im.filename))
                } else if !KARPATHY_SPLITS.contains(&im.split.as_str()) {
                    Err(format!("{}: unknown split `{}`", im.filename, im.split))
                } else if im.sentences.iter().any(|s| s.raw.trim().is_empty()) {
                    Err(format!("{} has an empty sentence", im.filename))
                } else {
                    first_of.insert(im.image_id(), i);
                    Ok(())
                }
            },
        )?;
        report.loaded = parsed.len();
        Ok((
            Karpathy {
                dataset: doc.dataset,
                images: parsed,
            },
            report,
        ))
    }

    /// Images of one split (see [`KarpathyImage::in_split`]).
    pub fn split<'a>(&'a self, split: &'a str) -> impl Iterator<Item = &'a KarpathyImage> + 'a {
        self.images.iter().filter(move |im| im.in_split(split))
    }

    /// Captions per COCO image id (`cocoid`, else `imgid`), e.g. the text stand-in of an
    /// image for VQA training.
    pub fn captions_by_image(&self) -> BTreeMap<u64, Vec<String>> {
        self.images
            .iter()
            .map(|im| (im.image_id(), im.captions().map(str::to_string).collect()))
            .collect()
    }
}

/// An image entry of a COCO annotations file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    #[serde(default)]
    pub file_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// A caption annotation of a COCO annotations file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCaption {
    pub id: u64,
    pub image_id: u64,
    pub caption: String,
}

/// A COCO captions annotations file (`captions_train2014.json`, `captions_{split}.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CocoCaptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    #[serde(default)]
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoCaption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<serde_json::Value>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl CocoCaptions {
    /// Load strictly (see [`CocoCaptions::load_with`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_with(path, &LoadOptions::strict())?.0)
    }

    /// Load a COCO captions file; malformed annotations (missing keys, empty caption, an
    /// `image_id` not in `images` when `images` is given) are errors or skipped.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        #[derive(Deserialize)]
        struct Doc<'a> {
            #[serde(default)]
            info: Option<serde_json::Value>,
            #[serde(default, borrow)]
            images: Vec<&'a RawValue>,
            #[serde(borrow)]
            annotations: Vec<&'a RawValue>,
            #[serde(default)]
            licenses: Option<serde_json::Value>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
        }
        let path = path.as_ref();
        let text = read_text(path)?;
        let doc: Doc = parse_doc(path, &text)?;
        let mut report = LoadReport::new(path);
        let images: Vec<CocoImage> =
            parse_records(&text, &doc.images, "images", opts, &mut report)?;
        let ids: std::collections::HashSet<u64> = images.iter().map(|i| i.id).collect();
        let annotations: Vec<CocoCaption> = parse_records_with(
            &text,
            &doc.annotations,
            "annotations",
            opts,
            &mut report,
            |_, a: &CocoCaption| {
                if a.caption.trim().is_empty() {
                    Err(format!("(id {}) empty caption", a.id))
                } else if !ids.is_empty() && !ids.contains(&a.image_id) {
                    Err(format!(
                        "(id {}) image_id {} is not in `images`",
                        a.id, a.image_id
                    ))
                } else {
                    Ok(())
                }
            },
        )?;
        report.loaded = annotations.len();
        Ok((
            CocoCaptions {
                info: doc.info,
                images,
                annotations,
                licenses: doc.licenses,
                kind: doc.kind,
            },
            report,
        ))
    }

    /// Reference captions per image id (in file order).
    pub fn by_image(&self) -> BTreeMap<u64, Vec<String>> {
        let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for im in &self.images {
            m.entry(im.id).or_default();
        }
        for a in &self.annotations {
            m.entry(a.image_id).or_default().push(a.caption.clone());
        }
        m
    }

    /// Write atomically as JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json_atomic(path, self)
    }
}

/// One generated caption in the COCO results format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    pub image_id: u64,
    pub caption: String,
}

/// Load a COCO results file (`[{image_id, caption}]`). Duplicate image ids are malformed.
pub fn load_coco_results(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<CocoResult>, LoadReport)> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let raws: Vec<&RawValue> = parse_doc(path, &text)?;
    let mut report = LoadReport::new(path);
    let mut seen = std::collections::HashSet::new();
    let out: Vec<CocoResult> = parse_records_with(
        &text,
        &raws,
        "results",
        opts,
        &mut report,
        |_, r: &CocoResult| {
            if seen.insert(r.image_id) {
                Ok(())
            } else {
                Err(format!("duplicate image_id {}", r.image_id))
            }
        },
    )?;
    report.loaded = out.len();
    Ok((out, report))
}

/// Write a COCO results file atomically.
pub fn save_coco_results(path: impl AsRef<Path>, results: &[CocoResult]) -> Result<()> {
    write_json_atomic(path, &results)
}

/// Check that every result's image id has references; returns the ids that do not.
pub fn unknown_result_ids(results: &[CocoResult], refs: &BTreeMap<u64, Vec<String>>) -> Vec<u64> {
    results
        .iter()
        .filter(|r| !refs.contains_key(&r.image_id))
        .map(|r| r.image_id)
        .collect()
}

/// Error for a results file whose ids are not in the references.
pub fn check_result_ids(
    path: &Path,
    results: &[CocoResult],
    refs: &BTreeMap<u64, Vec<String>>,
) -> Result<()> {
    let bad = unknown_result_ids(results, refs);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::format(
            path,
            None,
            format!(
                "{} image ids not in the references, e.g. {}",
                bad.len(),
                bad[0]
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_karpathy_and_reports_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dataset_coco.json");
        std::fs::write(&p, r#"{"dataset":"coco","images":[{"filepath":"val2014","sentids":[1],"filename":"a.jpg","imgid":0,"split":"test","sentences":[{"tokens":["a","cat"],"raw":"A cat.","imgid":0,"sentid":1}],"cocoid":42}]}"#).unwrap();
        let k = Karpathy::load(&p).unwrap();
        assert_eq!(k.images[0].image_id(), 42);
        assert_eq!(k.images[0].rel_path(), PathBuf::from("val2014/a.jpg"));
        assert_eq!(k.split("test").count(), 1);
        std::fs::write(&p, r#"{"images":[{"filename":"a.jpg"}]}"#).unwrap();
        let e = Karpathy::load(&p).unwrap_err().to_string();
        assert!(e.contains("dataset_coco.json"), "{e}");
    }

    #[test]
    fn a_repeated_image_id_is_an_error_or_a_reported_skip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dataset_coco.json");
        let im = |name: &str, imgid: u64| {
            format!(
                r#"{{"filename":"{name}","imgid":{imgid},"split":"train","cocoid":7,"sentences":[{{"raw":"a cat"}}]}}"#
            )
        };
        let doc = format!("{{\"images\":[\n{},\n{}]}}", im("a.jpg", 0), im("b.jpg", 1));
        std::fs::write(&p, doc).unwrap();
        let e = Karpathy::load(&p).unwrap_err().to_string();
        assert!(
            e.contains(":3:") && e.contains("b.jpg: duplicate image id 7"),
            "{e}"
        );
        let (k, report) = Karpathy::load_with(&p, &LoadOptions::skip_bad()).unwrap();
        assert_eq!(k.images.len(), 1);
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].reason.contains("first used by images[0]"));
    }
}
