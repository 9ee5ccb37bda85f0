//! [`RunPredictor`]: a trained CLOSE run ([`crate::run::Run`]) with its CLIP model and,
//! optionally, a caption [`Corpus`] for nearest-caption lookup, as a [`Predictor`].
//!
//! Prediction follows the method: decoded RGB images → CLIP preprocessing → unit CLIP
//! image vectors → (no adapter at test time) → prefix → T5 beam search. The same vectors
//! are compared by cosine with the corpus's unit text vectors to list the nearest training
//! captions. The batch CLI (`close caption|vqa|entail`) uses this type too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::run::Run;
use crate::task::Task as CloseTask;
use close_clip::cache::{CacheKind, EmbeddingCache};
use close_clip::Clip;
use close_core::{Error, Result};

use super::predictor::{DecodeOptions, ModelInfo, Neighbor, Prediction, Predictor, Query, Task};

/// Default number of nearest captions returned when a corpus is loaded.
pub const DEFAULT_NEIGHBORS: usize = 5;

/// The serving task of a training task (`news` needs an article and is not served).
pub fn serve_task(t: CloseTask) -> Result<Task> {
    match t {
        CloseTask::SCap | CloseTask::MCap | CloseTask::Style => Ok(Task::Caption),
        CloseTask::Vqa | CloseTask::Evqa | CloseTask::EvqaExplain => Ok(Task::Vqa),
        CloseTask::Ve => Ok(Task::Entail),
        CloseTask::News => Err(Error::invalid("task `news` needs the article's text for every image; serving and `close caption` do not support it (use `close predict`)")),
    }
}

/// Unit text vectors of a caption corpus, for nearest-caption lookup.
pub struct Corpus {
    texts: Vec<String>,
    /// `[N, D]`, unit rows, on the model's device.
    vectors: Tensor,
}

impl Corpus {
    /// From an embedding cache of texts (`close embed`): every cached text.
    pub fn from_cache(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cache = EmbeddingCache::open(dir)?;
        if cache.kind() != CacheKind::Text {
            return Err(Error::invalid(format!(
                "{}: an image cache; nearest captions need a text cache",
                dir.display()
            )));
        }
        let texts: Vec<String> = cache.keys().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let vectors = cache.tensor(&refs, device)?;
        Ok(Self { texts, vectors })
    }

    /// Embed `texts` with `clip` (empty lines dropped, duplicates kept once).
    pub fn from_texts(clip: &Clip, texts: Vec<String>, batch: usize) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let texts: Vec<String> = texts
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && seen.insert(t.clone()))
            .collect();
        if texts.is_empty() {
            return Err(Error::invalid("caption corpus is empty"));
        }
        let mut rows = Vec::new();
        for chunk in texts.chunks(batch.max(1)) {
            rows.push(clip.embed_texts(chunk)?);
        }
        let vectors = Tensor::cat(&rows, 0)?;
        Ok(Self { texts, vectors })
    }

    /// One caption per line of a text file, embedded with `clip`.
    pub fn from_file(clip: &Clip, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_texts(clip, s.lines().map(|l| l.to_string()).collect(), 256).map_err(|e| match e
        {
            Error::Invalid(m) => Error::format(path, None, m),
            e => e,
        })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn dim(&self) -> Result<usize> {
        Ok(self.vectors.dim(1)?)
    }

    /// The `k` captions of highest cosine for each unit row of `images [B, D]`.
    pub fn nearest(&self, images: &Tensor, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let (b, _) = images.dims2()?;
        if k == 0 || self.texts.is_empty() {
            return Ok(vec![Vec::new(); b]);
        }
        let sims = images
            .to_device(self.vectors.device())?
            .matmul(&self.vectors.t()?)?
            .to_vec2::<f32>()?;
        Ok(sims
            .into_iter()
            .map(|row| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                let k = k.min(idx.len());
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                idx.truncate(k);
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                idx.into_iter()
                    .map(|i| Neighbor {
                        caption: self.texts[i].clone(),
                        cosine: row[i],
                    })
                    .collect()
            })
            .collect())
    }
}

/// How to find a run's CLIP model and caption corpus.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// CLIP model dir (default: the one recorded in the run's `config.json`).
    pub clip: Option<PathBuf>,
    /// Captions for nearest-caption lookup: a text cache dir or a text file (one caption
    /// per line). Default: the run's recorded text cache, when it exists and matches CLIP.
    pub corpus: Option<PathBuf>,
    /// Model name in requests (default: the run dir's name).
    pub name: Option<String>,
}

/// A loaded run ready to predict.
pub struct RunPredictor {
    info: ModelInfo,
    run: Run,
    clip: Arc<Clip>,
    corpus: Option<Arc<Corpus>>,
}

/// The CLIP model a run is used with: `explicit` (a `--clip`), else the one recorded in the
/// run (relative paths are taken from the run dir when they do not exist as given).
pub fn clip_dir(run: &Run, explicit: Option<&Path>) -> Result<PathBuf> {
    match (explicit, &run.config.clip) {
        (Some(c), _) => Ok(c.to_path_buf()),
        (None, Some(c)) => Ok(resolve(&run.dir, c)),
        (None, None) => Err(Error::config(
            "clip",
            format!(
                "run {} records no CLIP model; pass --clip DIR",
                run.dir.display()
            ),
        )),
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

impl RunPredictor {
    /// Load the run in `dir`, its CLIP and its corpus (see [`LoadOptions`]).
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let run = Run::load(dir, device)?;
        let clip_dir = clip_dir(&run, opts.clip.as_deref())?;
        let clip = Arc::new(Clip::load(&clip_dir, device)?);
        let corpus = Self::load_corpus(&run, &clip, opts.corpus.as_deref())?.map(Arc::new);
        Self::new(run, clip, corpus, opts.name.clone())
    }

    /// The run's caption corpus: `explicit` (a cache dir or a text file), else the run's
    /// recorded text cache if it exists and was made by this CLIP model (else none).
    pub fn load_corpus(run: &Run, clip: &Clip, explicit: Option<&Path>) -> Result<Option<Corpus>> {
        let device = clip.device();
        if let Some(p) = explicit {
            let c = if p.is_dir() {
                Corpus::from_cache(p, device)?
            } else {
                Corpus::from_file(clip, p)?
            };
            return Ok(Some(c));
        }
        let Some(cache_dir) = run.config.text_cache.as_ref().map(|c| resolve(&run.dir, c)) else {
            return Ok(None);
        };
        if !cache_dir.join("index.json").exists() {
            tracing::warn!(
                "{}: recorded text cache not found; no nearest captions",
                cache_dir.display()
            );
            return Ok(None);
        }
        let cache = EmbeddingCache::open(&cache_dir)?;
        if cache.model_hash() != clip.model_hash()? {
            tracing::warn!(
                "{}: made by another CLIP model than {}; no nearest captions",
                cache_dir.display(),
                clip.dir().display()
            );
            return Ok(None);
        }
        Ok(Some(Corpus::from_cache(&cache_dir, device)?))
    }

    /// Wrap an already loaded run, CLIP and corpus (CLIP and corpus may be shared between
    /// runs). Checks that the dimensions agree.
    pub fn new(
        run: Run,
        clip: Arc<Clip>,
        corpus: Option<Arc<Corpus>>,
        name: Option<String>,
    ) -> Result<Self> {
        let task = serve_task(run.config.task)?;
        let clip_dim = clip.model.config().projection_dim;
        if clip_dim != run.clip_dim() {
            return Err(Error::Shape {
                what: format!(
                    "CLIP {} for run {}",
                    clip.dir().display(),
                    run.dir.display()
                ),
                expected: vec![run.clip_dim()],
                got: vec![clip_dim],
            });
        }
        if let Some(c) = &corpus {
            if c.dim()? != clip_dim {
                return Err(Error::Shape {
                    what: "caption corpus vectors".into(),
                    expected: vec![clip_dim],
                    got: vec![c.dim()?],
                });
            }
        }
        let name = name.unwrap_or_else(|| {
            std::fs::canonicalize(&run.dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into())
        });
        let info = ModelInfo {
            name,
            task,
            description: format!(
                "CLOSE {} run {} (CLIP {})",
                run.config.task,
                run.dir.display(),
                clip.dir().display()
            ),
            defaults: DecodeOptions {
                beams: run.config.beams.max(1),
                max_tokens: run.config.max_steps(),
                neighbors: if corpus.is_some() {
                    DEFAULT_NEIGHBORS
                } else {
                    0
                },
            },
            max_tokens_limit: run.model.config().t5.n_positions,
            corpus_size: corpus.as_ref().map(|c| c.len()).unwrap_or(0),
        };
        Ok(Self {
            info,
            run,
            clip,
            corpus,
        })
    }

    pub fn run(&self) -> &Run {
        &self.run
    }

    pub fn clip(&self) -> &Arc<Clip> {
        &self.clip
    }

    /// Predict for decoded images (and one text per image for VQA / entailment).
    pub fn predict_images(
        &self,
        images: &[image::RgbImage],
        texts: Option<&[String]>,
        opts: &DecodeOptions,
    ) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let needs_text = self.info.task.text_field().is_some();
        match (needs_text, texts) {
            (true, None) => {
                return Err(Error::invalid(format!(
                    "{} needs a {} per image",
                    self.info.task,
                    self.info.task.text_field().unwrap_or("text")
                )))
            }
            (true, Some(t)) if t.len() != images.len() => {
                return Err(Error::invalid(format!(
                    "{} images but {} texts",
                    images.len(),
                    t.len()
                )))
            }
            (false, Some(_)) => return Err(Error::invalid("captioning takes no text")),
            _ => {}
        }
        let vecs = self.clip.embed_images(images)?; // [B, D], unit rows
        let gen = self
            .run
            .generate_config(Some(opts.beams), Some(opts.max_tokens));
        let beams = self.run.predict(&vecs, texts, &gen)?;
        let neighbors = match &self.corpus {
            Some(c) if opts.neighbors > 0 => c.nearest(&vecs, opts.neighbors)?,
            _ => vec![Vec::new(); images.len()],
        };
        Ok(beams
            .into_iter()
            .zip(neighbors)
            .map(|(beams, neighbors)| Prediction { beams, neighbors })
            .collect())
    }
}

impl Predictor for RunPredictor {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn predict(&mut self, queries: &[Query], opts: &DecodeOptions) -> Result<Vec<Prediction>> {
        let images: Vec<image::RgbImage> = queries.iter().map(|q| q.image.clone()).collect();
        let texts: Option<Vec<String>> = self.info.task.text_field().map(|_| {
            queries
                .iter()
                .map(|q| q.text.clone().unwrap_or_default())
                .collect()
        });
        self.predict_images(&images, texts.as_deref(), opts)
    }
}

/// Load several runs, sharing CLIP models (and their corpora) between runs that use the
/// same CLIP dir. Names must be unique; duplicates get `-2`, `-3`, … appended.
pub fn load_runs(
    dirs: &[PathBuf],
    opts: &LoadOptions,
    device: &Device,
) -> Result<Vec<RunPredictor>> {
    let mut clips: Vec<(PathBuf, Arc<Clip>, Option<Arc<Corpus>>)> = Vec::new();
    let mut out: Vec<RunPredictor> = Vec::new();
    for dir in dirs {
        let run = Run::load(dir, device)?;
        let clip_dir = clip_dir(&run, opts.clip.as_deref())?;
        let key = std::fs::canonicalize(&clip_dir).unwrap_or(clip_dir.clone());
        let (clip, shared_corpus) = match clips.iter().find(|(k, _, _)| *k == key) {
            Some((_, c, corpus)) => (c.clone(), corpus.clone()),
            None => {
                let c = Arc::new(Clip::load(&clip_dir, device)?);
                let corpus = if opts.corpus.is_some() {
                    RunPredictor::load_corpus(&run, &c, opts.corpus.as_deref())?.map(Arc::new)
                } else {
                    None
                };
                clips.push((key, c.clone(), corpus.clone()));
                (c, corpus)
            }
        };
        let corpus = match shared_corpus {
            Some(c) => Some(c),
            None => RunPredictor::load_corpus(&run, &clip, None)?.map(Arc::new),
        };
        let mut p = RunPredictor::new(
            run,
            clip,
            corpus,
            if dirs.len() == 1 {
                opts.name.clone()
            } else {
                None
            },
        )?;
        let base = p.info.name.clone();
        let mut n = 2;
        while out.iter().any(|q| q.info.name == p.info.name) {
            p.info.name = format!("{base}-{n}");
            n += 1;
        }
        out.push(p);
    }
    Ok(out)
}
