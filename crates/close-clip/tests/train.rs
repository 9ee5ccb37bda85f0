//! Training from scratch: gradients reach every tensor, a short run learns, the output dir
//! loads unchanged.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_clip::train::{clip_loss, train_clip, TrainConfig};
use close_clip::{Activation, Clip, ClipConfig, ClipModel};
use close_core::progress::NoProgress;
use close_data::coco::Karpathy;

#[test]
fn every_parameter_gets_a_gradient() {
    for act in [Activation::QuickGelu, Activation::Gelu] {
        let dev = Device::Cpu;
        let mut cfg = ClipConfig::tiny();
        cfg.text_config.hidden_act = act;
        cfg.vision_config.hidden_act = act;
        let vm = VarMap::new();
        let model = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg).unwrap();
        let px = Tensor::randn(0f32, 1., (4, 3, 32, 32), &dev).unwrap();
        let ids = Tensor::new(
            &[
                [2u32, 10, 11, 3, 0],
                [2, 12, 3, 0, 0],
                [2, 13, 14, 15, 3],
                [2, 16, 3, 0, 0],
            ],
            &dev,
        )
        .unwrap();
        let (logits, _, _) = model.forward(&px, &ids).unwrap();
        let loss = clip_loss(&logits).unwrap();
        let grads = loss.backward().unwrap();
        let missing = close_core::ops::vars_without_gradient(&vm, &grads).unwrap();
        assert!(missing.is_empty(), "{act:?}: no gradient for {missing:?}");
        assert_eq!(vm.all_vars().len(), 78);
    }
}

#[test]
fn fused_inference_equals_differentiable_training_forward() {
    // The same weights through the trainable (tracked) path and the fused inference path.
    let dev = Device::Cpu;
    let cfg = ClipConfig::tiny();
    let vm = VarMap::new();
    let trained = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let frozen = ClipModel::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &cfg).unwrap();
    let px = Tensor::randn(0f32, 1., (3, 3, 32, 32), &dev).unwrap();
    let ids = Tensor::new(&[[2u32, 10, 11, 3], [2, 12, 3, 0], [2, 13, 14, 3]], &dev).unwrap();
    let a = trained.forward(&px, &ids).unwrap().0;
    let b = frozen.forward(&px, &ids).unwrap().0;
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "{d}");
}

/// The tiny CLIP with a 12-token text context (the synthetic captions are short).
fn tiny_short_text() -> ClipConfig {
    let mut model = ClipConfig::tiny();
    model.text_config.max_position_embeddings = 12;
    model
}

#[test]
fn short_training_run_learns_and_saves_a_loadable_hf_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = common::synthetic_world(tmp.path(), 96, 7);
    let data = Karpathy::load(&data_path).unwrap();
    let cfg = TrainConfig {
        model: tiny_short_text(),
        epochs: 25,
        batch_size: 24,
        lr: 2e-3,
        ..Default::default()
    };
    let out = tmp.path().join("clip");
    let report = train_clip(
        &data,
        tmp.path(),
        &out,
        &cfg,
        None,
        &Device::Cpu,
        &NoProgress,
    )
    .unwrap();
    let r = report.retrieval.unwrap();
    eprintln!("{report:?}");
    assert_eq!(r.n_images, 24);
    assert!(
        report.final_loss < (24f64).ln() * 0.8,
        "loss {} did not drop",
        report.final_loss
    );
    // Chance R@5 image→text is about 5 / 24 images' captions; a trained model beats it.
    assert!(r.image_to_text_r5 > 0.4, "{r:?}");
    assert!(report.logit_scale <= 100.0 + 1e-3);
    // The held-out modality gap is reported with every statistic in range.
    let g = report.gap.expect("gap statistics on the held-out split");
    for c in [
        g.cos_image_own_caption,
        g.cos_caption_caption,
        g.cos_image_image,
    ] {
        assert!((-1.0..=1.0).contains(&c), "{g:?}");
    }
    assert!((0.0..=2.0).contains(&g.centroid_distance), "{g:?}");
    // The output dir loads with the HF-layout loader unchanged and embeds.
    let clip = Clip::load(&out, &Device::Cpu).unwrap();
    let e = clip.embed_texts(&["a red square on the left"]).unwrap();
    assert_eq!(e.dims(), &[1, clip.model.config().projection_dim]);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "clip_train.json",
        "clip_train_report.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
}

#[test]
fn training_with_hard_negatives_learns_the_side_and_saves_its_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = common::synthetic_world(tmp.path(), 192, 7);
    let data = Karpathy::load(&data_path).unwrap();
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let colors: Vec<&str> = common::COLORS.iter().map(|(c, _)| *c).collect();
    let cfg = TrainConfig {
        model: tiny_short_text(),
        epochs: 150,
        batch_size: 36,
        lr: 2e-3,
        hard_negative_groups: vec![words(&["left", "right"]), words(&colors)],
        ..Default::default()
    };
    let out = tmp.path().join("clip");
    let report = train_clip(
        &data,
        tmp.path(),
        &out,
        &cfg,
        None,
        &Device::Cpu,
        &NoProgress,
    )
    .unwrap();
    assert!(
        report.final_loss < (36f64).ln() * 0.8,
        "loss {} did not drop",
        report.final_loss
    );
    let saved: TrainConfig = close_core::io::read_json(out.join("clip_train.json")).unwrap();
    assert_eq!(saved.hard_negative_groups, cfg.hard_negative_groups);
    // Held out: an image's caption scores above the same caption with the other side.
    let clip = Clip::load(&out, &Device::Cpu).unwrap();
    let (mut right, mut total) = (0, 0);
    for im in data.split("test") {
        let cap = im.captions().next().unwrap().to_string();
        let swapped = if cap.contains("left") {
            cap.replace("left", "right")
        } else {
            cap.replace("right", "left")
        };
        let s = clip
            .score(tmp.path().join(im.rel_path()), &[cap, swapped])
            .unwrap();
        right += usize::from(s[0] > s[1]);
        total += 1;
    }
    assert_eq!(total, 48);
    // chance is 24 of 48
    assert!(
        right >= 40,
        "{right} of {total} held-out images preferred their own side"
    );
}

/// Train a 2-epoch CLIP of `cfg` (a tiny model, batch 16) on `data` into `tmp/name`;
/// its final loss and the config it saved.
fn short_run(tmp: &Path, data: &Karpathy, name: &str, cfg: TrainConfig) -> (f64, TrainConfig) {
    let cfg = TrainConfig {
        model: tiny_short_text(),
        epochs: 2,
        batch_size: 16,
        ..cfg
    };
    let out = tmp.join(name);
    let r = train_clip(data, tmp, &out, &cfg, None, &Device::Cpu, &NoProgress).unwrap();
    let saved = close_core::io::read_json(out.join("clip_train.json")).unwrap();
    (r.final_loss, saved)
}

/// Final losses of two short runs whose configs (`make`) differ only in one loss term's
/// weight: 0, then `weight`. Each run must have saved the weight it trained with (`saved`).
fn losses_without_and_with(
    weight: f64,
    make: impl Fn(f64) -> TrainConfig,
    saved: impl Fn(&TrainConfig) -> f64,
) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let data = Karpathy::load(common::synthetic_world(tmp.path(), 96, 3)).unwrap();
    let run = |w: f64| {
        let (loss, cfg) = short_run(tmp.path(), &data, &format!("clip-{w}"), make(w));
        assert_eq!(saved(&cfg), w);
        loss
    };
    (run(0.0), run(weight))
}

#[test]
fn the_hard_negative_pair_weight_enters_the_trained_loss_and_the_saved_config() {
    let (plain, weighted) = losses_without_and_with(
        1.0,
        |w| TrainConfig {
            hard_negative_groups: vec![vec!["left".into(), "right".into()]],
            hard_negative_weight: w,
            ..Default::default()
        },
        |c| c.hard_negative_weight,
    );
    // The weighted run's loss includes the added term, about ln 2 a row while the model
    // cannot yet tell a caption from its negative, so it is the larger.
    assert!(weighted > plain + 0.05, "{plain} {weighted}");
}

#[test]
fn the_align_weight_enters_the_trained_loss_and_the_saved_config() {
    let (plain, weighted) = losses_without_and_with(
        2.0,
        |w| TrainConfig {
            align_weight: w,
            ..Default::default()
        },
        |c| c.align_weight,
    );
    // 1 − cos(image, caption) is near 1 for an untrained pair, so a weight of 2 adds well
    // over 0.5 to the reported loss.
    assert!(weighted > plain + 0.5, "{plain} {weighted}");
}

#[test]
fn vision_position_init_std_sets_the_initial_position_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Karpathy::load(common::synthetic_world(tmp.path(), 48, 3)).unwrap();
    let std_of = |init: Option<f64>| -> f64 {
        let cfg = TrainConfig {
            model: ClipConfig::tiny(),
            epochs: 1,
            batch_size: 12,
            lr: 1e-9, // the weights stay at their initial values
            vision_position_init_std: init,
            ..Default::default()
        };
        let out = tmp.path().join(format!("clip-{init:?}"));
        train_clip(
            &data,
            tmp.path(),
            &out,
            &cfg,
            None,
            &Device::Cpu,
            &NoProgress,
        )
        .unwrap();
        let w = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .remove("vision_model.embeddings.position_embedding.weight")
            .unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt() as f64
    };
    let hf = std_of(None);
    let wide = std_of(Some(0.5));
    assert!((0.01..0.03).contains(&hf), "HF init std {hf}");
    assert!((0.4..0.6).contains(&wide), "std {wide}");
}

#[test]
fn the_same_seed_trains_the_same_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Karpathy::load(common::synthetic_world(tmp.path(), 48, 5)).unwrap();
    let train = |seed: u64, dir: &str| {
        let cfg = TrainConfig {
            model: ClipConfig::tiny(),
            epochs: 3,
            batch_size: 12,
            lr: 2e-3,
            seed,
            ..Default::default()
        };
        let out = tmp.path().join(dir);
        train_clip(
            &data,
            tmp.path(),
            &out,
            &cfg,
            None,
            &Device::Cpu,
            &NoProgress,
        )
        .unwrap();
        let mut t: Vec<(String, Vec<f32>)> =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
                .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b, c) = (train(1, "a"), train(1, "b"), train(2, "c"));
    assert_eq!(a, b, "same seed, different weights");
    assert_ne!(a, c);
}

/// The composed candle ops that GPUs run (the fused CPU kernels switched off) give the same
/// embeddings, contrastive loss and gradients as the fused path.
#[test]
fn the_composed_path_matches_the_fused_one() {
    use close_core::fused::with_composed_ops;
    let dev = Device::Cpu;
    for act in [Activation::QuickGelu, Activation::Gelu] {
        let mut cfg = ClipConfig::tiny();
        cfg.text_config.hidden_act = act;
        cfg.vision_config.hidden_act = act;
        let vm = VarMap::new();
        let model = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg).unwrap();
        let px = Tensor::randn(0f32, 1., (3, 3, 32, 32), &dev).unwrap();
        let ids = Tensor::new(
            &[[2u32, 10, 11, 3, 0], [2, 12, 3, 0, 0], [2, 13, 14, 15, 3]],
            &dev,
        )
        .unwrap();
        let pass = || {
            let (logits, img, txt) = model.forward(&px, &ids).unwrap();
            let loss = clip_loss(&logits).unwrap();
            let grads = loss.backward().unwrap();
            let emb = [img, txt].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            (loss.to_scalar::<f32>().unwrap(), grads, emb)
        };
        let (la, ga, ea) = pass();
        let (lb, gb, eb) = with_composed_ops(pass);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "{act:?}: loss {la} vs {lb}"
        );
        for (a, b) in ea.iter().zip(&eb) {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{act:?}: embeddings differ by {worst}");
        }
        let diff = close_core::ops::gradient_differences(&vm, &ga, &gb, 1e-4).unwrap();
        assert!(diff.is_empty(), "{act:?}: gradients differ: {diff:?}");
    }
}
