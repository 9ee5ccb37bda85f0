//! Datasets in the formats the real benchmarks ship, and the built-in shapes world.
//!
//! Loaders: [`coco`] (Karpathy `dataset_coco.json`, COCO captions annotations, COCO results).
//! Every loader names the file (and line, for JSONL) in its errors.

pub mod coco;
