//! `results.json`: the dataset's split sizes, the CLIP's retrieval and modality gap, and one
//! row per evaluated run (the demo's schema). It holds no timings, so one config and seed
//! give the same file on a fast machine and a slow one; stage times go to `stages.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use close_clip::gap::GapStats;
use close_model::adapter::AdapterKind;
use close_model::task::{Task, TrainOn};

/// Images per split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// The dataset: the experiment's seed and its images per split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataInfo {
    pub seed: u64,
    pub images: SplitCounts,
}

/// The CLIP on the test split: retrieval R@1 both ways and the modality gap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClipInfo {
    pub r1_image_to_text: f64,
    pub r1_text_to_image: f64,
    pub gap: GapStats,
}

/// One CLOSE run evaluated on the test images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub task: Task,
    pub train_on: TrainOn,
    pub adapter: AdapterKind,
    /// Gaussian noise scale w used during training.
    pub noise: f64,
    /// Captioning: `CIDEr`, `Bleu_4` (0–1 scale, as pycocoevalcap); VQA / VE: `accuracy`
    /// (0–100). Extra keys (e.g. VQA per question type) may follow.
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// The ablation row (e.g. `tuned noise (val): w = 0.08`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Standard error of this text-only run's ratio to the upper bound, from the two runs'
    /// scores on the same test items ([`paired_ratio_stderr`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_stderr: Option<f64>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// The dataset (named `world` in the file, the demo's schema).
    #[serde(rename = "world")]
    pub data: DataInfo,
    pub clip: ClipInfo,
    pub runs: Vec<RunResult>,
}

impl RunResult {
    /// The task's headline metric: CIDEr for captioning, accuracy otherwise.
    pub fn headline(&self) -> Option<f64> {
        let key = if self.metrics.contains_key("CIDEr") {
            "CIDEr"
        } else {
            "accuracy"
        };
        self.metrics.get(key).and_then(|v| v.as_f64())
    }

    /// A text-only run without an adapter other than noise (a point of the sweep).
    pub fn is_sweep_point(&self) -> bool {
        self.train_on == TrainOn::Text
            && matches!(self.adapter, AdapterKind::None | AdapterKind::Noise)
    }

    /// The val-picked row.
    pub fn is_tuned(&self) -> bool {
        self.label.as_deref().unwrap_or("").starts_with("tuned")
    }
}

/// Ratio of a text-only result to the image-trained upper bound of the same task.
pub fn ratio(run: &RunResult, upper: &RunResult) -> Option<f64> {
    let (a, b) = (run.headline()?, upper.headline()?);
    (b > 0.0).then(|| a / b)
}

/// Standard error of `mean(x) / mean(y)` where `x[i]` and `y[i]` score the same item (the
/// delta method: the standard deviation of `x − r·y` over `√n · mean(y)`). Pairing removes
/// what the items' difficulty shares between the two runs. None for fewer than two items,
/// lengths that differ or `mean(y) ≤ 0`.
pub fn paired_ratio_stderr(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 || y.len() != n {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    if my <= 0.0 {
        return None;
    }
    let r = mx / my;
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - r * b).collect();
    Some(close_model::eval::mean_stderr(&d)? / my)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// A run's full record (`runs.json`): its test row, its val metric and training curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub result: RunResult,
    /// Val value of the task metric at the evaluation beam width (selects the tuned noise).
    pub val: Option<f64>,
    /// Standard error of `val` over the val items, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_stderr: Option<f64>,
    pub losses: Vec<(f64, f64)>,
    /// Training seconds (this machine's; not in `results.json`).
    pub seconds: f64,
    pub run_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paired_ratio_error_is_zero_for_proportional_runs_and_grows_with_disagreement() {
        let y = [100.0, 0.0, 100.0, 100.0, 0.0, 100.0];
        let half: Vec<f64> = y.iter().map(|v| v / 2.0).collect();
        assert!(paired_ratio_stderr(&half, &y).unwrap().abs() < 1e-12);
        // One item of six flipped: x/y = 3/4; d = x − 0.75·y is (0.25, 0, 0.25, 0.25, 0, −0.75)·100,
        // sample variance 0.15·100², so SE = √(0.15/6)·100 / (400/6).
        let x = [100.0, 0.0, 100.0, 100.0, 0.0, 0.0];
        let se = paired_ratio_stderr(&x, &y).unwrap();
        let want = (0.15f64 / 6.0).sqrt() * 100.0 / (400.0 / 6.0);
        assert!((se - want).abs() < 1e-12, "{se} vs {want}");
        assert_eq!(paired_ratio_stderr(&x[..5], &y), None);
        assert_eq!(paired_ratio_stderr(&[1.0], &[1.0]), None);
        assert_eq!(paired_ratio_stderr(&[1.0, 2.0], &[0.0, 0.0]), None);
    }
}
