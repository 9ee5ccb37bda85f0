//! `close predict`: run a trained model on image files (with a question / hypothesis /
//! article per image where the task needs one). One JSON line per image:
//! `{file, prediction, logprob, beams}`; unreadable images are reported and skipped.

use std::path::PathBuf;

use close_model::run::Run;

use close_model::hub::ModelKind;

use crate::common::{resolve, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run dir.
    #[arg(long)]
    pub run: PathBuf,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The text for every image (VQA question, VE hypothesis, news article line).
    #[arg(long)]
    pub text: Option<String>,
    /// A file with one text per image, in order.
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// CLIP model dir / hub id (default: the one recorded in the run).
    #[arg(long)]
    pub clip: Option<String>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub beams: Option<usize>,
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: close_core::DeviceSpec,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let dev = args.device.open()?;
    let run = Run::load(&args.run, &dev)?;
    let clip_dir = match &args.clip {
        Some(c) => resolve(c, ModelKind::Clip, ctx)?,
        None => run
            .config
            .clip
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the run records no CLIP model; pass --clip"))?,
    };
    let clip = close_clip::Clip::load(&clip_dir, &dev)?;
    let texts: Option<Vec<String>> = match (&args.text, &args.texts) {
        (Some(_), Some(_)) => anyhow::bail!("--text and --texts are exclusive"),
        (Some(t), None) => Some(vec![t.clone(); args.images.len()]),
        (None, Some(p)) => {
            let s =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let v: Vec<String> = s.lines().map(|l| l.to_string()).collect();
            if v.len() != args.images.len() {
                anyhow::bail!(
                    "{}: {} lines for {} images",
                    p.display(),
                    v.len(),
                    args.images.len()
                );
            }
            Some(v)
        }
        (None, None) => None,
    };
    if run.config.task.has_input_text() && texts.is_none() {
        anyhow::bail!("task {} needs --text or --texts", run.config.task);
    }
    let gen = run.generate_config(args.beams, args.max_steps);
    let progress = ctx.progress();
    progress.start("predict", args.images.len() as u64);
    let mut bad = 0usize;
    let idx: Vec<usize> = (0..args.images.len()).collect();
    for chunk in idx.chunks(args.batch_size.max(1)) {
        // Decode each file separately so that one bad image only skips itself, then embed
        // the good ones as one batch.
        let mut ok = Vec::new();
        let mut imgs = Vec::new();
        for &i in chunk {
            match close_clip::load_image(&args.images[i]) {
                Ok(im) => {
                    ok.push(i);
                    imgs.push(im);
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("skipped {}: {e:#}", args.images[i].display());
                }
            }
        }
        progress.inc(chunk.len() as u64);
        if ok.is_empty() {
            continue;
        }
        let x = clip.embed_images(&imgs)?;
        let t: Option<Vec<String>> = texts
            .as_ref()
            .map(|v| ok.iter().map(|&i| v[i].clone()).collect());
        let beams = run.predict(&x, t.as_deref(), &gen)?;
        for (&i, b) in ok.iter().zip(beams) {
            let best = b.first().cloned();
            let line = serde_json::json!({
                "file": args.images[i],
                "text": t.as_ref().and_then(|v| ok.iter().position(|&j| j == i).map(|k| v[k].clone())),
                "prediction": best.as_ref().map(|x| x.text.clone()),
                "logprob": best.as_ref().map(|x| x.logprob),
                "beams": b,
            });
            println!("{line}");
        }
    }
    progress.finish();
    if bad > 0 {
        eprintln!("{bad} image(s) skipped");
    }
    Ok(())
}
