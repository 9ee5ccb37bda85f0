//! `close caption`, `close vqa`, `close entail`: inference with a trained run on image files.

use std::io::Write;
use std::path::PathBuf;

use close_model::infer::batch::{caption_files, collect_images};
use close_model::infer::predictor::{DecodeOptions, Predictor, Task};
use close_model::infer::run::{LoadOptions, RunPredictor};

use crate::common::Ctx;

/// Options shared by the three commands.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The trained run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Beam width (default: the run's).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub beam: Option<usize>,
    /// Maximum generated tokens (default: the task's: 32 caption, 16 VQA, 8 entailment).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_tokens: Option<usize>,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// CLIP model dir (default: the one recorded in the run).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Also list the K nearest training captions (by CLIP cosine) of each image.
    #[arg(long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub neighbors: usize,
    /// Captions for --neighbors: a text cache dir or a text file (default: the run's cache).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files and/or folders (searched recursively for .png/.jpg/.jpeg/.webp).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch: usize,
    /// Include every beam with its log-probability in each line.
    #[arg(long)]
    pub all_beams: bool,
    /// Write the JSON lines to this file (atomically) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also print the summary (captioned / skipped files) as JSON on stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct VqaArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The image.
    pub image: PathBuf,
    /// The question.
    #[arg(long, short)]
    pub question: String,
    /// Print the full result (beams, log-probs, neighbours) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct EntailArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The image (the premise).
    pub image: PathBuf,
    /// The hypothesis.
    #[arg(long = "hypothesis")]
    pub hypothesis: String,
    /// Print the full result (beams, log-probs, neighbours) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn load(m: &ModelArgs, want: Task) -> anyhow::Result<(RunPredictor, DecodeOptions)> {
    let dev = m.device.open()?;
    // The corpus is only loaded when neighbours are asked for.
    let corpus = if m.neighbors > 0 {
        m.corpus.clone()
    } else {
        None
    };
    let p = RunPredictor::load(
        &m.run,
        &LoadOptions {
            clip: m.clip.clone(),
            corpus,
            name: None,
        },
        &dev,
    )?;
    let info = p.info();
    if info.task != want {
        anyhow::bail!(
            "--run {}: a {} model (trained for `{}`); use `close {}`",
            m.run.display(),
            info.task,
            p.run().config.task,
            info.task
        );
    }
    if m.neighbors > 0 && info.corpus_size == 0 {
        anyhow::bail!("--neighbors {}: the run records no usable text cache; pass --corpus (a text cache dir or a captions file)", m.neighbors);
    }
    let opts = DecodeOptions {
        beams: m.beam.unwrap_or(info.defaults.beams),
        max_tokens: m.max_tokens.unwrap_or(info.defaults.max_tokens),
        neighbors: m.neighbors,
    };
    if opts.beams == 0 {
        anyhow::bail!("--beam 0: must be at least 1");
    }
    if opts.max_tokens == 0 || opts.max_tokens > info.max_tokens_limit {
        anyhow::bail!(
            "--max-tokens {}: must be in 1..={}",
            opts.max_tokens,
            info.max_tokens_limit
        );
    }
    Ok((p, opts))
}

pub fn caption(a: CaptionArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (p, opts) = load(&a.model, Task::Caption)?;
    let files = collect_images(&a.inputs)?;
    if files.is_empty() {
        anyhow::bail!(
            "no image files (.png, .jpg, .jpeg, .webp) in {:?}",
            a.inputs
        );
    }
    let mut buf: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    let progress = ctx.progress();
    let report = caption_files(
        &p,
        &files,
        &opts,
        a.batch,
        a.all_beams,
        progress.as_ref(),
        |line| {
            let s = serde_json::to_string(line)?;
            if a.out.is_some() {
                buf.extend_from_slice(s.as_bytes());
                buf.push(b'\n');
            } else {
                let mut out = stdout.lock();
                writeln!(out, "{s}").map_err(|e| close_core::Error::io("<stdout>", e))?;
                out.flush()
                    .map_err(|e| close_core::Error::io("<stdout>", e))?;
            }
            Ok(())
        },
    )?;
    if let Some(out) = &a.out {
        close_core::io::write_atomic(out, &buf)?;
    }
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.file, s.error);
    }
    if a.json {
        eprintln!("{}", serde_json::to_string(&report)?);
    } else if !ctx.quiet {
        eprintln!(
            "captioned {} image(s), skipped {}",
            report.captioned,
            report.skipped.len()
        );
    }
    if report.captioned == 0 {
        anyhow::bail!(
            "no image could be captioned ({} skipped)",
            report.skipped.len()
        );
    }
    Ok(())
}

fn one(
    m: &ModelArgs,
    task: Task,
    image: &PathBuf,
    text: &str,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let text = text.trim();
    if text.is_empty() {
        anyhow::bail!("--{}: empty text", task.text_field().unwrap_or("text"));
    }
    let (p, opts) = load(m, task)?;
    let img = close_clip::load_image(image)?;
    let pred = p
        .predict_images(std::slice::from_ref(&img), Some(&[text.to_string()]), &opts)?
        .remove(0);
    if json {
        let v = serde_json::json!({
            "file": image.display().to_string(),
            task.text_field().unwrap_or("text"): text,
            "answer": pred.answer(),
            "logprob": pred.logprob(),
            "beams": pred.beams,
            "neighbors": pred.neighbors,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", pred.answer());
        if !quiet {
            for (i, b) in pred.beams.iter().enumerate() {
                eprintln!("  beam {}: {} (log-prob {:.3})", i + 1, b.text, b.logprob);
            }
            for n in &pred.neighbors {
                eprintln!("  near: {} (cos {:.3})", n.caption, n.cosine);
            }
        }
    }
    Ok(())
}

pub fn vqa(a: VqaArgs, ctx: &Ctx) -> anyhow::Result<()> {
    one(
        &a.model,
        Task::Vqa,
        &a.image,
        &a.question,
        a.json,
        ctx.quiet,
    )
}

pub fn entail(a: EntailArgs, ctx: &Ctx) -> anyhow::Result<()> {
    one(
        &a.model,
        Task::Entail,
        &a.image,
        &a.hypothesis,
        a.json,
        ctx.quiet,
    )
}
