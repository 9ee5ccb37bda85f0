//! Evaluation on images: batched generation from CLIP image vectors, the task metric
//! (close-metrics: pycocoevalcap-identical caption scores, the official VQA accuracy,
//! entailment accuracy) and the standard results files:
//! COCO results `[{image_id, caption}]`, VQA results `[{question_id, answer}]`, and SNLI-VE
//! jsonl lines with `predicted_label`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use close_core::progress::Progress;
use close_core::{io, Error, Result};
use close_t5::GenerateConfig;

use crate::embeddings::{lookup, stack_rows, Embeddings};
use crate::model::CloseModel;
use crate::run::{Beam, TextCodec};
use crate::task::{EvalExample, MetricKind, Task};

/// The prediction for one evaluation item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub image: String,
    pub text: String,
    pub logprob: f32,
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub task: Task,
    /// The selection metric: CIDEr (captioning, pycocoevalcap scale), VQA accuracy (0–100)
    /// or entailment accuracy (0–100).
    pub primary: f64,
    /// Name of `primary` (`CIDEr`, `vqa_accuracy`, `accuracy`).
    pub primary_name: String,
    /// Every score, in the scorers' own JSON shapes (`{"Bleu_1":…,"CIDEr":…}`,
    /// `{"overall":…,"perAnswerType":…,"perQuestionType":…}`, `{"accuracy":…,…}`).
    pub scores: serde_json::Value,
    pub count: usize,
}

/// A model ready to be evaluated: what [`predict_examples`] and [`evaluate_examples`] need
/// besides the examples.
#[derive(Clone, Copy)]
pub struct Evaluator<'a> {
    pub task: Task,
    pub model: &'a CloseModel,
    pub codec: &'a TextCodec,
    /// Truncation of the input text (question, hypothesis, article).
    pub max_input_tokens: usize,
    /// Examples decoded at a time.
    pub batch_size: usize,
}

/// Generate for `examples` from their image vectors. Batched; progress per batch.
pub fn predict_examples(
    ev: &Evaluator,
    examples: &[EvalExample],
    images: &dyn Embeddings,
    gen: &GenerateConfig,
    progress: &dyn Progress,
) -> Result<Vec<Prediction>> {
    let Evaluator {
        model,
        codec,
        max_input_tokens,
        batch_size,
        ..
    } = *ev;
    let dev: &Device = model.device();
    let dim = model.config().clip_dim;
    if images.dim() != dim {
        return Err(Error::Shape {
            what: "image embedding cache".into(),
            expected: vec![dim],
            got: vec![images.dim()],
        });
    }
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let rows = chunk
            .iter()
            .map(|e| lookup(images, "image", &e.image).map(|v| v.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let clip = stack_rows(&rows, dim, dev)?;
        let input = if chunk.iter().any(|e| e.input_text.is_some()) {
            let seqs = chunk
                .iter()
                .map(|e| codec.encode(e.input_text.as_deref().unwrap_or(""), max_input_tokens))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
            Some(codec.batch(&refs, dev)?)
        } else {
            None
        };
        let hyps = model.generate(&clip, input.as_ref(), gen)?;
        for (e, hs) in chunk.iter().zip(hyps) {
            let best = hs.into_iter().next();
            let (text, logprob) = match best {
                Some(h) => (codec.decode(&h.tokens)?, h.logprob),
                None => (String::new(), f32::NEG_INFINITY),
            };
            out.push(Prediction {
                id: e.id.clone(),
                image: e.image.clone(),
                text,
                logprob,
            });
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Score predictions against the examples' references with the task's metric.
pub fn score(task: Task, examples: &[EvalExample], preds: &[Prediction]) -> Result<Metrics> {
    if examples.len() != preds.len() {
        return Err(Error::invalid(format!(
            "{} predictions for {} examples",
            preds.len(),
            examples.len()
        )));
    }
    if examples.is_empty() {
        return Err(Error::invalid("nothing to evaluate"));
    }
    // Items are keyed by position: ids need not be numeric or unique across sources.
    let (primary, name, scores) = match task.metric() {
        MetricKind::Caption => {
            let refs: BTreeMap<u64, Vec<String>> = examples
                .iter()
                .enumerate()
                .map(|(i, e)| (i as u64, e.references.clone()))
                .collect();
            let hyps: BTreeMap<u64, String> = preds
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64, p.text.clone()))
                .collect();
            let s = close_metrics::caption::score(&refs, &hyps)?;
            (s.cider, "CIDEr", s.to_json())
        }
        MetricKind::Vqa => {
            let qs: Vec<close_metrics::vqa::VqaQuestion> = examples
                .iter()
                .enumerate()
                .map(|(i, e)| close_metrics::vqa::VqaQuestion {
                    question_id: i as u64,
                    question_type: e.question_type.clone().unwrap_or_default(),
                    answer_type: e.answer_type.clone().unwrap_or_default(),
                    answers: e
                        .references
                        .iter()
                        .enumerate()
                        .map(|(k, a)| close_metrics::vqa::GtAnswer::new(a.clone(), k as u64 + 1))
                        .collect(),
                })
                .collect();
            let p: HashMap<u64, String> = preds
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64, p.text.clone()))
                .collect();
            let s = close_metrics::vqa::evaluate(&qs, &p)?;
            (s.overall, "vqa_accuracy", s.to_json())
        }
        MetricKind::Entailment => {
            let pairs = examples.iter().zip(preds).map(|(e, p)| {
                (
                    e.references.first().map(|s| s.as_str()).unwrap_or(""),
                    p.text.as_str(),
                )
            });
            let s = close_metrics::entailment::evaluate_pairs(pairs)?;
            let mut j = s.to_json();
            if let serde_json::Value::Object(o) = &mut j {
                o.insert("accuracy".into(), (100.0 * s.accuracy).into());
            }
            (100.0 * s.accuracy, "accuracy", j)
        }
    };
    Ok(Metrics {
        task,
        primary,
        primary_name: name.into(),
        scores,
        count: examples.len(),
    })
}

fn id_value(id: &str) -> serde_json::Value {
    id.parse::<u64>()
        .map(serde_json::Value::from)
        .unwrap_or_else(|_| serde_json::Value::from(id))
}

/// Write the standard results file of `task` into `dir` and return its path:
/// `captions_results.json`, `vqa_results.json` or `ve_results.jsonl`.
pub fn write_results(
    task: Task,
    dir: &Path,
    examples: &[EvalExample],
    preds: &[Prediction],
) -> Result<std::path::PathBuf> {
    match task.metric() {
        MetricKind::Caption => {
            let v: Vec<serde_json::Value> = preds
                .iter()
                .map(|p| serde_json::json!({"image_id": id_value(&p.id), "caption": p.text}))
                .collect();
            let path = dir.join("captions_results.json");
            io::write_json_atomic(&path, &v)?;
            Ok(path)
        }
        MetricKind::Vqa => {
            let v: Vec<serde_json::Value> = preds
                .iter()
                .map(|p| serde_json::json!({"question_id": id_value(&p.id), "answer": p.text}))
                .collect();
            let path = dir.join("vqa_results.json");
            io::write_json_atomic(&path, &v)?;
            Ok(path)
        }
        MetricKind::Entailment => {
            let mut s = String::new();
            for (e, p) in examples.iter().zip(preds) {
                let line = serde_json::json!({
                    "pairID": p.id,
                    "Flickr30K_ID": e.image,
                    "sentence2": e.input_text,
                    "gold_label": e.references.first(),
                    "predicted_label": p.text,
                });
                s.push_str(&line.to_string());
                s.push('\n');
            }
            let path = dir.join("ve_results.jsonl");
            io::write_atomic(&path, s.as_bytes())?;
            Ok(path)
        }
    }
}

/// Predict, score and (when `out_dir` is given) write the results file, the predictions
/// with log-probs and `metrics.json` there.
pub fn evaluate_examples(
    ev: &Evaluator,
    examples: &[EvalExample],
    (images, gen): (&dyn Embeddings, &GenerateConfig),
    out_dir: Option<&Path>,
    progress: &dyn Progress,
) -> Result<(Metrics, Vec<Prediction>)> {
    let task = ev.task;
    let preds = predict_examples(ev, examples, images, gen, progress)?;
    let metrics = score(task, examples, &preds)?;
    if let Some(dir) = out_dir {
        write_results(task, dir, examples, &preds)?;
        io::write_json_atomic(dir.join("predictions.json"), &preds)?;
        io::write_json_atomic(dir.join("metrics.json"), &metrics)?;
    }
    Ok((metrics, preds))
}

/// Convenience for serving: the beams of one prediction as JSON-friendly values.
pub fn beams_json(beams: &[Beam]) -> serde_json::Value {
    serde_json::to_value(beams).unwrap_or(serde_json::Value::Null)
}
