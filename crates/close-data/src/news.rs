//! Visual News (`{split}_data.json`: a JSON array of `{id, caption, image_path,
//! article_path, topic, source}`, paths relative to the dataset root as `./source/...`) and
//! its article text files. CLOSE feeds the article's first line to T5 and the caption to CLIP.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use close_core::{Error, Result};

use crate::load::{parse_doc, parse_records_with, read_text, FlexId, LoadOptions, LoadReport};

/// One Visual News item as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewsItem {
    pub id: FlexId,
    pub caption: String,
    pub image_path: String,
    pub article_path: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub source: String,
}

impl NewsItem {
    /// `image_path` resolved against the dataset root (a leading `./` is dropped).
    pub fn image_file(&self, root: &Path) -> PathBuf {
        resolve(root, &self.image_path)
    }
    /// `article_path` resolved against the dataset root.
    pub fn article_file(&self, root: &Path) -> PathBuf {
        resolve(root, &self.article_path)
    }
}

fn resolve(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.strip_prefix("./").unwrap_or(rel))
}

/// An item with the first non-empty line of its article.
#[derive(Debug, Clone, PartialEq)]
pub struct NewsExample {
    pub item: NewsItem,
    pub article_first_line: String,
}

/// Load a Visual News data file; items with missing keys or an empty caption are errors or
/// skipped.
pub fn load_visual_news(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<NewsItem>, LoadReport)> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let raws: Vec<&RawValue> = parse_doc(path, &text)?;
    let mut report = LoadReport::new(path);
    let out: Vec<NewsItem> = parse_records_with(
        &text,
        &raws,
        "items",
        opts,
        &mut report,
        |_, it: &NewsItem| {
            if it.caption.trim().is_empty() {
                Err(format!("(id {}) empty caption", it.id))
            } else {
                Ok(())
            }
        },
    )?;
    report.loaded = out.len();
    Ok((out, report))
}

/// The first non-empty line of an article file (trimmed).
pub fn article_first_line(path: &Path) -> Result<String> {
    let text = read_text(path)?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::format(path, None, "empty article"))
}

/// Load a Visual News data file and the first line of each item's article (`root` is the
/// dataset root the paths are relative to). Items whose article file is missing or empty are
/// left out and counted in [`LoadReport::filtered`] (the reference skips them as well).
pub fn load_visual_news_with_articles(
    path: impl AsRef<Path>,
    root: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<NewsExample>, LoadReport)> {
    let (items, mut report) = load_visual_news(path, opts)?;
    let root = root.as_ref();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match article_first_line(&item.article_file(root)) {
            Ok(first) => out.push(NewsExample {
                item,
                article_first_line: first,
            }),
            Err(e) => report.filter(None, format!("id {}: {e}", item.id)),
        }
    }
    report.loaded = out.len();
    Ok((out, report))
}
