//! Stage: the table rows. Per task: the image-trained upper bound (m-cap's is the s-cap run
//! when they share the recipe), every run, and the "tuned noise" row, the sweep point with
//! the best **val** metric, reported on test. Each text-only row carries the standard error
//! of its ratio to the upper bound, from the two runs' scores on the same test items.

use std::collections::BTreeMap;
use std::path::PathBuf;

use close_model::task::{Task, TrainOn};

use crate::config::ExperimentConfig;
use crate::plan::{mcap_shares_scap_upper, SHARED_UPPER_LABEL};
use crate::results::{paired_ratio_stderr, RunRecord, RunResult};

/// Per-item test scores of runs, by run directory.
pub type TestItems = BTreeMap<PathBuf, Vec<f64>>;

/// The sweep point of `records` with the best val metric.
pub fn tuned<'a>(records: &[&'a RunRecord]) -> Option<&'a RunRecord> {
    records
        .iter()
        .copied()
        .filter(|r| r.result.is_sweep_point() && r.val.is_some())
        .max_by(|a, b| {
            a.val
                .partial_cmp(&b.val)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

/// The image-trained run of `task`: its own, or s-cap's when m-cap shares it.
fn upper_bound<'a>(
    cfg: &ExperimentConfig,
    task: Task,
    records: &'a [RunRecord],
) -> Option<&'a RunRecord> {
    let of = if task == Task::MCap && mcap_shares_scap_upper(cfg) {
        Task::SCap
    } else {
        task
    };
    records
        .iter()
        .find(|r| r.result.task == of && r.result.train_on == TrainOn::Images)
}

/// Every task's rows, in the order of `tasks`; `items` holds the runs' per-item test scores
/// that the ratios' standard errors come from.
pub fn table_rows(
    cfg: &ExperimentConfig,
    tasks: &[Task],
    records: &[RunRecord],
    items: &TestItems,
) -> Vec<RunResult> {
    let mut rows = Vec::new();
    for &task in tasks {
        let of_task: Vec<&RunRecord> = records.iter().filter(|r| r.result.task == task).collect();
        let upper = upper_bound(cfg, task, records);
        if let Some(u) = upper.filter(|u| u.result.task != task) {
            let mut r = u.result.clone();
            r.task = task;
            r.label = Some(SHARED_UPPER_LABEL.to_string());
            rows.push(r);
        }
        let upper_items = upper.and_then(|u| items.get(&u.run_dir));
        let row = |rec: &RunRecord| {
            let mut r = rec.result.clone();
            if r.train_on == TrainOn::Text {
                r.ratio_stderr = upper_items
                    .zip(items.get(&rec.run_dir))
                    .and_then(|(u, x)| paired_ratio_stderr(x, u));
            }
            r
        };
        rows.extend(of_task.iter().map(|r| row(r)));
        if let Some(b) = tuned(&of_task) {
            let mut r = row(b);
            r.label = Some(format!("tuned noise (val): w = {}", r.noise));
            rows.push(r);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use close_model::adapter::AdapterKind;
    use close_model::config::TrainConfig;

    fn rec(
        task: Task,
        on: TrainOn,
        adapter: AdapterKind,
        w: f64,
        val: Option<f64>,
        test: f64,
    ) -> RunRecord {
        RunRecord {
            result: RunResult {
                task,
                train_on: on,
                adapter,
                noise: w,
                metrics: [("CIDEr".to_string(), serde_json::json!(test))]
                    .into_iter()
                    .collect(),
                label: Some(format!("{adapter:?} {w}")),
                ratio_stderr: None,
            },
            val,
            val_stderr: None,
            losses: Vec::new(),
            seconds: 1.0,
            run_dir: format!("{task}-{on:?}-{adapter:?}-{w}").into(),
        }
    }

    #[test]
    fn tuned_is_the_best_val_sweep_point_and_mcap_borrows_the_scap_upper_bound() {
        let cfg = ExperimentConfig::new(
            TrainConfig::small(Task::SCap).t5,
            &[Task::SCap, Task::MCap],
            false,
            0,
        );
        let records = vec![
            rec(
                Task::SCap,
                TrainOn::Images,
                AdapterKind::None,
                0.0,
                Some(0.9),
                1.0,
            ),
            rec(
                Task::SCap,
                TrainOn::Text,
                AdapterKind::None,
                0.0,
                Some(0.5),
                0.6,
            ),
            rec(
                Task::SCap,
                TrainOn::Text,
                AdapterKind::Noise,
                0.08,
                Some(0.7),
                0.65,
            ),
            // Adapter rows are never picked, however good on val.
            rec(
                Task::SCap,
                TrainOn::Text,
                AdapterKind::MeanShift,
                0.12,
                Some(0.99),
                0.9,
            ),
            rec(
                Task::MCap,
                TrainOn::Text,
                AdapterKind::Noise,
                0.04,
                None,
                0.3,
            ),
        ];
        // Per-item scores of the s-cap upper bound, its w = 0.08 run and the m-cap run.
        let items: TestItems = [
            (&records[0], vec![1.0, 2.0, 3.0]),
            (&records[2], vec![1.0, 1.0, 3.0]),
            (&records[4], vec![0.5, 1.0, 1.5]),
        ]
        .into_iter()
        .map(|(r, v)| (r.run_dir.clone(), v))
        .collect();
        let rows = table_rows(&cfg, &[Task::SCap, Task::MCap], &records, &items);
        let se = |r: &RunResult| r.ratio_stderr;
        assert_eq!(se(&rows[0]), None, "the upper bound has no ratio");
        assert_eq!(se(&rows[1]), None, "no per-item scores of the no-noise run");
        let w08 = paired_ratio_stderr(&[1.0, 1.0, 3.0], &[1.0, 2.0, 3.0]);
        assert!(w08.unwrap() > 0.0);
        assert_eq!(se(&rows[2]), w08);
        assert_eq!(rows[4].is_tuned().then(|| se(&rows[4])), Some(w08));
        // m-cap's runs are paired with the s-cap upper bound they share; proportional scores.
        let mcap = rows
            .iter()
            .find(|r| r.task == Task::MCap && r.train_on == TrainOn::Text);
        assert!(mcap.and_then(se).unwrap().abs() < 1e-12);
        let tuned: Vec<&RunResult> = rows.iter().filter(|r| r.is_tuned()).collect();
        assert_eq!(tuned.len(), 1, "m-cap has no val metric, so no tuned row");
        assert_eq!((tuned[0].task, tuned[0].noise), (Task::SCap, 0.08));
        assert_eq!(
            tuned[0].label.as_deref(),
            Some("tuned noise (val): w = 0.08")
        );
        let mcap_upper = rows
            .iter()
            .find(|r| r.task == Task::MCap && r.train_on == TrainOn::Images)
            .unwrap();
        assert_eq!(mcap_upper.headline(), Some(1.0));
        assert_eq!(rows.len(), 4 + 1 + 2);
    }
}
