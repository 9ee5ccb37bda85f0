//! Stage: the outputs for machines and people: `results.json`, `runs.json`, `stages.json`,
//! `REPORT.md`, `noise_sweep.png` and `loss_curves.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use close_core::plot::{line_chart, Series};
use close_core::{io, Result};
use close_model::adapter::AdapterKind;
use close_model::config::T5Init;
use close_model::task::{MetricKind, Task, TrainOn};

use crate::config::ExperimentConfig;
use crate::priors::TextPriors;
use crate::results::{ratio, ClipInfo, RunRecord, RunResult};
use crate::ExperimentOutput;

/// What a caller adds to the report: its title, setup lines before the experiment's, and
/// sections after the CLIP table (e.g. the demo's probes).
#[derive(Debug, Clone, Default)]
pub struct ReportHeader {
    pub title: String,
    pub setup: String,
    pub clip_sections: String,
}

fn fmt_metric(task: Task, v: Option<f64>) -> String {
    match v {
        Some(v) if task.metric() == MetricKind::Caption => format!("{:.1}", v * 100.0),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

/// Write every output file into `out`; returns the markdown report.
pub fn write_outputs(
    cfg: &ExperimentConfig,
    output: &ExperimentOutput,
    out: &Path,
    header: &ReportHeader,
) -> Result<String> {
    io::write_json_atomic(out.join("results.json"), &output.results)?;
    io::write_json_atomic(out.join("runs.json"), &output.records)?;
    io::write_json_atomic(out.join("stages.json"), &output.stages)?;
    sweep_plot(
        &output.tasks,
        &output.results.runs,
        &out.join("noise_sweep.png"),
    )?;
    loss_plot(&output.records, &out.join("loss_curves.png"))?;
    let md = report_markdown(cfg, output, header);
    io::write_atomic(out.join("REPORT.md"), md.as_bytes())?;
    Ok(md)
}

/// Each task's text-only runs on test against w, as ratios to the task's upper bound, each
/// ± its standard error over the test items, beside the upper bound's line at 1.
fn sweep_plot(tasks: &[Task], runs: &[RunResult], png: &Path) -> Result<()> {
    let mut series = Vec::new();
    let mut ws = Vec::new();
    for &task in tasks {
        let of_task: Vec<&RunResult> = runs.iter().filter(|r| r.task == task).collect();
        let Some(upper) = of_task.iter().find(|r| r.train_on == TrainOn::Images) else {
            continue;
        };
        let mut pts: Vec<(f64, f64, f64)> = of_task
            .iter()
            .filter(|r| r.is_sweep_point() && !r.is_tuned())
            .filter_map(|r| Some((r.noise, ratio(r, upper)?, r.ratio_stderr.unwrap_or(0.0))))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        ws.extend(pts.iter().map(|p| p.0));
        let errors = pts.iter().map(|p| p.2).collect();
        let points = pts.iter().map(|p| (p.0, p.1)).collect();
        series.push(Series::new(task.to_string(), points).with_errors(errors));
    }
    let (lo, hi) = ws
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &w| (a.min(w), b.max(w)));
    if lo <= hi {
        let line = Series::new("upper bound", vec![(lo, 1.0), (hi, 1.0)]);
        series.push(line.with_color((0, 0, 0)));
    }
    line_chart(
        png,
        "text-only training, image test: ratio to the upper bound (± 1 s.e.)",
        "noise w",
        "test metric / image-trained upper bound",
        &series,
    )
}

/// Training loss of each task's upper bound and its w = 0.08 text-only run.
fn loss_plot(records: &[RunRecord], png: &Path) -> Result<()> {
    let mut series = Vec::new();
    for r in records {
        let on_images = r.result.train_on == TrainOn::Images;
        let default = on_images
            || (r.result.adapter == AdapterKind::Noise && (r.result.noise - 0.08).abs() < 1e-9);
        if default && !r.losses.is_empty() {
            let what = if on_images { "images" } else { "text w=0.08" };
            series.push(Series::new(
                format!("{} {what}", r.result.task),
                r.losses.clone(),
            ));
        }
    }
    line_chart(png, "training loss", "step", "loss", &series)
}

/// The experiment's settings, one bullet each.
fn setup_lines(cfg: &ExperimentConfig, output: &ExperimentOutput) -> String {
    let mut s = String::new();
    let t5 = match &cfg.t5 {
        T5Init::Scratch { config, vocab, .. } => format!(
            "T5 from scratch (d_model {}, {}+{} layers, {} heads), a {vocab}-piece tokenizer per task",
            config.d_model,
            config.num_layers,
            config.num_decoder_layers.unwrap_or(config.num_layers),
            config.num_heads
        ),
        T5Init::Pretrained { dir } => format!("pretrained T5 from {}", dir.display()),
    };
    let _ = writeln!(s, "- CLOSE: {t5}, prefix 4; the best epoch by a val check (beam {}); reported val and test metrics with beam {}.", cfg.val_beams, cfg.beams);
    let _ = writeln!(s, "\n| task | epochs | batch | lr | examples an epoch (at most) | val items per check | sweep w |\n|---|---|---|---|---|---|---|");
    let all = |n: Option<usize>| n.map_or("all".to_string(), |n| n.to_string());
    for (task, t) in cfg.tasks.iter().filter(|(t, _)| output.tasks.contains(t)) {
        let sweep: Vec<String> = t.sweep.iter().map(|w| w.to_string()).collect();
        let _ = writeln!(
            s,
            "| {task} | {} | {} | {} | {} | {} | {} |",
            t.epochs,
            t.batch_size,
            t.lr,
            all(t.max_examples_per_epoch),
            all(t.max_val_examples),
            sweep.join(", ")
        );
    }
    let _ = writeln!(s);
    if cfg.equal_targets {
        let scales: Vec<String> = output
            .text_run_scales
            .iter()
            .map(|(t, x)| format!("{t} {x:.2}×"))
            .collect();
        let scales = if scales.is_empty() {
            "none here".to_string()
        } else {
            scales.join(", ")
        };
        let _ = writeln!(s, "- Equal training in targets: the caps count the image-trained run's examples; a text-only run of the same task trains on as many targets an epoch (an image example carries all its captions, an s-cap text example one), so text-only runs draw more examples: {scales}.");
    }
    if !cfg.adapters.is_empty() {
        let _ = writeln!(s, "- Adapters: mean-shift from the unpaired mean image and mean caption vectors; cov and linear fitted on the same {}% of the training (image, caption) pairs; each with the task's default noise.", cfg.paired_fraction * 100.0);
    }
    let _ = writeln!(s, "- Tuned noise: the sweep value with the best **val** metric; its **test** result is reported.");
    for sk in &output.skipped {
        let _ = writeln!(
            s,
            "- Skipped task {}: no {}.",
            sk.task,
            sk.missing.display()
        );
    }
    for d in output.dropped.iter().filter(|d| d.any()) {
        let _ = writeln!(s, "- {}: items without a CLIP vector left out: {} text and {} image training examples, {} val and {} test items.",
            d.task.map(|t| t.to_string()).unwrap_or_default(), d.train_text, d.train_images, d.val, d.test);
    }
    let times: Vec<String> = output
        .stages
        .0
        .iter()
        .map(|(n, s)| format!("{n} {s:.0}"))
        .collect();
    let _ = writeln!(s, "\nStage times (s, this machine): {}", times.join(", "));
    s
}

fn clip_table(s: &mut String, c: &ClipInfo) {
    let _ = writeln!(s, "## CLIP and the modality gap\n");
    let _ = writeln!(s, "| R@1 image→text | R@1 text→image | cos(image, own caption) | cos(caption, caption) | cos(image, image) | centroid distance |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let g = &c.gap;
    let _ = writeln!(
        s,
        "| {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
        c.r1_image_to_text,
        c.r1_text_to_image,
        g.cos_image_own_caption,
        g.cos_caption_caption,
        g.cos_image_image,
        g.centroid_distance
    );
    let _ = writeln!(s, "![modality gap](gap_pca.png)\n");
}

/// The markdown report: setup, CLIP and gap, one table per task with ratios to the
/// image-trained upper bound, the text-only priors as a floor, failures and figures.
pub fn report_markdown(
    cfg: &ExperimentConfig,
    output: &ExperimentOutput,
    header: &ReportHeader,
) -> String {
    let mut s = String::new();
    let res = &output.results;
    let _ = writeln!(s, "# {}\n", header.title);
    let _ = writeln!(s, "{}{}", header.setup, setup_lines(cfg, output));
    let i = &res.data.images;
    let _ = writeln!(
        s,
        "Seed {}: {} train / {} val / {} test images.\n",
        res.data.seed, i.train, i.val, i.test
    );
    clip_table(&mut s, &res.clip);
    s.push_str(&header.clip_sections);
    let _ = writeln!(s, "## Results on the test images\n");
    let _ = writeln!(s, "Captioning: CIDEr ×100 (pycocoevalcap scale ×100); VQA: official accuracy; VE: accuracy. Ratio = run / image-trained upper bound, ± its standard error over the test items (both runs scored on the same items). Decoding: beam search at the configured width (the reference's 5).\n");
    for &task in cfg.tasks.keys() {
        let runs: Vec<&RunResult> = res.runs.iter().filter(|r| r.task == task).collect();
        if !runs.is_empty() {
            task_table(&mut s, task, &runs, &output.priors);
            val_picks(&mut s, task, &output.records);
        }
    }
    if !output.failures.is_empty() {
        let _ = writeln!(s, "## Failed runs\n");
        for f in &output.failures {
            let _ = writeln!(s, "- {f}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "## Figures\n\n![noise sweep](noise_sweep.png)\n\n![loss curves](loss_curves.png)\n"
    );
    s
}

fn task_table(s: &mut String, task: Task, runs: &[&RunResult], priors: &TextPriors) {
    let upper = runs.iter().find(|r| r.train_on == TrainOn::Images).copied();
    let _ = writeln!(s, "### {task}\n");
    ratio_table(s, task, runs, upper, priors.row(task));
    let _ = writeln!(s);
    let greedy = |r: &RunResult| r.metrics.get("CIDEr_greedy").and_then(|v| v.as_f64());
    let tuned = runs.iter().find(|r| r.is_tuned());
    if let (Some(u), Some(tu)) = (upper.and_then(greedy), tuned.and_then(|r| greedy(r))) {
        let _ = writeln!(s, "Greedy decoding instead of beam search: upper bound {}, tuned noise {} (ratio {:.2}).\n",
            fmt_metric(task, Some(u)), fmt_metric(task, Some(tu)), tu / u);
    }
    explanation_line(s, upper, runs);
    if task.metric() == MetricKind::Vqa {
        vqa_types_table(s, task, runs, priors);
    }
}

/// The runs' metrics and ratios to `upper`. With a text-only prior: its row, and the share of
/// the image's gain over the prior that each run keeps, `(run − prior) / (upper − prior)`.
fn ratio_table(
    s: &mut String,
    task: Task,
    runs: &[&RunResult],
    upper: Option<&RunResult>,
    prior: Option<(&str, f64)>,
) {
    let upper_value = upper.and_then(|u| u.headline()).filter(|&u| u > 0.0);
    let gain = match (prior, upper_value) {
        (Some((_, p)), Some(u)) if u > p => Some((p, u)),
        _ => None,
    };
    let gain_cell = |v: Option<f64>| match (gain, v) {
        (Some((p, u)), Some(v)) => format!(" {:.2} |", (v - p) / (u - p)),
        (Some(_), None) => " – |".into(),
        (None, _) => String::new(),
    };
    let (head, rule) = match gain {
        Some(_) => (" image gain kept |", "---|"),
        None => ("", ""),
    };
    let _ = writeln!(
        s,
        "| run | train on | adapter | noise | metric | ratio |{head}"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|{rule}");
    if let Some((label, v)) = prior {
        let r = ratio_cell(upper_value.map(|u| v / u), None);
        let _ = writeln!(
            s,
            "| {label} | – | – | – | {v:.1} | {r} |{}",
            gain_cell(Some(v))
        );
    }
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |{}",
            r.label.as_deref().unwrap_or(""),
            r.train_on.name(),
            r.adapter.name(),
            r.noise,
            fmt_metric(task, r.headline()),
            ratio_cell(upper.and_then(|u| ratio(r, u)), r.ratio_stderr),
            gain_cell(r.headline())
        );
    }
    if gain.is_some() {
        let _ = writeln!(s, "\nImage gain kept: (run − prior) / (upper bound − prior), the share of what the image adds over the text alone that a run keeps.");
    }
}

/// A ratio to the upper bound, with its paired standard error over the test items when known.
fn ratio_cell(x: Option<f64>, se: Option<f64>) -> String {
    match (x, se) {
        (Some(x), Some(se)) => format!("{x:.3} ± {se:.3}"),
        (Some(x), None) => format!("{x:.2}"),
        (None, _) => "–".into(),
    }
}

/// `evqa-explain`: the explanations' CIDEr of every run, with its ratio to the upper bound's.
fn explanation_line(s: &mut String, upper: Option<&RunResult>, runs: &[&RunResult]) {
    let cider = |r: &RunResult| r.metrics.get("explanation_CIDEr").and_then(|v| v.as_f64());
    let Some(upper) = upper.and_then(cider) else {
        return;
    };
    let cells: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let c = cider(r)?;
            let label = r.label.as_deref().unwrap_or(r.adapter.name());
            Some(format!("{label}: {:.1} ({:.2})", 100.0 * c, c / upper))
        })
        .collect();
    let _ = writeln!(
        s,
        "Explanation CIDEr ×100 (ratio to the upper bound's): {}.\n",
        cells.join("; ")
    );
}

/// The val metric of each sweep point (with its standard error where known): what the
/// tuned row was picked from.
fn val_picks(s: &mut String, task: Task, records: &[RunRecord]) {
    let points: Vec<String> = records
        .iter()
        .filter(|r| r.result.task == task && r.result.is_sweep_point())
        .filter_map(|r| {
            let v = fmt_metric(task, Some(r.val?));
            let se = r
                .val_stderr
                .map(|e| format!(" ± {}", fmt_metric(task, Some(e))))
                .unwrap_or_default();
            Some(format!("w = {}: {v}{se}", r.result.noise))
        })
        .collect();
    if !points.is_empty() {
        let _ = writeln!(
            s,
            "Val metric of the sweep (the tuned row is its best): {}.\n",
            points.join("; ")
        );
    }
}

/// VQA (or VQA-E) accuracy per question type: the prior, the upper bound, and the text-only runs
/// without noise, at w = 0.08 and with tuned noise.
fn vqa_types_table(s: &mut String, task: Task, runs: &[&RunResult], priors: &TextPriors) {
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
    let _ = writeln!(s, "Accuracy per question type ({task}):\n");
    let _ = writeln!(s, "| run | {} |", types.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(types.len()));
    let cell = |m: &BTreeMap<String, f64>, t: &str| {
        m.get(t)
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "–".into())
    };
    let row = |s: &mut String, label: &str, m: &BTreeMap<String, f64>| {
        let cells: Vec<String> = types.iter().map(|t| cell(m, t)).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    };
    if let Some(q) = priors.question_only.get(&task) {
        row(s, "question only (no image)", &q.by_type);
    }
    let wanted = |r: &RunResult| {
        r.train_on == TrainOn::Images
            || r.adapter == AdapterKind::None
            || (r.adapter == AdapterKind::Noise && r.noise == 0.08)
            || r.is_tuned()
    };
    for r in runs.iter().filter(|r| wanted(r)) {
        row(
            s,
            r.label.as_deref().unwrap_or(r.adapter.name()),
            &per_type(r),
        );
    }
    let _ = writeln!(s);
}

/// A short table for the terminal: per task the upper bound, no noise, w = 0.08 and the
/// tuned row, with ratios.
pub fn summary_table(rows: &[RunResult]) -> String {
    let mut s = String::from(
        "| task | upper bound | no noise | w = 0.08 | tuned (val) |\n|---|---|---|---|---|\n",
    );
    let mut tasks: Vec<Task> = rows.iter().map(|r| r.task).collect();
    tasks.dedup();
    for task in tasks {
        let of: Vec<&RunResult> = rows.iter().filter(|r| r.task == task).collect();
        let upper = of.iter().find(|r| r.train_on == TrainOn::Images).copied();
        let cell = |r: Option<&&RunResult>| match r {
            Some(r) => {
                let x = upper
                    .and_then(|u| ratio(r, u))
                    .map(|x| format!(" · {x:.2}×"))
                    .unwrap_or_default();
                format!("{}{x}", fmt_metric(task, r.headline()))
            }
            None => "–".into(),
        };
        let none = of.iter().find(|r| {
            r.adapter == AdapterKind::None && r.train_on == TrainOn::Text && !r.is_tuned()
        });
        let w08 = of
            .iter()
            .find(|r| r.adapter == AdapterKind::Noise && r.noise == 0.08 && !r.is_tuned());
        let tuned = of.iter().find(|r| r.is_tuned());
        let up = upper
            .map(|u| fmt_metric(task, u.headline()))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {task} | {up} | {} | {} | {} |",
            cell(none),
            cell(w08),
            cell(tuned)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{DataInfo, Results, SplitCounts};
    use crate::StageTimes;
    use close_clip::gap::GapStats;
    use close_model::config::TrainConfig;

    fn vqa(
        on: TrainOn,
        adapter: AdapterKind,
        w: f64,
        acc: f64,
        color: f64,
        label: &str,
    ) -> RunRecord {
        RunRecord {
            result: RunResult {
                task: Task::Vqa,
                train_on: on,
                adapter,
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
                ratio_stderr: None,
            },
            val: Some(acc + 1.0),
            val_stderr: Some(1.25),
            losses: Vec::new(),
            seconds: 1.0,
            run_dir: "r".into(),
        }
    }

    fn output(records: Vec<RunRecord>, priors: TextPriors) -> ExperimentOutput {
        let gap = GapStats {
            cos_image_own_caption: 0.2,
            cos_caption_caption: 0.4,
            cos_image_image: 0.5,
            centroid_distance: 0.8,
        };
        ExperimentOutput {
            results: Results {
                data: DataInfo {
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
                    gap,
                },
                runs: records.iter().map(|r| r.result.clone()).collect(),
            },
            records,
            failures: vec!["vqa / linear: out of memory".into()],
            priors,
            stages: StageTimes(vec![("runs".into(), 3.0)]),
            skipped: Vec::new(),
            dropped: Vec::new(),
            text_run_scales: BTreeMap::new(),
            tasks: vec![Task::Vqa],
        }
    }

    #[test]
    fn report_has_ratios_the_prior_floor_per_type_accuracy_and_val_picks() {
        let cfg = ExperimentConfig::new(
            TrainConfig::small(Task::Vqa).t5,
            &[Task::Vqa, Task::Ve],
            false,
            1,
        );
        let priors = TextPriors {
            ve_hypothesis_only: Some(61.0),
            question_only: [(
                Task::Vqa,
                crate::priors::QuestionOnly {
                    overall: 40.0,
                    by_type: [("color".to_string(), 10.0), ("exists".to_string(), 50.8)]
                        .into_iter()
                        .collect(),
                },
            )]
            .into_iter()
            .collect(),
        };
        let mut out = output(
            vec![
                vqa(
                    TrainOn::Images,
                    AdapterKind::None,
                    0.0,
                    50.0,
                    70.0,
                    "image-trained upper bound",
                ),
                vqa(
                    TrainOn::Text,
                    AdapterKind::None,
                    0.0,
                    45.0,
                    50.0,
                    "text only, no noise",
                ),
                vqa(
                    TrainOn::Text,
                    AdapterKind::MeanShift,
                    0.04,
                    49.0,
                    66.0,
                    "mean-shift + noise",
                ),
            ],
            priors,
        );
        out.results.runs[1].ratio_stderr = Some(0.0123);
        let md = report_markdown(
            &cfg,
            &out,
            &ReportHeader {
                title: "T".into(),
                ..Default::default()
            },
        );
        assert!(
            md.contains(
                "| question only (answer prior, no image) | – | – | – | 40.0 | 0.80 | 0.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| image-trained upper bound | images | none | 0 | 50.0 | 1.00 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| text only, no noise | text | none | 0 | 45.0 | 0.900 ± 0.012 | 0.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| mean-shift + noise | text | mean-shift | 0.04 | 49.0 | 0.98 | 0.90 |"),
            "{md}"
        );
        assert!(
            !md.contains("hypothesis only"),
            "no VE runs, so no VE prior row:\n{md}"
        );
        assert!(
            md.contains("| question only (no image) | 10.0 | 50.8 |"),
            "{md}"
        );
        assert!(
            md.contains("| image-trained upper bound | 70.0 | 50.0 |"),
            "{md}"
        );
        assert!(!md.contains("| mean-shift + noise | 66.0"), "{md}");
        assert!(md.contains("w = 0: 46.0 ± 1.2"), "{md}");
        assert!(
            md.contains("| vqa | 14 |") || md.contains("| vqa | 4 |"),
            "settings table:\n{md}"
        );
        assert!(!md.contains("| ve |"), "VE did not run:\n{md}");
        assert!(md.contains("- vqa / linear: out of memory"), "{md}");
        let table = summary_table(&out.results.runs);
        assert!(
            table.contains("| vqa | 50.0 | 45.0 · 0.90× | – | – |"),
            "{table}"
        );
    }

    #[test]
    fn explained_answers_report_their_explanations_cider_and_its_prior_and_types() {
        let cfg = ExperimentConfig::new(
            TrainConfig::small(Task::EvqaExplain).t5,
            &[Task::EvqaExplain],
            false,
            1,
        );
        let explained = |on, w: f64, acc, cider: f64, label: &str| {
            let mut r = vqa(on, AdapterKind::None, w, acc, 60.0, label);
            r.result.task = Task::EvqaExplain;
            let m = &mut r.result.metrics;
            m.insert("explanation_CIDEr".into(), serde_json::json!(cider));
            r
        };
        let priors = TextPriors {
            question_only: [(
                Task::EvqaExplain,
                crate::priors::QuestionOnly {
                    overall: 41.0,
                    by_type: [("color".to_string(), 12.0)].into_iter().collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let mut out = output(
            vec![
                explained(TrainOn::Images, 0.0, 50.0, 2.0, "image-trained upper bound"),
                explained(TrainOn::Text, 0.0, 40.0, 0.5, "text only, no noise"),
            ],
            priors,
        );
        out.tasks = vec![Task::EvqaExplain];
        let md = report_markdown(&cfg, &out, &ReportHeader::default());
        for want in [
            "| question only (answer prior, no image) | – | – | – | 41.0 | 0.82 |",
            "Explanation CIDEr ×100 (ratio to the upper bound's): image-trained upper bound: 200.0 (1.00); text only, no noise: 50.0 (0.25).",
            "Accuracy per question type (evqa-explain):",
            "| question only (no image) | 12.0 |",
        ] {
            assert!(md.contains(want), "{want}\n{md}");
        }
    }

    #[test]
    fn a_captioning_val_pick_shows_its_standard_error_in_cider_x100() {
        let cfg = ExperimentConfig::new(TrainConfig::small(Task::SCap).t5, &[Task::SCap], false, 1);
        let mut r = vqa(
            TrainOn::Text,
            AdapterKind::None,
            0.0,
            1.0,
            0.0,
            "text only, no noise",
        );
        r.result.task = Task::SCap;
        r.result.metrics = [("CIDEr".to_string(), serde_json::json!(1.2))].into();
        (r.val, r.val_stderr) = (Some(1.5), Some(0.061));
        let mut out = output(vec![r], TextPriors::default());
        out.tasks = vec![Task::SCap];
        let md = report_markdown(&cfg, &out, &ReportHeader::default());
        assert!(md.contains("w = 0: 150.0 ± 6.1"), "{md}");
    }
}
