//! `close demo`: make a world → train a CLIP on it → run the experiment on it → probe the
//! CLIP on held-out scenes.

use std::path::Path;

use candle_core::Device;

use close_clip::train::{train_clip, TrainReport};
use close_core::progress::Progress;
use close_core::{io, Error, Result};
use close_data::coco::Karpathy;
use close_data::world::{self, WorldPaths};
use close_experiment::{ExperimentInputs, ExperimentOutput, Stopwatch};
use close_model::task::DataPaths;

use crate::config::DemoConfig;
use crate::probes::{run_probes, ProbeResult};

/// What the demo's CLIP stage was asked for (world and CLIP config), beside the model.
const CLIP_STAGE_FILE: &str = "demo_stage.json";
/// The CLIP's zero-shot probe results, beside the model.
const PROBES_FILE: &str = "probes.json";

/// Everything the demo produced.
pub struct DemoOutput {
    pub experiment: ExperimentOutput,
    /// Zero-shot probes of the CLIP on the val and test images (also `clip/probes.json`).
    pub probes: Vec<ProbeResult>,
}

/// The report of a CLIP already trained into `clip_dir` by this demo with the same world and
/// CLIP config, if any.
///
/// The stage file is compared as JSON, so that a file written before a config field existed
/// (which would read back with the field's default) never matches.
fn reusable_clip(clip_dir: &Path, cfg: &DemoConfig) -> Option<TrainReport> {
    let saved: serde_json::Value = io::read_json(clip_dir.join(CLIP_STAGE_FILE)).ok()?;
    // Through text, as the file was written, so that f32 fields compare as they read back.
    let text = serde_json::to_string(&(&cfg.world, &cfg.clip)).ok()?;
    let wanted: serde_json::Value = serde_json::from_str(&text).ok()?;
    if saved != wanted || !clip_dir.join("model.safetensors").exists() {
        return None;
    }
    io::read_json(clip_dir.join(close_clip::train::REPORT_FILE)).ok()
}

/// Train the demo's CLIP into `clip_dir`, or reuse the one a run with the same world and CLIP
/// config left there.
fn clip_stage(
    cfg: &DemoConfig,
    wdir: &Path,
    clip_dir: &Path,
    device: &Device,
    progress: &dyn Progress,
) -> Result<()> {
    if reusable_clip(clip_dir, cfg).is_some() {
        tracing::info!(
            "reusing the CLIP in {} (same world and training config)",
            clip_dir.display()
        );
        return Ok(());
    }
    let karpathy = Karpathy::load(WorldPaths::new(wdir).karpathy())?;
    let report = train_clip(&karpathy, wdir, clip_dir, &cfg.clip, None, device, progress)?;
    if let Some(why) = report.stopped_early {
        return Err(Error::invalid(format!("the demo's CLIP training {why}")));
    }
    io::write_json_atomic(clip_dir.join(CLIP_STAGE_FILE), &(&cfg.world, &cfg.clip))
}

/// Zero-shot probes of the CLIP on the held-out scenes, from the experiment's image cache.
fn probe_stage(
    wdir: &Path,
    clip_dir: &Path,
    out: &Path,
    device: &Device,
) -> Result<Vec<ProbeResult>> {
    let clip = close_clip::Clip::load(clip_dir, device)?;
    let scenes = world::ScenesFile::load(WorldPaths::new(wdir).scenes())?;
    let held: Vec<&world::Scene> = scenes
        .images
        .iter()
        .map(|r| &r.scene)
        .filter(|s| s.split != "train")
        .collect();
    let images = close_clip::EmbeddingCache::open(close_experiment::cache_dir(out).join("images"))?;
    let image_vec = |id: u64| images.get(&id.to_string()).map(<[f32]>::to_vec);
    let probes = run_probes(&clip, &held, &image_vec)?;
    io::write_json_atomic(clip_dir.join(PROBES_FILE), &probes)?;
    Ok(probes)
}

/// Run the whole demo into `out`.
pub fn run_demo(
    cfg: &DemoConfig,
    out: &Path,
    device: &Device,
    progress: &dyn Progress,
) -> Result<DemoOutput> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    io::write_json_atomic(out.join("demo_config.json"), cfg)?;
    let mut sw = Stopwatch::start();
    let wdir = out.join("world");
    world::generate(&cfg.world, &wdir, progress)?;
    sw.lap("world");
    let clip_dir = out.join("clip");
    clip_stage(cfg, &wdir, &clip_dir, device, progress)?;
    sw.lap("clip training");
    let inputs = ExperimentInputs {
        data: DataPaths::new(&wdir),
        images: wdir.clone(),
        clip: clip_dir.clone(),
        explicit_tasks: true,
    };
    let mut experiment =
        close_experiment::run_experiment(&cfg.experiment, &inputs, out, device, progress, sw)?;
    let t = std::time::Instant::now();
    let probes = probe_stage(&wdir, &clip_dir, out, device)?;
    experiment
        .stages
        .0
        .push(("probes".into(), t.elapsed().as_secs_f64()));
    Ok(DemoOutput { experiment, probes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dir: &Path) -> TrainReport {
        TrainReport {
            steps: 3,
            epochs: 1,
            train_images: 2,
            train_captions: 2,
            final_loss: 0.5,
            logit_scale: 100.0,
            train_seconds: 1.0,
            eval_split: "test".into(),
            retrieval: None,
            gap: None,
            skipped: Vec::new(),
            out_dir: dir.to_path_buf(),
            stopped_early: None,
        }
    }

    #[test]
    fn a_trained_clip_is_reused_only_for_the_same_world_and_config() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tempdir"), e))?;
        let dir = tmp.path();
        let cfg = DemoConfig::new(true, 0);
        assert!(reusable_clip(dir, &cfg).is_none());
        io::write_json_atomic(dir.join(close_clip::train::REPORT_FILE), &report(dir))?;
        io::write_json_atomic(dir.join(CLIP_STAGE_FILE), &(&cfg.world, &cfg.clip))?;
        // A stage record without the model is not enough.
        assert!(reusable_clip(dir, &cfg).is_none());
        io::write_atomic(dir.join("model.safetensors"), b"x")?;
        assert_eq!(reusable_clip(dir, &cfg).map(|r| r.steps), Some(3));
        assert!(reusable_clip(dir, &DemoConfig::new(true, 1)).is_none());
        let mut other = cfg.clone();
        other.clip.lr *= 2.0;
        assert!(reusable_clip(dir, &other).is_none());
        let mut other = cfg.clone();
        other.world.images += 1;
        assert!(reusable_clip(dir, &other).is_none());
        // A record from before a field existed reads back with the field's default; it
        // must not match either.
        let mut old = serde_json::to_value((&cfg.world, &cfg.clip)).unwrap();
        old[0].as_object_mut().unwrap().remove("position_jitter");
        io::write_json_atomic(dir.join(CLIP_STAGE_FILE), &old)?;
        assert!(reusable_clip(dir, &cfg).is_none());
        Ok(())
    }
}
