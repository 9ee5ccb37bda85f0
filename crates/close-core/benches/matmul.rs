//! The matrix products of the models, alone: `close_core::matmul` with a linear layer's
//! operands (`x [M, K]` times a weight `[N, K]` read transposed) against PyTorch's
//! `x @ w.t()` on the same shapes and threads, in the same run. The shapes are those of
//! T5-small training and decoding, T5-base, a ViT-B/32 image tower at batch 1 and 32, and
//! ViT-L/14's text tower at batch 32 (77 tokens each).
//!
//! Run: `cargo bench -p close-core --bench matmul` (`CLOSE_BENCH_THREADS`, default 2;
//! `CLOSE_BENCH_SMOKE=1` runs each shape once, without PyTorch).

use std::process::Command;
use std::time::Instant;

use close_core::matmul::{matmul, Operand};

/// `(what, M, N, K)`.
const SHAPES: [(&str, usize, usize, usize); 15] = [
    ("t5-small decode greedy, FF in", 16, 2048, 512),
    ("t5-small decode greedy, attn", 16, 512, 512),
    ("t5-small decode greedy, LM head", 16, 32128, 512),
    ("t5-small decode beam-4, FF in", 64, 2048, 512),
    ("t5-small decode beam-4, LM head", 64, 32128, 512),
    ("t5-small train, encoder attn", 640, 512, 512),
    ("t5-small train, encoder FF in", 640, 2048, 512),
    ("t5-small train, LM head", 320, 32128, 512),
    ("t5-base train, FF in", 1280, 3072, 768),
    ("ViT-B/32 batch 1, MLP in", 50, 3072, 768),
    ("ViT-B/32 batch 1, MLP out", 50, 768, 3072),
    ("ViT-B/32 batch 32, MLP in", 1600, 3072, 768),
    ("ViT-L/14 text batch 32, attn", 2464, 768, 768),
    ("ViT-L/14 text batch 32, MLP in", 2464, 3072, 768),
    ("ViT-L/14 text batch 32, MLP out", 2464, 768, 3072),
];

const PY: &str = r#"
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); runs = int(sys.argv[2])
out = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(), "ms": []}
for m, n, k in json.loads(sys.argv[3]):
    x, w = torch.rand(m, k), torch.rand(n, k)
    x @ w.t()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter(); x @ w.t(); best = min(best, time.perf_counter() - t)
    out["ms"].append(best * 1e3)
print(json.dumps(out))
"#;

/// Best of `runs` (one run, no warm-up, when `runs == 0`), in milliseconds.
fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    if runs > 0 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn torch_ms(python: &str, threads: &str, runs: usize) -> Option<serde_json::Value> {
    let shapes: Vec<[usize; 3]> = SHAPES.iter().map(|s| [s.1, s.2, s.3]).collect();
    let shapes = serde_json::to_string(&shapes).ok()?;
    let out = Command::new(python)
        .args(["-c", PY, threads, &runs.to_string(), &shapes])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            serde_json::from_str(text.lines().last()?).ok()
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("");
            println!("PyTorch comparison skipped: {python} failed: {last}");
            None
        }
        Err(e) => {
            println!("PyTorch comparison skipped: cannot run {python}: {e}");
            None
        }
    }
}

fn main() {
    let threads = std::env::var("CLOSE_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    let runs = if close_core::bench::smoke() { 0 } else { 10 };
    println!("{}", close_core::bench::CpuInfo::detect());
    let torch = close_core::bench::python().and_then(|py| torch_ms(&py, &threads, runs));
    if let Some(t) = &torch {
        println!("{}", close_core::bench::torch_line(t));
    }
    println!("| product | M × N × K | close (ms, GFLOP/s) | PyTorch (ms, GFLOP/s) | ratio |");
    println!("|---|---|---|---|---|");
    for (i, &(what, m, n, k)) in SHAPES.iter().enumerate() {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut y = vec![0f32; m * n];
        let (lhs, rhs) = (Operand::row_major(&x, k), Operand::transposed(&w, k));
        let ours = best_ms(runs, || {
            matmul((m, n, k), lhs, rhs, &mut y, false).expect("shapes fit");
        });
        let gflops = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
        let theirs = torch
            .as_ref()
            .and_then(|t| t["ms"].get(i))
            .and_then(|v| v.as_f64());
        let (t_cell, ratio) = match theirs {
            Some(t) => (
                format!("{t:.3}, {:.0}", gflops(t)),
                format!("{:.2}×", t / ours),
            ),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {what} | {m} × {n} × {k} | {ours:.3}, {:.0} | {t_cell} | {ratio} |",
            gflops(ours)
        );
    }
    println!("({threads} threads; best of {runs} runs each)");
}
