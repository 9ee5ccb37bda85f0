//! A real tiny CLOSE setup made in seconds: a tiny shapes world, a tiny random CLIP in HF
//! layout, a text embedding cache of the training captions, and a text-only s-cap run
//! trained for a few seconds with the library's trainer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use close_clip::{ClipConfig, ClipModel, ImageProcessorConfig};
use close_core::progress::NoProgress;
use close_model::config::TrainConfig;
use close_model::embeddings::MemEmbeddings;
use close_model::task::{DataPaths, Task, TaskData, TrainOn};

pub struct TinySetup {
    pub world: PathBuf,
    pub clip: PathBuf,
    pub text_cache: PathBuf,
    pub run: PathBuf,
    pub test_images: Vec<PathBuf>,
    pub captions: Vec<String>,
}

/// A tiny random CLIP dir (HF layout) whose word-level tokenizer knows `texts`.
pub fn tiny_clip(dir: &Path, texts: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tok = close_clip::tokenizer::train_word_level(texts.iter(), 500, 1).unwrap();
    let mut cfg = ClipConfig::tiny();
    cfg.text_config.vocab_size = tok.get_vocab_size(true);
    cfg.text_config.max_position_embeddings = 24;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let _model = ClipModel::new(vb, &cfg).unwrap();
    reseed(&varmap, 0x5eed);
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    close_clip::bundle::save_model(dir, &cfg, &tensors).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let pp = ImageProcessorConfig::for_size(cfg.vision_config.image_size).to_hf_json();
    std::fs::write(
        dir.join("preprocessor_config.json"),
        serde_json::to_vec_pretty(&pp).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// Replace every non-constant variable by seeded normal values of the same mean and
/// standard deviation as its random initialisation, so the tiny CLIP is the same on every
/// run (candle's CPU initialisers cannot be seeded).
fn reseed(varmap: &VarMap, seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = var.as_tensor();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        if std < 1e-8 {
            continue;
        }
        let fresh: Vec<f32> = (0..v.len())
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
                    as f32
            })
            .collect();
        var.set(&candle_core::Tensor::from_vec(fresh, t.shape(), t.device()).unwrap())
            .unwrap();
    }
}

/// Build everything under `root` (a few seconds on 2 cores).
pub fn tiny_setup(root: &Path) -> TinySetup {
    let world = root.join("world");
    let wcfg = close_data::world::WorldConfig::tiny();
    close_data::world::generate(&wcfg, &world, &NoProgress).unwrap();
    let mut data = TaskData::load(Task::SCap, TrainOn::Text, &DataPaths::new(&world)).unwrap();
    let captions = data.clip_texts();
    let clip_dir = tiny_clip(&root.join("clip"), &captions);
    let clip = close_clip::Clip::load(&clip_dir, &Device::Cpu).unwrap();
    let text_cache = root.join("text-cache");
    let items: Vec<(String, String)> = captions.iter().map(|c| (c.clone(), c.clone())).collect();
    close_clip::embed_texts(&clip, &items, &text_cache, 64, &NoProgress).unwrap();
    let cache = close_clip::EmbeddingCache::open(&text_cache).unwrap();
    let images = MemEmbeddings::new(cache.dim());
    data.val.clear();
    data.test.clear();
    let mut cfg = TrainConfig::small(Task::SCap);
    cfg.epochs = 12;
    cfg.warmup_steps = 5;
    cfg.optim.lr = 3e-3;
    cfg.eval_each_epoch = false;
    cfg.beams = 3;
    cfg.max_steps = Some(12);
    cfg.clip = Some(clip_dir.clone());
    cfg.text_cache = Some(text_cache.clone());
    let run = root.join("run");
    let inputs = close_model::train::TrainInputs {
        data: &data,
        texts: &cache,
        images: &images,
    };
    close_model::train::train(&cfg, inputs, &run, false, &Device::Cpu, &NoProgress).unwrap();
    let mut test_images: Vec<PathBuf> = std::fs::read_dir(world.join("images/test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    test_images.sort();
    assert!(!test_images.is_empty());
    TinySetup {
        world,
        clip: clip_dir,
        text_cache,
        run,
        test_images,
        captions,
    }
}
