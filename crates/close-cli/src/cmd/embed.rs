//! `close embed`: encode a dataset's images and/or captions once into embedding caches
//! (`OUT/images`, keyed by image id; `OUT/texts`, keyed by caption text). A second run with
//! the same model reuses everything and computes only what is missing. Visual News images,
//! which are not COCO's, are added with `--news` (keyed `news:{id}`).
//!
//! Large jobs split over processes or machines: `close embed --shard I/N` embeds every
//! N-th batch starting at batch I into its own `--out`, and `close embed merge` joins the
//! shards into the cache a single process would have written, byte for byte.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use close_clip::cache::{embed_images_part, embed_texts_part, merge_shards, Shard};
use close_clip::Clip;
use close_data::coco::Karpathy;
use close_data::news::load_visual_news;
use close_model::task::news_image_key;

use crate::common::Ctx;

/// `--what`: which caches `close embed` builds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Images,
    Texts,
    Both,
}

impl What {
    fn images(self) -> bool {
        matches!(self, What::Images | What::Both)
    }
    fn texts(self) -> bool {
        matches!(self, What::Texts | What::Both)
    }
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// HF-layout CLIP model dir.
    #[arg(long, required = true)]
    pub clip: Option<PathBuf>,
    /// Karpathy-format json (`dataset_coco.json`).
    #[arg(long, required = true)]
    pub data: Option<PathBuf>,
    /// Image root (`filepath/filename` of each image is relative to it).
    #[arg(long, required = true)]
    pub images: Option<PathBuf>,
    /// Comma-separated splits (`train` includes `restval`).
    #[arg(long, default_value = "train,val,test")]
    pub splits: String,
    /// What to embed.
    #[arg(long, value_enum, default_value_t = What::Both)]
    pub what: What,
    /// Cache root: images go to OUT/images, captions to OUT/texts.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub news: NewsArgs,
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Embed only part I of N of the job (0 ≤ I < N): every N-th batch from batch I. Give
    /// each part its own --out, then join them with `close embed merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// Visual News files whose images are embedded beside the Karpathy file's.
#[derive(clap::Args, Debug, Default)]
pub struct NewsArgs {
    /// A Visual News data file (`visual_news_{split}.json`) whose images are embedded too,
    /// keyed `news:{id}` (the key `close train --task news` looks up). Repeatable.
    #[arg(long = "news", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The directory the items' `image_path`s are relative to (default: each file's own).
    #[arg(long)]
    pub news_root: Option<PathBuf>,
}

impl NewsArgs {
    /// (key, image file) of every item, in file order.
    fn images(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for f in &self.files {
            let (items, _) = load_visual_news(f, &Default::default())?;
            let root = match &self.news_root {
                Some(r) => r.clone(),
                None => f.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            out.extend(
                items
                    .iter()
                    .map(|it| (news_image_key(&it.id.0), it.image_file(&root))),
            );
        }
        Ok(out)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Join the caches of `close embed --shard I/N` runs into one, the same files as a
    /// single run's.
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The Karpathy-format json the shards embedded (it gives the order of the rows).
    #[arg(long)]
    pub data: PathBuf,
    /// The shards' --splits.
    #[arg(long, default_value = "train,val,test")]
    pub splits: String,
    #[command(flatten)]
    pub news: NewsArgs,
    /// Which caches to merge.
    #[arg(long, value_enum, default_value_t = What::Both)]
    pub what: What,
    /// Cache root to write (OUT/images, OUT/texts).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace caches already at --out (once the merge has succeeded).
    #[arg(long)]
    pub force: bool,
    /// The shards' cache roots (each one's --out).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
}

/// The job's items in the order a single process embeds them: images `(id, path)` and
/// captions `(text, text)`, each without duplicates.
type Items = (Vec<(String, PathBuf)>, Vec<(String, String)>);

fn job_items(
    data: &Path,
    splits: &str,
    image_root: &Path,
    news: &NewsArgs,
) -> anyhow::Result<Items> {
    let karpathy = Karpathy::load(data)?;
    let splits: Vec<&str> = splits
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if splits.is_empty() {
        anyhow::bail!("--splits: no split given");
    }
    let (mut seen, mut seen_text) = (HashSet::new(), HashSet::new());
    let (mut images, mut texts) = (Vec::new(), Vec::new());
    let selected = karpathy
        .images
        .iter()
        .filter(|im| splits.iter().any(|s| im.in_split(s)));
    for im in selected {
        if seen.insert(im.image_id()) {
            images.push((im.image_id().to_string(), image_root.join(im.rel_path())));
        }
        for c in im.captions() {
            if seen_text.insert(c.to_string()) {
                texts.push((c.to_string(), c.to_string()));
            }
        }
    }
    let mut seen_news = HashSet::new();
    for (key, file) in news.images()? {
        if seen_news.insert(key.clone()) {
            images.push((key, file));
        }
    }
    if images.is_empty() {
        anyhow::bail!("{}: no images in splits {:?}", data.display(), splits);
    }
    Ok((images, texts))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(Sub::Merge(m)) = args.command {
        return merge(m);
    }
    let (Some(clip), Some(data), Some(image_root), Some(out)) =
        (&args.clip, &args.data, &args.images, &args.out)
    else {
        anyhow::bail!("--clip, --data, --images and --out are required");
    };
    let dev = args.device.open()?;
    let clip = Clip::load(clip, &dev)?;
    let (image_items, text_items) = job_items(data, &args.splits, image_root, &args.news)?;
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let progress = ctx.progress();
    let mut report = serde_json::Map::new();
    if args.what.images() {
        let (dir, batch) = (out.join("images"), args.batch_size);
        let r = embed_images_part(&clip, &image_items, &dir, batch, shard, progress.as_ref())?;
        for b in &r.bad {
            tracing::warn!("skipped image {} ({}): {}", b.key, b.input, b.reason);
        }
        report.insert("images".into(), serde_json::to_value(&r)?);
    }
    if args.what.texts() {
        let (dir, batch) = (out.join("texts"), args.batch_size.max(1) * 4);
        let r = embed_texts_part(&clip, &text_items, &dir, batch, shard, progress.as_ref())?;
        report.insert("texts".into(), serde_json::to_value(&r)?);
    }
    if let Some(s) = args.shard {
        report.insert("shard".into(), format!("{}/{}", s.index, s.count).into());
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `close embed merge`: each kind is merged into a staging dir first, so that --force
/// replaces an existing cache only once the merge has succeeded.
fn merge(m: MergeArgs) -> anyhow::Result<()> {
    let (image_items, text_items) = job_items(&m.data, &m.splits, Path::new(""), &m.news)?;
    let mut report = serde_json::Map::new();
    let kinds = [
        ("images", m.what.images(), keys_of(&image_items)),
        ("texts", m.what.texts(), non_empty_keys(&text_items)),
    ];
    for (kind, wanted, keys) in kinds {
        if !wanted {
            continue;
        }
        let target = m.out.join(kind);
        if target.exists() && !m.force {
            anyhow::bail!(
                "{}: exists; merge into a new --out, or add --force to replace it",
                target.display()
            );
        }
        let parts: Vec<PathBuf> = m.parts.iter().map(|p| p.join(kind)).collect();
        let staging = m.out.join(format!(".{kind}.merging"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        let r = merge_shards(&parts, &keys, &staging)?;
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&staging, &target)?;
        let mut v = serde_json::to_value(&r)?;
        v["dir"] = target.display().to_string().into();
        report.insert(kind.into(), v);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn keys_of<T>(items: &[(String, T)]) -> Vec<String> {
    items.iter().map(|(k, _)| k.clone()).collect()
}

/// Text keys as a single run embeds them: empty texts are skipped there.
fn non_empty_keys(items: &[(String, String)]) -> Vec<String> {
    items
        .iter()
        .filter(|(_, t)| !t.trim().is_empty())
        .map(|(k, _)| k.clone())
        .collect()
}
