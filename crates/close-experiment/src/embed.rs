//! Stage: embed every image of the Karpathy file, the images tasks bring of their own (Visual
//! News), and every text any task needs into the caches under `OUT/cache`. Incremental: a rerun computes only what is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use close_clip::cache::{embed_images, embed_texts, BadItem, EmbeddingCache};
use close_clip::Clip;
use close_core::progress::Progress;
use close_core::Result;
use close_data::coco::Karpathy;

use crate::data::TaskInputs;

/// Items that could not be embedded, logged one by one before a count of the rest.
const SHOWN_BAD: usize = 10;

/// The embedding caches, and what could not be embedded.
pub struct Caches {
    pub images: EmbeddingCache,
    pub texts: EmbeddingCache,
    pub bad: Vec<BadItem>,
}

/// The images of the tasks that are not Karpathy's (key, file), each once.
fn own_images(inputs: &[TaskInputs]) -> Vec<(String, PathBuf)> {
    let mut all = std::collections::BTreeMap::new();
    for input in inputs {
        all.extend(input.text.image_files.clone());
        if let Some(im) = &input.images {
            all.extend(im.image_files.clone());
        }
    }
    all.into_iter().collect()
}

/// Embed into `dir/images` and `dir/texts` (batch sizes: images, texts).
pub fn embed_all(
    clip: &Clip,
    karpathy: &Karpathy,
    image_root: &Path,
    inputs: &[TaskInputs],
    dir: &Path,
    batch: (usize, usize),
    progress: &dyn Progress,
) -> Result<Caches> {
    let mut texts: BTreeSet<String> = BTreeSet::new();
    for input in inputs {
        texts.extend(input.text.clip_texts());
    }
    for im in &karpathy.images {
        texts.extend(im.captions().map(str::to_string));
    }
    let mut image_items: Vec<(String, PathBuf)> = karpathy
        .images
        .iter()
        .map(|im| (im.image_id().to_string(), image_root.join(im.rel_path())))
        .collect();
    image_items.extend(own_images(inputs));
    let text_items: Vec<(String, String)> = texts.into_iter().map(|t| (t.clone(), t)).collect();
    let irep = embed_images(clip, &image_items, &dir.join("images"), batch.0, progress)?;
    let trep = embed_texts(clip, &text_items, &dir.join("texts"), batch.1, progress)?;
    if irep.bad.len() == image_items.len() && !image_items.is_empty() {
        let first = &irep.bad[0];
        return Err(close_core::Error::invalid(format!(
            "none of the {} images could be read (first: {}: {}); is --images the root of the Karpathy file's `filepath/filename`?",
            image_items.len(),
            first.input,
            first.reason
        )));
    }
    let bad: Vec<BadItem> = irep.bad.into_iter().chain(trep.bad).collect();
    for b in bad.iter().take(SHOWN_BAD) {
        tracing::warn!("not embedded: {} ({}): {}", b.key, b.input, b.reason);
    }
    if bad.len() > SHOWN_BAD {
        tracing::warn!(
            "{} more items not embedded; the examples that need them are left out and counted per task in REPORT.md",
            bad.len() - SHOWN_BAD
        );
    }
    Ok(Caches {
        images: EmbeddingCache::open(dir.join("images"))?,
        texts: EmbeddingCache::open(dir.join("texts"))?,
        bad,
    })
}
