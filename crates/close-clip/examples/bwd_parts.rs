use candle_core::{Device, Tensor, Var, Module};
use std::time::Instant;

fn time<F: Fn() -> Tensor>(name: &str, f: F) {
    for _ in 0..2 {
        let t0 = Instant::now();
        let y = f();
        let t1 = Instant::now();
        let _g = y.sum_all().unwrap().backward().unwrap();
        let t2 = Instant::now();
        println!("{name}: fwd {:.4} bwd {:.4}", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
    }
}

fn main() {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1., (64, 65, 128), &dev).unwrap();
    let w = Var::randn(0f32, 0.1, (512, 128), &dev).unwrap();
    let b = Var::randn(0f32, 0.1, 512, &dev).unwrap();
    let g = Var::randn(1f32, 0.1, 128, &dev).unwrap();
    let lin = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    time("linear", || lin.forward(x.as_tensor()).unwrap());
    let lin_nb = candle_nn::Linear::new(w.as_tensor().clone(), None);
    time("linear nobias", || lin_nb.forward(x.as_tensor()).unwrap());
    time("layernorm", || close_core::ops::layer_norm(x.as_tensor(), g.as_tensor(), Some(g.as_tensor()), 1e-5).unwrap());
    let a = Var::randn(0f32, 1., (64, 4, 65, 65), &dev).unwrap();
    time("softmax", || close_core::ops::softmax_last_dim(a.as_tensor()).unwrap());
    let q = Var::randn(0f32, 1., (64, 4, 65, 32), &dev).unwrap();
    time("qk matmul", || q.as_tensor().matmul(&q.as_tensor().t().unwrap()).unwrap());
    let h = Var::randn(0f32, 1., (64, 65, 512), &dev).unwrap();
    time("quickgelu", || (h.as_tensor() * candle_nn::ops::sigmoid(&(h.as_tensor() * 1.702).unwrap()).unwrap()).unwrap());
    time("split heads", || x.as_tensor().reshape((64, 65, 4, 32)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap());
    time("bcast add", || x.as_tensor().broadcast_add(g.as_tensor()).unwrap());
}
