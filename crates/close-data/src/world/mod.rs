//! The shapes world: a seeded generator of images, captions, VQA questions, VQA-E
//! explanations, SNLI-VE hypotheses, news stories and a first-person caption style, written
//! in the formats
//! of the real datasets so that every loader and command is the one users run on COCO,
//! VQA v2, VQA-E, SNLI-VE and Visual News.
//!
//! # Layout of a world directory
//! ```text
//! DIR/
//!   world.json                                   config + summary (counts, balance, bias)
//!   scenes.json                                  ground truth of every image (objects, cells)
//!   images/{train,val,test}/shapes_NNNNNNN.png   the images
//!   dataset_coco.json                            Karpathy split file (5 captions per image)
//!   captions_{split}.json                        COCO caption annotations (references)
//!   v2_OpenEnded_mscoco_{split}_questions.json   VQA v2 questions
//!   v2_mscoco_{split}_annotations.json           VQA v2 annotations (10 answers each)
//!   VQA-E_{split}_set.json                       VQA-E explanations (caption that answers)
//!   snli_ve_{split}.jsonl                        SNLI-VE pairs (Flickr30K_ID = image id)
//!   style_train.txt                              first-person captions of train images, text only
//!   style_captions_{val,test}.json               first-person references (COCO format)
//!   visual_news_{split}.json                     Visual News items (image, article, caption)
//!   articles/{split}/news_NNNNNNN.txt            their articles (lead paragraph first)
//!   hard_negatives.json                          exclusive word groups (`close clip train --hard-negatives`)
//! ```
//! Use [`WorldPaths`] (and the `*_FILE` constants / `*_file` functions) rather than
//! spelling names. Same config (seed included) → byte-identical files.

pub use crate::bias;
pub mod entail;
pub mod language;
pub mod news;
pub mod probe;
pub mod questions;
pub mod render;
pub mod scene;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use close_core::progress::Progress;
use close_core::{Error, Result};

use crate::snli::Label;
pub use scene::{Color, Object, Relation, Scene, Shape, Size, CELL_NAMES};

/// The three splits, in id order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];
/// Karpathy split file.
pub const KARPATHY_FILE: &str = "dataset_coco.json";
/// Ground truth of every image.
pub const SCENES_FILE: &str = "scenes.json";
/// Config and summary.
pub const SUMMARY_FILE: &str = "world.json";
/// Style corpus (train images, text only, one caption per line).
pub const STYLE_TRAIN_FILE: &str = "style_train.txt";
/// Groups of mutually exclusive caption words, for `close clip train --hard-negatives`.
pub const HARD_NEGATIVES_FILE: &str = "hard_negatives.json";
/// Image folder (holds one folder per split).
pub const IMAGES_DIR: &str = "images";
/// News article folder (holds one folder per split).
pub const ARTICLES_DIR: &str = "articles";
/// Visual News item ids are this plus the image id: a news item is not a COCO image, and its
/// id must not be taken for one.
pub const NEWS_ID_OFFSET: u64 = 1_000_000_000;

/// `captions_{split}.json` (COCO caption annotations).
pub fn captions_file(split: &str) -> String {
    format!("captions_{split}.json")
}
/// `v2_OpenEnded_mscoco_{split}_questions.json`.
pub fn vqa_questions_file(split: &str) -> String {
    format!("v2_OpenEnded_mscoco_{split}_questions.json")
}
/// `v2_mscoco_{split}_annotations.json`.
pub fn vqa_annotations_file(split: &str) -> String {
    format!("v2_mscoco_{split}_annotations.json")
}
/// `VQA-E_{split}_set.json`.
pub fn vqae_file(split: &str) -> String {
    format!("VQA-E_{split}_set.json")
}
/// `snli_ve_{split}.jsonl`.
pub fn snli_ve_file(split: &str) -> String {
    format!("snli_ve_{split}.jsonl")
}
/// `style_captions_{split}.json` (COCO caption annotations in the first-person style).
pub fn style_refs_file(split: &str) -> String {
    format!("style_captions_{split}.json")
}

/// `visual_news_{split}.json` (Visual News items).
pub fn visual_news_file(split: &str) -> String {
    format!("visual_news_{split}.json")
}

/// Paths of the files of a world directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldPaths {
    pub root: PathBuf,
}

impl WorldPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        WorldPaths { root: root.into() }
    }
    /// The image root that Karpathy `filepath/filename` paths are relative to (= `root`).
    pub fn image_root(&self) -> &Path {
        &self.root
    }
    pub fn images_dir(&self, split: &str) -> PathBuf {
        self.root.join(IMAGES_DIR).join(split)
    }
    pub fn karpathy(&self) -> PathBuf {
        self.root.join(KARPATHY_FILE)
    }
    pub fn scenes(&self) -> PathBuf {
        self.root.join(SCENES_FILE)
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY_FILE)
    }
    pub fn captions(&self, split: &str) -> PathBuf {
        self.root.join(captions_file(split))
    }
    pub fn vqa_questions(&self, split: &str) -> PathBuf {
        self.root.join(vqa_questions_file(split))
    }
    pub fn vqa_annotations(&self, split: &str) -> PathBuf {
        self.root.join(vqa_annotations_file(split))
    }
    pub fn vqae(&self, split: &str) -> PathBuf {
        self.root.join(vqae_file(split))
    }
    pub fn snli_ve(&self, split: &str) -> PathBuf {
        self.root.join(snli_ve_file(split))
    }
    pub fn style_train(&self) -> PathBuf {
        self.root.join(STYLE_TRAIN_FILE)
    }
    pub fn style_refs(&self, split: &str) -> PathBuf {
        self.root.join(style_refs_file(split))
    }
    pub fn hard_negatives(&self) -> PathBuf {
        self.root.join(HARD_NEGATIVES_FILE)
    }
    pub fn visual_news(&self, split: &str) -> PathBuf {
        self.root.join(visual_news_file(split))
    }
    pub fn articles_dir(&self, split: &str) -> PathBuf {
        self.root.join(ARTICLES_DIR).join(split)
    }
}

/// Most SNLI-VE hypotheses per label per image [`WorldConfig::validate`] accepts.
pub const MAX_HYPOTHESES_PER_LABEL: usize = 256;

/// Generator settings (saved in `world.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldConfig {
    pub seed: u64,
    /// Number of images over all splits.
    pub images: usize,
    /// Image side in pixels.
    pub size: u32,
    pub min_objects: usize,
    pub max_objects: usize,
    /// Fractions of the images in val and test (train gets the rest).
    pub val_fraction: f64,
    pub test_fraction: f64,
    pub captions_per_image: usize,
    pub style_captions_per_image: usize,
    /// Colour / shape / size / count / position questions per image (at most one of each),
    /// on top of one existence and one relation question.
    pub extra_questions_per_image: usize,
    /// SNLI-VE hypotheses per label per image.
    pub hypotheses_per_label: usize,
    /// How far an object's centre may move from its cell's centre, as a fraction of the
    /// free space around it (0: every object centred; 1: up to 1 px from the cell's edge).
    /// Less jitter keeps small shapes apart for a small CLIP (docs/world.md).
    pub position_jitter: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: 0,
            images: 10_000,
            size: 64,
            min_objects: 1,
            max_objects: 3,
            val_fraction: 0.1,
            test_fraction: 0.1,
            captions_per_image: 5,
            style_captions_per_image: 5,
            extra_questions_per_image: 5,
            hypotheses_per_label: 1,
            position_jitter: 0.3,
        }
    }
}

impl WorldConfig {
    /// A tiny world for tests (30 images).
    pub fn tiny() -> Self {
        WorldConfig {
            images: 30,
            ..Default::default()
        }
    }

    /// Number of images per split `(train, val, test)`.
    pub fn split_sizes(&self) -> (usize, usize, usize) {
        let val = (self.images as f64 * self.val_fraction).round() as usize;
        let test = (self.images as f64 * self.test_fraction).round() as usize;
        (self.images.saturating_sub(val + test), val, test)
    }

    /// Check every field; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.images == 0 {
            return Err(Error::config("images", "must be at least 1"));
        }
        if !(16..=1024).contains(&self.size) {
            return Err(Error::config(
                "size",
                format!("{} px: must be in 16..=1024", self.size),
            ));
        }
        if self.min_objects == 0 || self.min_objects > self.max_objects {
            return Err(Error::config(
                "min_objects",
                format!(
                    "{}: must be in 1..=max_objects ({})",
                    self.min_objects, self.max_objects
                ),
            ));
        }
        if self.max_objects > 9 {
            return Err(Error::config(
                "max_objects",
                format!(
                    "{}: at most 9 (one object per cell of the 3x3 grid)",
                    self.max_objects
                ),
            ));
        }
        for (k, v) in [
            ("val_fraction", self.val_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(0.0..1.0).contains(&v) || v.is_nan() {
                return Err(Error::config(k, format!("{v}: must be in [0, 1)")));
            }
        }
        if self.split_sizes().0 == 0 {
            return Err(Error::config(
                "val_fraction",
                "val + test leave no training images",
            ));
        }
        if self.captions_per_image == 0 {
            return Err(Error::config("captions_per_image", "must be at least 1"));
        }
        if !(1..=MAX_HYPOTHESES_PER_LABEL).contains(&self.hypotheses_per_label) {
            return Err(Error::config(
                "hypotheses_per_label",
                format!(
                    "{}: must be in 1..={MAX_HYPOTHESES_PER_LABEL} (a scene of at most nine \
                     objects has a few hundred distinct statements per label; for more \
                     VE pairs, generate more images)",
                    self.hypotheses_per_label
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.position_jitter) {
            return Err(Error::config(
                "position_jitter",
                format!("{}: must be in [0, 1]", self.position_jitter),
            ));
        }
        Ok(())
    }
}

/// One VQA question as stored in the world (before formatting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldQuestion {
    pub question_id: u64,
    pub question: String,
    pub answer: String,
    pub question_type: String,
    pub answer_type: String,
    pub explanation: Option<String>,
}

/// Everything generated for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldImage {
    pub scene: Scene,
    pub captions: Vec<String>,
    /// Template name of each caption.
    pub caption_templates: Vec<String>,
    /// The complete caption with every object's cell, used as SNLI-VE `sentence1`.
    pub premise: String,
    pub style: Vec<String>,
    pub questions: Vec<WorldQuestion>,
    pub hypotheses: Vec<(String, Label)>,
    pub news: news::Story,
}

/// `scenes.json`: the ground truth kept for checking (scene, caption templates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenesFile {
    pub config: WorldConfig,
    pub images: Vec<SceneRecord>,
}

/// One entry of `scenes.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneRecord {
    #[serde(flatten)]
    pub scene: Scene,
    pub caption_templates: Vec<String>,
}

impl ScenesFile {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        close_core::io::read_json(path)
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub images: usize,
    pub captions: usize,
    pub questions: usize,
    pub questions_by_type: BTreeMap<String, usize>,
    pub yes: usize,
    pub no: usize,
    pub vqae: usize,
    pub ve_pairs: usize,
    pub ve_labels: BTreeMap<String, usize>,
    pub style_captions: usize,
    #[serde(default)]
    pub news: usize,
}

/// What [`generate`] made (also written to `world.json` with the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSummary {
    pub config: WorldConfig,
    pub splits: BTreeMap<String, SplitSummary>,
    /// Hypothesis-only naive Bayes accuracy (0–1) on the test split (chance ≈ 1/3).
    pub ve_hypothesis_only_accuracy: Option<f64>,
    /// Question-only prior accuracy (0–1, exact match) on the test split.
    pub vqa_question_only_accuracy: Option<f64>,
    /// Same, per question type.
    pub vqa_question_only_by_type: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// A per-image RNG stream derived from (seed, image index, purpose).
fn rng_for(seed: u64, index: u64, stream: u64) -> ChaCha8Rng {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut r = ChaCha8Rng::seed_from_u64(z);
    r.set_stream(stream);
    r
}

/// Images generated (and held) at once: enough to keep every core busy, few enough that a
/// world's size does not show in memory.
const CHUNK_IMAGES: usize = 2048;

/// The split of image `index`.
fn split_of(cfg: &WorldConfig, index: usize) -> &'static str {
    let (train, val, _) = cfg.split_sizes();
    if index < train {
        "train"
    } else if index < train + val {
        "val"
    } else {
        "test"
    }
}

/// The image indices of a split (splits are consecutive, in the order of [`SPLITS`]).
fn split_range(cfg: &WorldConfig, split: &str) -> std::ops::Range<usize> {
    let (train, val, test) = cfg.split_sizes();
    match split {
        "train" => 0..train,
        "val" => train..train + val,
        _ => train + val..train + val + test,
    }
}

/// The image file of image id `image_id`.
fn file_name(image_id: u64) -> String {
    format!("shapes_{image_id:07}.png")
}

/// The article file of the news item of image id `image_id`.
fn article_name(image_id: u64) -> String {
    format!("news_{image_id:07}.txt")
}

/// Generate one image's scene and language (no rendering).
pub fn make_image(cfg: &WorldConfig, index: usize) -> WorldImage {
    let split = split_of(cfg, index);
    let image_id = index as u64 + 1;
    let mut rng = rng_for(cfg.seed, index as u64, 1);
    let background = render::sample_background(&mut rng);
    let objects = scene::sample_objects(
        &mut rng,
        cfg.size,
        (cfg.min_objects, cfg.max_objects),
        cfg.position_jitter as f32,
    );
    let scene = Scene {
        image_id,
        imgid: index as u64,
        split: split.to_string(),
        file_name: file_name(image_id),
        width: cfg.size,
        height: cfg.size,
        background,
        objects,
    };
    let mut lrng = rng_for(cfg.seed, index as u64, 2);
    let caps = language::captions(&scene, cfg.captions_per_image, &mut lrng);
    let premise = language::positional_caption(&scene, false, &mut lrng).text;
    let style = language::style_captions(&scene, cfg.style_captions_per_image, &mut lrng);
    let qs = questions::questions(&scene, &caps, cfg.extra_questions_per_image, &mut lrng);
    let hyps = entail::hypotheses(&scene, cfg.hypotheses_per_label, &mut lrng);
    // Its own stream: the stories shift no other file's draws.
    let story = news::story(&scene, &mut rng_for(cfg.seed, index as u64, 4));
    WorldImage {
        captions: caps.iter().map(|c| c.text.clone()).collect(),
        caption_templates: caps.iter().map(|c| c.template.to_string()).collect(),
        premise,
        style,
        questions: qs
            .into_iter()
            .enumerate()
            .map(|(k, q)| WorldQuestion {
                question_id: image_id * 1000 + k as u64,
                question: q.question,
                answer: q.answer,
                question_type: q.question_type.to_string(),
                answer_type: q.answer_type.to_string(),
                explanation: q.explanation,
            })
            .collect(),
        hypotheses: hyps,
        news: story,
        scene,
    }
}

/// Render image `index` of a world to PNG bytes.
pub fn render_png(cfg: &WorldConfig, scene: &Scene, index: usize) -> Result<Vec<u8>> {
    let mut rng = rng_for(cfg.seed, index as u64, 3);
    let rgb = render::render_rgb(scene, &mut rng)?;
    render::encode_png(&rgb, scene.width, scene.height)
}

/// Generate a world into `out_dir` (created if needed; existing world files are replaced).
pub fn generate(
    cfg: &WorldConfig,
    out_dir: impl AsRef<Path>,
    progress: &dyn Progress,
) -> Result<WorldSummary> {
    cfg.validate()?;
    let start = Instant::now();
    let paths = WorldPaths::new(out_dir.as_ref());
    for split in SPLITS {
        for d in [paths.images_dir(split), paths.articles_dir(split)] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
    }
    progress.start("world", cfg.images as u64);
    let mut writer = write::WorldWriter::create(cfg, &paths)?;
    for lo in (0..cfg.images).step_by(CHUNK_IMAGES) {
        let hi = (lo + CHUNK_IMAGES).min(cfg.images);
        let images: Vec<WorldImage> = (lo..hi)
            .into_par_iter()
            .map(|i| {
                let im = make_image(cfg, i);
                let png = render_png(cfg, &im.scene, i)?;
                let p = paths.images_dir(&im.scene.split).join(&im.scene.file_name);
                std::fs::write(&p, png).map_err(|e| Error::io(&p, e))?;
                let a = paths
                    .articles_dir(&im.scene.split)
                    .join(article_name(im.scene.image_id));
                std::fs::write(&a, &im.news.article).map_err(|e| Error::io(&a, e))?;
                progress.inc(1);
                Ok(im)
            })
            .collect::<Result<_>>()?;
        for im in &images {
            writer.push(im)?;
        }
    }
    progress.finish();
    progress.message("writing annotations");
    let summary = writer.finish(start)?;
    tracing::info!(
        "world: {} images in {:.1}s → {}",
        cfg.images,
        summary.seconds,
        paths.root.display()
    );
    Ok(summary)
}
