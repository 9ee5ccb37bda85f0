//! `close clip`: train a CLIP from scratch on a Karpathy json + image folder, and score
//! image–text pairs with any HF-layout CLIP.

use std::path::PathBuf;

use anyhow::Context;
use close_clip::train::{train_clip, TrainConfig};
use close_clip::{Clip, ClipConfig};
use close_data::coco::Karpathy;

use crate::common::Ctx;

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum ClipCommand {
    /// Train a CLIP from scratch (contrastive, AdamW, cosine schedule); writes an HF-layout
    /// model dir and prints held-out retrieval R@1/R@5 as JSON.
    Train(TrainArgs),
    /// Cosine similarity of an image with each text (and softmax probabilities), as JSON.
    Score(ScoreArgs),
}

/// `--preset`: the CLIP architecture `close clip train` starts from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Shapes,
    Tiny,
    #[value(name = "vit-b32")]
    VitB32,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Karpathy-format json (`dataset_coco.json`).
    #[arg(long)]
    pub data: PathBuf,
    /// Image root (`filepath/filename` of each image is relative to it).
    #[arg(long)]
    pub images: PathBuf,
    /// Output model dir (HF layout); must be new or empty unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the model already in --out (it stays in place until the new one is saved).
    #[arg(long)]
    pub force: bool,
    /// Model preset: shapes (63 px, 3×3 patches, small ViT), tiny, vit-b32.
    #[arg(long, value_enum, default_value_t = Preset::Shapes)]
    pub preset: Preset,
    /// A full training config json (overrides --preset and the flags below).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// An existing tokenizer.json (default: train a word-level one on the captions).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Image side (overrides the preset; must be a multiple of the patch size).
    #[arg(long, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = 10, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5e-4, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.05, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.05, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub warmup_frac: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop the optimisation after this many seconds. The schedule stays the one planned for
    /// --epochs; the model is saved where it stopped and the report says so.
    #[arg(long, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub max_seconds: Option<f64>,
    /// Hard negatives: a json list of word groups, each of mutually exclusive words (e.g.
    /// `[["red","blue","green"],["left","right"]]`); every training caption also gets a copy
    /// with two words of a group swapped or one replaced, as an extra negative.
    #[arg(long, value_name = "JSON")]
    pub hard_negatives: Option<PathBuf>,
    /// With --hard-negatives: weight of a pairwise term in which each image also ranks its
    /// caption above that caption's own negative (0: the negatives only join the batch
    /// softmax). Lifts attribute binding; see docs/demo/NOTES.md (part 7) for what it
    /// costs.
    #[arg(long, default_value_t = 0.0, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub hard_negative_weight: f64,
    /// Weight of a term that holds each image near its own caption (1 − cos, mean over the
    /// batch). Small weights (0.05) narrow the modality gap the pair term widens; large ones
    /// close it altogether (docs/demo/NOTES.md, part 7). 0: off.
    #[arg(long, default_value_t = 0.0, value_parser = crate::common::non_negative, allow_negative_numbers = true)]
    pub align_weight: f64,
    #[arg(long, default_value = "train")]
    pub train_split: String,
    /// Held-out split for retrieval.
    #[arg(long, default_value = "test")]
    pub eval_split: String,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// HF-layout CLIP model dir.
    #[arg(long)]
    pub clip: PathBuf,
    /// Image file.
    pub image: PathBuf,
    /// Texts to score against the image.
    #[arg(required = true)]
    pub texts: Vec<String>,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        if let Some(p) = &self.config {
            let c: TrainConfig = close_core::io::read_json(p)?;
            return Ok(c);
        }
        let mut model = match self.preset {
            Preset::Shapes => ClipConfig::shapes(),
            Preset::Tiny => ClipConfig::tiny(),
            Preset::VitB32 => ClipConfig::vit_b32(),
        };
        if let Some(s) = self.image_size {
            model.vision_config.image_size = s;
        }
        if model.vision_config.image_size % model.vision_config.patch_size != 0 {
            anyhow::bail!(
                "--image-size {}: must be a multiple of the patch size {}",
                model.vision_config.image_size,
                model.vision_config.patch_size
            );
        }
        let hard_negative_groups = match &self.hard_negatives {
            Some(p) => close_core::io::read_json(p)
                .with_context(|| format!("--hard-negatives {}", p.display()))?,
            None => Vec::new(),
        };
        Ok(TrainConfig {
            model,
            hard_negative_groups,
            hard_negative_weight: self.hard_negative_weight,
            align_weight: self.align_weight,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup_frac: self.warmup_frac,
            seed: self.seed,
            train_split: self.train_split.clone(),
            eval_split: self.eval_split.clone(),
            max_train_seconds: self.max_seconds,
            ..TrainConfig::default()
        })
    }
}

pub fn run(cmd: ClipCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        ClipCommand::Train(a) => {
            let cfg = a.config()?;
            cfg.validate()?;
            let hint = "pass --force to replace it, or choose another --out";
            close_core::io::check_output(&a.out, a.force, hint)?;
            let dev = a.device.open()?;
            let data = Karpathy::load(&a.data)?;
            let tok = match &a.tokenizer {
                Some(p) => Some(close_clip::tokenizer::load_hf_tokenizer(p)?),
                None => None,
            };
            let progress = ctx.progress();
            // Trained into OUT.new and swapped in whole: a kill leaves the old model (or
            // none), never a mix.
            let mut report = None;
            close_core::io::replace_dir_atomic(&a.out, |dir| {
                let mut r = train_clip(&data, &a.images, dir, &cfg, tok, &dev, progress.as_ref())?;
                // The report names where the model ends up, not the staging dir.
                r.out_dir = a.out.clone();
                close_core::io::write_json_atomic(dir.join(close_clip::train::REPORT_FILE), &r)?;
                report = Some(r);
                Ok(())
            })
            .with_context(|| format!("training CLIP into {}", a.out.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        ClipCommand::Score(a) => {
            let dev = a.device.open()?;
            let clip = Clip::load(&a.clip, &dev)?;
            let cos = clip.score(&a.image, &a.texts)?;
            let scale = clip.model.logit_scale()?;
            let m = cos
                .iter()
                .map(|c| c * scale)
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = cos.iter().map(|c| (c * scale - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let rows: Vec<_> = a
                .texts
                .iter()
                .zip(&cos)
                .zip(&e)
                .map(|((t, c), p)| serde_json::json!({"text": t, "cosine": c, "prob": p / z}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"image": a.image, "scores": rows})
                )?
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    /// `close clip train` with the required flags and `extra`.
    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let argv = ["close", "--data", "d.json", "--images", "i", "--out", "o"];
        Cli::try_parse_from(argv.iter().chain(extra))
    }

    fn args(groups: &std::path::Path) -> TrainArgs {
        parse(&["--hard-negatives", groups.to_str().unwrap()])
            .unwrap()
            .args
    }

    #[test]
    fn hard_negative_groups_come_from_the_json_file_and_errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("groups.json");
        std::fs::write(&good, r#"[["red","blue"],["left","right"]]"#).unwrap();
        let cfg = args(&good).config().unwrap();
        assert_eq!(cfg.hard_negative_groups[1], vec!["left", "right"]);
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.hard_negative_weight, 0.0);

        let malformed = dir.path().join("bad.json");
        std::fs::write(&malformed, r#"{"red": 1}"#).unwrap();
        let e = format!("{:#}", args(&malformed).config().unwrap_err());
        assert!(
            e.contains("--hard-negatives") && e.contains("bad.json"),
            "{e}"
        );

        let lonely = dir.path().join("lonely.json");
        std::fs::write(&lonely, r#"[["red"]]"#).unwrap();
        let e = args(&lonely)
            .config()
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("hard_negative_groups"), "{e}");
    }

    #[test]
    fn the_pair_weight_needs_hard_negatives_and_a_number_at_least_zero() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups.json");
        std::fs::write(&groups, r#"[["red","blue"]]"#).unwrap();
        let g = groups.to_str().unwrap();
        let weighted = parse(&["--hard-negatives", g, "--hard-negative-weight", "1.5"]);
        let cfg = weighted.unwrap().args.config().unwrap();
        assert_eq!(cfg.hard_negative_weight, 1.5);
        assert_eq!(cfg.align_weight, 0.0);
        assert!(cfg.validate().is_ok());

        let alone = parse(&["--hard-negative-weight", "1.5"]).unwrap().args;
        let e = alone.config().unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("hard_negative_groups"), "{e}");

        let e = parse(&["--hard-negative-weight", "-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--hard-negative-weight"), "{e}");
    }

    #[test]
    fn the_align_weight_is_passed_through_and_negative_values_name_the_flag() {
        let cfg = parse(&["--align-weight", "0.05"]).unwrap().args.config();
        assert_eq!(cfg.unwrap().align_weight, 0.05);
        let e = parse(&["--align-weight", "-0.1"]).unwrap_err().to_string();
        assert!(e.contains("--align-weight"), "{e}");
    }
}
