//! T5-small-shaped benchmark: one training step (forward + backward + AdamW; batch 16,
//! source 40, target 20, dropout on) and generation of 20 tokens (greedy and 4-beam, batch 16),
//! compared with HF transformers / PyTorch on the same configuration in the same run when
//! `/work/venv/bin/python` (or `$CLOSE_PYTHON`) can import torch and transformers. Prints
//! the CPU, the kernels chosen on each side, and the ratios.
//! Both sides use 2 threads (`RAYON_NUM_THREADS`, `torch.set_num_threads`); override with
//! `CLOSE_BENCH_THREADS`. Times are the best of `CLOSE_BENCH_STEPS` / `CLOSE_BENCH_GEN_RUNS`
//! runs (default 3) after a warm-up; `CLOSE_BENCH_SMOKE=1` runs each case once, without
//! PyTorch. Run: `cargo bench -p close-t5 --bench t5`.

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_core::optim::{AdamW, AdamWConfig};
use close_t5::{GenerateConfig, T5Config, T5};

const B: usize = 16;
const SRC: usize = 40;
const TGT: usize = 20;
const GEN: usize = 20;

const PY: &str = r#"
import json, sys, time, torch
from transformers import T5Config, T5ForConditionalGeneration
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
B, SRC, TGT, GEN, STEPS, GEN_RUNS = 16, 40, 20, 20, int(sys.argv[2]), int(sys.argv[3])
cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               dropout_rate=0.1, feed_forward_proj="relu", decoder_start_token_id=0)
model = T5ForConditionalGeneration(cfg)
ids = torch.randint(3, 32000, (B, SRC)); mask = torch.ones(B, SRC, dtype=torch.long); mask[B // 2:, SRC - 10:] = 0
labels = torch.randint(3, 32000, (B, TGT)); labels[B // 2:, TGT - 5:] = -100
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
model.train()
def step():
    opt.zero_grad(set_to_none=True)
    emb = model.shared(ids)
    loss = model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss
    loss.backward(); opt.step()
def best(f, runs):
    f()
    b = float("inf")
    for _ in range(max(runs, 1)):
        t = time.perf_counter(); f(); b = min(b, time.perf_counter() - t)
    return b
train = best(step, STEPS)
model.eval(); model.generation_config.eos_token_id = None
res = {"train_step": train}
with torch.no_grad():
    for name, beams in (("greedy", 1), ("beam4", 4)):
        def gen():
            enc = model.shared(ids)
            out = model.generate(inputs_embeds=enc, attention_mask=mask, max_new_tokens=GEN, num_beams=beams,
                                 do_sample=False, length_penalty=0.0)
            assert out.shape[1] == GEN + 1, out.shape
        res[name] = best(gen, GEN_RUNS)
res["torch"] = torch.__version__; res["capability"] = torch.backends.cpu.get_cpu_capability()
print(json.dumps(res))
"#;

/// Best of `runs` timed runs after one warm-up (the minimum is the least disturbed by other
/// processes on a shared machine); with `runs == 0`, one run without warm-up (smoke runs).
fn time<F: FnMut() -> close_core::Result<()>>(runs: usize, mut f: F) -> close_core::Result<f64> {
    if runs == 0 {
        let t = Instant::now();
        f()?;
        return Ok(t.elapsed().as_secs_f64());
    }
    f()?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

close_core::global_allocator!();

fn main() -> close_core::Result<()> {
    close_core::threads::init();
    close_core::alloc::init();
    let threads = std::env::var("CLOSE_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    let runs = |var: &str| match close_core::bench::smoke() {
        true => 0,
        false => std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3usize)
            .max(1),
    };
    let (steps, gen_runs) = (runs("CLOSE_BENCH_STEPS"), runs("CLOSE_BENCH_GEN_RUNS"));
    println!("{}", close_core::bench::CpuInfo::detect());
    println!("T5-small shape, batch {B}, source {SRC}, target {TGT}, generate {GEN} tokens, {threads} threads");

    let dev = Device::Cpu;
    let cfg = T5Config::t5_small();
    let vm = VarMap::new();
    let mut model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let mut opt = AdamW::from_varmap(&vm, AdamWConfig::default())?;
    let ids = Tensor::rand(3f32, 32000., (B, SRC), &dev)?.to_dtype(DType::U32)?;
    let mut mask = vec![1f32; B * SRC];
    for b in B / 2..B {
        for s in SRC - 10..SRC {
            mask[b * SRC + s] = 0.0;
        }
    }
    let mask = Tensor::from_vec(mask, (B, SRC), &dev)?;
    let labels = Tensor::rand(3f32, 32000., (B, TGT), &dev)?.to_dtype(DType::U32)?;
    let mut lmask = vec![1f32; B * TGT];
    for b in B / 2..B {
        for t in TGT - 5..TGT {
            lmask[b * TGT + t] = 0.0;
        }
    }
    let lmask = Tensor::from_vec(lmask, (B, TGT), &dev)?;

    model.set_training(true);
    let (mut t_fwd, mut t_bwd, mut t_opt) = (0f64, 0f64, 0f64);
    let train = time(steps, || {
        let t0 = Instant::now();
        let enc = model.encode(&model.embed_tokens(&ids)?, &mask)?;
        let loss = model.loss(&enc, &mask, &labels, &lmask)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        t_fwd += (t1 - t0).as_secs_f64();
        t_bwd += (t2 - t1).as_secs_f64();
        t_opt += t2.elapsed().as_secs_f64();
        Ok(())
    })?;
    let n = (steps + 1) as f64; // the warm-up and the timed runs, or the one smoke run
    println!(
        "close-t5 train step breakdown (mean): forward {:.3} s, backward {:.3} s, AdamW {:.3} s",
        t_fwd / n,
        t_bwd / n,
        t_opt / n
    );
    model.set_training(false);
    let no_eos = cfg.vocab_size as u32; // never produced: always GEN tokens, as torch with eos None
    let mut gen = Vec::new();
    for (name, beams) in [("greedy", 1), ("beam4", 4)] {
        let gc = GenerateConfig {
            max_steps: GEN,
            beams,
            length_penalty: 0.0,
            eos_token_id: Some(no_eos),
        };
        let t = time(gen_runs, || {
            let enc = model.encode(&model.embed_tokens(&ids)?, &mask)?;
            let out = model.generate(&enc, &mask, &gc)?;
            assert_eq!(out[0][0].tokens.len(), GEN);
            Ok(())
        })?;
        gen.push((name, t));
    }
    println!(
        "close-t5 (candle): train step {train:.3} s, greedy {:.3} s, beam4 {:.3} s",
        gen[0].1, gen[1].1
    );

    let Some(python) = close_core::bench::python() else {
        return Ok(());
    };
    let out = Command::new(&python)
        .arg("-c")
        .arg(PY)
        .arg(&threads)
        .arg(steps.to_string())
        .arg(gen_runs.to_string())
        .output();
    let torch: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!(
                "PyTorch comparison skipped: {python} failed: {}",
                err.lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            println!("PyTorch comparison skipped: cannot run {python}: {e}");
            None
        }
    };
    if let Some(t) = torch {
        let get = |k: &str| t.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        println!("{}", close_core::bench::torch_line(&t));
        println!(
            "PyTorch (HF transformers): train step {:.3} s, greedy {:.3} s, beam4 {:.3} s",
            get("train_step"),
            get("greedy"),
            get("beam4")
        );
        println!(
            "speed ratio (PyTorch time / close-t5 time, >= 1 means close-t5 is as fast or faster): train {:.2}x, greedy {:.2}x, beam4 {:.2}x",
            get("train_step") / train,
            get("greedy") / gen[0].1,
            get("beam4") / gen[1].1
        );
    }
    Ok(())
}
