//! Datasets in the formats the real benchmarks ship, and the built-in shapes world.
//!
//! Loaders (each names the file and line of a malformed record, or skips and counts it when
//! [`LoadOptions::skip_bad`] is set, returning a [`LoadReport`]):
//! - [`coco`]: Karpathy `dataset_coco.json`, COCO caption annotations, COCO caption results;
//! - [`vqa`]: VQA v2 questions / annotations / results, the join with the captions of each
//!   image (CLOSE's text stand-in), VQA-E;
//! - [`snli`]: SNLI and SNLI-VE jsonl;
//! - [`news`]: Visual News data files and their articles;
//! - [`text`]: plain one-caption-per-line corpora.
//!
//! [`world`] generates the shapes world (images + all of the above formats) from a seed.

pub mod bias;
pub mod coco;
pub mod load;
pub mod news;
pub mod snli;
pub mod text;
pub mod vqa;
pub mod world;

pub use load::{LoadOptions, LoadReport, Skipped};
