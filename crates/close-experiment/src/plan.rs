//! The runs of the paper's Tables 1, 3 and 4 for one task: the image-trained upper bound,
//! the text-only noise sweep (no noise and w = 0.08 among it) and the adapter rows. Pure
//! functions of the config and the loaded data.

use close_model::adapter::AdapterKind;
use close_model::task::{Task, TaskData, TrainOn};

use crate::config::ExperimentConfig;

/// One planned CLOSE run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub task: Task,
    pub train_on: TrainOn,
    pub adapter: AdapterKind,
    pub noise: f64,
    pub label: String,
}

/// The label of the m-cap upper bound when it is the s-cap run.
pub const SHARED_UPPER_LABEL: &str =
    "image-trained upper bound (the s-cap run: same images, captions and recipe)";

/// Whether m-cap's image-trained upper bound is the s-cap one. Trained on images, both
/// tasks are the same run (image → all its captions, as the reference's
/// `--train_on_images` and the paper's Table 1, which reports one upper bound for both), so
/// it is trained once when the two tasks share the recipe.
pub fn mcap_shares_scap_upper(cfg: &ExperimentConfig) -> bool {
    match (cfg.tasks.get(&Task::SCap), cfg.tasks.get(&Task::MCap)) {
        (Some(s), Some(m)) => {
            s.epochs == m.epochs
                && s.max_examples_per_epoch == m.max_examples_per_epoch
                && s.targets_per_step == m.targets_per_step
                && s.max_val_examples == m.max_val_examples
                && s.batch_size == m.batch_size
                && s.lr == m.lr
                && s.warmup_steps == m.warmup_steps
                && s.t5_config == m.t5_config
        }
        _ => false,
    }
}

/// The runs of `task`; `with_upper`: the task has image-trained data.
pub fn plans(cfg: &ExperimentConfig, task: Task, with_upper: bool) -> Vec<Plan> {
    let sweep = cfg
        .tasks
        .get(&task)
        .map(|s| s.sweep.clone())
        .unwrap_or_else(|| vec![0.0, 0.08]);
    let p = |train_on, adapter, noise: f64, label: &str| Plan {
        task,
        train_on,
        adapter,
        noise,
        label: label.to_string(),
    };
    let mut v = Vec::new();
    if with_upper && !(task == Task::MCap && mcap_shares_scap_upper(cfg)) {
        v.push(p(
            TrainOn::Images,
            AdapterKind::None,
            0.0,
            "image-trained upper bound",
        ));
    }
    for &w in &sweep {
        if w == 0.0 {
            v.push(p(
                TrainOn::Text,
                AdapterKind::None,
                0.0,
                "text only, no noise",
            ));
        } else {
            v.push(p(
                TrainOn::Text,
                AdapterKind::Noise,
                w,
                &format!("text only, w = {w}"),
            ));
        }
    }
    if !sweep.contains(&0.08) {
        v.push(p(
            TrainOn::Text,
            AdapterKind::Noise,
            0.08,
            "text only, w = 0.08",
        ));
    }
    for &kind in &cfg.adapters {
        let label = match kind {
            AdapterKind::MeanShift => "mean-shift + noise",
            AdapterKind::Cov => "cov (1% pairs) + noise",
            _ => "linear (1% pairs) + noise",
        };
        v.push(p(TrainOn::Text, kind, task.default_noise(), label));
    }
    v
}

/// Targets an example trains on per step, on average over `data`'s training examples.
pub fn targets_per_example(data: &TaskData, per_step: Option<usize>) -> f64 {
    if data.train.is_empty() {
        return 0.0;
    }
    let total: usize = data
        .train
        .iter()
        .map(|e| per_step.map_or(e.targets.len(), |k| e.targets.len().min(k)))
        .sum();
    total as f64 / data.train.len() as f64
}

/// The factor on a text-only run's examples-per-epoch cap that gives it as many targets per
/// epoch as the task's image-trained run ([`ExperimentConfig::equal_targets`]); 1 when off,
/// for tasks without image runs, or when both kinds of example carry about as many targets.
pub fn text_run_scale(
    cfg: &ExperimentConfig,
    task: Task,
    text: &TaskData,
    image: Option<&TaskData>,
) -> f64 {
    let Some(image) = image else { return 1.0 };
    if !cfg.equal_targets {
        return 1.0;
    }
    let k = cfg.tasks.get(&task).and_then(|s| s.targets_per_step);
    let (t, i) = (targets_per_example(text, k), targets_per_example(image, k));
    if t <= 0.0 || i <= 0.0 || (i / t - 1.0).abs() < 0.05 {
        1.0
    } else {
        i / t
    }
}
