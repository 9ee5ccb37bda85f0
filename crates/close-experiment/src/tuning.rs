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
