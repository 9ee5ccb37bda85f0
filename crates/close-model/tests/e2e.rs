//! End-to-end: text-only training on a tiny synthetic "world" whose CLIP space has a
//! modality gap, evaluated on image vectors. Noise must beat no noise (the paper's central
//! phenomenon), and resuming from the last checkpoint must reproduce an uninterrupted run.
//!
//! The embeddings are synthetic (not a trained CLIP): every colour and shape has a random
//! direction; a caption's vector is normalize(colour + shape + small jitter + text offset),
//! an image's vector the same with a different (image) offset and a larger per-image
//! deviation — the two modalities occupy shifted cones, as CLIP's do (cos(image, own
//! caption) < cos(caption, caption)).

use candle_core::Device;
use close_core::progress::NoProgress;
use close_model::adapter::{AdapterConfig, AdapterKind};
use close_model::config::{Precision, TrainConfig};
use close_model::embeddings::{Embeddings, MemEmbeddings};
use close_model::run::Run;
use close_model::task::{caption_train_examples, EvalExample, Task, TaskData, TrainOn};
use close_model::train::TrainInputs;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];
const SHAPES: [&str; 4] = ["circle", "square", "star", "cross"];

fn knob(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn dim() -> usize {
    knob("E2E_D", 128.0) as usize
}

fn randv(rng: &mut ChaCha8Rng, scale: f32) -> Vec<f32> {
    (0..dim())
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect()
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn scaled(v: &[f32], s: f32) -> Vec<f32> {
    v.iter().map(|x| x * s).collect()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct World {
    data: TaskData,
    texts: MemEmbeddings,
    images: MemEmbeddings,
    /// Training images with their captions (for tasks other than s-cap).
    train_imgs: Vec<(String, Vec<String>)>,
}

fn world() -> World {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let d = dim();
    let gap = knob("E2E_GAP", 2.0) as f32;
    let content = knob("E2E_CONTENT", 1.0) as f32;
    let jitter = knob("E2E_JITTER", 0.03) as f32;
    let nuisance = knob("E2E_NUISANCE", 0.25) as f32;
    // How much an image's concept direction agrees with its caption's (1: the same).
    let align = knob("E2E_ALIGN", 1.0) as f32;
    let n_test = knob("E2E_TEST", 6.0) as usize;
    let color_dir: Vec<Vec<f32>> = (0..4).map(|_| unit(randv(&mut rng, 1.0))).collect();
    let shape_dir: Vec<Vec<f32>> = (0..4).map(|_| unit(randv(&mut rng, 1.0))).collect();
    let mix = |rng: &mut ChaCha8Rng, v: &Vec<f32>| {
        let other = unit(randv(rng, 1.0));
        unit(add(
            &scaled(v, align),
            &scaled(&other, (1.0 - align * align).max(0.0).sqrt()),
        ))
    };
    let color_img: Vec<Vec<f32>> = color_dir.iter().map(|v| mix(&mut rng, v)).collect();
    let shape_img: Vec<Vec<f32>> = shape_dir.iter().map(|v| mix(&mut rng, v)).collect();
    let text_off = scaled(&unit(randv(&mut rng, 1.0)), gap);
    let image_off = scaled(&unit(randv(&mut rng, 1.0)), gap);
    let mut texts = MemEmbeddings::new(d);
    let mut images = MemEmbeddings::new(d);
    let mut train_imgs = Vec::new();
    let mut test = Vec::new();
    let mut val = Vec::new();
    let mut id = 0u64;
    for (c, cn) in COLORS.iter().enumerate() {
        for (s, sn) in SHAPES.iter().enumerate() {
            let text_content = scaled(&add(&color_dir[c], &shape_dir[s]), content);
            let image_content = scaled(&add(&color_img[c], &shape_img[s]), content);
            let caps = vec![
                format!("a {cn} {sn}"),
                format!("there is a {cn} {sn}"),
                format!("one {cn} {sn} in the picture"),
            ];
            for cap in &caps {
                let v = add(&add(&text_content, &text_off), &randv(&mut rng, jitter));
                texts.insert(cap.clone(), &v).unwrap();
            }
            for k in 0..(2 + 1 + n_test) {
                id += 1;
                let v = add(&add(&image_content, &image_off), &randv(&mut rng, nuisance));
                images.insert(id.to_string(), &v).unwrap();
                let ex = EvalExample {
                    id: id.to_string(),
                    image: id.to_string(),
                    input_text: None,
                    references: caps.clone(),
                    answer_type: None,
                    question_type: None,
                    explanations: Vec::new(),
                };
                match k {
                    0 | 1 => train_imgs.push((id.to_string(), caps.clone())),
                    2 => val.push(ex),
                    _ => test.push(ex),
                }
            }
        }
    }
    let train = caption_train_examples(
        Task::SCap,
        TrainOn::Text,
        train_imgs.iter().map(|(i, c)| (i.clone(), c.as_slice())),
    );
    World {
        data: TaskData {
            train,
            val,
            test,
            ..Default::default()
        },
        texts,
        images,
        train_imgs,
    }
}

fn config(noise: f64, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::small(Task::SCap);
    cfg.adapter = AdapterConfig {
        kind: if noise > 0.0 {
            AdapterKind::Noise
        } else {
            AdapterKind::None
        },
        noise,
        ..Default::default()
    };
    cfg.epochs = epochs;
    cfg.batch_size = 16;
    cfg.warmup_steps = 5;
    cfg.optim.lr = 3e-3;
    cfg.log_every = 5;
    cfg.seed = 7;
    if let close_model::config::T5Init::Scratch { vocab, .. } = &mut cfg.t5 {
        *vocab = 80;
    }
    cfg
}

fn noise_w() -> f64 {
    knob("E2E_NOISE", 0.1)
}

fn epochs() -> usize {
    knob("E2E_EPOCHS", 15.0) as usize
}

#[test]
fn synthetic_world_has_a_modality_gap() {
    let w = world();
    let img = w.images.vector("1").unwrap();
    let own = w.texts.vector("a red circle").unwrap();
    let other = w.texts.vector("there is a green star").unwrap();
    let own2 = w.texts.vector("there is a red circle").unwrap();
    assert!(
        cos(img, own) < cos(own, other),
        "image–caption {} vs caption–caption {}",
        cos(img, own),
        cos(own, other)
    );
    assert!(cos(own, own2) > 0.9);
}

// The world's geometry decides whether the claim holds, as it does for real CLIPs: noise
// helps when image vectors vary in directions the captions never do. Measured on 2026-11-28
// (mean test CIDEr, 3 seeds):
// - D 32, caption jitter 0.1, 16 test images: 4.42 with noise vs 3.61 without, seed 0
//   reversed. The captions' own jitter (norm 0.57 against content 1.41) already acted as
//   noise, and 16 test images made CIDEr noisy.
// - D 128, caption jitter 0.03, per-image nuisance 0.25, 96 test images (these defaults):
//   5.05 vs 3.38, and noise won on each of 5 seeds (5.10/3.96, 4.95/3.09, 5.10/2.52,
//   5.67/5.26, 3.67/2.53). It holds for w 0.08–0.12 and jitter 0.02–0.03.
// The knobs (E2E_D, E2E_GAP, E2E_CONTENT, E2E_JITTER, E2E_NUISANCE, E2E_ALIGN, E2E_TEST,
// E2E_NOISE, E2E_EPOCHS, E2E_SEEDS) re-run the measurement on other geometries.
#[test]
fn text_only_with_noise_beats_no_noise_on_images() {
    let w = world();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    // One seed's comparison is noisy (multi-threaded float reductions make runs differ
    // slightly and the small test set amplifies it), so the claim is made on the mean of
    // three seeds per arm.
    let mut cider = [0.0f64; 2];
    let seeds = knob("E2E_SEEDS", 3.0) as u64;
    for seed in 0..seeds {
        for (arm, (name, noise)) in [("none", 0.0), ("noise", noise_w())]
            .into_iter()
            .enumerate()
        {
            let out = dir.path().join(format!("{name}-{seed}"));
            let mut cfg = config(noise, epochs());
            cfg.seed = seed;
            let s = close_model::train::train(
                &cfg,
                TrainInputs {
                    data: &w.data,
                    texts: &w.texts,
                    images: &w.images,
                },
                &out,
                false,
                &dev,
                &NoProgress,
            )
            .unwrap();
            assert!(
                s.final_train_loss < 1.0,
                "{name}: training did not fit the text ({})",
                s.final_train_loss
            );
            let run = Run::load(&out, &dev).unwrap();
            let gen = run.generate_config(None, None);
            let m = close_model::train::evaluate(
                &run,
                &w.data,
                "test",
                &w.images,
                &gen,
                None,
                &NoProgress,
            )
            .unwrap();
            eprintln!(
                "{name}: test CIDEr {:.3} (train loss {:.3}, {:.1}s)",
                m.primary, s.final_train_loss, s.seconds
            );
            assert!(out.join("eval/test/captions_results.json").exists());
            assert!(
                out.join("loss.png").exists()
                    && out.join("log.jsonl").exists()
                    && out.join("last/optimizer.safetensors").exists()
            );
            cider[arm] += m.primary / seeds as f64;
        }
    }
    eprintln!("MEAN none {:.3} noise {:.3}", cider[0], cider[1]);
    assert!(
        cider[1] > cider[0] + 0.5 && cider[1] > 1.2 * cider[0],
        "noise {:.3} should beat no noise {:.3} on images (mean test CIDEr of 3 seeds)",
        cider[1],
        cider[0]
    );
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    resume_reproduces(Precision::F32);
}

/// The f32 master weights and the loss scale are part of the checkpoint.
#[test]
fn resume_reproduces_an_uninterrupted_half_precision_run() {
    resume_reproduces(Precision::Bf16);
    resume_reproduces(Precision::F16);
}

fn resume_reproduces(dtype: Precision) {
    let w = world();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let config = |noise, epochs| TrainConfig {
        dtype,
        ..config(noise, epochs)
    };
    let a = close_model::train::train(
        &config(0.3, 3),
        TrainInputs {
            data: &w.data,
            texts: &w.texts,
            images: &w.images,
        },
        &full,
        false,
        &dev,
        &NoProgress,
    )
    .unwrap();
    // "Killed" after epoch 1: train 1 epoch, then resume asking for 3.
    // Share the tokenizer, so the comparison is about the weights alone.
    let mut cfg = config(0.3, 3);
    if let close_model::config::T5Init::Scratch { tokenizer, .. } = &mut cfg.t5 {
        *tokenizer = Some(full.join("tokenizer.json"));
    }
    let part = dir.path().join("part");
    close_model::train::Trainer::prepare(
        &cfg,
        TrainInputs {
            data: &w.data,
            texts: &w.texts,
            images: &w.images,
        },
        &part,
        false,
        &dev,
    )
    .unwrap()
    .run(Some(1), &NoProgress)
    .unwrap();
    let b = close_model::train::train(
        &cfg,
        TrainInputs {
            data: &w.data,
            texts: &w.texts,
            images: &w.images,
        },
        &part,
        true,
        &dev,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.final_train_loss, b.final_train_loss);
    assert_eq!(a.best_metric, b.best_metric);
    let wa = std::fs::read(full.join("last/model.safetensors")).unwrap();
    let wb = std::fs::read(part.join("last/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ after resume");
}

#[test]
fn targets_per_step_samples_targets_reproducibly() {
    // m-cap: every caption predicts the image's two other captions.
    let w = world();
    let data = TaskData {
        train: caption_train_examples(
            Task::MCap,
            TrainOn::Text,
            w.train_imgs.iter().map(|(i, c)| (i.clone(), c.as_slice())),
        ),
        val: w.data.val.clone(),
        ..Default::default()
    };
    assert!(data.train.iter().all(|e| e.targets.len() == 2));
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let run = |k: Option<usize>, name: &str| {
        let mut cfg = config(0.1, 2);
        cfg.task = Task::MCap;
        cfg.targets_per_step = k;
        close_model::train::train(
            &cfg,
            TrainInputs {
                data: &data,
                texts: &w.texts,
                images: &w.images,
            },
            &dir.path().join(name),
            false,
            &dev,
            &NoProgress,
        )
        .unwrap()
    };
    let all = run(None, "all");
    let one = run(Some(1), "one");
    let again = run(Some(1), "again");
    assert_eq!(all.steps, one.steps);
    assert!(
        one.final_train_loss.is_finite() && one.final_train_loss != all.final_train_loss,
        "sampling one target per step trained the same as all targets ({})",
        all.final_train_loss
    );
    assert_eq!(
        one.final_train_loss, again.final_train_loss,
        "sampling is not reproducible"
    );
    let mut bad = config(0.1, 1);
    bad.targets_per_step = Some(0);
    assert!(bad.validate().is_err());
}

/// `val_interval` checks val every n-th epoch and after the last, keeps the best of those
/// checks, and leaves training itself unchanged.
#[test]
fn val_interval_checks_every_nth_epoch_and_the_last() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let run = |interval: usize, name: &str| {
        let mut cfg = config(0.1, 5);
        cfg.val_interval = interval;
        close_model::train::train(
            &cfg,
            TrainInputs {
                data: &w.data,
                texts: &w.texts,
                images: &w.images,
            },
            &dir.path().join(name),
            false,
            &Device::Cpu,
            &NoProgress,
        )
        .unwrap()
    };
    let every = run(1, "every");
    let second = run(2, "second");
    let checked = |s: &close_model::train::RunSummary| -> Vec<usize> {
        s.history
            .iter()
            .filter(|r| r.val.is_some())
            .map(|r| r.epoch)
            .collect()
    };
    assert_eq!(checked(&every), [1, 2, 3, 4, 5]);
    assert_eq!(checked(&second), [2, 4, 5]);
    assert_eq!(second.final_train_loss, every.final_train_loss);
    let best = second.best_epoch.unwrap();
    assert!(
        [2, 4, 5].contains(&best),
        "best epoch {best} was not checked"
    );
    let best_of_checks = second
        .history
        .iter()
        .filter_map(|r| r.val.as_ref().map(|m| m.primary))
        .fold(f64::MIN, f64::max);
    assert_eq!(second.best_metric, Some(best_of_checks));
    let mut bad = config(0.1, 1);
    bad.val_interval = 0;
    assert!(bad.validate().is_err());
}

/// bf16 and f16 training (f32 master weights; a dynamic loss scale for f16) follows the
/// f32 run: every logged loss within the stated tolerance of f32's, the same final
/// tokenizer and steps. Half precision rounds every activation (bf16 keeps 8 bits of
/// mantissa, f16 11), so the curves drift apart slowly; the tolerance is relative.
#[test]
fn half_precision_training_follows_f32() {
    let w = world();
    let dev = close_core::device::test_device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |dtype: Precision| {
        let mut cfg = config(noise_w(), 3);
        cfg.dtype = dtype;
        cfg.log_every = 1;
        let out = dir.path().join(dtype.to_string());
        let inputs = TrainInputs {
            data: &w.data,
            texts: &w.texts,
            images: &w.images,
        };
        let s = close_model::train::train(&cfg, inputs, &out, false, &dev, &NoProgress).unwrap();
        let state: close_model::train::TrainState =
            close_core::io::read_json(out.join("last/state.json")).unwrap();
        // The weights are saved in the training dtype, the optimizer's master in f32.
        let w = candle_core::safetensors::load(out.join("last/model.safetensors"), &dev).unwrap();
        assert_eq!(w["prefix.lin.weight"].dtype(), dtype.dtype());
        let o = candle_core::safetensors::load(out.join("last/optimizer.safetensors"), &dev);
        let master = o.unwrap().contains_key("prefix.lin.weight.master");
        assert_eq!(master, dtype != Precision::F32);
        (s, state)
    };
    let (f32_run, f32_state) = run(Precision::F32);
    for (dtype, tol) in [(Precision::Bf16, 0.02), (Precision::F16, 0.01)] {
        let (half, state) = run(dtype);
        assert_eq!(half.steps, f32_run.steps);
        let worst = f32_state
            .losses
            .iter()
            .zip(&state.losses)
            .map(|((sa, a), (sb, b))| {
                assert_eq!(sa, sb);
                (a - b).abs() / a
            })
            .fold(0.0, f64::max);
        eprintln!(
            "{dtype}: worst relative loss difference {worst:.4}, final {:.4} vs {:.4}",
            half.final_train_loss, f32_run.final_train_loss
        );
        assert!(
            worst < tol,
            "{dtype}: loss differs from f32 by {worst:.4} (> {tol})"
        );
        assert_eq!(state.loss_scale.is_some(), dtype == Precision::F16);
    }
    assert!(f32_state.loss_scale.is_none());
}
