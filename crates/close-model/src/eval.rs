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
    /// Each item's score on `primary`'s scale, in item order: an image's CIDEr, a question's
    /// VQA accuracy, 100 or 0 for an entailment pair. `primary` is their mean (VQA's up to
    /// its rounding); two runs on the same items are compared item by item with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<f64>,
}

impl Metrics {
    /// The same metrics without the per-item scores (for per-epoch records).
    pub fn summary(&self) -> Self {
        Self {
            items: Vec::new(),
            ..self.clone()
        }
    }
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
    let (primary, name, scores, items) = match task.metric() {
        MetricKind::Caption => {
            let refs = examples.iter().map(|e| e.references.clone());
            let s = score_captions(refs, preds.iter().map(|p| p.text.as_str()))?;
            let mut j = s.to_json();
            let items: Vec<f64> = s.per_image.values().map(|i| i.cider).collect();
            if let Some(se) = mean_stderr(&items) {
                j["CIDEr_stderr"] = se.into();
            }
            (s.cider, "CIDEr", j, items)
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
                .map(|(i, p)| (i as u64, answer_of(task, &p.text).to_string()))
                .collect();
            let s = close_metrics::vqa::evaluate(&qs, &p)?;
            let mut j = s.to_json();
            if task == Task::EvqaExplain {
                let e = score_explanations(examples, preds)?;
                j["explanation"] = e.to_json();
            }
            let items = s.per_question.values().copied().collect();
            (s.overall, "vqa_accuracy", j, items)
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
            let items = s.per_item.iter().map(|&c| if c { 100.0 } else { 0.0 });
            (100.0 * s.accuracy, "accuracy", j, items.collect())
        }
    };
    Ok(Metrics {
        task,
        primary,
        primary_name: name.into(),
        scores,
        count: examples.len(),
        items,
    })
}

/// The answer part of a prediction (all of it, but for `evqa-explain`).
fn answer_of(task: Task, text: &str) -> &str {
    match task {
        Task::EvqaExplain => crate::task::split_explained(text).0,
        _ => text,
    }
}

/// Caption metrics of the explanation parts of `evqa-explain` predictions.
fn score_explanations(
    examples: &[EvalExample],
    preds: &[Prediction],
) -> Result<close_metrics::caption::CaptionScores> {
    let refs = examples.iter().map(|e| e.explanations.clone());
    let hyps = preds
        .iter()
        .map(|p| crate::task::split_explained(&p.text).1);
    score_captions(refs, hyps)
}

/// Standard error of the mean of `values` (per-item scores): their sample standard deviation
/// over √n. The corpus CIDEr is the mean of the images' CIDEr, so this is its error. None
/// for fewer than two values.
pub fn mean_stderr(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let ss: f64 = values.iter().map(|c| (c - mean).powi(2)).sum();
    Some((ss / (n - 1) as f64).sqrt() / (n as f64).sqrt())
}

/// Caption metrics of hypotheses against references, items keyed by their position.
fn score_captions<'a>(
    refs: impl Iterator<Item = Vec<String>>,
    hyps: impl Iterator<Item = &'a str>,
) -> Result<close_metrics::caption::CaptionScores> {
    let refs: BTreeMap<u64, Vec<String>> = (0u64..).zip(refs).collect();
    let hyps: BTreeMap<u64, String> = (0u64..).zip(hyps.map(str::to_string)).collect();
    close_metrics::caption::score(&refs, &hyps)
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
                .map(|p| {
                    let mut j = serde_json::json!({"question_id": id_value(&p.id), "answer": answer_of(task, &p.text)});
                    if task == Task::EvqaExplain {
                        j["explanation"] = crate::task::split_explained(&p.text).1.into();
                    }
                    j
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(answer: &str, why: &str) -> EvalExample {
        EvalExample {
            id: "1".into(),
            image: "1".into(),
            input_text: Some("is there a circle?".into()),
            references: vec![answer.to_string(); 10],
            answer_type: Some("yes/no".into()),
            question_type: Some("exists".into()),
            explanations: vec![why.to_string()],
        }
    }

    fn pred(text: &str) -> Prediction {
        Prediction {
            id: "1".into(),
            image: "1".into(),
            text: text.into(),
            logprob: 0.0,
        }
    }

    #[test]
    fn caption_scores_carry_the_standard_error_of_their_mean_cider() {
        let refs = [
            "a red circle.",
            "a blue star above a green square.",
            "two gray crosses.",
        ];
        let hyps = ["a red circle.", "a blue star.", "a brown diamond."];
        let ex: Vec<EvalExample> = refs
            .iter()
            .map(|r| EvalExample {
                references: vec![r.to_string()],
                question_type: None,
                answer_type: None,
                input_text: None,
                ..item("", "")
            })
            .collect();
        let preds: Vec<Prediction> = hyps.iter().map(|h| pred(h)).collect();
        let m = score(Task::SCap, &ex, &preds).unwrap();
        let per = close_metrics::caption::score(
            &(0u64..).zip(refs.map(|r| vec![r.to_string()])).collect(),
            &(0u64..).zip(hyps.map(str::to_string)).collect(),
        )
        .unwrap();
        let c: Vec<f64> = per.per_image.values().map(|i| i.cider).collect();
        let mean = c.iter().sum::<f64>() / 3.0;
        assert!(
            (mean - m.primary).abs() < 1e-12,
            "CIDEr is the images' mean"
        );
        assert_eq!(
            m.items, c,
            "the per-item scores are the images' CIDEr, in item order"
        );
        let var = c.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 2.0;
        let se = m.scores["CIDEr_stderr"].as_f64().unwrap();
        assert!((se - (var / 3.0).sqrt()).abs() < 1e-12 && se > 0.0, "{se}");
    }

    #[test]
    fn an_explained_answer_is_scored_by_its_answer_and_its_explanation_apart() {
        let ex = vec![
            item("yes", "a red circle above a blue star."),
            item("no", "a green square in the center."),
        ];
        let right = [
            pred("yes because a red circle above a blue star."),
            pred("no because a green square in the center."),
        ];
        let m = score(Task::EvqaExplain, &ex, &right).unwrap();
        assert_eq!(m.primary, 100.0);
        let cider = |m: &Metrics| m.scores["explanation"]["CIDEr"].as_f64().unwrap();
        assert!(cider(&m) > 0.0);
        // Right answers, explanations swapped: the answer score stays, the explanation's
        // falls; a bare answer has no explanation at all.
        let swapped = [
            pred("yes because a green square in the center."),
            pred("no"),
        ];
        let s = score(Task::EvqaExplain, &ex, &swapped).unwrap();
        assert_eq!(s.primary, 100.0);
        assert_eq!(s.items, [100.0, 100.0]);
        assert!(
            cider(&s) < cider(&m) / 2.0,
            "{} vs {}",
            cider(&s),
            cider(&m)
        );
        // As plain VQA the whole text is the answer, so none is right.
        assert_eq!(score(Task::Evqa, &ex, &right).unwrap().primary, 0.0);
        let one_right = [pred("yes"), pred("yes")];
        assert_eq!(
            score(Task::Evqa, &ex, &one_right).unwrap().items,
            [100.0, 0.0]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = write_results(Task::EvqaExplain, dir.path(), &ex, &right).unwrap();
        let rows: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(rows[0]["answer"], "yes");
        assert_eq!(rows[0]["explanation"], "a red circle above a blue star.");
    }

    #[test]
    fn entailment_items_are_100_when_right_and_stay_out_of_epoch_records() {
        let ex: Vec<EvalExample> = ["entailment", "neutral", "contradiction"]
            .iter()
            .map(|l| EvalExample {
                references: vec![l.to_string()],
                ..item("", "")
            })
            .collect();
        let preds = [
            pred("entailment"),
            pred("contradiction"),
            pred("contradiction"),
        ];
        let m = score(Task::Ve, &ex, &preds).unwrap();
        assert_eq!(m.items, [100.0, 0.0, 100.0]);
        assert!((m.primary - 200.0 / 3.0).abs() < 1e-9);
        let json = serde_json::to_value(m.summary()).unwrap();
        assert!(json.get("items").is_none(), "{json}");
        let back: Metrics = serde_json::from_value(json).unwrap();
        assert!(back.items.is_empty());
    }
}
