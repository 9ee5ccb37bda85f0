//! `experiment.json`: every setting of an experiment in one file, written into OUT and read
//! back by `close experiment --config`. The amount of work of every stage (epochs, examples
//! per epoch, val items, sweep) is fixed here, never by the machine's speed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use close_core::{Error, Result};
use close_model::adapter::AdapterKind;
use close_model::config::{T5Init, TrainConfig};
use close_model::task::Task;
use close_t5::T5Config;

/// The training and evaluation settings of one task's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSettings {
    /// Noise values w trained text-only (0 = the no-noise row); the best on val is the
    /// "tuned noise" row. w = 0.08 is always run.
    pub sweep: Vec<f64>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    pub warmup_steps: u64,
    /// Cap on the examples an epoch draws, counted in the image-trained run's examples
    /// (see [`ExperimentConfig::equal_targets`]). None: all.
    pub max_examples_per_epoch: Option<usize>,
    /// Targets of an example trained per step (None: all, as the reference).
    #[serde(default)]
    pub targets_per_step: Option<usize>,
    /// Val items decoded after each epoch to keep the best epoch (None: all).
    pub max_val_examples: Option<usize>,
    /// Check val only every this many epochs, and after the last (None: every epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_interval: Option<usize>,
    /// Architecture of this task's from-scratch T5 (None: the experiment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t5_config: Option<T5Config>,
    /// Adapter rows of this task, from the experiment's `adapters` (None: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<AdapterKind>>,
}

impl TaskSettings {
    /// The adapter rows this task runs.
    pub fn adapter_rows<'a>(&'a self, all: &'a [AdapterKind]) -> &'a [AdapterKind] {
        self.adapters.as_deref().unwrap_or(all)
    }
}

/// Everything an experiment does, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Seed of every run (initial weights, shuffling, noise) and of the adapter pair sample.
    pub seed: u64,
    /// T5: from scratch (one tokenizer of `vocab` pieces trained per task) or pretrained.
    pub t5: T5Init,
    /// The tasks to run and their settings (tasks whose files are missing are skipped).
    pub tasks: BTreeMap<Task, TaskSettings>,
    /// Beam width of the reported val and test metrics (the reference's 5).
    pub beams: usize,
    /// Beam width of each epoch's val check that keeps the best epoch.
    pub val_beams: usize,
    /// Adapter rows (mean-shift, cov, linear), each with the task's default noise.
    pub adapters: Vec<AdapterKind>,
    /// Fraction of the training (image, caption) pairs that `cov` and `linear` are fitted on
    /// (the paper's 1%); the same pairs for both.
    pub paired_fraction: f64,
    /// Give text-only runs the image-trained run's training counted in targets: their
    /// examples-per-epoch cap is scaled by (targets per image example) / (targets per text
    /// example). An image example carries all of its captions, an s-cap text example one;
    /// the reference trains on all examples, so both see every caption once an epoch.
    pub equal_targets: bool,
    /// CLOSE runs trained side by side (each on its own share of the cores).
    pub jobs: usize,
    /// Embedding batch sizes (images, texts).
    pub embed_batch: (usize, usize),
}

/// The default sweep: the paper's noise range around its defaults; VQA and VE go on to 0.24.
fn default_sweep(task: Task, quick: bool) -> Vec<f64> {
    match (quick, task) {
        (true, _) => vec![0.0, 0.08],
        (false, Task::Vqa | Task::Evqa | Task::EvqaExplain | Task::Ve) => {
            vec![0.0, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24]
        }
        (false, _) => vec![0.0, 0.02, 0.04, 0.08, 0.12, 0.16],
    }
}

impl ExperimentConfig {
    /// Defaults for `t5`: the reference's recipe for a pretrained T5 (AdamW 3e-4, 8 epochs,
    /// batch 128 / 32 for m-cap, ≤ 200k examples an epoch, beam 5), [`TrainConfig::small`]'s
    /// for one from scratch. `quick`: one epoch of ≤ 1,200 examples, w ∈ {0, 0.08}, ≤ 200 val
    /// items, no adapter rows.
    pub fn new(t5: T5Init, tasks: &[Task], quick: bool, seed: u64) -> Self {
        let settings = tasks
            .iter()
            .map(|&task| {
                let base = base_train_config(task, &t5);
                let s = TaskSettings {
                    sweep: default_sweep(task, quick),
                    epochs: if quick { 1 } else { base.epochs },
                    batch_size: base.batch_size,
                    lr: base.optim.lr,
                    warmup_steps: base.warmup_steps,
                    max_examples_per_epoch: if quick {
                        Some(1200)
                    } else {
                        base.max_examples_per_epoch
                    },
                    targets_per_step: None,
                    max_val_examples: if quick {
                        Some(200)
                    } else {
                        base.max_val_examples
                    },
                    val_interval: None,
                    t5_config: None,
                    adapters: None,
                };
                (task, s)
            })
            .collect();
        let pretrained = matches!(t5, T5Init::Pretrained { .. });
        Self {
            seed,
            t5,
            tasks: settings,
            beams: 5,
            val_beams: if pretrained { 5 } else { 1 },
            adapters: if quick {
                Vec::new()
            } else {
                vec![
                    AdapterKind::MeanShift,
                    AdapterKind::Cov,
                    AdapterKind::Linear,
                ]
            },
            paired_fraction: 0.01,
            equal_targets: true,
            jobs: if pretrained { 1 } else { 2 },
            embed_batch: (128, 256),
        }
    }

    /// Check every setting; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("beams", self.beams),
            ("val_beams", self.val_beams),
            ("jobs", self.jobs),
            ("embed_batch", self.embed_batch.0.min(self.embed_batch.1)),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(Error::config(k, "must be positive"));
            }
        }
        if !(0.0..=1.0).contains(&self.paired_fraction) || self.paired_fraction == 0.0 {
            return Err(Error::config("paired_fraction", "must be in (0, 1]"));
        }
        if self.adapters.iter().any(|k| !k.needs_stats()) {
            return Err(Error::config(
                "adapters",
                "only mean-shift, cov and linear are adapter rows (noise is the sweep)",
            ));
        }
        for (task, s) in &self.tasks {
            let key = |k: &str| format!("tasks.{task}.{k}");
            if s.sweep.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(Error::config(key("sweep"), "noise values must be ≥ 0"));
            }
            if let Some(bad) = s
                .adapter_rows(&self.adapters)
                .iter()
                .find(|k| !self.adapters.contains(k))
            {
                return Err(Error::config(
                    key("adapters"),
                    format!("{bad} is not among the experiment's adapters (add it there)"),
                ));
            }
            self.train_config(*task, s)
                .validate()
                .map_err(|e| match e {
                    Error::Config { key: k, msg } => Error::config(key(&k), msg),
                    other => other,
                })?;
        }
        Ok(())
    }

    /// The trainer's config of a run of `task` before the run's own choices (train on,
    /// adapter, noise, tokenizer, cap scale) are applied.
    pub fn train_config(&self, task: Task, s: &TaskSettings) -> TrainConfig {
        let mut tc = base_train_config(task, &self.t5);
        tc.seed = self.seed;
        tc.epochs = s.epochs;
        tc.batch_size = s.batch_size;
        tc.optim.lr = s.lr;
        tc.warmup_steps = s.warmup_steps;
        tc.max_examples_per_epoch = s.max_examples_per_epoch;
        tc.targets_per_step = s.targets_per_step;
        tc.max_val_examples = s.max_val_examples;
        tc.val_interval = s.val_interval.unwrap_or(1);
        tc.beams = self.val_beams;
        if let (T5Init::Scratch { config, .. }, Some(c)) = (&mut tc.t5, &s.t5_config) {
            *config = c.clone();
        }
        tc
    }

    /// A task's settings, or a config error naming it.
    pub fn settings(&self, task: Task) -> Result<&TaskSettings> {
        self.tasks
            .get(&task)
            .ok_or_else(|| Error::config("tasks", format!("no settings for task {task}")))
    }
}

/// [`TrainConfig::reference`] for a pretrained T5, [`TrainConfig::small`] (with `t5`'s
/// architecture and vocabulary) for one trained from scratch.
fn base_train_config(task: Task, t5: &T5Init) -> TrainConfig {
    match t5 {
        T5Init::Pretrained { dir } => TrainConfig::reference(task, dir.clone()),
        T5Init::Scratch { config, vocab, .. } => {
            let mut tc = TrainConfig::small(task);
            tc.t5 = T5Init::Scratch {
                config: config.clone(),
                vocab: *vocab,
                tokenizer: None,
            };
            tc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> T5Init {
        TrainConfig::small(Task::SCap).t5
    }

    #[test]
    fn reads_back_what_it_writes_and_validates_keys() {
        let cfg = ExperimentConfig::new(scratch(), &Task::ALL, false, 3);
        cfg.validate().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"s-cap\""), "{json}");
        let back: ExperimentConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        let mut bad = cfg.clone();
        bad.tasks.get_mut(&Task::Vqa).unwrap().epochs = 0;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("tasks.vqa.epochs"), "{e}");
        let mut bad = cfg.clone();
        bad.adapters.push(AdapterKind::Noise);
        assert!(bad.validate().unwrap_err().to_string().contains("adapters"));
        let mut some = cfg;
        some.adapters = vec![AdapterKind::MeanShift];
        some.tasks.get_mut(&Task::Ve).unwrap().adapters = Some(vec![AdapterKind::Linear]);
        let e = some.validate().unwrap_err().to_string();
        assert!(
            e.contains("tasks.ve.adapters") && e.contains("linear"),
            "{e}"
        );
    }

    #[test]
    fn pretrained_t5_gets_the_reference_recipe() {
        let t5 = T5Init::Pretrained {
            dir: "t5-base".into(),
        };
        let cfg = ExperimentConfig::new(t5, &[Task::SCap, Task::MCap], false, 0);
        let s = cfg.settings(Task::MCap).unwrap();
        assert_eq!((s.epochs, s.batch_size, s.lr), (8, 32, 3e-4));
        assert_eq!(cfg.settings(Task::SCap).unwrap().batch_size, 128);
        assert_eq!(cfg.val_beams, 5);
        let quick = ExperimentConfig::new(scratch(), &[Task::Ve], true, 0);
        assert_eq!(quick.settings(Task::Ve).unwrap().sweep, vec![0.0, 0.08]);
        assert!(quick.adapters.is_empty());
    }
}
