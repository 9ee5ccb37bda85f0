//! `results.json` (the exact shape issue 7 specifies) and `REPORT.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::gap::GapStats;
use crate::probes::ProbeResult;

/// Images per split of the generated world.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorldInfo {
    pub seed: u64,
    pub images: SplitCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClipInfo {
    pub r1_image_to_text: f64,
    pub r1_text_to_image: f64,
    pub gap: GapStats,
}

/// One CLOSE run evaluated on the test images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// `s-cap`, `m-cap`, `vqa`, `ve` or `style`.
    pub task: String,
    /// `text` or `images`.
    pub train_on: String,
    /// `none`, `noise`, `mean-shift`, `cov` or `linear`.
    pub adapter: String,
    /// Gaussian noise scale w used during training.
    pub noise: f64,
    /// Captioning: `CIDEr`, `Bleu_4` (0–1 scale, as pycocoevalcap); VQA / VE: `accuracy`
    /// (0–100). Extra keys (e.g. VQA per question type) may follow.
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Free-form label of the ablation row (e.g. `tuned noise (val)`), not in the spec's
    /// required keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemoResults {
    pub world: WorldInfo,
    pub clip: ClipInfo,
    pub runs: Vec<RunResult>,
    pub seconds: f64,
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
}

/// Ratio of a text-only result to the image-trained upper bound of the same task.
pub fn ratio(run: &RunResult, upper: &RunResult) -> Option<f64> {
    let (a, b) = (run.headline()?, upper.headline()?);
    (b > 0.0).then(|| a / b)
}

fn fmt_metric(task: &str, v: Option<f64>) -> String {
    match v {
        Some(v) if task.ends_with("cap") || task == "style" => format!("{:.1}", v * 100.0),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

/// What the task text alone gets right, without any image (from the world generator's
/// bias probes): the floor a model must beat to show it reads the image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextPriors {
    /// VE: hypothesis-only naive Bayes accuracy, 0–100.
    pub ve_hypothesis_only: Option<f64>,
    /// VQA: the most common training answer per question (by its words), 0–100.
    pub vqa_question_only: Option<f64>,
    /// Same, per question type.
    pub vqa_question_only_by_type: BTreeMap<String, f64>,
}

impl TextPriors {
    fn row(&self, task: &str) -> Option<(&'static str, f64)> {
        match task {
            "ve" => self
                .ve_hypothesis_only
                .map(|v| ("hypothesis only (naive Bayes, no image)", v)),
            "vqa" => self
                .vqa_question_only
                .map(|v| ("question only (answer prior, no image)", v)),
            _ => None,
        }
    }
}

/// VQA accuracy per question type: the prior, the upper bound, and the text-only runs
/// without noise, at w = 0.08 and with tuned noise.
fn vqa_types_table(s: &mut String, runs: &[&RunResult], priors: &TextPriors) {
    let per_type = |r: &RunResult| -> BTreeMap<String, f64> {
        r.metrics
            .get("perQuestionType")
            .and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut types: Vec<String> = runs.iter().flat_map(|r| per_type(r).into_keys()).collect();
    types.sort();
    types.dedup();
    if types.is_empty() {
        return;
    }
    let _ = writeln!(s, "VQA accuracy per question type:\n");
    let _ = writeln!(s, "| run | {} |", types.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(types.len()));
    let cell = |m: &BTreeMap<String, f64>, t: &str| {
        m.get(t)
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "–".into())
    };
    if !priors.vqa_question_only_by_type.is_empty() {
        let cells: Vec<String> = types
            .iter()
            .map(|t| cell(&priors.vqa_question_only_by_type, t))
            .collect();
        let _ = writeln!(s, "| question only (no image) | {} |", cells.join(" | "));
    }
    let wanted = |r: &RunResult| {
        r.train_on == "images"
            || r.adapter == "none"
            || (r.adapter == "noise" && r.noise == 0.08)
            || r.label.as_deref().unwrap_or("").starts_with("tuned")
    };
    for r in runs.iter().filter(|r| wanted(r)) {
        let m = per_type(r);
        let cells: Vec<String> = types.iter().map(|t| cell(&m, t)).collect();
        let _ = writeln!(
            s,
            "| {} | {} |",
            r.label.as_deref().unwrap_or(&r.adapter),
            cells.join(" | ")
        );
    }
    let _ = writeln!(s);
}

/// The markdown report: setup, CLIP and gap, one table per task with ratios to the
/// image-trained upper bound, and the text-only priors as a floor.
pub fn report_markdown(
    res: &DemoResults,
    setup: &str,
    priors: &TextPriors,
    probes: &[ProbeResult],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# CLOSE on the shapes world\n");
    let _ = writeln!(s, "{setup}\n");
    let w = &res.world;
    let _ = writeln!(
        s,
        "World seed {}: {} train / {} val / {} test images. Total time {:.0} s.\n",
        w.seed, w.images.train, w.images.val, w.images.test, res.seconds
    );
    let c = &res.clip;
    let _ = writeln!(s, "## CLIP and the modality gap\n");
    let _ = writeln!(s, "| R@1 image→text | R@1 text→image | cos(image, own caption) | cos(caption, caption) | cos(image, image) | centroid distance |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
        c.r1_image_to_text,
        c.r1_text_to_image,
        c.gap.cos_image_own_caption,
        c.gap.cos_caption_caption,
        c.gap.cos_image_image,
        c.gap.centroid_distance
    );
    let _ = writeln!(s, "![modality gap](gap_pca.png)\n");
    if !probes.is_empty() {
        let _ = writeln!(s, "### What the image vectors hold (zero-shot probes, val and test images)\n");
        let _ = writeln!(s, "Each probe ranks captions of an image that differ in one respect only; right = the true caption is the image vector's nearest. A CLOSE model can read from an image vector only what it holds, and learns from text only what text and image vectors agree on.\n");
        let _ = writeln!(s, "| probe | images | right | chance |");
        let _ = writeln!(s, "|---|---|---|---|");
        for p in probes {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0}% | {:.0}% |",
                p.kind,
                p.images,
                p.accuracy * 100.0,
                p.chance * 100.0
            );
        }
        let _ = writeln!(s);
    }
    let mut tasks: Vec<&str> = Vec::new();
    for r in &res.runs {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let _ = writeln!(s, "## Results on the test images\n");
    let _ = writeln!(s, "Captioning: CIDEr ×100 (pycocoevalcap scale ×100); VQA: official accuracy; VE: accuracy. Ratio = run / image-trained upper bound. Decoding: beam search at the configured width (the reference's 5).\n");
    for t in tasks {
        let runs: Vec<&RunResult> = res.runs.iter().filter(|r| r.task == t).collect();
        let upper = runs.iter().find(|r| r.train_on == "images").copied();
        let _ = writeln!(s, "### {t}\n");
        let _ = writeln!(s, "| run | train on | adapter | noise | metric | ratio |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        if let Some((label, v)) = priors.row(t) {
            let ratio = upper
                .and_then(|u| u.headline())
                .filter(|&u| u > 0.0)
                .map(|u| format!("{:.2}", v / u))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(s, "| {label} | – | – | – | {v:.1} | {ratio} |");
        }
        for r in &runs {
            let ratio = upper
                .and_then(|u| ratio(r, u))
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.label.as_deref().unwrap_or(""),
                r.train_on,
                r.adapter,
                r.noise,
                fmt_metric(t, r.headline()),
                ratio
            );
        }
        let _ = writeln!(s);
        let greedy = |r: &RunResult| r.metrics.get("CIDEr_greedy").and_then(|v| v.as_f64());
        let tuned = runs.iter().find(|r| r.label.as_deref().unwrap_or("").starts_with("tuned"));
        if let (Some(u), Some(tu)) = (upper.and_then(greedy), tuned.and_then(|r| greedy(r))) {
            let _ = writeln!(
                s,
                "Greedy decoding instead of beam search: upper bound {}, tuned noise {} (ratio {:.2}).\n",
                fmt_metric(t, Some(u)),
                fmt_metric(t, Some(tu)),
                tu / u
            );
        }
        if t == "vqa" {
            vqa_types_table(&mut s, &runs, priors);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, on: &str, v: f64) -> RunResult {
        let key = if task == "vqa" { "accuracy" } else { "CIDEr" };
        RunResult {
            task: task.into(),
            train_on: on.into(),
            adapter: "noise".into(),
            noise: 0.08,
            metrics: [(key.to_string(), serde_json::json!(v))]
                .into_iter()
                .collect(),
            label: None,
        }
    }

    fn results(runs: Vec<RunResult>) -> DemoResults {
        DemoResults {
            world: WorldInfo {
                seed: 1,
                images: SplitCounts {
                    train: 10,
                    val: 2,
                    test: 2,
                },
            },
            clip: ClipInfo {
                r1_image_to_text: 0.5,
                r1_text_to_image: 0.4,
                gap: GapStats {
                    cos_image_own_caption: 0.2,
                    cos_caption_caption: 0.4,
                    cos_image_image: 0.5,
                    centroid_distance: 0.8,
                },
            },
            runs,
            seconds: 12.0,
        }
    }

    #[test]
    fn json_has_the_issue_shape_and_report_has_ratios() {
        let res = results(vec![run("s-cap", "images", 1.0), run("s-cap", "text", 0.9)]);
        let v = serde_json::to_value(&res).unwrap();
        for k in ["world", "clip", "runs", "seconds"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["clip"]["gap"]["centroid_distance"].is_number());
        assert_eq!(v["runs"][1]["metrics"]["CIDEr"], 0.9);
        assert!(v["runs"][0].get("label").is_none());
        let probes = [ProbeResult {
            kind: "shape of a lone small object".into(),
            images: 90,
            accuracy: 0.44,
            chance: 1.0 / 6.0,
        }];
        let md = report_markdown(&res, "setup", &TextPriors::default(), &probes);
        assert!(md.contains("| shape of a lone small object | 90 | 44% | 17% |"), "{md}");
        assert!(md.contains("| 0.90 |"), "{md}");
    }

    fn vqa(on: &str, adapter: &str, w: f64, acc: f64, color: f64, label: &str) -> RunResult {
        RunResult {
            task: "vqa".into(),
            train_on: on.into(),
            adapter: adapter.into(),
            noise: w,
            metrics: [
                ("accuracy".to_string(), serde_json::json!(acc)),
                (
                    "perQuestionType".to_string(),
                    serde_json::json!({"color": color, "exists": 50.0}),
                ),
            ]
            .into_iter()
            .collect(),
            label: Some(label.into()),
        }
    }

    #[test]
    fn report_shows_the_text_prior_floor_and_vqa_per_type() {
        let res = results(vec![
            vqa(
                "images",
                "none",
                0.0,
                50.0,
                70.0,
                "image-trained upper bound",
            ),
            vqa("text", "none", 0.0, 45.0, 50.0, "text only, no noise"),
            vqa("text", "mean-shift", 0.04, 49.0, 66.0, "mean-shift + noise"),
        ]);
        let priors = TextPriors {
            ve_hypothesis_only: Some(61.0),
            vqa_question_only: Some(40.0),
            vqa_question_only_by_type: [("color".to_string(), 10.0), ("exists".to_string(), 50.8)]
                .into_iter()
                .collect(),
        };
        let md = report_markdown(&res, "setup", &priors, &[]);
        assert!(!md.contains("zero-shot probes"), "{md}");
        // The prior row with its ratio to the upper bound (40 / 50).
        assert!(
            md.contains("| question only (answer prior, no image) | – | – | – | 40.0 | 0.80 |"),
            "{md}"
        );
        // No VE runs, so no VE prior row.
        assert!(!md.contains("hypothesis only"), "{md}");
        // Per-type table: prior, upper bound and the no-noise run; not the adapter row.
        assert!(md.contains("| run | color | exists |"), "{md}");
        assert!(
            md.contains("| question only (no image) | 10.0 | 50.8 |"),
            "{md}"
        );
        assert!(
            md.contains("| image-trained upper bound | 70.0 | 50.0 |"),
            "{md}"
        );
        assert!(md.contains("| text only, no noise | 50.0 | 50.0 |"), "{md}");
        assert!(!md.contains("| mean-shift + noise | 66.0"), "{md}");
    }
}
