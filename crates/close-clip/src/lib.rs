//! CLIP on candle: HF checkpoints, exact preprocessing, training from scratch, embedding cache.
//!
//! A tour:
//! - [`config::ClipConfig`]: HF `config.json` (`text_config`, `vision_config`, ...), presets
//!   [`ClipConfig::vit_b32`], [`ClipConfig::shapes`], [`ClipConfig::tiny`].
//! - [`model::ClipModel`]: vision ViT + causal text transformer + projections +
//!   `logit_scale`, HF key names; [`ClipModel::image_features`] / [`ClipModel::text_features`]
//!   give unit embeddings. Trainable (differentiable ops when tensors are tracked).
//! - [`preprocess::ImageProcessor`]: HF `CLIPImageProcessor`, Pillow-exact bicubic.
//! - [`tokenizer::ClipTokenizer`]: HF `tokenizer.json`, truncation, EOS pooling inputs.
//! - [`bundle::Clip`]: model + processor + tokenizer of one model dir.
//! - [`train`]: contrastive training from scratch on a Karpathy json, retrieval metrics.
//! - [`ragged`]: text batches of uneven length in groups, without paying for padding.
//! - [`negatives`]: NegCLIP-style hard negative captions (word swaps) for training.
//! - [`cache`]: the on-disk embedding cache of images / captions.
//! - [`gap`]: modality-gap statistics and the 2-D PCA of image and caption vectors.

pub mod bundle;
pub mod cache;
pub mod config;
pub mod fused;
pub mod gap;
pub mod model;
pub mod negatives;
pub mod preprocess;
pub mod ragged;
pub mod retrieval;
pub mod tokenizer;
pub mod train;

pub use bundle::{load_model, Clip};
pub use cache::{embed_images, embed_texts, EmbedReport, EmbeddingCache};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use gap::{gap_stats, GapStats};
pub use model::ClipModel;
pub use negatives::NegativeMaker;
pub use preprocess::{load_image, ImageProcessor, ImageProcessorConfig};
pub use retrieval::{retrieval_metrics, Retrieval};
pub use tokenizer::ClipTokenizer;
pub use train::{train_clip, TrainConfig, TrainReport};
