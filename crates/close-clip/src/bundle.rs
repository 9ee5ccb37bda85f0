//! Loading and saving CLIP model directories in HF layout (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `preprocessor_config.json`), and [`Clip`], the
//! bundle of model + image processor + tokenizer used for embedding and serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use close_core::{Error, Result};

use crate::config::ClipConfig;
use crate::model::{expected_tensors, ClipModel};
use crate::preprocess::{load_image, ImageProcessor, ImageProcessorConfig};
use crate::tokenizer::ClipTokenizer;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Read a safetensors header (without reading the tensor data) and check its offsets
/// against the file length, so truncated files are caught before mapping.
fn read_header(path: &Path) -> Result<HashMap<String, HeaderEntry>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| Error::format(path, None, "not a safetensors file (shorter than 8 bytes)"))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > file_len {
        return Err(Error::format(
            path,
            None,
            format!("not a safetensors file (header length {n}, file length {file_len})"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&buf)
        .map_err(|e| Error::format(path, None, format!("bad safetensors header: {e}")))?;
    let data_len = (file_len - 8 - n) as usize;
    let mut out = HashMap::new();
    for (k, v) in raw {
        if k == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| Error::format(path, None, format!("tensor `{k}`: {e}")))?;
        if e.data_offsets.1 > data_len || e.data_offsets.0 > e.data_offsets.1 {
            return Err(Error::format(
                path,
                None,
                format!("tensor `{k}` lies beyond the end of the file (truncated?)"),
            ));
        }
        out.insert(k, e);
    }
    Ok(out)
}

/// Check that `path` holds every tensor `cfg` needs with the right shape and a float dtype;
/// the error names the file and the key.
pub fn check_checkpoint(path: &Path, cfg: &ClipConfig) -> Result<()> {
    let header = read_header(path)?;
    for (key, shape) in expected_tensors(cfg) {
        let t = header.get(&key).ok_or_else(|| Error::MissingKey {
            file: path.display().to_string(),
            key: key.clone(),
        })?;
        if t.shape != shape {
            return Err(Error::Shape {
                what: format!("{}: tensor `{key}`", path.display()),
                expected: shape,
                got: t.shape.clone(),
            });
        }
        if !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(Error::format(
                path,
                None,
                format!(
                    "tensor `{key}` has dtype {}, expected a float type",
                    t.dtype
                ),
            ));
        }
    }
    Ok(())
}

/// Load a [`ClipModel`] (f32) from an HF model dir (`config.json` + `model.safetensors`).
pub fn load_model(dir: impl AsRef<Path>, device: &Device) -> Result<ClipModel> {
    let dir = dir.as_ref();
    let cfg = ClipConfig::load(dir.join(CONFIG_FILE))?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        let msg = if dir.join("pytorch_model.bin").exists() {
            "not found (only pytorch_model.bin is present; convert it to safetensors)"
        } else {
            "not found"
        };
        return Err(Error::io(
            &weights,
            std::io::Error::new(std::io::ErrorKind::NotFound, msg),
        ));
    }
    check_checkpoint(&weights, &cfg)?;
    // SAFETY: the file is memory-mapped read-only; it was just validated as safetensors.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
        .map_err(|e| Error::format(&weights, None, e.to_string()))?;
    ClipModel::new(vb, &cfg)
}

/// Save a model's tensors (HF names) and config into `dir` (atomic writes).
pub fn save_model(
    dir: impl AsRef<Path>,
    cfg: &ClipConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let dir = dir.as_ref();
    close_core::io::save_safetensors_atomic(dir.join(WEIGHTS_FILE), tensors)?;
    close_core::io::write_json_atomic(dir.join(CONFIG_FILE), &cfg.to_hf_json())
}

/// The fixed cost of one more text forward pass, in tokens: texts run in groups of similar
/// length ([`crate::ragged`]) instead of all padded to the longest.
pub const TEXT_GROUP_OVERHEAD: usize = 32;

/// Rows per call of the text tower when embedding for a cache
/// ([`Clip::embed_texts_exact`]). Part of what a cached vector is a function of: changing it
/// changes the vectors' last bits.
pub const TEXT_CALL_ROWS: usize = 32;

/// Images per call of the vision tower when embedding for a cache
/// ([`Clip::embed_images_exact`]); like [`TEXT_CALL_ROWS`], part of what a cached vector is
/// a function of.
pub const IMAGE_CALL_ROWS: usize = 32;

/// Model + image processor + tokenizer of one model dir.
pub struct Clip {
    pub model: ClipModel,
    pub processor: ImageProcessor,
    pub tokenizer: ClipTokenizer,
    dir: PathBuf,
    hash: OnceLock<String>,
}

impl Clip {
    /// Load everything from an HF-layout dir. A missing `preprocessor_config.json` falls
    /// back to CLIP's processor for the model's `image_size`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let model = load_model(dir, device)?;
        let cfg = model.config().clone();
        let pp = dir.join(PREPROCESSOR_FILE);
        let processor = if pp.exists() {
            ImageProcessor::load(&pp)?
        } else {
            tracing::warn!(
                "{} missing: using CLIP's default preprocessing",
                pp.display()
            );
            ImageProcessor::new(ImageProcessorConfig::for_size(cfg.vision_config.image_size))?
        };
        let tokenizer = ClipTokenizer::load(
            dir.join(TOKENIZER_FILE),
            cfg.text_config.max_position_embeddings,
            cfg.text_config.eos_token_id,
        )?;
        Ok(Self {
            model,
            processor,
            tokenizer,
            dir: dir.to_path_buf(),
            hash: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// SHA-256 over config, weights, tokenizer and preprocessor files (computed once).
    /// Embedding caches record it to detect a changed model.
    pub fn model_hash(&self) -> Result<String> {
        if let Some(h) = self.hash.get() {
            return Ok(h.clone());
        }
        let h = model_dir_hash(&self.dir)?;
        Ok(self.hash.get_or_init(|| h).clone())
    }

    /// Unit image embeddings `[n, projection_dim]` for decoded RGB images.
    pub fn embed_images(&self, imgs: &[image::RgbImage]) -> Result<Tensor> {
        let px = self.processor.batch(imgs, self.device())?;
        self.model.image_features(&px)
    }

    /// [`Self::embed_images`] such that each image's vector depends on that image only, bit
    /// for bit, not on the batch it came in ([`ClipModel::image_features_exact`]).
    pub fn embed_images_exact(&self, imgs: &[image::RgbImage]) -> Result<Tensor> {
        let px = self.processor.batch(imgs, self.device())?;
        self.model.image_features_exact(&px, IMAGE_CALL_ROWS)
    }

    /// Unit image embeddings for image files (errors name the file).
    pub fn embed_image_files<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Tensor> {
        let imgs = paths.iter().map(load_image).collect::<Result<Vec<_>>>()?;
        self.embed_images(&imgs)
    }

    /// Unit text embeddings `[n, projection_dim]`, run in groups of similar length.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        let rows = self.tokenizer.encode_rows(texts)?;
        self.model
            .text_features_rows(&rows, self.tokenizer.pad_id(), TEXT_GROUP_OVERHEAD)
    }

    /// Unit text embeddings `[n, projection_dim]` in which each text's vector depends on
    /// that text only, bit for bit, whatever else is embedded with it
    /// ([`ClipModel::text_features_exact`]). Embedding caches use this, so a cache built in
    /// several passes, or a run that embeds only some tasks' texts, holds the same vectors.
    pub fn embed_texts_exact<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        self.embed_token_rows_exact(&self.tokenizer.encode_rows(texts)?)
    }

    /// [`Self::embed_texts_exact`] of texts this bundle's tokenizer has already encoded.
    pub fn embed_token_rows_exact(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        self.model.text_features_exact(rows, TEXT_CALL_ROWS)
    }

    /// Cosine similarity of one image file with each text.
    pub fn score(&self, image: impl AsRef<Path>, texts: &[String]) -> Result<Vec<f32>> {
        let img = self.embed_image_files(&[image])?;
        let txt = self.embed_texts(texts)?;
        Ok(img.matmul(&txt.t()?)?.squeeze(0)?.to_vec1::<f32>()?)
    }
}

/// Hash of the files that determine embeddings in a model dir.
pub fn model_dir_hash(dir: &Path) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for f in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, PREPROCESSOR_FILE] {
        let p = dir.join(f);
        if p.exists() {
            h.update(f.as_bytes());
            h.update(close_core::io::sha256_file(&p)?.as_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}
