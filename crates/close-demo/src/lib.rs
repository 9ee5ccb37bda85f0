//! `close demo`: the whole CLOSE method end-to-end on the built-in shapes world.
//!
//! Make a world → train a CLIP on its train pairs → run `close experiment` on the world
//! with that CLIP (caches, adapters, the image-trained upper bound, text-only runs with the
//! paper's ablations, the noise tuned on val, test metrics, `results.json`, `REPORT.md`,
//! PNGs) → zero-shot probes of what the CLIP's image vectors hold.

pub mod config;
pub mod probes;
pub mod report;
pub mod run;

pub use config::DemoConfig;
pub use run::{run_demo, DemoOutput};
