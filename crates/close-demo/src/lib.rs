//! `close demo`: the whole CLOSE method end-to-end on the built-in shapes world.
//!
//! Stages: generate a world → train a CLIP on its train pairs (retrieval R@1) → measure the
//! modality gap ([`gap`]) → build embedding caches → train text-only CLOSE models for every
//! task with the paper's ablations (image-trained upper bound, no noise, w = 0.08, tuned
//! noise, mean-shift, cov, linear) → evaluate on the test images → `results.json`,
//! `REPORT.md` and PNG figures ([`plot`]).

pub use close_clip::gap;
pub mod results;

pub mod pipeline;
pub mod probes;
pub mod report;

pub use pipeline::{run_demo, DemoConfig, DemoOutput};
