//! Benchmark of the CLOSE training step and evaluation decoding on the `small` preset
//! (d_model 64, 2+2 layers) — the shapes-world / demo setting — and optionally a
//! t5-small-shaped model (`CLOSE_BENCH_T5_SMALL=1`).
//!
//! The full train step is compared with the same model in PyTorch (HF
//! `T5ForConditionalGeneration` of the same config, the same linear prefix, encoder once per
//! image, AdamW) in the same run, with as many threads, when `/work/venv/bin/python` (or
//! `$CLOSE_PYTHON`) can import torch and transformers.
//!
//! Run: `cargo bench -p close-model --bench train_step`. Prints the CPU and milliseconds per
//! phase; `CLOSE_BENCH_SMOKE=1` runs each phase once without warm-up (and without PyTorch).

use std::time::Instant;

use candle_core::{Device, Tensor};
use close_core::optim::AdamW;
use close_model::config::{T5Init, TrainConfig};
use close_model::model::{CloseModel, ModelConfig};
use close_model::task::Task;
use close_t5::GenerateConfig;

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let reps = if close_core::bench::smoke() { 1 } else { reps };
    if !close_core::bench::smoke() {
        f(); // warm-up
    }
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("{label:<48} {ms:>9.2} ms");
    ms
}

/// The CLOSE train step in PyTorch: `argv` = threads, reps, T5 config json, clip dim, batch,
/// target length, targets per image. Prints torch's version line, then `torch <ms>`.
const PY: &str = r#"
import json, sys, time, torch
from transformers import T5Config, T5ForConditionalGeneration
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
threads, reps = int(sys.argv[1]), int(sys.argv[2])
cfg = T5Config(**json.loads(sys.argv[3]))
clip_dim, batch, tgt_len, per = (int(x) for x in sys.argv[4:8])
torch.set_num_threads(threads); torch.manual_seed(0)
m = T5ForConditionalGeneration(cfg).train()
proj = torch.nn.Linear(clip_dim, 4 * cfg.d_model)
opt = torch.optim.AdamW(list(m.parameters()) + list(proj.parameters()), lr=1e-3)
clip = torch.randn(batch, clip_dim)
labels = torch.tensor([[(i * 7 + j * 3) % (cfg.vocab_size - 3) + 3 for j in range(tgt_len)]
                       for i in range(batch * per)])
def step():
    prefix = proj(clip).view(batch, 4, cfg.d_model)
    enc = m.encoder(inputs_embeds=prefix).last_hidden_state.repeat_interleave(per, 0)
    loss = m(encoder_outputs=(enc,), labels=labels).loss
    opt.zero_grad(); loss.backward(); opt.step()
step()
t0 = time.perf_counter()
for _ in range(reps): step()
print(f"torch {(time.perf_counter() - t0) * 1e3 / reps}", flush=True)
"#;

/// PyTorch's full train step in ms for the same shapes, or `None` (smoke run, no torch).
fn torch_step_ms(t5: &close_t5::T5Config, shape: [usize; 4], reps: usize) -> Option<f64> {
    let py = close_core::bench::python()?;
    let threads = rayon::current_num_threads();
    let mut args = vec![threads.to_string(), reps.to_string()];
    args.push(serde_json::to_string(t5).ok()?);
    args.extend(shape.iter().map(usize::to_string));
    close_core::bench::torch_value(&py, PY, &args, threads)
}

fn bench(
    name: &str,
    t5: close_t5::T5Config,
    clip_dim: usize,
    batch: usize,
    tgt_len: usize,
    targets_per: usize,
) {
    println!("== {name}: d_model {}, layers {}, vocab {}, batch {batch}, {targets_per} target(s) of {tgt_len} tokens", t5.d_model, t5.num_layers, t5.vocab_size);
    let dev = Device::Cpu;
    let cfg = ModelConfig {
        t5: t5.clone(),
        clip_dim,
        n_prefix: 4,
        reference_encoder_mask_quirk: false,
    };
    let mut model = CloseModel::new(cfg, 0, &dev).unwrap();
    model.set_training(true);
    let mut opt = AdamW::from_varmap(model.varmap(), Default::default()).unwrap();
    let clip = Tensor::randn(0f32, 1., (batch, clip_dim), &dev).unwrap();
    let targets: Vec<Vec<u32>> = (0..batch * targets_per)
        .map(|i| {
            (0..tgt_len)
                .map(|j| ((i * 7 + j * 3) % (t5.vocab_size - 3) + 3) as u32)
                .collect()
        })
        .collect();
    let mapping: Vec<usize> = (0..batch * targets_per).map(|i| i / targets_per).collect();
    time("forward (loss)", 5, || {
        model.loss(&clip, None, &targets, &mapping).unwrap()
    });
    time("forward + backward", 5, || {
        model
            .loss(&clip, None, &targets, &mapping)
            .unwrap()
            .backward()
            .unwrap()
    });
    let grads = model
        .loss(&clip, None, &targets, &mapping)
        .unwrap()
        .backward()
        .unwrap();
    time("AdamW step", 5, || opt.step(&grads).unwrap());
    // Steps of a few ms: enough of them that the comparison is not noise.
    let reps = 30;
    let ours = time("full train step", reps, || {
        let l = model.loss(&clip, None, &targets, &mapping).unwrap();
        opt.backward_step(&l).unwrap();
    });
    if let Some(torch) = torch_step_ms(&t5, [clip_dim, batch, tgt_len, targets_per], reps) {
        println!(
            "{:<48} {torch:>9.2} ms (PyTorch time / ours: {:.2}x)",
            "PyTorch (HF T5) full train step",
            torch / ours
        );
    }
    model.set_training(false);
    let eval_clip = Tensor::randn(0f32, 1., (128, clip_dim), &dev).unwrap();
    time("greedy decode 128 images x 20 steps", 2, || {
        model
            .generate(&eval_clip, None, &GenerateConfig::greedy(20))
            .unwrap()
    });
    time("beam-5 decode 128 images x 20 steps", 1, || {
        model
            .generate(&eval_clip, None, &GenerateConfig::beam(5, 20))
            .unwrap()
    });
}

close_core::global_allocator!();

fn main() {
    close_core::threads::init();
    close_core::alloc::init();
    println!("{}", close_core::bench::CpuInfo::detect());
    let small = match TrainConfig::small(Task::SCap).t5 {
        T5Init::Scratch { config, .. } => config,
        _ => unreachable!(),
    };
    let lines: Vec<String> = (0..1200)
        .map(|i| {
            format!(
                "a {} {} {} the {}",
                ["red", "blue", "green"][i % 3],
                ["circle", "star", "square", "cross"][i % 4],
                ["above", "left of", "below"][i % 3],
                ["triangle", "star"][i % 2]
            )
        })
        .collect();
    time("train tokenizer (1200 captions, 400 pieces)", 3, || {
        close_t5::tokenizer::train_tokenizer(lines.iter(), 400).unwrap()
    });
    bench("small preset (s-cap)", small.clone(), 64, 32, 14, 1);
    bench("small preset (m-cap)", small, 64, 32, 14, 4);
    if std::env::var("CLOSE_BENCH_T5_SMALL").is_ok() {
        bench(
            "t5-small shape",
            close_t5::T5Config::t5_small(),
            512,
            16,
            20,
            1,
        );
    }
}
