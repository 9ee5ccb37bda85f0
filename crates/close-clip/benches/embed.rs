//! Image embeddings per second of a ViT-B/32-shaped CLIP vision tower (random weights,
//! 224 px, 12 layers, width 768), batch 1 and 32, on 2 CPU threads, against HF transformers'
//! `CLIPVisionModel` in PyTorch (`torch.set_num_threads(2)`) in the same run when
//! `/work/venv/bin/python` (or `$CLOSE_PYTHON`) can import torch and transformers.
//!
//! Prints the CPU and the kernels chosen on each side. Run:
//! `cargo bench -p close-clip --bench embed` (env `BENCH_SECONDS` per case, default 4;
//! `CLOSE_BENCH_SMOKE=1` embeds each batch once, without PyTorch).

use std::collections::HashMap;
use std::process::Command;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_clip::model::ClipVisionTransformer;
use close_clip::ClipConfig;

const THREADS: usize = 2;

const PY: &str = r#"
import json, sys, time, torch
from transformers import CLIPVisionConfig, CLIPVisionModel
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
secs = float(sys.argv[2])
m = CLIPVisionModel(CLIPVisionConfig()).eval()
for b in (1, 32):
    x = torch.randn(b, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(2): m(pixel_values=x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < secs or n < 3:
            m(pixel_values=x); n += 1
        print(f"torch {b} {n * b / (time.perf_counter() - t0)}", flush=True)
"#;

fn torch_rates(seconds: f64) -> Option<HashMap<usize, f64>> {
    let py = close_core::bench::python()?;
    let ok = Command::new(&py)
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("PyTorch comparison skipped: `{py}` cannot import torch and transformers");
        return None;
    }
    let out = Command::new(&py)
        .args(["-c", PY, &THREADS.to_string(), &seconds.to_string()])
        .env("OMP_NUM_THREADS", THREADS.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "PyTorch comparison failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let mut rates = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(meta) = serde_json::from_str::<serde_json::Value>(line) {
            println!("{}", close_core::bench::torch_line(&meta));
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [_, b, r] = parts[..] {
            rates.insert(b.parse().ok()?, r.parse().ok()?);
        }
    }
    Some(rates)
}

close_core::global_allocator!();

fn main() -> close_core::Result<()> {
    close_core::threads::init();
    close_core::alloc::init();
    // Must be set before candle / rayon start their pools.
    std::env::set_var("RAYON_NUM_THREADS", THREADS.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", THREADS.to_string());
    let seconds = close_core::bench::seconds();
    println!("{}", close_core::bench::CpuInfo::detect());
    let dev = Device::Cpu;
    let cfg = ClipConfig::vit_b32();
    // Random weights (HF initialisation), then frozen plain tensors: the inference path.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    ClipVisionTransformer::new(vb.pp("vision_model"), &cfg.vision_config)?;
    vb.pp("visual_projection").get_with_hints(
        (cfg.projection_dim, cfg.vision_config.hidden_size),
        "weight",
        candle_nn::Init::Randn {
            mean: 0.,
            stdev: 0.03,
        },
    )?;
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .map_err(|_| close_core::Error::invalid("lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let vision = ClipVisionTransformer::new(vb.pp("vision_model"), &cfg.vision_config)?;
    let proj = candle_nn::Linear::new(
        vb.pp("visual_projection").get(
            (cfg.projection_dim, cfg.vision_config.hidden_size),
            "weight",
        )?,
        None,
    );

    let torch = torch_rates(seconds);
    println!("| batch | close-clip (img/s) | PyTorch HF CLIPVisionModel (img/s) | ratio |");
    println!("|---|---|---|---|");
    for batch in [1usize, 32] {
        let px = Tensor::randn(0f32, 1., (batch, 3, 224, 224), &dev)?;
        let rate = close_core::bench::rate(seconds, batch, || {
            let e = vision
                .forward(&px)
                .and_then(|h| Ok(proj.forward(&h)?))
                .and_then(|e| close_clip::model::l2_normalize(&e));
            std::hint::black_box(e.ok());
        });
        match torch.as_ref().and_then(|t| t.get(&batch)) {
            Some(&t) => println!("| {batch} | {rate:.1} | {t:.1} | {:.2}× |", rate / t),
            None => println!("| {batch} | {rate:.1} | – | – |"),
        }
    }
    println!("(ViT-B/32 shape, random weights, {THREADS} threads, {seconds} s per case)");
    Ok(())
}
