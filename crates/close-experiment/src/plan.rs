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
    let adapters = match cfg.tasks.get(&task) {
        Some(s) => s.adapter_rows(&cfg.adapters),
        None => &cfg.adapters,
    };
    for &kind in adapters {
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

#[cfg(test)]
mod tests {
    use super::*;
    use close_model::config::TrainConfig;
    use close_model::task::{ClipSource, TrainExample};

    fn cfg(quick: bool) -> ExperimentConfig {
        let tasks = [Task::SCap, Task::MCap, Task::Vqa, Task::Ve, Task::Style];
        ExperimentConfig::new(TrainConfig::small(Task::SCap).t5, &tasks, quick, 0)
    }

    fn uppers(cfg: &ExperimentConfig, t: Task) -> usize {
        plans(cfg, t, true)
            .iter()
            .filter(|p| p.train_on == TrainOn::Images)
            .count()
    }

    #[test]
    fn mcap_reuses_the_scap_upper_bound_only_with_the_same_recipe() {
        for quick in [false, true] {
            let c = cfg(quick);
            assert!(mcap_shares_scap_upper(&c));
            assert_eq!((uppers(&c, Task::SCap), uppers(&c, Task::MCap)), (1, 0));
        }
        let mut c = cfg(false);
        c.tasks.get_mut(&Task::MCap).unwrap().epochs = 3;
        assert_eq!(uppers(&c, Task::MCap), 1);
        let mut c = cfg(false);
        c.tasks.get_mut(&Task::MCap).unwrap().targets_per_step = Some(1);
        assert_eq!(uppers(&c, Task::MCap), 1);
        let mut c = cfg(false);
        c.tasks.remove(&Task::SCap);
        assert_eq!(uppers(&c, Task::MCap), 1);
        // No image data (style, or no training image embedded): no upper bound.
        assert_eq!(
            plans(&cfg(false), Task::Vqa, false)
                .iter()
                .filter(|p| p.train_on == TrainOn::Images)
                .count(),
            0
        );
    }

    #[test]
    fn the_sweep_always_has_no_noise_and_w_008_then_the_adapter_rows() {
        let c = cfg(false);
        let ws = |c: &ExperimentConfig, t| -> Vec<f64> {
            plans(c, t, true)
                .iter()
                .filter(|p| {
                    p.train_on == TrainOn::Text
                        && matches!(p.adapter, AdapterKind::None | AdapterKind::Noise)
                })
                .map(|p| p.noise)
                .collect()
        };
        assert_eq!(ws(&c, Task::SCap), vec![0.0, 0.02, 0.04, 0.08, 0.12, 0.16]);
        assert_eq!(ws(&c, Task::Ve).last(), Some(&0.24));
        let mut c2 = c.clone();
        c2.tasks.get_mut(&Task::SCap).unwrap().sweep = vec![0.0, 0.3];
        assert_eq!(ws(&c2, Task::SCap), vec![0.0, 0.3, 0.08]);
        let adapters: Vec<(AdapterKind, f64)> = plans(&c, Task::Vqa, true)
            .iter()
            .filter(|p| p.adapter.needs_stats())
            .map(|p| (p.adapter, p.noise))
            .collect();
        assert_eq!(
            adapters,
            vec![
                (AdapterKind::MeanShift, 0.04),
                (AdapterKind::Cov, 0.04),
                (AdapterKind::Linear, 0.04)
            ]
        );
        let mut only = c.clone();
        only.tasks.get_mut(&Task::Vqa).unwrap().adapters = Some(vec![AdapterKind::Linear]);
        only.tasks.get_mut(&Task::Ve).unwrap().adapters = Some(Vec::new());
        let kinds = |t| -> Vec<AdapterKind> {
            plans(&only, t, true)
                .iter()
                .filter(|p| p.adapter.needs_stats())
                .map(|p| p.adapter)
                .collect()
        };
        assert_eq!(kinds(Task::Vqa), vec![AdapterKind::Linear]);
        assert!(kinds(Task::Ve).is_empty());
        assert_eq!(kinds(Task::SCap).len(), 3);
        assert!(plans(&cfg(true), Task::SCap, true)
            .iter()
            .all(|p| !p.adapter.needs_stats()));
    }

    fn data(clip: impl Fn(usize) -> ClipSource, targets: &[usize]) -> TaskData {
        TaskData {
            train: targets
                .iter()
                .enumerate()
                .map(|(i, &k)| TrainExample {
                    clip: clip(i),
                    input_text: None,
                    targets: (0..k).map(|j| format!("caption {j}")).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn text_runs_get_as_many_targets_an_epoch_as_the_image_run() {
        let images = data(|i| ClipSource::Image(i.to_string()), &[5, 5, 5, 5]);
        let scap = data(|i| ClipSource::Texts(vec![i.to_string()]), &[1; 20]);
        let mcap = data(|i| ClipSource::Texts(vec![i.to_string()]), &[4; 20]);
        let mut c = cfg(false);
        assert_eq!(targets_per_example(&images, None), 5.0);
        assert_eq!(targets_per_example(&images, Some(2)), 2.0);
        assert_eq!(text_run_scale(&c, Task::SCap, &scap, Some(&images)), 5.0);
        assert_eq!(text_run_scale(&c, Task::MCap, &mcap, Some(&images)), 1.25);
        assert_eq!(text_run_scale(&c, Task::Style, &scap, None), 1.0);
        assert_eq!(text_run_scale(&c, Task::SCap, &images, Some(&images)), 1.0);
        c.tasks.get_mut(&Task::SCap).unwrap().targets_per_step = Some(1);
        assert_eq!(text_run_scale(&c, Task::SCap, &scap, Some(&images)), 1.0);
        c.equal_targets = false;
        assert_eq!(text_run_scale(&c, Task::MCap, &mcap, Some(&images)), 1.0);
    }
}
