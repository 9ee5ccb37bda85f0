//! `demo_config.json`: the world, the CLIP and the experiment the demo runs, resolved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use close_clip::train::TrainConfig as ClipTrainConfig;
use close_data::world::WorldConfig;
use close_experiment::{ExperimentConfig, TaskSettings};
use close_model::adapter::AdapterKind;
use close_model::config::TrainConfig;
use close_model::task::Task;

/// Everything the demo does (saved as `demo_config.json` in the output dir).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub seed: u64,
    pub quick: bool,
    pub world: WorldConfig,
    pub clip: ClipTrainConfig,
    pub experiment: ExperimentConfig,
}

/// Per-task settings of the demo's from-scratch T5s. The amounts of work were measured on
/// the shapes world (docs/demo.md): every run's val metric still rose in its last epoch at
/// fewer epochs, and VQA learns to read the image slowest.
fn task_settings(task: Task, quick: bool) -> TaskSettings {
    let small = TrainConfig::small(task);
    let (epochs, max_examples, max_val) = match (quick, task) {
        (true, Task::Vqa | Task::Ve) => (1, 1200, 300),
        (true, _) => (1, 1200, 100),
        (false, Task::Vqa) => (14, 5000, 2000),
        (false, Task::Ve) => (6, 2500, 2000),
        (false, Task::SCap | Task::MCap) => (7, 1600, 300),
        (false, _) => (6, 2500, 300),
    };
    let sweep = match (quick, task) {
        (true, _) => vec![0.0, 0.08],
        // The paper's w are for 768-d vectors; the noise's norm is w·√d, so the same relative
        // noise at d = 128 is a 2.4× larger w.
        (false, Task::Vqa | Task::Ve) => vec![0.0, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24],
        (false, _) => vec![0.0, 0.02, 0.04, 0.08, 0.12, 0.16],
    };
    TaskSettings {
        sweep,
        epochs,
        batch_size: small.batch_size,
        lr: 3e-3,
        warmup_steps: small.warmup_steps,
        max_examples_per_epoch: Some(max_examples),
        targets_per_step: None,
        max_val_examples: Some(max_val),
        t5_config: None,
    }
}

impl DemoConfig {
    /// The full demo or `--quick`. Every amount of work is fixed here; the CLIP trains its
    /// planned epochs on any machine.
    pub fn new(quick: bool, seed: u64) -> Self {
        let world = WorldConfig {
            seed,
            images: if quick { 1000 } else { 6000 },
            val_fraction: if quick { 0.1 } else { 0.05 },
            test_fraction: if quick { 0.1 } else { 0.05 },
            hypotheses_per_label: 2,
            ..WorldConfig::default()
        };
        let clip = ClipTrainConfig {
            seed,
            eval_split: "test".into(),
            epochs: if quick { 10 } else { 15 },
            batch_size: 32,
            warmup_frac: if quick { 0.2 } else { 0.05 },
            ..Default::default()
        };
        let tasks = [Task::SCap, Task::MCap, Task::Vqa, Task::Ve, Task::Style];
        let mut experiment =
            ExperimentConfig::new(TrainConfig::small(Task::SCap).t5, &tasks, quick, seed);
        experiment.tasks = tasks
            .iter()
            .map(|&t| (t, task_settings(t, quick)))
            .collect::<BTreeMap<_, _>>();
        experiment.adapters = if quick {
            Vec::new()
        } else {
            vec![
                AdapterKind::MeanShift,
                AdapterKind::Cov,
                AdapterKind::Linear,
            ]
        };
        experiment.jobs = 2;
        Self {
            seed,
            quick,
            world,
            clip,
            experiment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_validates_and_reads_back() {
        for quick in [true, false] {
            let cfg = DemoConfig::new(quick, 2);
            cfg.experiment.validate().unwrap();
            assert_eq!(
                cfg.clip.max_train_seconds, None,
                "the CLIP's work must not depend on the machine's speed"
            );
            let back: DemoConfig =
                serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg);
            assert_eq!(cfg.experiment.adapters.is_empty(), quick);
        }
        let full = DemoConfig::new(false, 0);
        assert_eq!(full.experiment.settings(Task::Vqa).unwrap().epochs, 14);
        assert_eq!(
            full.experiment
                .settings(Task::SCap)
                .unwrap()
                .max_examples_per_epoch,
            Some(1600)
        );
    }
}
