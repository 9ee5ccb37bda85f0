//! `close predict`: run a trained model on image files (with a question / hypothesis /
//! article per image where the task needs one). One JSON line per image:
//! `{file, prediction, logprob, beams}`; unreadable images are reported and skipped.

use std::path::PathBuf;

use close_model::hub::ModelKind;
use close_model::infer::batch::{predict_files, FileBatch};
use close_model::infer::predictor::Prediction;
use close_model::infer::run::clip_dir;
use close_model::infer::RgbImage;
use close_model::run::Run;

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
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let dev = args.device.open()?;
    let run = Run::load(&args.run, &dev)?;
    let explicit = match &args.clip {
        Some(c) => Some(resolve(c, ModelKind::Clip, ctx)?),
        None => None,
    };
    let clip = close_clip::Clip::load(clip_dir(&run, explicit.as_deref())?, &dev)?;
    let texts = texts(&args)?;
    if run.config.task.has_input_text() && texts.is_none() {
        anyhow::bail!("task {} needs --text or --texts", run.config.task);
    }
    let gen = run.generate_config(args.beams, args.max_steps);
    let predict = |imgs: &[RgbImage], t: Option<&[String]>| {
        let x = clip.embed_images(imgs)?;
        let beams = run.predict(&x, t, &gen)?;
        Ok(beams.into_iter().map(prediction).collect())
    };
    let input = FileBatch {
        files: &args.images,
        texts: texts.as_deref(),
        batch: args.batch_size,
    };
    let progress = ctx.progress();
    let report = predict_files(&input, predict, progress.as_ref(), |file, text, p| {
        let line = serde_json::json!({
            "file": file,
            "text": text,
            "prediction": p.beams.first().map(|b| b.text.clone()),
            "logprob": p.beams.first().map(|b| b.logprob),
            "beams": p.beams,
        });
        println!("{line}");
        Ok(())
    })?;
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.file, s.error);
    }
    if !report.skipped.is_empty() {
        eprintln!("{} image(s) skipped", report.skipped.len());
    }
    Ok(())
}

/// The text of every image: `--text` for all, or one line of `--texts` each.
fn texts(args: &Args) -> anyhow::Result<Option<Vec<String>>> {
    Ok(match (&args.text, &args.texts) {
        (Some(_), Some(_)) => anyhow::bail!("--text and --texts are exclusive"),
        (Some(t), None) => Some(vec![t.clone(); args.images.len()]),
        (None, Some(p)) => {
            let s = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--texts {}: {e}", p.display()))?;
            let v: Vec<String> = s.lines().map(|l| l.to_string()).collect();
            if v.len() != args.images.len() {
                anyhow::bail!(
                    "--texts {}: {} lines for {} images",
                    p.display(),
                    v.len(),
                    args.images.len()
                );
            }
            Some(v)
        }
        (None, None) => None,
    })
}

fn prediction(beams: Vec<close_model::run::Beam>) -> Prediction {
    Prediction {
        beams,
        neighbors: Vec::new(),
    }
}
