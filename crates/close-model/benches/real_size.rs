//! The paper's model sizes, with random weights: a t5-base training step (source 40 tokens,
//! target 20, AdamW; batch 32, and the reference's 128 on request), t5-base beam-5
//! generation of 20 tokens (batch 32), and CLIP ViT-L/14 image and text embedding (batch
//! 32). Each is compared with HF transformers / PyTorch on the same configuration, device
//! and thread count, in the same run.
//!
//! Every case runs in a process of its own on both sides, so that a peak belongs to one
//! case: on the CPU the process's peak RSS, and on a GPU PyTorch's
//! `max_memory_allocated` (candle has no allocator statistics, so ours is not shown there).
//! Prints, per case, both times, the speed ratio (PyTorch's time / ours: above 1 we are
//! faster) and the peak-memory ratio (ours / PyTorch's: below 1 we use less).
//!
//! Knobs: `CLOSE_BENCH_DEVICE` (cpu, cuda, cuda:N; default cpu), `CLOSE_BENCH_CASES`
//! (comma-separated names from the table; default all but `t5-train-b128`),
//! `CLOSE_BENCH_RUNS` (timed runs after a warm-up, default 2), `CLOSE_BENCH_THREADS` (CPU
//! threads on both sides, default 2), `CLOSE_PYTHON`, and `CLOSE_BENCH_SMOKE=1` (each case
//! once with 2 layers and batch 2, without PyTorch). Run:
//! `cargo bench -p close-model --bench real_size`.

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_clip::{ClipConfig, ClipModel};
use close_core::optim::{AdamW, AdamWConfig};
use close_core::{DeviceSpec, Result};
use close_t5::{GenerateConfig, T5Config, T5};

const SRC: usize = 40;
const TGT: usize = 20;
const GEN: usize = 20;
const CHILD_VAR: &str = "CLOSE_BENCH_CHILD";
const CASES: [&str; 5] = [
    "t5-train-b32",
    "t5-train-b128",
    "t5-beam5-b32",
    "clip-image-b32",
    "clip-text-b32",
];
const DEFAULT_CASES: [&str; 4] = [
    "t5-train-b32",
    "t5-beam5-b32",
    "clip-image-b32",
    "clip-text-b32",
];

const PY: &str = r#"
import json, resource, sys, time, torch
case, device, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads); torch.manual_seed(0)
dev = torch.device(device); cuda = dev.type == "cuda"
SRC, TGT, GEN = 40, 20, 20
B = int(case.rsplit("-b", 1)[1])
def sync():
    if cuda: torch.cuda.synchronize()
def best(f):
    f(); sync()
    b = float("inf")
    for _ in range(runs):
        t = time.perf_counter(); f(); sync(); b = min(b, time.perf_counter() - t)
    return b
if case.startswith("t5"):
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                   dropout_rate=0.1, feed_forward_proj="relu", decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg).to(dev)
    ids = torch.randint(3, 32000, (B, SRC), device=dev)
    mask = torch.ones(B, SRC, dtype=torch.long, device=dev); mask[B // 2:, SRC - 10:] = 0
    if case.startswith("t5-train"):
        labels = torch.randint(3, 32000, (B, TGT), device=dev); labels[B // 2:, TGT - 5:] = -100
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
        model.train()
        def f():
            opt.zero_grad(set_to_none=True)
            loss = model(inputs_embeds=model.shared(ids), attention_mask=mask, labels=labels).loss
            loss.backward(); opt.step()
    else:
        model.eval(); model.generation_config.eos_token_id = None
        def f():
            with torch.no_grad():
                out = model.generate(inputs_embeds=model.shared(ids), attention_mask=mask,
                                     max_new_tokens=GEN, num_beams=5, do_sample=False, length_penalty=0.0)
            assert out.shape[1] == GEN + 1, out.shape
else:
    from transformers import CLIPConfig, CLIPModel
    cfg = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=224, patch_size=14),
        projection_dim=768)
    model = CLIPModel(cfg).to(dev).eval()
    if case.startswith("clip-image"):
        px = torch.randn(B, 3, 224, 224, device=dev)
        def f():
            with torch.no_grad(): model.get_image_features(pixel_values=px)
    else:
        ids = torch.randint(0, 49406, (B, 77), device=dev); ids[:, -1] = 49407
        def f():
            with torch.no_grad(): model.get_text_features(input_ids=ids)
s = best(f)
peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": s, "peak_mib": peak, "torch": torch.__version__}))
"#;

/// What one side measured for one case.
struct Measured {
    seconds: f64,
    peak_mib: Option<f64>,
}

/// The timing settings of a run: timed runs after one warm-up (0: one run, the smoke run).
#[derive(Clone, Copy)]
struct Plan {
    runs: usize,
    smoke: bool,
}

/// Best of `plan.runs` runs after a warm-up, each ended by a device synchronization.
fn time(plan: Plan, dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut run = || -> Result<f64> {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    if plan.runs == 0 {
        return run();
    }
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..plan.runs {
        best = best.min(run()?);
    }
    Ok(best)
}

fn batch_of(case: &str, plan: Plan) -> usize {
    if plan.smoke {
        return 2;
    }
    case.rsplit_once("-b")
        .and_then(|(_, b)| b.parse().ok())
        .unwrap_or(32)
}

fn t5_config(plan: Plan) -> T5Config {
    let mut cfg = T5Config::t5_base();
    if plan.smoke {
        cfg.num_layers = 2;
        cfg.num_decoder_layers = Some(2);
    }
    cfg
}

fn clip_config(plan: Plan) -> ClipConfig {
    let mut cfg = ClipConfig::vit_l14();
    if plan.smoke {
        cfg.text_config.num_hidden_layers = 2;
        cfg.vision_config.num_hidden_layers = 2;
    }
    cfg
}

/// Random source ids with the second half of the batch padded for 10 positions.
fn t5_inputs(b: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let ids = Tensor::rand(3f32, 32000., (b, SRC), dev)?.to_dtype(DType::U32)?;
    let mask: Vec<f32> = (0..b * SRC)
        .map(|i| f32::from(!(i / SRC >= b / 2 && i % SRC >= SRC - 10)))
        .collect();
    Ok((ids, Tensor::from_vec(mask, (b, SRC), dev)?))
}

fn t5_train(case: &str, plan: Plan, dev: &Device) -> Result<f64> {
    let b = batch_of(case, plan);
    let vm = VarMap::new();
    let mut model = T5::new(
        &t5_config(plan),
        VarBuilder::from_varmap(&vm, DType::F32, dev),
    )?;
    let mut opt = AdamW::from_varmap(&vm, AdamWConfig::default())?;
    let (ids, mask) = t5_inputs(b, dev)?;
    let labels = Tensor::rand(3f32, 32000., (b, TGT), dev)?.to_dtype(DType::U32)?;
    let lmask: Vec<f32> = (0..b * TGT)
        .map(|i| f32::from(!(i / TGT >= b / 2 && i % TGT >= TGT - 5)))
        .collect();
    let lmask = Tensor::from_vec(lmask, (b, TGT), dev)?;
    model.set_training(true);
    time(plan, dev, || {
        let enc = model.encode(&model.embed_tokens(&ids)?, &mask)?;
        let loss = model.loss(&enc, &mask, &labels, &lmask)?;
        opt.backward_step(&loss)
    })
}

/// Random weights as constants, as a checkpoint loads for inference: with variables every
/// op would record its inputs for backprop and keep all activations alive.
fn frozen(vm: &VarMap, dev: &Device) -> Result<VarBuilder<'static>> {
    let tensors = close_core::init::constants(vm)?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, dev))
}

fn t5_beam5(case: &str, plan: Plan, dev: &Device) -> Result<f64> {
    let b = batch_of(case, plan);
    let cfg = t5_config(plan);
    let vm = VarMap::new();
    T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    let model = T5::new(&cfg, frozen(&vm, dev)?)?;
    let (ids, mask) = t5_inputs(b, dev)?;
    let gc = GenerateConfig {
        max_steps: GEN,
        beams: 5,
        length_penalty: 0.0,
        // Never produced: always GEN tokens, as PyTorch with eos_token_id None.
        eos_token_id: Some(cfg.vocab_size as u32),
    };
    time(plan, dev, || {
        let enc = model.encode(&model.embed_tokens(&ids)?, &mask)?;
        let out = model.generate(&enc, &mask, &gc)?;
        assert_eq!(out[0][0].tokens.len(), GEN);
        Ok(())
    })
}

fn clip_embed(case: &str, plan: Plan, dev: &Device) -> Result<f64> {
    let b = batch_of(case, plan);
    let cfg = clip_config(plan);
    let vm = VarMap::new();
    ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, dev), &cfg)?;
    let clip = ClipModel::new(frozen(&vm, dev)?, &cfg)?;
    if case.starts_with("clip-image") {
        let s = cfg.vision_config.image_size;
        let px = Tensor::randn(0f32, 1., (b, 3, s, s), dev)?;
        return time(plan, dev, || clip.get_image_features(&px).map(drop));
    }
    let n = cfg.text_config.max_position_embeddings;
    let eos = cfg.text_config.eos_token_id;
    let ids: Vec<u32> = (0..b * n)
        .map(|i| {
            if i % n == n - 1 {
                eos
            } else {
                (i * 7919 % 49406) as u32
            }
        })
        .collect();
    let ids = Tensor::from_vec(ids, (b, n), dev)?;
    time(plan, dev, || clip.get_text_features(&ids).map(drop))
}

/// The child process: run one case and print its JSON line.
fn child(case: &str, plan: Plan, spec: DeviceSpec) -> Result<()> {
    let dev = spec.open()?;
    let seconds = match case {
        c if c.starts_with("t5-train") => t5_train(c, plan, &dev)?,
        c if c.starts_with("t5-beam5") => t5_beam5(c, plan, &dev)?,
        c => clip_embed(c, plan, &dev)?,
    };
    let peak = dev.is_cpu().then(close_core::bench::peak_rss_mib).flatten();
    println!(
        "{}",
        serde_json::json!({"seconds": seconds, "peak_mib": peak})
    );
    Ok(())
}

/// The last line of a process's stdout as a measurement, or why there is none.
fn measured(out: std::io::Result<std::process::Output>) -> std::result::Result<Measured, String> {
    let o = out.map_err(|e| e.to_string())?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!("{}: {}", o.status, tail.join(" | ")));
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("no result line")?;
    Ok(Measured {
        seconds: v["seconds"].as_f64().ok_or("no seconds")?,
        peak_mib: v["peak_mib"].as_f64(),
    })
}

fn ours(case: &str) -> std::result::Result<Measured, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    measured(Command::new(exe).env(CHILD_VAR, case).output())
}

fn pytorch(
    python: &str,
    case: &str,
    spec: DeviceSpec,
    threads: &str,
    plan: Plan,
) -> std::result::Result<Measured, String> {
    let device = match spec {
        DeviceSpec::Cpu => "cpu".to_string(),
        DeviceSpec::Cuda(n) => format!("cuda:{n}"),
    };
    let out = Command::new(python)
        .args(["-c", PY, case, &device, threads, &plan.runs.to_string()])
        .output();
    measured(out)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn mib(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |m| format!("{m:.0}"))
}

/// Run every selected case on both sides and print the table.
fn parent(plan: Plan, spec: DeviceSpec, threads: &str) {
    let cases: Vec<String> = match std::env::var("CLOSE_BENCH_CASES") {
        Ok(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
        Err(_) => DEFAULT_CASES.iter().map(|c| c.to_string()).collect(),
    };
    let python = close_core::bench::python();
    println!("{}", close_core::bench::CpuInfo::detect());
    println!(
        "device {spec}, {threads} CPU threads, {} timed runs after a warm-up{}",
        plan.runs,
        if plan.smoke {
            " (smoke: 2 layers, batch 2, no PyTorch)"
        } else {
            ""
        }
    );
    println!("| case | ours s | PyTorch s | speed (PyTorch/ours) | ours peak MiB | PyTorch peak MiB | memory (ours/PyTorch) |");
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        if !CASES.contains(&case.as_str()) {
            println!("| {case} | unknown case; known: {} |", CASES.join(", "));
            continue;
        }
        let a = ours(case);
        let b = python
            .as_deref()
            .map(|p| pytorch(p, case, spec, threads, plan));
        let (a_s, a_m) = match &a {
            Ok(m) => (Some(m.seconds), m.peak_mib),
            Err(e) => {
                println!("| {case} | failed: {e} |");
                continue;
            }
        };
        let (b_s, b_m) = match &b {
            Some(Ok(m)) => (Some(m.seconds), m.peak_mib),
            Some(Err(e)) => {
                eprintln!("{case}: PyTorch side failed: {e}");
                (None, None)
            }
            None => (None, None),
        };
        let secs = |x: Option<f64>| x.map_or("n/a".into(), |s| format!("{s:.3}"));
        println!(
            "| {case} | {} | {} | {} | {} | {} | {} |",
            secs(a_s),
            secs(b_s),
            ratio(b_s, a_s),
            mib(a_m),
            mib(b_m),
            ratio(a_m, b_m)
        );
    }
}

close_core::global_allocator!();

fn main() -> Result<()> {
    let threads = std::env::var("CLOSE_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    close_core::threads::init();
    close_core::alloc::init();
    let smoke = close_core::bench::smoke();
    let runs = std::env::var("CLOSE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2usize);
    let plan = Plan {
        runs: if smoke { 0 } else { runs.max(1) },
        smoke,
    };
    let spec: DeviceSpec = std::env::var("CLOSE_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()?;
    match std::env::var(CHILD_VAR) {
        Ok(case) => child(&case, plan, spec),
        Err(_) => {
            parent(plan, spec, &threads);
            Ok(())
        }
    }
}
