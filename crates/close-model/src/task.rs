//! Tasks and their training / evaluation examples, with the reference's semantics
//! (`ClipT5Model.preprocess_example_train` and the dataset classes of allenai/close).
//!
//! | task | text stand-in for the image (to CLIP) | extra text (to T5) | targets |
//! |---|---|---|---|
//! | `s-cap` | each caption | – | that caption |
//! | `m-cap` | caption i | – | the image's other captions |
//! | `vqa` | all captions of the image, vectors averaged | question | answers: most common, then count == top or ≥ 3 |
//! | `evqa` | the VQA-E explanation | question | same answer rule |
//! | `evqa-explain` | the VQA-E explanation | question | `{answer} because {explanation}` |
//! | `ve` | premise (`sentence1`) | hypothesis | gold label word |
//! | `news` | caption | first line of the article | caption |
//! | `style` | each line of a text corpus | – | that line |
//!
//! With [`TrainOn::Images`] (the image-trained upper bound) the stand-in is the image vector
//! and captioning targets are all captions of the image. Targets are lowercased. Evaluation
//! always uses image vectors of the val / test images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use close_core::{Error, Result};
use close_data::load::LoadOptions;

/// A CLOSE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Task {
    /// Captioning, each caption its own stand-in and target (`1to1`).
    SCap,
    /// Captioning, caption i → the other captions (`other-target`).
    MCap,
    /// VQA v2, the image's captions as the stand-in.
    Vqa,
    /// VQA with VQA-E explanations as the stand-in.
    Evqa,
    /// VQA-E that also explains: the target is `{answer} because {explanation}`; scored by
    /// the answer's VQA accuracy and the explanation's CIDEr.
    EvqaExplain,
    /// Visual entailment (SNLI-VE).
    Ve,
    /// Visual News captioning with the article's first line.
    News,
    /// Stylistic captioning from a text corpus.
    Style,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Task::SCap,
        Task::MCap,
        Task::Vqa,
        Task::Evqa,
        Task::EvqaExplain,
        Task::Ve,
        Task::News,
        Task::Style,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Task::SCap => "s-cap",
            Task::MCap => "m-cap",
            Task::Vqa => "vqa",
            Task::Evqa => "evqa",
            Task::EvqaExplain => "evqa-explain",
            Task::Ve => "ve",
            Task::News => "news",
            Task::Style => "style",
        }
    }

    /// The kind of metric this task is scored with.
    pub fn metric(&self) -> MetricKind {
        match self {
            Task::SCap | Task::MCap | Task::News | Task::Style => MetricKind::Caption,
            Task::Vqa | Task::Evqa | Task::EvqaExplain => MetricKind::Vqa,
            Task::Ve => MetricKind::Entailment,
        }
    }

    /// The reference's default noise level `w` for text-only training.
    pub fn default_noise(&self) -> f64 {
        match self {
            Task::SCap | Task::Style => 0.12,
            Task::MCap | Task::Vqa | Task::Evqa | Task::EvqaExplain => 0.04,
            Task::Ve => 0.08,
            Task::News => 0.0,
        }
    }

    /// The reference's batch size (32 for m-cap, else 128).
    pub fn default_batch_size(&self) -> usize {
        if *self == Task::MCap {
            32
        } else {
            128
        }
    }

    /// The generation length limit: the reference's, and 48 for an answer with its
    /// explanation (a caption's length more).
    pub fn default_max_steps(&self) -> usize {
        if *self == Task::EvqaExplain {
            return 48;
        }
        match self.metric() {
            MetricKind::Caption => 32,
            MetricKind::Vqa => 16,
            MetricKind::Entailment => 8,
        }
    }

    /// Whether the task feeds extra text (question / hypothesis / article) to T5.
    pub fn has_input_text(&self) -> bool {
        matches!(
            self,
            Task::Vqa | Task::Evqa | Task::EvqaExplain | Task::Ve | Task::News
        )
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Task::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "task",
                    format!("unknown task `{s}` (s-cap, m-cap, vqa, evqa, evqa-explain, ve, news, style)"),
                )
            })
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricKind {
    /// BLEU / ROUGE-L / CIDEr (selection by CIDEr).
    Caption,
    /// Official VQA accuracy (0–100).
    Vqa,
    /// Label accuracy (0–100).
    Entailment,
}

/// What the model sees during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TrainOn {
    /// CLIP text vectors of the stand-in text (+ adapter): the CLOSE method.
    #[default]
    Text,
    /// CLIP image vectors: the image-trained upper bound.
    Images,
}

impl TrainOn {
    /// The name used in flags, configs and results (`text`, `images`).
    pub fn name(&self) -> &'static str {
        match self {
            TrainOn::Text => "text",
            TrainOn::Images => "images",
        }
    }
}

impl std::str::FromStr for TrainOn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(TrainOn::Text),
            "images" | "image" => Ok(TrainOn::Images),
            _ => Err(Error::config(
                "train-on",
                format!("`{s}`: expected text or images"),
            )),
        }
    }
}

/// Where the CLIP vector of a training example comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClipSource {
    /// Text-cache keys; several are averaged, then normalized.
    Texts(Vec<String>),
    /// An image-cache key (the image id as a decimal string).
    Image(String),
}

/// One training example: one input, one or more targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    pub clip: ClipSource,
    pub input_text: Option<String>,
    /// Lowercased targets.
    pub targets: Vec<String>,
}

/// One evaluation item on an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalExample {
    /// Result id: the image id (captioning), `question_id` (VQA), `pairID` (VE).
    pub id: String,
    /// Image-cache key.
    pub image: String,
    pub input_text: Option<String>,
    /// Reference captions / the annotators' answers / the gold label.
    pub references: Vec<String>,
    /// VQA `answer_type` (yes/no, number, other), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_type: Option<String>,
    /// VQA `question_type`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_type: Option<String>,
    /// Reference explanations (`evqa-explain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanations: Vec<String>,
}

/// Training and evaluation examples of a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskData {
    pub train: Vec<TrainExample>,
    pub val: Vec<EvalExample>,
    pub test: Vec<EvalExample>,
    /// Images of this task that the Karpathy file does not list (Visual News): image-cache
    /// key → file. Embed them beside the Karpathy images.
    #[serde(default)]
    pub image_files: BTreeMap<String, PathBuf>,
}

impl TaskData {
    /// Every text whose CLIP vector training needs (build the text cache over these).
    pub fn clip_texts(&self) -> Vec<String> {
        let mut set = std::collections::BTreeSet::new();
        for ex in &self.train {
            if let ClipSource::Texts(t) = &ex.clip {
                set.extend(t.iter().cloned());
            }
        }
        set.into_iter().collect()
    }

    /// Every image key needed (training on images, val and test).
    pub fn image_keys(&self) -> Vec<String> {
        let mut set = std::collections::BTreeSet::new();
        for ex in &self.train {
            if let ClipSource::Image(k) = &ex.clip {
                set.insert(k.clone());
            }
        }
        set.extend(self.val.iter().chain(&self.test).map(|e| e.image.clone()));
        set.into_iter().collect()
    }

    /// All target and input texts (the corpus a from-scratch tokenizer is trained on).
    pub fn tokenizer_corpus(&self) -> Vec<String> {
        let mut v = Vec::new();
        for ex in &self.train {
            v.extend(ex.targets.iter().cloned());
            v.extend(ex.input_text.iter().cloned());
        }
        for ex in self.val.iter().chain(&self.test) {
            v.extend(ex.input_text.iter().cloned());
        }
        v
    }

    /// The evaluation examples of `split` (`val` or `test`).
    pub fn eval_split(&self, split: &str) -> Result<&[EvalExample]> {
        match split {
            "val" => Ok(&self.val),
            "test" => Ok(&self.test),
            _ => Err(Error::config(
                "split",
                format!("`{split}`: expected val or test"),
            )),
        }
    }
}

/// Locations of the dataset files. Defaults follow the file names of the real releases as
/// the shapes world writes them (`close world`): `dataset_coco.json`,
/// `v2_OpenEnded_mscoco_{split}_questions.json`, `v2_mscoco_{split}_annotations.json`,
/// `VQA-E_{split}_set.json`, `snli_ve_{split}.jsonl`, `visual_news_{split}.json`,
/// `style_train.txt`, `style_captions_{split}.json`, all under `dir`. Any file can be
/// overridden by key (`karpathy`, `vqa_questions.train`, `ve.test`, `news_root`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPaths {
    pub dir: PathBuf,
    #[serde(default)]
    pub overrides: BTreeMap<String, PathBuf>,
    /// Skip malformed records (reported in the log) instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

impl DataPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            overrides: BTreeMap::new(),
            skip_bad: false,
        }
    }

    /// The path of file `kind` for `split` (see the type docs for the keys).
    pub fn file(&self, kind: &str, split: &str) -> PathBuf {
        let key = if split.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{split}")
        };
        if let Some(p) = self
            .overrides
            .get(&key)
            .or_else(|| self.overrides.get(kind))
        {
            return p.clone();
        }
        let name = match kind {
            "karpathy" => "dataset_coco.json".to_string(),
            "vqa_questions" => format!("v2_OpenEnded_mscoco_{split}_questions.json"),
            "vqa_annotations" => format!("v2_mscoco_{split}_annotations.json"),
            "vqae" => format!("VQA-E_{split}_set.json"),
            "ve" => format!("snli_ve_{split}.jsonl"),
            "news" => format!("visual_news_{split}.json"),
            "news_root" => String::new(),
            "style_train" => "style_train.txt".to_string(),
            "style_refs" => format!("style_captions_{split}.json"),
            other => other.to_string(),
        };
        self.dir.join(name)
    }

    /// The loaders' options (`skip_bad`).
    pub fn opts(&self) -> LoadOptions {
        LoadOptions {
            skip_bad: self.skip_bad,
        }
    }
}

fn lower(v: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    v.into_iter()
        .map(|s| s.as_ref().trim().to_lowercase())
        .collect()
}

fn log_report(r: &close_data::load::LoadReport) {
    if !r.skipped.is_empty() || !r.filtered.is_empty() {
        tracing::warn!("{}", r.summary());
    }
}

/// Captioning examples from Karpathy images (`s-cap` / `m-cap`).
pub fn caption_train_examples<'a>(
    task: Task,
    train_on: TrainOn,
    images: impl IntoIterator<Item = (String, &'a [String])>,
) -> Vec<TrainExample> {
    let mut out = Vec::new();
    for (id, caps) in images {
        if caps.is_empty() {
            continue;
        }
        match train_on {
            TrainOn::Images => out.push(TrainExample {
                clip: ClipSource::Image(id),
                input_text: None,
                targets: lower(caps),
            }),
            TrainOn::Text if task == Task::MCap => {
                if caps.len() < 2 {
                    continue; // no other caption to predict
                }
                for i in 0..caps.len() {
                    let others = caps
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, c)| c);
                    out.push(TrainExample {
                        clip: ClipSource::Texts(vec![caps[i].clone()]),
                        input_text: None,
                        targets: lower(others),
                    });
                }
            }
            TrainOn::Text => {
                for c in caps {
                    out.push(TrainExample {
                        clip: ClipSource::Texts(vec![c.clone()]),
                        input_text: None,
                        targets: lower([c]),
                    });
                }
            }
        }
    }
    out
}

/// The reference's VQA training targets from annotator answers: the most common answer,
/// then every answer whose count equals the top count or is at least 3 (lowercased).
pub fn vqa_targets<'a>(answers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    lower(close_data::vqa::training_targets(answers))
}

fn karpathy_split(k: &close_data::coco::Karpathy, split: &str) -> Vec<(String, Vec<String>)> {
    k.split(split)
        .map(|im| {
            (
                im.image_id().to_string(),
                im.captions().map(|c| c.to_string()).collect(),
            )
        })
        .collect()
}

fn caption_eval(images: Vec<(String, Vec<String>)>) -> Vec<EvalExample> {
    images
        .into_iter()
        .map(|(id, refs)| EvalExample {
            id: id.clone(),
            image: id,
            input_text: None,
            references: refs,
            answer_type: None,
            question_type: None,
            explanations: Vec::new(),
        })
        .collect()
}

fn vqa_split(
    paths: &DataPaths,
    split: &str,
    need: bool,
) -> Result<Option<Vec<close_data::vqa::VqaExample>>> {
    let q = paths.file("vqa_questions", split);
    if !q.exists() && !need {
        return Ok(None);
    }
    let a = paths.file("vqa_annotations", split);
    let (ex, rep) = close_data::vqa::load_vqa(&q, Some(&a), &paths.opts())?;
    log_report(&rep);
    Ok(Some(ex))
}

fn vqa_eval(examples: &[close_data::vqa::VqaExample]) -> Vec<EvalExample> {
    examples
        .iter()
        .filter_map(|e| {
            let a = e.annotation.as_ref()?;
            Some(EvalExample {
                id: e.question.question_id.to_string(),
                image: e.question.image_id.to_string(),
                input_text: Some(e.question.question.clone()),
                references: a.answers.iter().map(|x| x.answer.clone()).collect(),
                answer_type: Some(a.answer_type.clone()),
                question_type: Some(a.question_type.clone()),
                explanations: Vec::new(),
            })
        })
        .collect()
}

impl TaskData {
    /// Load the files of `task` and build its examples (train split; val and test for
    /// evaluation, each empty when its files are absent).
    pub fn load(task: Task, train_on: TrainOn, paths: &DataPaths) -> Result<Self> {
        let data = load_task(task, Some(train_on), paths)?;
        if data.train.is_empty() {
            return Err(Error::invalid(format!(
                "task {task}: no training examples found under {}",
                paths.dir.display()
            )));
        }
        Ok(data)
    }

    /// Val and test only (`train` stays empty): the train split's files are not read, which
    /// at COCO size is most of the data.
    pub fn load_eval(task: Task, paths: &DataPaths) -> Result<Self> {
        load_task(task, None, paths)
    }
}

/// The examples of `task`; the train split only with `train_on`.
fn load_task(task: Task, train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    match task {
        Task::SCap | Task::MCap => load_captions(task, train_on, paths),
        Task::Vqa => load_vqa(train_on, paths),
        Task::Evqa => load_evqa(train_on, paths, false),
        Task::EvqaExplain => load_evqa(train_on, paths, true),
        Task::Ve => load_ve(train_on, paths),
        Task::News => load_news(train_on, paths),
        Task::Style => load_style(train_on, paths),
    }
}

/// The `split` file of `kind` loaded with `load` (its report logged); `None` when it does
/// not exist and is not `needed` (val and test are optional).
fn optional_split<T>(
    paths: &DataPaths,
    (kind, split): (&str, &str),
    needed: bool,
    load: impl FnOnce(&Path, &LoadOptions) -> Result<(Vec<T>, close_data::load::LoadReport)>,
) -> Result<Option<Vec<T>>> {
    let p = paths.file(kind, split);
    if !p.exists() && !needed {
        return Ok(None);
    }
    let (v, rep) = load(&p, &paths.opts())?;
    log_report(&rep);
    Ok(Some(v))
}

/// Val and test of a task whose files are optional, converted by `eval`.
fn eval_splits<T>(
    mut load: impl FnMut(&str) -> Result<Option<Vec<T>>>,
    eval: impl Fn(Vec<T>) -> Vec<EvalExample>,
) -> Result<(Vec<EvalExample>, Vec<EvalExample>)> {
    let val = load("val")?.map(&eval).unwrap_or_default();
    let test = load("test")?.map(&eval).unwrap_or_default();
    Ok((val, test))
}

fn load_karpathy(paths: &DataPaths) -> Result<close_data::coco::Karpathy> {
    let opts = paths.opts();
    let (k, rep) = close_data::coco::Karpathy::load_with(paths.file("karpathy", ""), &opts)?;
    log_report(&rep);
    Ok(k)
}

/// s-cap / m-cap: captions of the Karpathy splits.
fn load_captions(task: Task, train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    let k = load_karpathy(paths)?;
    let train = match train_on {
        Some(on) => {
            let images = karpathy_split(&k, "train");
            let images = images.iter().map(|(id, c)| (id.clone(), c.as_slice()));
            caption_train_examples(task, on, images)
        }
        None => Vec::new(),
    };
    Ok(TaskData {
        train,
        val: caption_eval(karpathy_split(&k, "val")),
        test: caption_eval(karpathy_split(&k, "test")),
        ..Default::default()
    })
}

/// VQA v2: a question with its image's captions (text) or the image; all answers.
fn load_vqa(train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    let mut data = TaskData::default();
    if let Some(on) = train_on {
        data.train = vqa_train(on, paths)?;
    }
    data.val = vqa_split(paths, "val", false)?
        .map(|v| vqa_eval(&v))
        .unwrap_or_default();
    data.test = vqa_split(paths, "test", false)?
        .map(|v| vqa_eval(&v))
        .unwrap_or_default();
    Ok(data)
}

/// VQA training examples: the image's captions stand in for it.
fn vqa_train(train_on: TrainOn, paths: &DataPaths) -> Result<Vec<TrainExample>> {
    let k = load_karpathy(paths)?;
    let train = vqa_split(paths, "train", true)?.unwrap_or_default();
    let caps = close_data::vqa::captions_for_questions(&train, &k)?;
    let mut out = Vec::new();
    for e in &train {
        let Some(a) = &e.annotation else { continue };
        let clip = match train_on {
            TrainOn::Text => {
                ClipSource::Texts(caps.get(&e.question.image_id).cloned().unwrap_or_default())
            }
            TrainOn::Images => ClipSource::Image(e.question.image_id.to_string()),
        };
        out.push(TrainExample {
            clip,
            input_text: Some(e.question.question.clone()),
            targets: vqa_targets(a.answers.iter().map(|x| x.answer.as_str())),
        });
    }
    Ok(out)
}

/// The separator of answer and explanation in `evqa-explain` targets and predictions.
pub const BECAUSE: &str = " because ";

/// An `evqa-explain` prediction split into (answer, explanation); a prediction without
/// [`BECAUSE`] is all answer.
pub fn split_explained(text: &str) -> (&str, &str) {
    text.split_once(BECAUSE).unwrap_or((text, ""))
}

/// VQA-E: the explanation stands in for the image in training; with `explain` it is also
/// generated after the answer.
fn load_evqa(train_on: Option<TrainOn>, paths: &DataPaths, explain: bool) -> Result<TaskData> {
    use close_data::vqa::{load_vqae, VqaeEntry};
    let load = |split: &str, needed: bool| {
        optional_split(paths, ("vqae", split), needed, |p, o| load_vqae(p, o))
    };
    let mut data = TaskData::default();
    if let Some(on) = train_on {
        for e in load("train", true)?.unwrap_or_default() {
            let clip = match on {
                TrainOn::Text => ClipSource::Texts(vec![e.explanation.0.clone()]),
                TrainOn::Images => ClipSource::Image(e.img_id.to_string()),
            };
            let mut targets = vqa_targets(e.answers.iter().map(|s| s.as_str()));
            if explain {
                let why = e.explanation.0.trim().to_lowercase();
                targets = targets
                    .into_iter()
                    .map(|a| format!("{a}{BECAUSE}{why}"))
                    .collect();
            }
            data.train.push(TrainExample {
                clip,
                input_text: Some(e.question.clone()),
                targets,
            });
        }
    }
    let eval = |v: Vec<VqaeEntry>| -> Vec<EvalExample> {
        v.into_iter()
            .enumerate()
            .map(|(i, e)| EvalExample {
                id: e
                    .question_id
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| i.to_string()),
                image: e.img_id.to_string(),
                input_text: Some(e.question),
                references: e.answers,
                answer_type: e.answer_type,
                question_type: Some(e.question_type).filter(|s| !s.is_empty()),
                explanations: if explain {
                    vec![e.explanation.0]
                } else {
                    Vec::new()
                },
            })
            .collect()
    };
    (data.val, data.test) = eval_splits(|s| load(s, false), eval)?;
    Ok(data)
}

/// SNLI-VE: the premise (a caption) stands in for the image in training.
fn load_ve(train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    use close_data::snli::{load_snli_ve, SnliVePair};
    let load = |split: &str, needed: bool| {
        optional_split(paths, ("ve", split), needed, |p, o| load_snli_ve(p, o))
    };
    let mut data = TaskData::default();
    if let Some(on) = train_on {
        for p in load("train", true)?.unwrap_or_default() {
            let clip = match on {
                TrainOn::Text => ClipSource::Texts(vec![p.premise.clone()]),
                TrainOn::Images => ClipSource::Image(p.image_id.clone()),
            };
            data.train.push(TrainExample {
                clip,
                input_text: Some(p.hypothesis.clone()),
                targets: vec![p.label.as_str().to_string()],
            });
        }
    }
    let eval = |v: Vec<SnliVePair>| -> Vec<EvalExample> {
        v.into_iter()
            .map(|p| EvalExample {
                id: p.pair_id,
                image: p.image_id,
                input_text: Some(p.hypothesis),
                references: vec![p.label.as_str().to_string()],
                answer_type: None,
                question_type: None,
                explanations: Vec::new(),
            })
            .collect()
    };
    (data.val, data.test) = eval_splits(|s| load(s, false), eval)?;
    Ok(data)
}

/// The prefix of Visual News image-cache keys: their own namespace, since the images are not
/// COCO's and the ids may equal COCO image ids.
pub const NEWS_KEY_PREFIX: &str = "news:";

/// The image-cache key of a Visual News item.
pub fn news_image_key(id: &str) -> String {
    format!("{NEWS_KEY_PREFIX}{id}")
}

/// Visual News: the caption stands in for the image; the article's first line is the input.
/// The images are the items' own (`image_path`), listed in [`TaskData::image_files`].
fn load_news(train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    use close_data::news::{load_visual_news_with_articles, NewsExample};
    let root = news_root(paths);
    let load = |split: &str, needed: bool| {
        optional_split(paths, ("news", split), needed, |p, o| {
            load_visual_news_with_articles(p, &root, o)
        })
    };
    let mut data = TaskData::default();
    let mut files = BTreeMap::new();
    let mut note_image = |e: &NewsExample| {
        let key = news_image_key(&e.item.id.0);
        files.insert(key.clone(), e.item.image_file(&root));
        key
    };
    if let Some(on) = train_on {
        for e in load("train", true)?.unwrap_or_default() {
            let clip = match on {
                TrainOn::Text => ClipSource::Texts(vec![e.item.caption.clone()]),
                TrainOn::Images => ClipSource::Image(note_image(&e)),
            };
            data.train.push(TrainExample {
                clip,
                input_text: Some(e.article_first_line.clone()),
                targets: lower([&e.item.caption]),
            });
        }
    }
    let mut eval = |v: Vec<NewsExample>| -> Vec<EvalExample> {
        v.into_iter()
            .map(|e| EvalExample {
                id: e.item.id.0.clone(),
                image: note_image(&e),
                input_text: Some(e.article_first_line),
                references: vec![e.item.caption],
                answer_type: None,
                question_type: None,
                explanations: Vec::new(),
            })
            .collect()
    };
    data.val = load("val", false)?.map(&mut eval).unwrap_or_default();
    data.test = load("test", false)?.map(&mut eval).unwrap_or_default();
    data.image_files = files;
    Ok(data)
}

/// The directory Visual News paths are relative to (`news_root`, else the data dir).
fn news_root(paths: &DataPaths) -> PathBuf {
    paths
        .overrides
        .get("news_root")
        .cloned()
        .unwrap_or_else(|| paths.dir.clone())
}

/// Stylistic captioning: a text corpus to train on, COCO-format references to evaluate.
fn load_style(train_on: Option<TrainOn>, paths: &DataPaths) -> Result<TaskData> {
    let opts = paths.opts();
    let train = match train_on {
        Some(TrainOn::Images) => {
            return Err(Error::config("train-on", "the style task has only a text corpus to train on (no styled captions of training images)"));
        }
        Some(TrainOn::Text) => style_train(paths, &opts)?,
        None => Vec::new(),
    };
    let refs = |split: &str| -> Result<Vec<EvalExample>> {
        let p = paths.file("style_refs", split);
        if !p.exists() {
            return Ok(Vec::new());
        }
        let (c, rep) = close_data::coco::CocoCaptions::load_with(&p, &opts)?;
        log_report(&rep);
        Ok(caption_eval(
            c.by_image()
                .into_iter()
                .map(|(id, r)| (id.to_string(), r))
                .collect(),
        ))
    };
    Ok(TaskData {
        train,
        val: refs("val")?,
        test: refs("test")?,
        ..Default::default()
    })
}

/// The style corpus as training examples (each line stands in for the image and is the
/// target).
fn style_train(paths: &DataPaths, opts: &LoadOptions) -> Result<Vec<TrainExample>> {
    let (lines, rep) = close_data::text::load_text_corpus(paths.file("style_train", ""), opts)?;
    log_report(&rep);
    Ok(lines
        .iter()
        .map(|l| TrainExample {
            clip: ClipSource::Texts(vec![l.clone()]),
            input_text: None,
            targets: lower([l]),
        })
        .collect())
}

/// Load a dataset dir's Karpathy file path for callers (e.g. `close adapter fit`).
pub fn karpathy_path(paths: &DataPaths) -> PathBuf {
    paths.file("karpathy", "")
}

/// Pairs (image key, caption) of a Karpathy split (for paired adapter fitting).
pub fn caption_pairs(path: &Path, split: &str) -> Result<Vec<(String, String)>> {
    let k = close_data::coco::Karpathy::load(path)?;
    Ok(k.split(split)
        .flat_map(|im| {
            im.captions()
                .map(move |c| (im.image_id().to_string(), c.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_modes_follow_the_reference() {
        let caps = vec![
            "A red Star.".to_string(),
            "a star".to_string(),
            "one star".to_string(),
        ];
        let s = caption_train_examples(
            Task::SCap,
            TrainOn::Text,
            [("7".to_string(), caps.as_slice())],
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].clip, ClipSource::Texts(vec!["A red Star.".into()]));
        assert_eq!(s[0].targets, vec!["a red star.".to_string()]);
        let m = caption_train_examples(
            Task::MCap,
            TrainOn::Text,
            [("7".to_string(), caps.as_slice())],
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].clip, ClipSource::Texts(vec!["a star".into()]));
        assert_eq!(
            m[1].targets,
            vec!["a red star.".to_string(), "one star".to_string()]
        );
        let i = caption_train_examples(
            Task::MCap,
            TrainOn::Images,
            [("7".to_string(), caps.as_slice())],
        );
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].clip, ClipSource::Image("7".into()));
        assert_eq!(i[0].targets.len(), 3);
    }

    #[test]
    fn vqa_answer_rule() {
        // Counter.most_common order: 2 (count 4), then ties of 3 in first-seen order;
        // "1" has count 2 < 3 and != top → dropped.
        let answers = ["2", "two", "2", "3", "2", "two", "1", "2", "two", "1"];
        assert_eq!(
            vqa_targets(answers),
            vec!["2".to_string(), "two".to_string()]
        );
        let tie = ["Yes", "no", "maybe"];
        assert_eq!(
            vqa_targets(tie),
            vec!["yes".to_string(), "no".to_string(), "maybe".to_string()]
        );
    }

    #[test]
    fn data_paths_defaults_and_overrides() {
        let mut p = DataPaths::new("/w");
        assert_eq!(
            p.file("vqa_questions", "val"),
            PathBuf::from("/w/v2_OpenEnded_mscoco_val_questions.json")
        );
        assert_eq!(p.file("ve", "test"), PathBuf::from("/w/snli_ve_test.jsonl"));
        p.overrides.insert("ve.test".into(), "/x/t.jsonl".into());
        assert_eq!(p.file("ve", "test"), PathBuf::from("/x/t.jsonl"));
        assert_eq!("m-cap".parse::<Task>().unwrap(), Task::MCap);
        assert!("mcap".parse::<Task>().is_err());
    }
}
