//! The annotation files of a world, written while its images are generated. Images arrive
//! in index order and every file is streamed, so memory does not grow with the world's size
//! (only each split's short list of image entries is built up front).

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;

use close_core::io::{write_atomic, JsonArrayFile, JsonLinesFile};
use close_core::Result;

use super::{
    article_name, language, make_image, questions, split_range, SceneRecord, ScenesFile,
    SplitSummary, WorldConfig, WorldImage, WorldPaths, WorldQuestion, WorldSummary, ARTICLES_DIR,
    IMAGES_DIR, NEWS_ID_OFFSET, SPLITS,
};
use crate::bias::{NaiveBayes, QuestionPrior};
use crate::coco::{
    CocoCaption, CocoCaptions, CocoImage, Karpathy, KarpathyImage, KarpathySentence,
};
use crate::load::{write_json_compact, FlexId};
use crate::news::NewsItem;
use crate::snli::SnliRecord;
use crate::text::TextCorpusFile;
use crate::vqa::{VqaAnnotation, VqaAnnotations, VqaAnswer, VqaQuestion, VqaQuestions, VqaeEntry};

/// Every file of a world but its images. Feed it each image in index order with
/// [`WorldWriter::push`], then [`WorldWriter::finish`].
pub(super) struct WorldWriter<'a> {
    cfg: &'a WorldConfig,
    paths: &'a WorldPaths,
    karpathy: JsonArrayFile,
    scenes: JsonArrayFile,
    style_train: TextCorpusFile,
    sentid: u64,
    /// The split being written and the index in [`SPLITS`] of the next one to open.
    split: Option<SplitWriter>,
    next_split: usize,
    splits: BTreeMap<String, SplitSummary>,
    baselines: BaselineStream,
}

impl<'a> WorldWriter<'a> {
    pub(super) fn create(cfg: &'a WorldConfig, paths: &'a WorldPaths) -> Result<Self> {
        let karpathy = Karpathy {
            dataset: "shapes".into(),
            images: vec![],
        };
        let scenes = ScenesFile {
            config: cfg.clone(),
            images: vec![],
        };
        Ok(Self {
            cfg,
            paths,
            karpathy: JsonArrayFile::create(paths.karpathy(), &karpathy, Some("images"))?,
            scenes: JsonArrayFile::create(paths.scenes(), &scenes, Some("images"))?,
            style_train: TextCorpusFile::create(paths.style_train())?,
            sentid: 0,
            split: None,
            next_split: 0,
            splits: BTreeMap::new(),
            baselines: BaselineStream::default(),
        })
    }

    /// Write the next image's entries (images come in index order).
    pub(super) fn push(&mut self, im: &WorldImage) -> Result<()> {
        let k = split_index(&im.scene.split);
        self.open_splits_through(k)?;
        self.karpathy.push(&karpathy_image(im, &mut self.sentid))?;
        self.scenes.push(&SceneRecord {
            scene: im.scene.clone(),
            caption_templates: im.caption_templates.clone(),
        })?;
        match SPLITS[k] {
            "train" => {
                for s in &im.style {
                    self.style_train.push(s)?;
                }
                self.baselines.learn(im);
            }
            "test" => self.baselines.score(im),
            _ => {}
        }
        let split = self.split.as_mut().expect("opened above");
        split.push(im)
    }

    /// Close every file, write `world.json` and return the summary.
    pub(super) fn finish(mut self, start: std::time::Instant) -> Result<WorldSummary> {
        self.open_splits_through(SPLITS.len() - 1)?;
        self.close_split()?;
        self.karpathy.finish()?;
        self.scenes.finish()?;
        let train = self
            .splits
            .get_mut("train")
            .expect("every split is written");
        train.style_captions = self.style_train.len();
        self.style_train.finish()?;
        write_json_compact(
            self.paths.hard_negatives(),
            &language::hard_negative_groups(),
        )?;
        if self.splits["test"].images == 0 {
            self.baselines.score_train(self.cfg);
        }
        let b = self.baselines;
        let summary = WorldSummary {
            config: self.cfg.clone(),
            splits: self.splits,
            ve_hypothesis_only_accuracy: b.ve_train.then_some(b.ve_hits.accuracy()).flatten(),
            vqa_question_only_accuracy: b.vqa_train.then_some(b.vqa_hits.accuracy()).flatten(),
            vqa_question_only_by_type: b.by_type(),
            seconds: start.elapsed().as_secs_f64(),
        };
        let mut for_file = summary.clone();
        for_file.seconds = 0.0; // keep world.json byte-identical across runs
        write_atomic(self.paths.summary(), &serde_json::to_vec_pretty(&for_file)?)?;
        Ok(summary)
    }

    /// Finish the open split and open each split up to `SPLITS[k]` (empty ones included).
    fn open_splits_through(&mut self, k: usize) -> Result<()> {
        while self.next_split <= k {
            self.close_split()?;
            let name = SPLITS[self.next_split];
            self.split = Some(SplitWriter::create(self.cfg, self.paths, name)?);
            self.next_split += 1;
        }
        Ok(())
    }

    fn close_split(&mut self) -> Result<()> {
        if let Some(s) = self.split.take() {
            let (name, summary) = s.finish()?;
            self.splits.insert(name.to_string(), summary);
        }
        Ok(())
    }
}

fn split_index(split: &str) -> usize {
    SPLITS
        .iter()
        .position(|s| *s == split)
        .expect("make_image names one of SPLITS")
}

/// The Karpathy entry of an image; sentence ids are numbered over the whole world in image
/// order (`sentid` is the next one).
fn karpathy_image(im: &WorldImage, sentid: &mut u64) -> KarpathyImage {
    let sentences: Vec<KarpathySentence> = im
        .captions
        .iter()
        .map(|c| {
            *sentid += 1;
            KarpathySentence {
                raw: c.clone(),
                tokens: language::tokens(c),
                imgid: Some(im.scene.imgid),
                sentid: Some(*sentid - 1),
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
}

/// The files of one split: COCO captions, VQA v2 questions and annotations, VQA-E, SNLI-VE
/// and (but for `train`, whose style captions go to the text corpus) style references.
struct SplitWriter {
    name: &'static str,
    summary: SplitSummary,
    captions: JsonArrayFile,
    questions: JsonArrayFile,
    annotations: JsonArrayFile,
    vqae: JsonArrayFile,
    snli: JsonLinesFile,
    style_refs: Option<JsonArrayFile>,
    news: JsonArrayFile,
}

impl SplitWriter {
    fn create(cfg: &WorldConfig, paths: &WorldPaths, name: &'static str) -> Result<Self> {
        let range = split_range(cfg, name);
        let summary = SplitSummary {
            images: range.len(),
            ..Default::default()
        };
        let captions = coco_shell(cfg, name, range.clone(), "captions");
        let style = (name != "train")
            .then(|| {
                let shell = coco_shell(cfg, name, range, "first-person style captions");
                JsonArrayFile::create(paths.style_refs(name), &shell, Some("annotations"))
            })
            .transpose()?;
        let subtype = format!("shapes_{name}");
        let questions = VqaQuestions {
            info: Some(serde_json::json!({"description": "close-rs shapes world VQA questions"})),
            task_type: "Open-Ended".into(),
            data_type: "shapes".into(),
            data_subtype: subtype.clone(),
            license: None,
            questions: vec![],
        };
        let annotations = VqaAnnotations {
            info: Some(serde_json::json!({"description": "close-rs shapes world VQA annotations"})),
            data_type: "shapes".into(),
            data_subtype: subtype,
            license: None,
            annotations: vec![],
        };
        Ok(Self {
            name,
            summary,
            captions: JsonArrayFile::create(paths.captions(name), &captions, Some("annotations"))?,
            questions: JsonArrayFile::create(
                paths.vqa_questions(name),
                &questions,
                Some("questions"),
            )?,
            annotations: JsonArrayFile::create(
                paths.vqa_annotations(name),
                &annotations,
                Some("annotations"),
            )?,
            vqae: JsonArrayFile::create(paths.vqae(name), &Vec::<VqaeEntry>::new(), None)?,
            snli: JsonLinesFile::create(paths.snli_ve(name))?,
            style_refs: style,
            news: JsonArrayFile::create(paths.visual_news(name), &Vec::<NewsItem>::new(), None)?,
        })
    }

    fn push(&mut self, im: &WorldImage) -> Result<()> {
        push_captions(&mut self.captions, im, &im.captions)?;
        if let Some(refs) = &mut self.style_refs {
            push_captions(refs, im, &im.style)?;
        }
        for q in &im.questions {
            self.push_question(im, q)?;
        }
        for (k, (h, label)) in im.hypotheses.iter().enumerate() {
            self.snli.push(&SnliRecord {
                annotator_labels: vec![label.as_str().into()],
                caption_id: Some(format!("{}#0", im.scene.file_name)),
                gold_label: label.as_str().into(),
                pair_id: format!("{}#{k}", im.scene.file_name),
                sentence1: im.premise.clone(),
                sentence2: h.clone(),
                flickr30k_id: Some(crate::load::FlexId(im.scene.image_id.to_string())),
            })?;
            *self
                .summary
                .ve_labels
                .entry(label.as_str().into())
                .or_default() += 1;
            self.summary.ve_pairs += 1;
        }
        self.news.push(&news_item(im))
    }

    /// The VQA v2 question and annotation (ten identical answers), and the VQA-E entry when
    /// the question has an explanation.
    fn push_question(&mut self, im: &WorldImage, q: &WorldQuestion) -> Result<()> {
        self.questions.push(&VqaQuestion {
            question_id: q.question_id,
            image_id: im.scene.image_id,
            question: q.question.clone(),
        })?;
        self.annotations.push(&vqa_annotation(im, q))?;
        let s = &mut self.summary;
        *s.questions_by_type
            .entry(q.question_type.clone())
            .or_default() += 1;
        match q.answer.as_str() {
            "yes" => s.yes += 1,
            "no" => s.no += 1,
            _ => {}
        }
        if let Some(e) = &q.explanation {
            self.vqae.push(&VqaeEntry {
                img_id: im.scene.image_id,
                question: q.question.clone(),
                answers: vec![q.answer.clone(); 10],
                multiple_choice_answer: q.answer.clone(),
                question_type: q.question_type.clone(),
                answer_type: Some(q.answer_type.clone()),
                explanation: (e.clone(), 1.0),
                question_id: Some(q.question_id),
            })?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(&'static str, SplitSummary)> {
        let s = &mut self.summary;
        s.captions = self.captions.len();
        s.questions = self.questions.len();
        s.vqae = self.vqae.len();
        s.news = self.news.len();
        if let Some(refs) = &self.style_refs {
            s.style_captions = refs.len();
        }
        self.captions.finish()?;
        self.questions.finish()?;
        self.annotations.finish()?;
        self.vqae.finish()?;
        self.snli.finish()?;
        self.news.finish()?;
        if let Some(refs) = self.style_refs {
            refs.finish()?;
        }
        Ok((self.name, self.summary))
    }
}

/// A COCO captions file of a split with its image list and no annotations yet.
fn coco_shell(cfg: &WorldConfig, split: &str, range: Range<usize>, what: &str) -> CocoCaptions {
    let images = range
        .map(|i| {
            let id = i as u64 + 1;
            CocoImage {
                id,
                file_name: super::file_name(id),
                width: Some(cfg.size),
                height: Some(cfg.size),
            }
        })
        .collect();
    CocoCaptions {
        info: Some(
            serde_json::json!({"description": format!("close-rs shapes world, {what}, {split} split")}),
        ),
        images,
        annotations: vec![],
        licenses: Some(serde_json::json!([])),
        kind: Some("captions".into()),
    }
}

fn push_captions(file: &mut JsonArrayFile, im: &WorldImage, texts: &[String]) -> Result<()> {
    for (k, c) in texts.iter().enumerate() {
        file.push(&CocoCaption {
            id: im.scene.image_id * 100 + k as u64,
            image_id: im.scene.image_id,
            caption: c.clone(),
        })?;
    }
    Ok(())
}

/// The VQA v2 annotation of a question: its answer given by ten annotators.
/// The Visual News item of an image (paths relative to the world, as `./...`).
fn news_item(im: &WorldImage) -> NewsItem {
    let s = &im.scene;
    NewsItem {
        id: FlexId((NEWS_ID_OFFSET + s.image_id).to_string()),
        caption: im.news.caption.clone(),
        image_path: format!("./{IMAGES_DIR}/{}/{}", s.split, s.file_name),
        article_path: format!("./{ARTICLES_DIR}/{}/{}", s.split, article_name(s.image_id)),
        topic: "local".into(),
        source: "shapes".into(),
    }
}

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

/// Correct answers out of those scored.
#[derive(Debug, Default, Clone, Copy)]
struct Hits {
    correct: usize,
    total: usize,
}

impl Hits {
    fn add(&mut self, correct: bool) {
        self.correct += usize::from(correct);
        self.total += 1;
    }

    fn accuracy(self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
}

/// The shortcut baselines (hypothesis-only SNLI-VE, question-only VQA), learned from
/// `train` and scored on `test` as the images stream by; on `train` when `test` is empty.
#[derive(Default)]
struct BaselineStream {
    ve: NaiveBayes,
    vqa: QuestionPrior,
    /// Whether any train example was learned.
    ve_train: bool,
    vqa_train: bool,
    ve_hits: Hits,
    vqa_hits: Hits,
    vqa_type_hits: BTreeMap<String, Hits>,
}

impl BaselineStream {
    fn learn(&mut self, im: &WorldImage) {
        for (h, label) in &im.hypotheses {
            self.ve.add(h, label.as_str());
            self.ve_train = true;
        }
        for q in &im.questions {
            self.vqa.add(&q.question, &q.question_type, &q.answer);
            self.vqa_train = true;
        }
    }

    fn score(&mut self, im: &WorldImage) {
        for (h, label) in &im.hypotheses {
            self.ve_hits.add(self.ve.predict(h) == Some(label.as_str()));
        }
        for q in &im.questions {
            let right = self.vqa.guess(&q.question, &q.question_type) == Some(q.answer.as_str());
            self.vqa_hits.add(right);
            let by_type = self.vqa_type_hits.entry(q.question_type.clone());
            by_type.or_default().add(right);
        }
    }

    /// Score the train split (generated again, a chunk at a time).
    fn score_train(&mut self, cfg: &WorldConfig) {
        let train = split_range(cfg, "train");
        for lo in train.clone().step_by(super::CHUNK_IMAGES) {
            let hi = (lo + super::CHUNK_IMAGES).min(train.end);
            let ims: Vec<WorldImage> = (lo..hi)
                .into_par_iter()
                .map(|i| make_image(cfg, i))
                .collect();
            for im in &ims {
                self.score(im);
            }
        }
    }

    /// Question-only accuracy per question type, for the types the world asks.
    fn by_type(&self) -> BTreeMap<String, f64> {
        if !self.vqa_train {
            return BTreeMap::new();
        }
        let accuracy = |t: &&str| {
            let acc = self.vqa_type_hits.get(*t)?.accuracy()?;
            Some((t.to_string(), acc))
        };
        questions::QUESTION_TYPES
            .iter()
            .filter_map(accuracy)
            .collect()
    }
}
