//! Visual-entailment (SNLI-VE) metrics: accuracy of the predicted label word, per-class
//! precision / recall / F1 and the confusion matrix. (The CLOSE reference has only a stub
//! here; this is the standard definition.)
//!
//! Predictions are compared after trimming and lower-casing. A prediction that is not one of
//! `entailment`, `neutral`, `contradiction` counts as wrong and lands in the confusion
//! matrix's `other` column. Gold lines labelled `-` (SNLI's "no consensus") are skipped and
//! counted in `skipped_gold`; any other label outside the three classes is an error.
//!
//! # Bad input
//! Missing predictions, predictions for unknown pairs and duplicate pair ids (in gold or
//! predictions) are errors naming the file and line.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use close_core::{Error, Result};
use serde_json::Value;

/// SNLI's gold label for pairs whose annotators did not agree: skipped and counted.
pub const NO_CONSENSUS: &str = "-";

/// The three SNLI-VE classes, in confusion-matrix order.
pub const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// Per-class precision / recall / F1 (0–1) and support (gold count).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Visual-entailment results.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EntailmentScores {
    /// Fraction of correct predictions (0–1).
    pub accuracy: f64,
    pub count: usize,
    pub per_class: BTreeMap<String, ClassScores>,
    /// `confusion[gold][predicted]`, gold in [`LABELS`] order, predicted in [`LABELS`] order
    /// plus a final `other` column.
    pub confusion: Vec<Vec<usize>>,
    /// Gold lines skipped because their label is not one of the three classes.
    pub skipped_gold: usize,
    /// Whether each scored pair (in input order, skipped gold lines left out) was right:
    /// the items behind `accuracy`, for paired comparisons of two runs.
    #[serde(skip)]
    pub per_item: Vec<bool>,
}

impl EntailmentScores {
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut m {
            o.insert("labels".into(), serde_json::json!(LABELS));
            o.insert(
                "confusion_columns".into(),
                serde_json::json!(["entailment", "neutral", "contradiction", "other"]),
            );
        }
        m
    }
}

fn class_of(s: &str) -> Option<usize> {
    let s = s.trim().to_lowercase();
    LABELS.iter().position(|l| *l == s)
}

/// Score `(gold, predicted)` label pairs.
pub fn evaluate_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<EntailmentScores> {
    let mut confusion = vec![vec![0usize; 4]; 3];
    let mut skipped = 0;
    let mut per_item = Vec::new();
    for (g, p) in pairs {
        let Some(gi) = class_of(g) else {
            skipped += 1;
            continue;
        };
        let pi = class_of(p).unwrap_or(3);
        confusion[gi][pi] += 1;
        per_item.push(gi == pi);
    }
    let (n, correct) = (per_item.len(), per_item.iter().filter(|&&c| c).count());
    if n == 0 {
        return Err(Error::invalid(
            "visual entailment: no gold examples with a valid label",
        ));
    }
    let per_class = LABELS
        .iter()
        .enumerate()
        .map(|(c, l)| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..3).map(|g| confusion[g][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            (
                l.to_string(),
                ClassScores {
                    precision,
                    recall,
                    f1,
                    support,
                },
            )
        })
        .collect();
    Ok(EntailmentScores {
        accuracy: correct as f64 / n as f64,
        count: n,
        per_class,
        confusion,
        skipped_gold: skipped,
        per_item,
    })
}

/// Gold and predictions keyed by pair id.
pub fn evaluate(
    gold: &[(String, String)],
    predictions: &HashMap<String, String>,
) -> Result<EntailmentScores> {
    let missing: Vec<&str> = gold
        .iter()
        .filter(|(id, _)| !predictions.contains_key(id))
        .map(|(id, _)| id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "visual entailment: {} gold pair(s) have no prediction, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        )));
    }
    let ids: std::collections::HashSet<&str> = gold.iter().map(|(id, _)| id.as_str()).collect();
    let extra: Vec<&str> = predictions
        .keys()
        .filter(|k| !ids.contains(k.as_str()))
        .map(|k| k.as_str())
        .collect();
    if !extra.is_empty() {
        return Err(Error::invalid(format!(
            "visual entailment: {} prediction(s) for pairs not in the gold file, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(5)]
        )));
    }
    evaluate_pairs(
        gold.iter()
            .map(|(id, g)| (g.as_str(), predictions[id].as_str())),
    )
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_jsonl(
    path: &Path,
    mut f: impl FnMut(usize, serde_json::Map<String, Value>) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Error::format(path, Some(i + 1), e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(Error::format(path, Some(i + 1), "expected a JSON object"));
        };
        f(i + 1, o)?;
    }
    Ok(())
}

/// SNLI-VE gold jsonl: `pairID` and `gold_label` per line (other fields ignored), file order.
pub fn load_gold(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let path = path.as_ref();
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    read_jsonl(path, |line, o| {
        let id = o
            .get("pairID")
            .and_then(id_string)
            .ok_or_else(|| Error::format(path, Some(line), "missing `pairID`"))?;
        let label = o
            .get("gold_label")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format(path, Some(line), "missing string `gold_label`"))?;
        if class_of(label).is_none() && label.trim() != NO_CONSENSUS {
            return Err(Error::format(
                path,
                Some(line),
                format!(
                    "gold_label {label:?} is none of entailment, neutral, contradiction \
                     or `{NO_CONSENSUS}` (no consensus, skipped and counted)"
                ),
            ));
        }
        if let Some(prev) = seen.insert(id.clone(), line) {
            return Err(Error::format(
                path,
                Some(line),
                format!("pairID {id:?} already on line {prev}"),
            ));
        }
        out.push((id, label.to_string()));
        Ok(())
    })?;
    Ok(out)
}

/// Predictions jsonl: `pairID` plus the label under `label`, `prediction` or `answer`.
pub fn load_predictions(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let mut out = HashMap::new();
    let mut seen = HashMap::new();
    read_jsonl(path, |line, o| {
        let id = o
            .get("pairID")
            .and_then(id_string)
            .ok_or_else(|| Error::format(path, Some(line), "missing `pairID`"))?;
        let label = ["label", "prediction", "answer"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .ok_or_else(|| {
                Error::format(
                    path,
                    Some(line),
                    "missing string `label` (or `prediction` / `answer`)",
                )
            })?;
        if let Some(prev) = seen.insert(id.clone(), line) {
            return Err(Error::format(
                path,
                Some(line),
                format!("pairID {id:?} already on line {prev}"),
            ));
        }
        out.insert(id, label.to_string());
        Ok(())
    })?;
    Ok(out)
}

/// Evaluate standard files.
pub fn evaluate_files(gold: &Path, predictions: &Path) -> Result<EntailmentScores> {
    let g = load_gold(gold)?;
    let p = load_predictions(predictions)?;
    evaluate(&g, &p).map_err(|e| Error::format(predictions, None, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_confusion_and_per_class() {
        let pairs = [
            ("entailment", "entailment"),
            ("entailment", "neutral"),
            ("neutral", "neutral"),
            ("contradiction", "Contradiction "),
            ("contradiction", "yes"),
            ("-", "neutral"),
        ];
        let s = evaluate_pairs(pairs.iter().copied()).unwrap();
        assert_eq!(s.count, 5);
        assert_eq!(s.skipped_gold, 1);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(s.per_item, [true, false, true, true, false]);
        assert_eq!(s.confusion[0], vec![1, 1, 0, 0]);
        assert_eq!(s.confusion[2], vec![0, 0, 1, 1]);
        let n = &s.per_class["neutral"];
        assert!((n.precision - 0.5).abs() < 1e-12 && (n.recall - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_unknown_gold_label_is_an_error_naming_the_line_and_dashes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let gold = dir.path().join("ve_test.jsonl");
        let line = |id: u32, l: &str| format!(r#"{{"pairID":"{id}","gold_label":"{l}"}}"#);
        let ok = [line(1, "entailment"), line(2, "-"), line(3, "neutral")].join("\n");
        std::fs::write(&gold, ok).unwrap();
        assert_eq!(load_gold(&gold).unwrap().len(), 3);
        let bad = [line(1, "entailment"), line(2, "entailed")].join("\n");
        std::fs::write(&gold, bad).unwrap();
        let e = load_gold(&gold).unwrap_err().to_string();
        assert!(
            e.contains("ve_test.jsonl:2") && e.contains("\"entailed\""),
            "{e}"
        );
    }
}
