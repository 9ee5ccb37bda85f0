use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_clip::train::clip_loss;
use close_clip::{ClipConfig, ClipModel};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let patch: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(8);
    let hidden: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(128);
    let dev = Device::Cpu;
    let mut cfg = ClipConfig::shapes();
    cfg.vision_config.patch_size = patch;
    cfg.vision_config.hidden_size = hidden;
    cfg.vision_config.intermediate_size = hidden * 4;
    let vm = VarMap::new();
    let m = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg).unwrap();
    let mut opt = close_core::optim::AdamW::from_varmap(&vm, Default::default()).unwrap();
    let px = Tensor::randn(0f32, 1., (64, 3, 64, 64), &dev).unwrap();
    let ids = Tensor::ones((64, 20), DType::U32, &dev).unwrap();
    for it in 0..4 {
        let t0 = Instant::now();
        let img = m.image_features(&px).unwrap();
        let t1 = Instant::now();
        let txt = m.text_features(&ids).unwrap();
        let t2 = Instant::now();
        let logits = img.matmul(&txt.t().unwrap()).unwrap();
        let loss = clip_loss(&logits).unwrap();
        let g = loss.backward().unwrap();
        let t3 = Instant::now();
        opt.step(&g).unwrap();
        let t4 = Instant::now();
        println!("it {it}: vision fwd {:.3} text fwd {:.3} backward {:.3} opt {:.3}", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64(), (t4 - t3).as_secs_f64());
    }
}
