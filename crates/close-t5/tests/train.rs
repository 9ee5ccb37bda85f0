//! Training-path tests: every parameter receives a gradient, and a tiny T5 learns to reverse
//! short sequences.

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_core::optim::{AdamW, AdamWConfig};
use close_t5::{pad_targets, GenerateConfig, T5Config, T5};
use rand::{Rng, SeedableRng};

fn tiny(proj: &str, tied: bool) -> T5Config {
    T5Config {
        feed_forward_proj: proj.into(),
        tie_word_embeddings: tied,
        ..T5Config::tiny()
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    let dev = close_core::device::test_device().unwrap();
    for (proj, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = tiny(proj, tied);
        let vm = VarMap::new();
        let model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let ids = Tensor::new(&[[5u32, 6, 7, 8, 1], [9, 10, 1, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let (labels, lmask) = pad_targets(&[vec![3, 4, 1], vec![11, 1]], 0, &dev).unwrap();
        let enc = model
            .encode(&model.embed_tokens(&ids).unwrap(), &mask)
            .unwrap();
        let loss = model.loss(&enc, &mask, &labels, &lmask).unwrap();
        let grads = loss.backward().unwrap();
        let missing = close_core::ops::vars_without_gradient(&vm, &grads).unwrap();
        assert!(missing.is_empty(), "{proj}: no gradient for {missing:?}");
        let n = vm.all_vars().len();
        // 2 encoder blocks (4+1+2|3 + 2 norms), 2 decoder blocks (+4 cross +1 norm), shared, finals, bias tables
        assert!(n >= 40, "{proj}: only {n} variables");
    }
}

#[test]
fn dropout_is_active_only_in_training_mode() {
    let dev = close_core::device::test_device().unwrap();
    let cfg = T5Config {
        dropout_rate: 0.3,
        ..T5Config::tiny()
    };
    let vm = VarMap::new();
    let mut model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let x = Tensor::randn(0f32, 1., (2, 5, cfg.d_model), &dev).unwrap();
    let m = Tensor::ones((2, 5), DType::F32, &dev).unwrap();
    let a = model.encode(&x, &m).unwrap();
    let b = model.encode(&x, &m).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    model.set_training(true);
    let c = model.encode(&x, &m).unwrap();
    let d = (a - c)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 1e-3);
}

#[test]
fn learns_to_reverse_short_sequences() {
    let dev = close_core::device::test_device().unwrap();
    let cfg = T5Config {
        vocab_size: 16,
        d_model: 64,
        d_kv: 16,
        d_ff: 128,
        num_heads: 4,
        ..T5Config::tiny()
    };
    let vm = VarMap::new();
    let model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    close_t5::weights::init_seeded(&vm, &cfg, 0).unwrap();
    let mut opt = AdamW::from_varmap(
        &vm,
        AdamWConfig {
            lr: 3e-3,
            max_grad_norm: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // symbols 3..12, length 2..=4; source = seq + </s>, target = reversed seq + </s>
    let batch = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
        let mut src = Vec::new();
        let mut tgt = Vec::new();
        for _ in 0..n {
            let len = rng.random_range(2..=4);
            let s: Vec<u32> = (0..len).map(|_| rng.random_range(3..12)).collect();
            let mut r: Vec<u32> = s.iter().rev().copied().collect();
            r.push(1);
            let mut s2 = s.clone();
            s2.push(1);
            src.push(s2);
            tgt.push(r);
        }
        let (ids, mask) = pad_targets(&src, 0, &dev).unwrap();
        let (labels, lmask) = pad_targets(&tgt, 0, &dev).unwrap();
        (ids, mask, labels, lmask, tgt)
    };
    let mut last = f32::MAX;
    let steps = 300;
    let base = opt.lr();
    for step in 0..steps {
        opt.set_lr(base * (1.0 - step as f64 / steps as f64));
        let (ids, mask, labels, lmask, _) = batch(64, &mut rng);
        let enc = model
            .encode(&model.embed_tokens(&ids).unwrap(), &mask)
            .unwrap();
        let loss = model.loss(&enc, &mask, &labels, &lmask).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let (ids, mask, _, _, tgt) = batch(64, &mut rng);
    let enc = model
        .encode(&model.embed_tokens(&ids).unwrap(), &mask)
        .unwrap();
    for gc in [GenerateConfig::greedy(8), GenerateConfig::beam(3, 8)] {
        let out = model.generate(&enc, &mask, &gc).unwrap();
        let correct = out
            .iter()
            .zip(&tgt)
            .filter(|(h, t)| h[0].finished && h[0].tokens[..] == t[..t.len() - 1])
            .count();
        assert!(
            correct >= 54,
            "{correct}/64 reversed correctly (beams {}), last loss {last}",
            gc.beams
        );
    }
}

/// The composed candle ops that GPUs run (the fused CPU kernels switched off) give the same
/// loss, gradients and generated tokens as the fused path.
#[test]
fn the_composed_path_matches_the_fused_one() {
    use close_core::fused::with_composed_ops;
    let dev = close_core::device::test_device().unwrap();
    for (proj, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = tiny(proj, tied);
        let vm = VarMap::new();
        let model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        close_t5::weights::init_seeded(&vm, &cfg, 5).unwrap();
        let ids = Tensor::new(&[[5u32, 6, 7, 8, 1], [9, 10, 1, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let (labels, lmask) = pad_targets(&[vec![3, 4, 1], vec![11, 1]], 0, &dev).unwrap();
        let pass = || {
            let enc = model
                .encode(&model.embed_tokens(&ids).unwrap(), &mask)
                .unwrap();
            let loss = model.loss(&enc, &mask, &labels, &lmask).unwrap();
            let grads = loss.backward().unwrap();
            let tokens: Vec<Vec<Vec<u32>>> =
                [GenerateConfig::greedy(6), GenerateConfig::beam(3, 6)]
                    .iter()
                    .flat_map(|g| model.generate(&enc, &mask, g).unwrap())
                    .map(|hs| hs.into_iter().map(|h| h.tokens).collect())
                    .collect();
            (loss.to_scalar::<f32>().unwrap(), grads, tokens)
        };
        let (la, ga, ta) = pass();
        let (lb, gb, tb) = with_composed_ops(pass);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "{proj}: loss {la} vs {lb}"
        );
        let diff = close_core::ops::gradient_differences(&vm, &ga, &gb, 1e-4).unwrap();
        assert!(diff.is_empty(), "{proj}: gradients differ: {diff:?}");
        assert_eq!(ta, tb, "{proj}: generated tokens differ");
    }
}
