//! Train a CLIP on a shapes world and print its retrieval, modality gap and zero-shot
//! probes: the tool behind the CLIP tables of `docs/demo/NOTES.md`.
//!
//! ```text
//! close world --out W --images 6000 --val-fraction 0.05 --test-fraction 0.05
//! cargo run --release -p close-demo --example clip_probe -- W clip_train.json OUT [SPLIT]
//! ```
//! `clip_train.json` is a `close_clip::TrainConfig` (missing keys take their defaults). A
//! model already in OUT is probed without training again. SPLIT (default: val and test)
//! probes another split, e.g. `train` to see whether a fact was learnt at all.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::Device;

use close_clip::train::{train_clip, TrainConfig};
use close_core::progress::NoProgress;
use close_data::coco::Karpathy;
use close_data::world::{ScenesFile, WorldPaths};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [world, config, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: clip_probe WORLD CLIP_TRAIN_JSON OUT [SPLIT]");
    };
    let (wdir, out) = (Path::new(world), Path::new(out));
    let paths = WorldPaths::new(wdir);
    let device = Device::Cpu;
    if !out.join("model.safetensors").exists() {
        let text = std::fs::read_to_string(config).with_context(|| config.clone())?;
        let cfg: TrainConfig = serde_json::from_str(&text).with_context(|| config.clone())?;
        let karpathy = Karpathy::load(paths.karpathy())?;
        let r = train_clip(&karpathy, wdir, out, &cfg, None, &device, &NoProgress)?;
        println!(
            "train {:.0} s, final loss {:.3}",
            r.train_seconds, r.final_loss
        );
        println!("retrieval {}", serde_json::to_string(&r.retrieval)?);
        println!("gap {}", serde_json::to_string(&r.gap)?);
    }
    let clip = close_clip::Clip::load(out, &device)?;
    let scenes = ScenesFile::load(paths.scenes())?;
    let held: Vec<_> = scenes
        .images
        .iter()
        .map(|r| &r.scene)
        .filter(|s| match rest.first() {
            Some(split) => &s.split == split,
            None => s.split != "train",
        })
        .take(2000)
        .collect();
    let mut vecs = HashMap::new();
    for chunk in held.chunks(128) {
        let paths: Vec<_> = chunk
            .iter()
            .map(|s| paths.images_dir(&s.split).join(&s.file_name))
            .collect();
        let emb = clip.embed_image_files(&paths)?.to_vec2::<f32>()?;
        vecs.extend(chunk.iter().map(|s| s.image_id).zip(emb));
    }
    let image = |id: u64| vecs.get(&id).cloned();
    for p in close_demo::probes::run_probes(&clip, &held, &image)? {
        println!(
            "probe {:32} {:.3} (chance {:.3}, {} images)",
            p.kind, p.accuracy, p.chance, p.images
        );
    }
    Ok(())
}
