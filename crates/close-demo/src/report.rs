//! Writing the demo's outputs: `results.json`, `REPORT.md`, `runs.json` and the figures.

use std::fmt::Write as _;
use std::path::Path;

use close_core::plot::{line_chart, Series};
use close_core::{io, Result};

use crate::pipeline::{DemoConfig, DemoOutput};
use crate::results::report_markdown;

/// Write every output file into `out`; returns the markdown report.
pub fn write_outputs(
    cfg: &DemoConfig,
    output: &DemoOutput,
    out: &Path,
    machine: &str,
) -> Result<String> {
    io::write_json_atomic(out.join("results.json"), &output.results)?;
    io::write_json_atomic(out.join("runs.json"), &output.records)?;

    // Noise sweep: val and test metric against w, per task (text-only noise runs).
    let mut sweep = Vec::new();
    for task in &cfg.tasks {
        let mut val = Vec::new();
        let mut test = Vec::new();
        for r in output
            .records
            .iter()
            .filter(|r| r.result.task == task.name() && r.result.train_on == "text")
        {
            if r.result.adapter != "noise" && r.result.adapter != "none" {
                continue;
            }
            let scale = if r.result.metrics.contains_key("CIDEr") {
                100.0
            } else {
                1.0
            };
            if let Some(v) = r.val {
                val.push((r.result.noise, v * scale));
            }
            if let Some(t) = r.result.headline() {
                test.push((r.result.noise, t * scale));
            }
        }
        val.sort_by(|a, b| a.0.total_cmp(&b.0));
        test.sort_by(|a, b| a.0.total_cmp(&b.0));
        sweep.push(Series::new(format!("{} test", task.name()), test));
        sweep.push(Series::new(format!("{} val", task.name()), val));
    }
    line_chart(
        &out.join("noise_sweep.png"),
        "noise sweep (text-only training, image test)",
        "noise w",
        "CIDEr×100 / accuracy",
        &sweep,
    )?;

    // Training-loss curves of the default-noise text-only run of each task and the upper bound.
    let mut losses = Vec::new();
    for r in &output.records {
        let default = r.result.train_on == "images"
            || (r.result.adapter == "noise" && (r.result.noise - 0.08).abs() < 1e-9);
        if default && !r.losses.is_empty() {
            losses.push(Series::new(
                format!(
                    "{} {}",
                    r.result.task,
                    if r.result.train_on == "images" {
                        "images"
                    } else {
                        "text w=0.08"
                    }
                ),
                r.losses.clone(),
            ));
        }
    }
    line_chart(
        &out.join("loss_curves.png"),
        "training loss",
        "step",
        "loss",
        &losses,
    )?;

    let mut setup = String::new();
    let w = &cfg.world;
    let _ = writeln!(
        setup,
        "Produced by `close demo{}` (seed {}) on {machine}.\n",
        if cfg.quick { " --quick" } else { "" },
        cfg.seed
    );
    let _ = writeln!(
        setup,
        "- World: {} images of {} px, 1–{} objects per image.",
        w.images, w.size, w.max_objects
    );
    let vc = &cfg.clip.model.vision_config;
    let tc = &cfg.clip.model.text_config;
    let _ = writeln!(
        setup,
        "- CLIP from scratch: ViT {} layers × {} wide, patch {}, image {} px; text {} layers × {} wide; {} epochs, batch {}.",
        vc.num_hidden_layers, vc.hidden_size, vc.patch_size, vc.image_size, tc.num_hidden_layers, tc.hidden_size, cfg.clip.epochs, cfg.clip.batch_size
    );
    let small = close_model::config::TrainConfig::small(close_model::task::Task::SCap);
    if let close_model::config::T5Init::Scratch { config, .. } = &small.t5 {
        let _ = writeln!(
            setup,
            "- CLOSE: T5 from scratch (d_model {}, {}+{} layers, {} heads{}), a {}-piece tokenizer per task, prefix 4, AdamW lr {}, batch {}; epochs {:?} of at most {:?} examples; the best epoch by a greedy val check of {:?} items per epoch; reported val and test metrics with beam {}.",
            config.d_model,
            config.num_layers,
            config.num_decoder_layers.unwrap_or(config.num_layers),
            config.num_heads,
            if cfg.t5.is_empty() { String::new() } else { format!("; per task {:?}", cfg.t5.keys().collect::<Vec<_>>()) },
            cfg.vocab,
            cfg.lr,
            small.batch_size,
            cfg.epochs,
            cfg.max_examples_per_epoch,
            cfg.max_val_examples,
            cfg.beams
        );
    }
    if cfg.equal_targets {
        let scales = output
            .text_run_scales
            .iter()
            .map(|(t, x)| format!("{t} {x:.2}×"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            setup,
            "- Equal training in targets: the caps above count the image-trained run's examples; a text-only run of the same task trains on as many targets an epoch (an image example carries all its captions, an s-cap text example one), so text-only runs draw more examples: {}.",
            if scales.is_empty() { "none here".to_string() } else { scales }
        );
    }
    if cfg.adapters {
        let _ = writeln!(
            setup,
            "- Adapters: mean-shift from the unpaired mean image and mean caption vectors; cov and linear fitted on the same {}% of the training (image, caption) pairs; each with the task's default noise.",
            cfg.paired_fraction * 100.0
        );
    }
    let _ = writeln!(setup, "- Tuned noise: the sweep value with the best **val** metric (all val items); its **test** result is reported.");
    let _ = writeln!(setup, "- The style task has no image-trained upper bound: its training data is a text corpus only.");
    let _ = writeln!(
        setup,
        "\nStage times (s): {}",
        output
            .times
            .0
            .iter()
            .map(|(n, s)| format!("{n} {s:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut md = report_markdown(&output.results, &setup, &output.priors, &output.probes);
    if !output.failures.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        for f in &output.failures {
            let _ = writeln!(md, "- {f}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "## Figures\n\n![noise sweep](noise_sweep.png)\n\n![loss curves](loss_curves.png)\n"
    );
    io::write_atomic(out.join("REPORT.md"), md.as_bytes())?;
    Ok(md)
}
