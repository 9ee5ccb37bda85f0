//! The embedding cache: unit-normalised CLIP embeddings of images (keyed by image id as a
//! decimal string) or texts (keyed by the exact text), stored as safetensors shards
//! (`shard-NNNNN.safetensors`, one `[rows, dim]` f32 tensor `embeddings`) plus `index.json`
//! (model hash, dim, and per shard its keys and input fingerprints).
//!
//! Building is incremental: with the same model hash, entries whose input fingerprint is
//! unchanged (image: file size and modification time; text: SHA-256 of the text) are reused,
//! only missing or changed keys are computed and appended as a new shard (later shards win).
//! A different model hash starts the cache afresh. Unreadable images / empty texts are
//! skipped and listed in the [`EmbedReport`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use close_core::progress::Progress;
use close_core::{Error, Result};

use crate::bundle::Clip;
use crate::preprocess::load_image;

pub const INDEX_FILE: &str = "index.json";
const TENSOR_NAME: &str = "embeddings";
const SHARD_ROWS: usize = 65536;

/// What a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    Image,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardEntry {
    file: String,
    keys: Vec<String>,
    fingerprints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    version: u32,
    kind: CacheKind,
    model_hash: String,
    dim: usize,
    shards: Vec<ShardEntry>,
}

/// A loaded embedding cache (all rows in memory).
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
    kind: CacheKind,
    model_hash: String,
    dim: usize,
    data: Vec<f32>,
    keys: Vec<String>,
    fingerprints: Vec<String>,
    pos: HashMap<String, usize>,
}

impl EmbeddingCache {
    /// Open the cache in `dir` (reads `index.json` and every shard; errors name the file).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_FILE);
        if !index_path.exists() {
            return Err(Error::invalid(format!(
                "{}: no embedding cache here ({INDEX_FILE} is missing); build it with \
                 `close embed --clip CLIP --out ROOT` (this is ROOT/images or ROOT/texts), \
                 or give `close train` a --clip to embed missing texts",
                dir.display()
            )));
        }
        let index: Index = close_core::io::read_json(&index_path)?;
        let mut c = Self {
            dir: dir.to_path_buf(),
            kind: index.kind,
            model_hash: index.model_hash.clone(),
            dim: index.dim,
            data: Vec::new(),
            keys: Vec::new(),
            fingerprints: Vec::new(),
            pos: HashMap::new(),
        };
        for sh in &index.shards {
            let p = dir.join(&sh.file);
            if sh.keys.len() != sh.fingerprints.len() {
                return Err(Error::format(
                    &index_path,
                    None,
                    format!(
                        "shard {}: {} keys but {} fingerprints",
                        sh.file,
                        sh.keys.len(),
                        sh.fingerprints.len()
                    ),
                ));
            }
            let ts = candle_core::safetensors::load(&p, &candle_core::Device::Cpu)
                .map_err(|e| Error::format(&p, None, e.to_string()))?;
            let t = ts.get(TENSOR_NAME).ok_or_else(|| Error::MissingKey {
                file: p.display().to_string(),
                key: TENSOR_NAME.into(),
            })?;
            if t.dims() != [sh.keys.len(), index.dim] {
                return Err(Error::Shape {
                    what: format!("{}: `{TENSOR_NAME}`", p.display()),
                    expected: vec![sh.keys.len(), index.dim],
                    got: t.dims().to_vec(),
                });
            }
            let rows = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (i, (k, fp)) in sh.keys.iter().zip(&sh.fingerprints).enumerate() {
                let row = &rows[i * index.dim..(i + 1) * index.dim];
                if close_core::check::count_non_finite(row) > 0 {
                    return Err(Error::format(
                        &p,
                        None,
                        format!("the embedding of `{k}` holds NaN or Inf; rebuild the cache"),
                    ));
                }
                c.insert(k.clone(), fp.clone(), row);
            }
        }
        Ok(c)
    }

    fn empty(dir: &Path, kind: CacheKind, model_hash: &str, dim: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            kind,
            model_hash: model_hash.into(),
            dim,
            data: Vec::new(),
            keys: Vec::new(),
            fingerprints: Vec::new(),
            pos: HashMap::new(),
        }
    }

    fn insert(&mut self, key: String, fp: String, row: &[f32]) {
        match self.pos.get(&key) {
            Some(&i) => {
                self.data[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
                self.fingerprints[i] = fp;
            }
            None => {
                self.pos.insert(key.clone(), self.keys.len());
                self.keys.push(key);
                self.fingerprints.push(fp);
                self.data.extend_from_slice(row);
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn kind(&self) -> CacheKind {
        self.kind
    }
    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// Hash of the model that produced the embeddings.
    pub fn model_hash(&self) -> &str {
        &self.model_hash
    }
    /// The unit-normalised embedding of `key`.
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        self.pos
            .get(key)
            .map(|&i| &self.data[i * self.dim..(i + 1) * self.dim])
    }
    /// Keys in storage order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }
    /// Embeddings of `keys` as a `[n, dim]` tensor; the error names the first missing key.
    pub fn tensor(&self, keys: &[&str], device: &candle_core::Device) -> Result<Tensor> {
        let mut v = Vec::with_capacity(keys.len() * self.dim);
        for k in keys {
            v.extend_from_slice(self.get(k).ok_or_else(|| Error::MissingKey {
                file: self.dir.join(INDEX_FILE).display().to_string(),
                key: k.to_string(),
            })?);
        }
        Ok(Tensor::from_vec(v, (keys.len(), self.dim), device)?)
    }
}

/// An input that could not be embedded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadItem {
    pub key: String,
    /// The image path, or the text.
    pub input: String,
    pub reason: String,
}

/// Outcome of [`embed_images`] / [`embed_texts`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedReport {
    pub dir: PathBuf,
    pub kind: CacheKind,
    pub model_hash: String,
    pub dim: usize,
    /// Keys requested (after removing duplicates).
    pub requested: usize,
    /// Keys taken from the existing cache.
    pub reused: usize,
    /// Keys computed in this run.
    pub computed: usize,
    pub bad: Vec<BadItem>,
    /// Keys in the cache after this run.
    pub total: usize,
}

fn image_fingerprint(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}:{}", m.len(), mtime)
        }
        Err(_) => "missing".into(),
    }
}

fn text_fingerprint(t: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(t.as_bytes())[..16])
}

/// Open `dir` for an incremental build: the existing cache when kind and model match, else
/// a fresh one (old shards are then dropped when the new index is written).
fn open_for_build(
    dir: &Path,
    kind: CacheKind,
    hash: &str,
    dim: usize,
) -> Result<(EmbeddingCache, Vec<ShardEntry>)> {
    if dir.join(INDEX_FILE).exists() {
        match EmbeddingCache::open(dir) {
            Ok(c) if c.kind == kind && c.model_hash == hash && c.dim == dim => {
                let index: Index = close_core::io::read_json(dir.join(INDEX_FILE))?;
                return Ok((c, index.shards));
            }
            Ok(c) => tracing::info!(
                "{}: cache of another model or kind ({:?}, {}), rebuilding",
                dir.display(),
                c.kind,
                &c.model_hash[..c.model_hash.len().min(12)]
            ),
            Err(e) => tracing::warn!("{}: unreadable cache ({e}), rebuilding", dir.display()),
        }
    }
    Ok((EmbeddingCache::empty(dir, kind, hash, dim), Vec::new()))
}

/// Append `rows` as new shard(s) and rewrite the index atomically.
fn commit(
    dir: &Path,
    kind: CacheKind,
    hash: &str,
    dim: usize,
    mut shards: Vec<ShardEntry>,
    new: Vec<(String, String, Vec<f32>)>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut next = shards.len();
    let used: HashSet<String> = shards.iter().map(|s| s.file.clone()).collect();
    for chunk in new.chunks(SHARD_ROWS) {
        let mut file = format!("shard-{next:05}.safetensors");
        while used.contains(&file) {
            next += 1;
            file = format!("shard-{next:05}.safetensors");
        }
        next += 1;
        let data: Vec<f32> = chunk
            .iter()
            .flat_map(|(_, _, r)| r.iter().copied())
            .collect();
        let t = Tensor::from_vec(data, (chunk.len(), dim), &candle_core::Device::Cpu)?;
        close_core::io::save_safetensors_atomic(
            dir.join(&file),
            &HashMap::from([(TENSOR_NAME.to_string(), t)]),
        )?;
        shards.push(ShardEntry {
            file,
            keys: chunk.iter().map(|(k, _, _)| k.clone()).collect(),
            fingerprints: chunk.iter().map(|(_, f, _)| f.clone()).collect(),
        });
    }
    let index = Index {
        version: 1,
        kind,
        model_hash: hash.into(),
        dim,
        shards,
    };
    close_core::io::write_json_atomic(dir.join(INDEX_FILE), &index)?;
    // Remove shard files no longer referenced (e.g. of a previous model).
    let keep: HashSet<&str> = index.shards.iter().map(|s| s.file.as_str()).collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-")
                && name.ends_with(".safetensors")
                && !keep.contains(name.as_str())
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// One of `count` parts of an embedding job (`close embed --shard INDEX/COUNT`): the
/// batches whose number is `index` modulo `count`, of the batches a single process would
/// make. Every item is thus embedded in the same batch as by one process, and
/// [`merge_shards`] gives the files of a single run, byte for byte. Any scheduler can run
/// the parts: a Slurm array, a Kubernetes indexed job, `mpirun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole job.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// This shard's items: the batches of `batch` items whose number is `index` mod `count`.
    pub fn select<T: Clone>(&self, items: &[T], batch: usize) -> Vec<T> {
        items
            .chunks(batch.max(1))
            .enumerate()
            .filter(|(j, _)| j % self.count == self.index)
            .flat_map(|(_, c)| c.iter().cloned())
            .collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "shard",
                format!("`{s}`: expected INDEX/COUNT with 0 ≤ INDEX < COUNT, e.g. 0/4"),
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// What [`merge_shards`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub dir: PathBuf,
    pub kind: CacheKind,
    pub parts: usize,
    /// Keys in the merged cache.
    pub total: usize,
    /// Keys that no part holds (items every shard skipped, such as unreadable images).
    pub missing: Vec<String>,
}

/// Join the caches of a sharded job (`parts`, one per shard) into a new cache at `dir`,
/// rows in the order of `keys`: the order in which a single process embeds them (the job's
/// items, without duplicates and, for texts, without empty ones). A single run from scratch
/// and this merge write the same files. Parts of another model, kind or dimension are an
/// error that names the part; `dir` must not hold a cache yet.
pub fn merge_shards(parts: &[PathBuf], keys: &[String], dir: &Path) -> Result<MergeReport> {
    let Some(first) = parts.first() else {
        return Err(Error::invalid("merge: no shard caches given"));
    };
    if dir.join(INDEX_FILE).exists() {
        return Err(Error::Exists {
            path: dir.to_path_buf(),
            hint: "merge into a new directory, or delete this cache first".into(),
        });
    }
    let caches = parts
        .iter()
        .map(EmbeddingCache::open)
        .collect::<Result<Vec<_>>>()?;
    let c0 = &caches[0];
    for c in &caches[1..] {
        if (c.kind, c.dim, &c.model_hash) != (c0.kind, c0.dim, &c0.model_hash) {
            return Err(Error::invalid(format!(
                "{}: a {:?} cache of model {} (dim {}), but {} is a {:?} cache of model {} \
                 (dim {}); merge the shards of one `close embed` job",
                c.dir.display(),
                c.kind,
                &c.model_hash[..c.model_hash.len().min(12)],
                c.dim,
                first.display(),
                c0.kind,
                &c0.model_hash[..c0.model_hash.len().min(12)],
                c0.dim
            )));
        }
    }
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for k in keys.iter().filter(|k| seen.insert(k.as_str())) {
        let found = caches.iter().find_map(|c| c.pos.get(k).map(|&i| (c, i)));
        match found {
            Some((c, i)) => {
                let row = c.data[i * c.dim..(i + 1) * c.dim].to_vec();
                rows.push((k.clone(), c.fingerprints[i].clone(), row));
            }
            None => missing.push(k.clone()),
        }
    }
    let total = rows.len();
    commit(dir, c0.kind, &c0.model_hash, c0.dim, Vec::new(), rows)?;
    Ok(MergeReport {
        dir: dir.to_path_buf(),
        kind: c0.kind,
        parts: parts.len(),
        total,
        missing,
    })
}

fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::config("batch_size", "must be at least 1"));
    }
    Ok(())
}

/// The first row of `rows` with a NaN or Inf is an error naming its key and input: a model
/// with broken weights must not fill a cache with garbage.
fn check_rows<'a>(
    clip: &Clip,
    items: impl Iterator<Item = (&'a str, String)>,
    rows: &[Vec<f32>],
) -> Result<()> {
    for ((key, input), row) in items.zip(rows) {
        if close_core::check::count_non_finite(row) > 0 {
            return Err(Error::invalid(format!(
                "CLIP {} gave a non-finite embedding (NaN or Inf) for `{key}` ({input}); \
                 its weights are probably corrupt: retrain or re-download the model",
                clip.dir().display()
            )));
        }
    }
    Ok(())
}

fn dedup<T: Clone>(items: &[(String, T)]) -> Vec<(String, T)> {
    let mut seen = HashSet::new();
    items
        .iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .cloned()
        .collect()
}

/// Embed images `(key, path)` into the cache at `dir` with `clip`, `batch` images at a time.
/// An image's vector depends on the image alone ([`Clip::embed_images_exact`]), not on the
/// batch.
pub fn embed_images(
    clip: &Clip,
    items: &[(String, PathBuf)],
    dir: &Path,
    batch: usize,
    progress: &dyn Progress,
) -> Result<EmbedReport> {
    embed_images_part(clip, items, dir, batch, Shard::WHOLE, progress)
}

/// [`embed_images`] of one [`Shard`] of the batches.
pub fn embed_images_part(
    clip: &Clip,
    items: &[(String, PathBuf)],
    dir: &Path,
    batch: usize,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<EmbedReport> {
    check_batch(batch)?;
    let hash = clip.model_hash()?;
    let dim = clip.model.config().projection_dim;
    let items = dedup(items);
    let (cache, shards) = open_for_build(dir, CacheKind::Image, &hash, dim)?;
    let reused_ok = !shards.is_empty();
    let mut todo = Vec::new();
    let mut reused = 0;
    for (k, p) in &items {
        let fp = image_fingerprint(p);
        match cache.pos.get(k) {
            Some(&i) if cache.fingerprints[i] == fp => reused += 1,
            _ => todo.push((k.clone(), p.clone(), fp)),
        }
    }
    let todo = shard.select(&todo, batch);
    let mut bad = Vec::new();
    let mut new = Vec::new();
    progress.start("embed images", todo.len() as u64);
    for chunk in todo.chunks(batch) {
        let decoded: Vec<_> = chunk.par_iter().map(|(_, p, _)| load_image(p)).collect();
        let mut imgs = Vec::new();
        let mut ok = Vec::new();
        for ((k, p, fp), r) in chunk.iter().zip(decoded) {
            match r {
                Ok(img) => {
                    imgs.push(img);
                    ok.push((k, fp));
                }
                Err(e) => bad.push(BadItem {
                    key: k.clone(),
                    input: p.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        if !imgs.is_empty() {
            let emb = clip.embed_images_exact(&imgs)?.to_vec2::<f32>()?;
            let named = ok.iter().map(|(k, _)| (k.as_str(), format!("image {k}")));
            check_rows(clip, named, &emb)?;
            for ((k, fp), row) in ok.into_iter().zip(emb) {
                new.push((k.clone(), fp.clone(), row));
            }
        }
        close_core::pace::step();
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    let computed = new.len();
    if computed > 0 || !reused_ok {
        commit(dir, CacheKind::Image, &hash, dim, shards, new)?;
    }
    let total = EmbeddingCache::open(dir)?.len();
    Ok(EmbedReport {
        dir: dir.to_path_buf(),
        kind: CacheKind::Image,
        model_hash: hash,
        dim,
        requested: items.len(),
        reused,
        computed,
        bad,
        total,
    })
}

/// Embed texts `(key, text)` into the cache at `dir` with `clip`, `batch` texts at a time
/// (shortest first). A text's vector depends on the text alone ([`Clip::embed_texts_exact`]),
/// not on the batch or on what else is embedded.
/// Empty texts are skipped and reported.
pub fn embed_texts(
    clip: &Clip,
    items: &[(String, String)],
    dir: &Path,
    batch: usize,
    progress: &dyn Progress,
) -> Result<EmbedReport> {
    embed_texts_part(clip, items, dir, batch, Shard::WHOLE, progress)
}

/// A text still to embed, tokenized; `order` is its place among the texts to embed.
#[derive(Clone)]
struct TextTodo {
    order: usize,
    key: String,
    text: String,
    fp: String,
    ids: Vec<u32>,
}

impl TextTodo {
    fn new(clip: &Clip, order: usize, key: &str, text: &str, fp: String) -> Result<Self> {
        let ids = clip
            .tokenizer
            .encode(text)
            .map_err(|e| Error::invalid(format!("text {key:?}: {e}")))?;
        Ok(Self {
            order,
            key: key.to_string(),
            text: text.to_string(),
            fp,
            ids,
        })
    }
}

/// Embed `todo` `batch` texts at a time; the rows (key, fingerprint, vector) come back in
/// the texts' `order`.
fn embed_todo(
    clip: &Clip,
    todo: &[TextTodo],
    batch: usize,
    progress: &dyn Progress,
) -> Result<Vec<(String, String, Vec<f32>)>> {
    let mut new = Vec::new();
    progress.start("embed texts", todo.len() as u64);
    for chunk in todo.chunks(batch) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|x| x.ids.clone()).collect();
        let emb = clip.embed_token_rows_exact(&rows)?.to_vec2::<f32>()?;
        let named = chunk
            .iter()
            .map(|x| (x.key.as_str(), format!("text {:?}", x.text)));
        check_rows(clip, named, &emb)?;
        for (x, row) in chunk.iter().zip(emb) {
            new.push((x.order, (x.key.clone(), x.fp.clone(), row)));
        }
        close_core::pace::step();
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    new.sort_by_key(|(order, _)| *order);
    Ok(new.into_iter().map(|(_, row)| row).collect())
}

/// [`embed_texts`] of one [`Shard`] of the batches.
pub fn embed_texts_part(
    clip: &Clip,
    items: &[(String, String)],
    dir: &Path,
    batch: usize,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<EmbedReport> {
    check_batch(batch)?;
    let hash = clip.model_hash()?;
    let dim = clip.model.config().projection_dim;
    let items = dedup(items);
    let (cache, shards) = open_for_build(dir, CacheKind::Text, &hash, dim)?;
    let reused_ok = !shards.is_empty();
    let mut todo = Vec::new();
    let mut reused = 0;
    let mut bad = Vec::new();
    for (k, t) in &items {
        if t.trim().is_empty() {
            bad.push(BadItem {
                key: k.clone(),
                input: t.clone(),
                reason: "empty text".into(),
            });
            continue;
        }
        let fp = text_fingerprint(t);
        match cache.pos.get(k) {
            Some(&i) if cache.fingerprints[i] == fp => reused += 1,
            _ => todo.push(TextTodo::new(clip, todo.len(), k, t, fp)?),
        }
    }
    // Computed shortest first: consecutive texts then share a token count, so the text
    // tower's calls of one length need few filler rows. Written in the input order.
    todo.sort_by_key(|x| x.ids.len());
    let new = embed_todo(clip, &shard.select(&todo, batch), batch, progress)?;
    let computed = new.len();
    if computed > 0 || !reused_ok {
        commit(dir, CacheKind::Text, &hash, dim, shards, new)?;
    }
    let total = EmbeddingCache::open(dir)?.len();
    Ok(EmbedReport {
        dir: dir.to_path_buf(),
        kind: CacheKind::Text,
        model_hash: hash,
        dim,
        requested: items.len(),
        reused,
        computed,
        bad,
        total,
    })
}
