//! VQA v2 (questions, annotations, results) and VQA-E (explanations) in their official
//! formats, plus the join of questions with annotations and with the captions of each image
//! (the text stand-in CLOSE trains on).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::load::write_json_compact as write_json_atomic;
use close_core::{Error, Result};

use crate::coco::Karpathy;
use crate::load::{parse_doc, parse_records_with, raw_line, read_text, LoadOptions, LoadReport};

/// One question of `v2_OpenEnded_mscoco_*_questions.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaQuestion {
    pub question_id: u64,
    pub image_id: u64,
    pub question: String,
}

/// The questions file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VqaQuestions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    #[serde(default)]
    pub task_type: String,
    #[serde(default)]
    pub data_type: String,
    #[serde(default)]
    pub data_subtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<serde_json::Value>,
    pub questions: Vec<VqaQuestion>,
}

/// One of the (usually 10) human answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaAnswer {
    pub answer: String,
    #[serde(default = "default_confidence")]
    pub answer_confidence: String,
    #[serde(default)]
    pub answer_id: u32,
}

fn default_confidence() -> String {
    "yes".into()
}

/// One annotation of `v2_mscoco_*_annotations.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaAnnotation {
    pub question_id: u64,
    pub image_id: u64,
    #[serde(default)]
    pub question_type: String,
    /// `yes/no`, `number` or `other`.
    #[serde(default)]
    pub answer_type: String,
    pub multiple_choice_answer: String,
    pub answers: Vec<VqaAnswer>,
}

/// The annotations file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VqaAnnotations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    #[serde(default)]
    pub data_type: String,
    #[serde(default)]
    pub data_subtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<serde_json::Value>,
    pub annotations: Vec<VqaAnnotation>,
}

/// Load a VQA-style document: its header fields and its record array under `key`, each
/// record parsed and checked in file order.
fn load_doc_records<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    opts: &LoadOptions,
    check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
) -> Result<(
    serde_json::Map<String, serde_json::Value>,
    Vec<T>,
    LoadReport,
)> {
    let text = read_text(path)?;
    let mut report = LoadReport::new(path);
    let doc: HashMap<String, &RawValue> = parse_doc(path, &text)?;
    let arr = doc
        .get(key)
        .ok_or_else(|| Error::format(path, None, format!("missing key `{key}`")))?;
    let raws: Vec<&RawValue> = serde_json::from_str(arr.get()).map_err(|e| {
        Error::format(
            path,
            Some(raw_line(&text, arr)),
            format!("`{key}` is not an array: {e}"),
        )
    })?;
    let mut header = serde_json::Map::new();
    for (k, v) in &doc {
        if k != key {
            let v: serde_json::Value = serde_json::from_str(v.get())?;
            header.insert(k.clone(), v);
        }
    }
    let recs = parse_records_with(&text, &raws, key, opts, &mut report, check)?;
    Ok((header, recs, report))
}

/// Load a top-level JSON array file, each record parsed and checked in file order.
fn load_array<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    opts: &LoadOptions,
    check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
) -> Result<(Vec<T>, LoadReport)> {
    let text = read_text(path)?;
    let raws: Vec<&RawValue> = parse_doc(path, &text)?;
    let mut report = LoadReport::new(path);
    let out = parse_records_with(&text, &raws, key, opts, &mut report, check)?;
    Ok((out, report))
}

fn header_str(h: &serde_json::Map<String, serde_json::Value>, k: &str) -> String {
    h.get(k)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

impl VqaQuestions {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_with(path, &LoadOptions::strict())?.0)
    }

    /// Load a questions file; records with missing keys or an empty question are errors or
    /// skipped, per `opts`.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        let path = path.as_ref();
        let (h, questions, report) =
            load_doc_records(path, "questions", opts, |_, q: &VqaQuestion| {
                if q.question.trim().is_empty() {
                    Err(format!("(question_id {}) empty question", q.question_id))
                } else {
                    Ok(())
                }
            })?;
        Ok((
            VqaQuestions {
                info: h.get("info").cloned(),
                task_type: header_str(&h, "task_type"),
                data_type: header_str(&h, "data_type"),
                data_subtype: header_str(&h, "data_subtype"),
                license: h.get("license").cloned(),
                questions,
            },
            report,
        ))
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json_atomic(path, self)
    }
}

impl VqaAnnotations {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_with(path, &LoadOptions::strict())?.0)
    }

    /// Load an annotations file; records with missing keys or without answers are errors or
    /// skipped, per `opts`.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        let path = path.as_ref();
        let (h, annotations, report) =
            load_doc_records(path, "annotations", opts, |_, a: &VqaAnnotation| {
                if a.answers.is_empty() {
                    Err(format!("(question_id {}) no answers", a.question_id))
                } else {
                    Ok(())
                }
            })?;
        Ok((
            VqaAnnotations {
                info: h.get("info").cloned(),
                data_type: header_str(&h, "data_type"),
                data_subtype: header_str(&h, "data_subtype"),
                license: h.get("license").cloned(),
                annotations,
            },
            report,
        ))
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json_atomic(path, self)
    }
}

impl VqaAnnotation {
    /// The answer strings (one per annotator).
    pub fn answer_strings(&self) -> Vec<&str> {
        self.answers.iter().map(|a| a.answer.as_str()).collect()
    }

    /// Training targets as in CLOSE: the most common answer first, then every other answer
    /// whose count equals the top count or is at least 3 (ties in first-seen order).
    pub fn training_targets(&self) -> Vec<String> {
        training_targets(self.answers.iter().map(|a| a.answer.as_str()))
    }
}

/// CLOSE's answer-target rule over a list of annotator answers.
pub fn training_targets<'a>(answers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in answers {
        let c = counts.entry(a).or_insert(0);
        if *c == 0 {
            order.push(a);
        }
        *c += 1;
    }
    let mut ranked: Vec<(&str, usize)> = order.iter().map(|a| (*a, counts[a])).collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1)); // stable: ties keep first-seen order
    let top = ranked.first().map(|r| r.1).unwrap_or(0);
    ranked
        .into_iter()
        .enumerate()
        .filter(|(i, (_, c))| *i == 0 || *c == top || *c >= 3)
        .map(|(_, (a, _))| a.to_string())
        .collect()
}

/// A question joined with its annotation (if the split has annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct VqaExample {
    pub question: VqaQuestion,
    pub annotation: Option<VqaAnnotation>,
}

/// Load a questions file and (optionally) its annotations and join them by `question_id`.
/// A question whose annotation is missing (or an annotation whose `image_id` disagrees) is an
/// error or skipped per `opts`; the report is the questions file's.
pub fn load_vqa(
    questions: impl AsRef<Path>,
    annotations: Option<&Path>,
    opts: &LoadOptions,
) -> Result<(Vec<VqaExample>, LoadReport)> {
    let (qs, mut report) = VqaQuestions::load_with(questions.as_ref(), opts)?;
    let Some(apath) = annotations else {
        let n = qs.questions.len();
        report.loaded = n;
        return Ok((
            qs.questions
                .into_iter()
                .map(|q| VqaExample {
                    question: q,
                    annotation: None,
                })
                .collect(),
            report,
        ));
    };
    let (anns, arep) = VqaAnnotations::load_with(apath, opts)?;
    report.skipped.extend(arep.skipped);
    let mut by_q: HashMap<u64, VqaAnnotation> = anns
        .annotations
        .into_iter()
        .map(|a| (a.question_id, a))
        .collect();
    let mut out = Vec::with_capacity(qs.questions.len());
    for q in qs.questions {
        match by_q.remove(&q.question_id) {
            Some(a) if a.image_id == q.image_id => out.push(VqaExample {
                question: q,
                annotation: Some(a),
            }),
            Some(a) => report.bad(
                opts,
                None,
                format!(
                    "question_id {}: image_id {} in the questions but {} in {}",
                    q.question_id,
                    q.image_id,
                    a.image_id,
                    apath.display()
                ),
            )?,
            None => report.bad(
                opts,
                None,
                format!(
                    "question_id {} has no annotation in {}",
                    q.question_id,
                    apath.display()
                ),
            )?,
        }
    }
    report.loaded = out.len();
    Ok((out, report))
}

/// The captions of every image a set of VQA questions asks about, from a Karpathy file (the
/// text stand-in of CLOSE's VQA training: all captions of the image, later averaged in CLIP
/// space). Images without captions are an error naming the first missing id.
pub fn captions_for_questions(
    examples: &[VqaExample],
    karpathy: &Karpathy,
) -> Result<BTreeMap<u64, Vec<String>>> {
    let all = karpathy.captions_by_image();
    let mut out = BTreeMap::new();
    for ex in examples {
        let id = ex.question.image_id;
        if out.contains_key(&id) {
            continue;
        }
        match all.get(&id) {
            Some(c) => {
                out.insert(id, c.clone());
            }
            None => {
                return Err(Error::invalid(format!(
                    "image_id {id} (question_id {}) has no captions in the Karpathy file",
                    ex.question.question_id
                )))
            }
        }
    }
    Ok(out)
}

/// One answer in the VQA results format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaResult {
    pub question_id: u64,
    pub answer: String,
}

/// Load a VQA results file (`[{question_id, answer}]`); duplicate ids are malformed.
pub fn load_vqa_results(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<VqaResult>, LoadReport)> {
    let mut seen = std::collections::HashSet::new();
    load_array(path.as_ref(), "results", opts, |_, r: &VqaResult| {
        if seen.insert(r.question_id) {
            Ok(())
        } else {
            Err(format!("duplicate question_id {}", r.question_id))
        }
    })
}

/// Write a VQA results file atomically.
pub fn save_vqa_results(path: impl AsRef<Path>, results: &[VqaResult]) -> Result<()> {
    write_json_atomic(path, &results)
}

/// One VQA-E entry (`VQA-E_{train,val}_set.json`: a JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaeEntry {
    /// COCO image id.
    pub img_id: u64,
    pub question: String,
    /// The annotator answers.
    pub answers: Vec<String>,
    pub multiple_choice_answer: String,
    #[serde(default)]
    pub question_type: String,
    /// Not in the official files (they rely on the VQA annotations); written by the shapes
    /// world.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_type: Option<String>,
    /// `[sentence, relevance score]`.
    pub explanation: (String, f64),
    /// Not in the official files; written by the shapes world to join with VQA v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<u64>,
}

/// Load a VQA-E file; entries with missing keys, no answers or an empty explanation are
/// errors or skipped.
pub fn load_vqae(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<VqaeEntry>, LoadReport)> {
    load_array(path.as_ref(), "entries", opts, |_, e: &VqaeEntry| {
        if e.answers.is_empty() {
            Err("no answers".into())
        } else if e.explanation.0.trim().is_empty() {
            Err("empty explanation".into())
        } else {
            Ok(())
        }
    })
}
