//! One inference thread per served model, with dynamic batching.
//!
//! Requests are queued as [`Job`]s. The worker blocks for the first job, then takes every
//! job already waiting (up to `max_batch`) with the same decoding options and runs them as
//! one batch: under load the queue fills while the previous batch computes, so batches grow
//! with the load and an idle server adds no latency. Jobs whose client has gone away
//! (timeout, disconnect) are dropped unrun. Inference never runs on the async runtime.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::predictor::{DecodeOptions, Prediction, Predictor, Query};

/// A queued request.
pub struct Job {
    pub query: Query,
    pub opts: DecodeOptions,
    pub reply: oneshot::Sender<Result<Prediction, JobError>>,
}

/// Why a job failed: `client` when the input was unusable for the model (a 422 for HTTP),
/// otherwise a server-side failure (500).
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub client: bool,
    pub message: String,
}

impl JobError {
    fn server(message: impl Into<String>) -> Self {
        Self {
            client: false,
            message: message.into(),
        }
    }
}

/// Handle to a model's worker thread. Dropping it closes the queue; the thread finishes the
/// jobs already queued and exits.
pub struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start a worker thread owning `predictor`.
    pub fn spawn(mut predictor: Box<dyn Predictor>, max_batch: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let name = format!("close-serve:{}", predictor.info().name);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let max_batch = max_batch.max(1);
            let mut pending: VecDeque<Job> = VecDeque::new();
            loop {
                let first = match pending.pop_front() {
                    Some(j) => j,
                    None => match rx.recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    },
                };
                // Everything already waiting joins the batch if it decodes the same way.
                while let Ok(j) = rx.try_recv() {
                    pending.push_back(j);
                }
                let opts = first.opts;
                let mut batch = vec![first];
                let mut rest = VecDeque::with_capacity(pending.len());
                while let Some(j) = pending.pop_front() {
                    if batch.len() < max_batch && j.opts == opts {
                        batch.push(j);
                    } else {
                        rest.push_back(j);
                    }
                }
                pending = rest;
                batch.retain(|j| !j.reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                run_batch(predictor.as_mut(), batch, &opts);
            }
        })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a job; `Err` gives it back if the worker has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_batch(predictor: &mut dyn Predictor, batch: Vec<Job>, opts: &DecodeOptions) {
    let queries: Vec<Query> = batch.iter().map(|j| j.query.clone()).collect();
    let result = guarded(predictor, &queries, opts);
    match result {
        Ok(preds) if preds.len() == batch.len() => {
            for (job, p) in batch.into_iter().zip(preds) {
                let _ = job.reply.send(Ok(p));
            }
        }
        Ok(preds) => {
            let msg = format!(
                "model returned {} predictions for {} queries",
                preds.len(),
                batch.len()
            );
            tracing::error!("{msg}");
            for job in batch {
                let _ = job.reply.send(Err(JobError::server(msg.clone())));
            }
        }
        Err(e) if batch.len() == 1 => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Err(_) => {
            // One bad query must not fail its batch neighbours: retry one by one.
            for job in batch {
                let r =
                    guarded(predictor, std::slice::from_ref(&job.query), opts).and_then(|mut v| {
                        v.pop()
                            .ok_or_else(|| JobError::server("model returned no prediction"))
                    });
                let _ = job.reply.send(r);
            }
        }
    }
}

/// `predict` with panics turned into errors, so a model bug cannot kill the worker.
fn guarded(
    predictor: &mut dyn Predictor,
    queries: &[Query],
    opts: &DecodeOptions,
) -> Result<Vec<Prediction>, JobError> {
    use close_core::Error;
    match std::panic::catch_unwind(AssertUnwindSafe(|| predictor.predict(queries, opts))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let client = matches!(
                e,
                Error::Invalid(_)
                    | Error::Config { .. }
                    | Error::Image { .. }
                    | Error::Tokenizer(_)
            );
            Err(JobError {
                client,
                message: format!("{e}"),
            })
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("predictor panicked: {msg}");
            Err(JobError::server(format!(
                "internal error in the model: {msg}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::ColorPredictor;
    use crate::predictor::Task;
    use std::time::Duration;

    #[test]
    fn queued_jobs_are_batched_and_answered_in_order() {
        let p = ColorPredictor::new("m", Task::Caption)
            .with_cost(Duration::from_millis(50), Duration::ZERO);
        let sizes = p.batch_sizes.clone();
        let w = Worker::spawn(Box::new(p), 4).unwrap();
        let opts = DecodeOptions {
            beams: 1,
            max_tokens: 8,
            neighbors: 0,
        };
        let colours = [
            [230, 30, 30],
            [30, 60, 230],
            [40, 180, 60],
            [235, 220, 50],
            [15, 15, 15],
            [245, 245, 245],
        ];
        let mut rxs = Vec::new();
        for c in colours {
            let (tx, rx) = oneshot::channel();
            let query = Query {
                image: image::RgbImage::from_pixel(4, 4, image::Rgb(c)),
                text: None,
            };
            assert!(w
                .submit(Job {
                    query,
                    opts,
                    reply: tx
                })
                .is_ok());
            rxs.push(rx);
        }
        let answers: Vec<String> = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap().answer().to_string())
            .collect();
        assert_eq!(
            answers,
            [
                "a red image",
                "a blue image",
                "a green image",
                "a yellow image",
                "a black image",
                "a white image"
            ]
        );
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 6);
        assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
        assert!(sizes.len() < 6, "no batching happened: {sizes:?}");
    }

    struct Panicky;
    impl Predictor for Panicky {
        fn info(&self) -> crate::predictor::ModelInfo {
            ColorPredictor::new("p", Task::Caption).info()
        }
        fn predict(
            &mut self,
            q: &[Query],
            _: &DecodeOptions,
        ) -> close_core::Result<Vec<Prediction>> {
            if q.iter().any(|q| q.image.width() == 1) {
                panic!("boom");
            }
            Ok(q.iter()
                .map(|_| Prediction {
                    beams: vec![],
                    neighbors: vec![],
                })
                .collect())
        }
    }

    #[test]
    fn a_panicking_model_answers_with_an_error_and_keeps_serving() {
        let w = Worker::spawn(Box::new(Panicky), 8).unwrap();
        let opts = DecodeOptions {
            beams: 1,
            max_tokens: 8,
            neighbors: 0,
        };
        let send = |side: u32| {
            let (tx, rx) = oneshot::channel();
            let query = Query {
                image: image::RgbImage::new(side, side),
                text: None,
            };
            assert!(w
                .submit(Job {
                    query,
                    opts,
                    reply: tx
                })
                .is_ok());
            rx
        };
        let bad = send(1);
        assert!(bad
            .blocking_recv()
            .unwrap()
            .unwrap_err()
            .message
            .contains("boom"));
        let good = send(2);
        assert!(good.blocking_recv().unwrap().is_ok());
    }
}
