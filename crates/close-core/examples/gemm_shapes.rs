use std::time::Instant;
use close_core::matmul::{matmul, Operand};
fn best(mut f: impl FnMut()) -> f64 {
    let mut b = f64::INFINITY;
    for _ in 0..10 { let t = Instant::now(); f(); b = b.min(t.elapsed().as_secs_f64()); }
    b
}
fn main() {
    for (m, n, k) in [(50, 768, 768), (50, 3072, 768), (50, 768, 3072), (64, 2048, 512), (64, 512, 512), (64, 32128, 512), (1600, 768, 768), (16, 512, 512)] {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let wt = vec![0.25f32; n * k];
        let mut y = vec![0f32; m * n];
        let a = best(|| matmul((m, n, k), Operand::row_major(&x, k), Operand::transposed(&w, k), &mut y, false).unwrap());
        let b = best(|| matmul((m, n, k), Operand::row_major(&x, k), Operand::row_major(&wt, n), &mut y, false).unwrap());
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        println!("m {m:5} n {n:6} k {k:5}: w[N,K] {:7.3} ms {:6.1} GF/s | w[K,N] {:7.3} ms {:6.1} GF/s", a * 1e3, fl / a, b * 1e3, fl / b);
    }
}
