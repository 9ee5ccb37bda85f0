//! Stage: the table rows. Per task: the image-trained upper bound (m-cap's is the s-cap run
//! when they share the recipe), every run, and the "tuned noise" row, the sweep point with
//! the best **val** metric, reported on test.

use close_model::task::{Task, TrainOn};

use crate::config::ExperimentConfig;
use crate::plan::{mcap_shares_scap_upper, SHARED_UPPER_LABEL};
use crate::results::{RunRecord, RunResult};

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

/// Every task's rows, in the order of `tasks`.
pub fn table_rows(cfg: &ExperimentConfig, tasks: &[Task], records: &[RunRecord]) -> Vec<RunResult> {
    let mut rows = Vec::new();
    for &task in tasks {
        let of_task: Vec<&RunRecord> = records.iter().filter(|r| r.result.task == task).collect();
        if task == Task::MCap && mcap_shares_scap_upper(cfg) {
            let upper = records
                .iter()
                .find(|r| r.result.task == Task::SCap && r.result.train_on == TrainOn::Images);
            if let Some(u) = upper {
                let mut r = u.result.clone();
                r.task = task;
                r.label = Some(SHARED_UPPER_LABEL.to_string());
                rows.push(r);
            }
        }
        rows.extend(of_task.iter().map(|r| r.result.clone()));
        if let Some(b) = tuned(&of_task) {
            let mut r = b.result.clone();
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
            },
            val,
            val_stderr: None,
            losses: Vec::new(),
            seconds: 1.0,
            run_dir: "r".into(),
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
        let rows = table_rows(&cfg, &[Task::SCap, Task::MCap], &records);
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
