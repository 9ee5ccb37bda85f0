//! `close embed`: encode a dataset's images and/or captions once into embedding caches
//! (`OUT/images`, keyed by image id; `OUT/texts`, keyed by caption text). A second run with
//! the same model reuses everything and computes only what is missing.

use std::collections::HashSet;
use std::path::PathBuf;

use close_clip::cache::{embed_images, embed_texts};
use close_clip::Clip;
use close_data::coco::Karpathy;

use crate::common::Ctx;

/// `--what`: which caches `close embed` builds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Images,
    Texts,
    Both,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF-layout CLIP model dir.
    #[arg(long)]
    pub clip: PathBuf,
    /// Karpathy-format json (`dataset_coco.json`).
    #[arg(long)]
    pub data: PathBuf,
    /// Image root (`filepath/filename` of each image is relative to it).
    #[arg(long)]
    pub images: PathBuf,
    /// Comma-separated splits (`train` includes `restval`).
    #[arg(long, default_value = "train,val,test")]
    pub splits: String,
    /// What to embed.
    #[arg(long, value_enum, default_value_t = What::Both)]
    pub what: What,
    /// Cache root: images go to OUT/images, captions to OUT/texts.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let (do_images, do_texts) = match args.what {
        What::Images => (true, false),
        What::Texts => (false, true),
        What::Both => (true, true),
    };
    let dev = args.device.open()?;
    let clip = Clip::load(&args.clip, &dev)?;
    let data = Karpathy::load(&args.data)?;
    let splits: Vec<&str> = args
        .splits
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if splits.is_empty() {
        anyhow::bail!("--splits: no split given");
    }
    let mut seen = HashSet::new();
    let mut image_items = Vec::new();
    let mut text_items = Vec::new();
    let mut seen_text = HashSet::new();
    for im in data
        .images
        .iter()
        .filter(|im| splits.iter().any(|s| im.in_split(s)))
    {
        if seen.insert(im.image_id()) {
            image_items.push((im.image_id().to_string(), args.images.join(im.rel_path())));
        }
        for c in im.captions() {
            if seen_text.insert(c.to_string()) {
                text_items.push((c.to_string(), c.to_string()));
            }
        }
    }
    if image_items.is_empty() {
        anyhow::bail!("{}: no images in splits {:?}", args.data.display(), splits);
    }
    let progress = ctx.progress();
    let mut out = serde_json::Map::new();
    if do_images {
        let r = embed_images(
            &clip,
            &image_items,
            &args.out.join("images"),
            args.batch_size,
            progress.as_ref(),
        )?;
        for b in &r.bad {
            tracing::warn!("skipped image {} ({}): {}", b.key, b.input, b.reason);
        }
        out.insert("images".into(), serde_json::to_value(&r)?);
    }
    if do_texts {
        let r = embed_texts(
            &clip,
            &text_items,
            &args.out.join("texts"),
            args.batch_size.max(1) * 4,
            progress.as_ref(),
        )?;
        out.insert("texts".into(), serde_json::to_value(&r)?);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
