//! The shapes world: a seeded generator of images, captions, VQA questions, VQA-E
//! explanations, SNLI-VE hypotheses and a first-person caption style, written in the formats
//! of the real datasets so that every loader and command is the one users run on COCO,
//! VQA v2 and SNLI-VE.
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
//!   hard_negatives.json                          exclusive word groups (`close clip train --hard-negatives`)
//! ```
//! Use [`WorldPaths`] (and the `*_FILE` constants / `*_file` functions) rather than
//! spelling names. Same config (seed included) → byte-identical files.

pub use crate::bias;
pub mod entail;
pub mod language;
pub mod probe;
pub mod questions;
pub mod render;
pub mod scene;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::write_json_compact as write_json_atomic;
use close_core::io::write_atomic;
use close_core::progress::Progress;
use close_core::{Error, Result};

use crate::coco::{
    CocoCaption, CocoCaptions, CocoImage, Karpathy, KarpathyImage, KarpathySentence,
};
use crate::snli::{save_snli_jsonl, Label, SnliRecord};
use crate::vqa::{VqaAnnotation, VqaAnnotations, VqaAnswer, VqaQuestion, VqaQuestions, VqaeEntry};
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
    /// Colour / shape / size / count / position questions per image, on top of the
    /// existence pair and the relation pair.
    pub extra_questions_per_image: usize,
    /// SNLI-VE hypotheses per label per image.
    pub hypotheses_per_label: usize,
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
            extra_questions_per_image: 3,
            hypotheses_per_label: 1,
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

/// Generate one image's scene and language (no rendering).
pub fn make_image(cfg: &WorldConfig, index: usize) -> WorldImage {
    let split = split_of(cfg, index);
    let image_id = index as u64 + 1;
    let mut rng = rng_for(cfg.seed, index as u64, 1);
    let background = render::sample_background(&mut rng);
    let objects = scene::sample_objects(&mut rng, cfg.size, cfg.min_objects, cfg.max_objects);
    let scene = Scene {
        image_id,
        imgid: index as u64,
        split: split.to_string(),
        file_name: format!("shapes_{image_id:07}.png"),
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
        let d = paths.images_dir(split);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    progress.start("world", cfg.images as u64);
    let images: Vec<WorldImage> = (0..cfg.images)
        .into_par_iter()
        .map(|i| {
            let im = make_image(cfg, i);
            let png = render_png(cfg, &im.scene, i)?;
            let p = paths.images_dir(&im.scene.split).join(&im.scene.file_name);
            std::fs::write(&p, png).map_err(|e| Error::io(&p, e))?;
            progress.inc(1);
            Ok(im)
        })
        .collect::<Result<_>>()?;
    progress.finish();
    progress.message("writing annotations");
    let summary = write_world(cfg, &paths, &images, start)?;
    tracing::info!(
        "world: {} images in {:.1}s → {}",
        cfg.images,
        summary.seconds,
        paths.root.display()
    );
    Ok(summary)
}

fn coco_images(images: &[&WorldImage]) -> Vec<CocoImage> {
    images
        .iter()
        .map(|im| CocoImage {
            id: im.scene.image_id,
            file_name: im.scene.file_name.clone(),
            width: Some(im.scene.width),
            height: Some(im.scene.height),
        })
        .collect()
}

fn coco_captions(
    split: &str,
    images: &[&WorldImage],
    texts: impl Fn(&WorldImage) -> Vec<String>,
    what: &str,
) -> CocoCaptions {
    let mut anns = Vec::new();
    for im in images {
        for (k, c) in texts(im).into_iter().enumerate() {
            anns.push(CocoCaption {
                id: im.scene.image_id * 100 + k as u64,
                image_id: im.scene.image_id,
                caption: c,
            });
        }
    }
    CocoCaptions {
        info: Some(
            serde_json::json!({"description": format!("close-rs shapes world, {what}, {split} split")}),
        ),
        images: coco_images(images),
        annotations: anns,
        licenses: Some(serde_json::json!([])),
        kind: Some("captions".into()),
    }
}

/// Write every annotation file of a world whose images are already on disk, and
/// `world.json` with the summary (counts per split and the shortcut baselines).
fn write_world(
    cfg: &WorldConfig,
    paths: &WorldPaths,
    images: &[WorldImage],
    start: Instant,
) -> Result<WorldSummary> {
    write_karpathy(paths, images)?;
    write_scenes(cfg, paths, images)?;

    let mut splits = BTreeMap::new();
    let mut style_train: Vec<String> = Vec::new();
    for split in SPLITS {
        let ims: Vec<&WorldImage> = images.iter().filter(|im| im.scene.split == split).collect();
        let s = write_split(paths, split, &ims, &mut style_train)?;
        splits.insert(split.to_string(), s);
    }
    crate::text::save_text_corpus(paths.style_train(), &style_train)?;
    write_json_atomic(paths.hard_negatives(), &language::hard_negative_groups())?;

    let baselines = Baselines::measure(images, &splits);
    let summary = WorldSummary {
        config: cfg.clone(),
        splits,
        ve_hypothesis_only_accuracy: baselines.ve_hypothesis_only,
        vqa_question_only_accuracy: baselines.vqa_question_only,
        vqa_question_only_by_type: baselines.vqa_question_only_by_type,
        seconds: start.elapsed().as_secs_f64(),
    };
    let mut for_file = summary.clone();
    for_file.seconds = 0.0; // keep world.json byte-identical across runs
    write_atomic(paths.summary(), &serde_json::to_vec_pretty(&for_file)?)?;
    Ok(summary)
}

/// The Karpathy split file: every image with its captions, sentence ids numbered over the
/// whole world in image order.
fn write_karpathy(paths: &WorldPaths, images: &[WorldImage]) -> Result<()> {
    let mut sentid = 0u64;
    let kimages: Vec<KarpathyImage> = images
        .iter()
        .map(|im| {
            let sentences: Vec<KarpathySentence> = im
                .captions
                .iter()
                .map(|c| {
                    sentid += 1;
                    KarpathySentence {
                        raw: c.clone(),
                        tokens: language::tokens(c),
                        imgid: Some(im.scene.imgid),
                        sentid: Some(sentid - 1),
                    }
                })
                .collect();
            KarpathyImage {
                split: im.scene.split.clone(),
                filepath: format!("{IMAGES_DIR}/{}", im.scene.split),
                filename: im.scene.file_name.clone(),
                imgid: im.scene.imgid,
                cocoid: Some(im.scene.image_id),
                sentids: sentences.iter().filter_map(|s| s.sentid).collect(),
                sentences,
            }
        })
        .collect();
    write_json_atomic(
        paths.karpathy(),
        &Karpathy {
            dataset: "shapes".into(),
            images: kimages,
        },
    )
}

/// `scenes.json`: the config and each image's ground truth with its caption templates.
fn write_scenes(cfg: &WorldConfig, paths: &WorldPaths, images: &[WorldImage]) -> Result<()> {
    let scenes = ScenesFile {
        config: cfg.clone(),
        images: images
            .iter()
            .map(|im| SceneRecord {
                scene: im.scene.clone(),
                caption_templates: im.caption_templates.clone(),
            })
            .collect(),
    };
    write_json_atomic(paths.scenes(), &scenes)
}

/// The files of one split (COCO captions, VQA v2, VQA-E, SNLI-VE, style references) and its
/// counts. Style captions of `train` are appended to `style_train` (written as one text
/// corpus by the caller) instead of a reference file.
fn write_split(
    paths: &WorldPaths,
    split: &str,
    ims: &[&WorldImage],
    style_train: &mut Vec<String>,
) -> Result<SplitSummary> {
    let mut s = SplitSummary {
        images: ims.len(),
        ..Default::default()
    };
    let caps = coco_captions(split, ims, |im| im.captions.clone(), "captions");
    s.captions = caps.annotations.len();
    caps.save(paths.captions(split))?;
    write_vqa(paths, split, ims, &mut s)?;
    write_snli_ve(paths, split, ims, &mut s)?;
    if split == "train" {
        for im in ims {
            style_train.extend(im.style.iter().cloned());
        }
        s.style_captions = style_train.len();
    } else {
        let refs = coco_captions(
            split,
            ims,
            |im| im.style.clone(),
            "first-person style captions",
        );
        s.style_captions = refs.annotations.len();
        refs.save(paths.style_refs(split))?;
    }
    Ok(s)
}

/// VQA v2 questions and annotations (ten identical answers each) and the VQA-E entries of
/// the questions that have an explanation; counts go into `s`.
fn write_vqa(
    paths: &WorldPaths,
    split: &str,
    ims: &[&WorldImage],
    s: &mut SplitSummary,
) -> Result<()> {
    let mut qs = Vec::new();
    let mut anns = Vec::new();
    let mut vqae = Vec::new();
    for im in ims {
        for q in &im.questions {
            qs.push(VqaQuestion {
                question_id: q.question_id,
                image_id: im.scene.image_id,
                question: q.question.clone(),
            });
            anns.push(vqa_annotation(im, q));
            *s.questions_by_type
                .entry(q.question_type.clone())
                .or_default() += 1;
            match q.answer.as_str() {
                "yes" => s.yes += 1,
                "no" => s.no += 1,
                _ => {}
            }
            if let Some(e) = &q.explanation {
                vqae.push(VqaeEntry {
                    img_id: im.scene.image_id,
                    question: q.question.clone(),
                    answers: vec![q.answer.clone(); 10],
                    multiple_choice_answer: q.answer.clone(),
                    question_type: q.question_type.clone(),
                    answer_type: Some(q.answer_type.clone()),
                    explanation: (e.clone(), 1.0),
                    question_id: Some(q.question_id),
                });
            }
        }
    }
    s.questions = qs.len();
    s.vqae = vqae.len();
    let subtype = format!("shapes_{split}");
    VqaQuestions {
        info: Some(serde_json::json!({"description": "close-rs shapes world VQA questions"})),
        task_type: "Open-Ended".into(),
        data_type: "shapes".into(),
        data_subtype: subtype.clone(),
        license: None,
        questions: qs,
    }
    .save(paths.vqa_questions(split))?;
    VqaAnnotations {
        info: Some(serde_json::json!({"description": "close-rs shapes world VQA annotations"})),
        data_type: "shapes".into(),
        data_subtype: subtype,
        license: None,
        annotations: anns,
    }
    .save(paths.vqa_annotations(split))?;
    write_json_atomic(paths.vqae(split), &vqae)
}

/// The VQA v2 annotation of a question: its answer given by ten annotators.
fn vqa_annotation(im: &WorldImage, q: &WorldQuestion) -> VqaAnnotation {
    let answers: Vec<VqaAnswer> = (1..=10)
        .map(|k| VqaAnswer {
            answer: q.answer.clone(),
            answer_confidence: "yes".into(),
            answer_id: k,
        })
        .collect();
    VqaAnnotation {
        question_id: q.question_id,
        image_id: im.scene.image_id,
        question_type: q.question_type.clone(),
        answer_type: q.answer_type.clone(),
        multiple_choice_answer: q.answer.clone(),
        answers,
    }
}

/// SNLI-VE pairs (the image's positional premise with each hypothesis); counts go into `s`.
fn write_snli_ve(
    paths: &WorldPaths,
    split: &str,
    ims: &[&WorldImage],
    s: &mut SplitSummary,
) -> Result<()> {
    let mut recs = Vec::new();
    for im in ims {
        for (k, (h, label)) in im.hypotheses.iter().enumerate() {
            recs.push(SnliRecord {
                annotator_labels: vec![label.as_str().into()],
                caption_id: Some(format!("{}#0", im.scene.file_name)),
                gold_label: label.as_str().into(),
                pair_id: format!("{}#{k}", im.scene.file_name),
                sentence1: im.premise.clone(),
                sentence2: h.clone(),
                flickr30k_id: Some(crate::load::FlexId(im.scene.image_id.to_string())),
            });
            *s.ve_labels.entry(label.as_str().into()).or_default() += 1;
        }
    }
    s.ve_pairs = recs.len();
    save_snli_jsonl(paths.snli_ve(split), &recs)
}

/// Shortcut baselines: how far text alone goes (hypothesis-only SNLI-VE, question-only VQA),
/// trained on `train` and measured on `test` (on `train` when there is no test image).
struct Baselines {
    ve_hypothesis_only: Option<f64>,
    vqa_question_only: Option<f64>,
    vqa_question_only_by_type: BTreeMap<String, f64>,
}

impl Baselines {
    /// Measure the baselines on the generated images (`splits` tells whether `test` has any).
    fn measure(images: &[WorldImage], splits: &BTreeMap<String, SplitSummary>) -> Self {
        let ve = |split: &str| -> Vec<(String, String)> {
            images
                .iter()
                .filter(|im| im.scene.split == split)
                .flat_map(|im| {
                    im.hypotheses
                        .iter()
                        .map(|(h, l)| (h.clone(), l.as_str().to_string()))
                })
                .collect()
        };
        let vq = |split: &str, t: Option<&str>| -> Vec<(String, String, String)> {
            images
                .iter()
                .filter(|im| im.scene.split == split)
                .flat_map(|im| im.questions.iter())
                .filter(|q| t.is_none_or(|t| q.question_type == t))
                .map(|q| {
                    (
                        q.question.clone(),
                        q.question_type.clone(),
                        q.answer.clone(),
                    )
                })
                .collect()
        };
        let eval_split = if splits.get("test").is_some_and(|s| s.images > 0) {
            "test"
        } else {
            "train"
        };
        let ve_hypothesis_only = bias::naive_bayes_accuracy(&ve("train"), &ve(eval_split));
        let vqa_question_only =
            bias::question_prior_accuracy(&vq("train", None), &vq(eval_split, None));
        let mut vqa_question_only_by_type = BTreeMap::new();
        for t in questions::QUESTION_TYPES {
            if let Some(a) =
                bias::question_prior_accuracy(&vq("train", None), &vq(eval_split, Some(t)))
            {
                vqa_question_only_by_type.insert(t.to_string(), a);
            }
        }
        Baselines {
            ve_hypothesis_only,
            vqa_question_only,
            vqa_question_only_by_type,
        }
    }
}
