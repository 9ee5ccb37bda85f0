//! Parity with HF transformers' `T5ForConditionalGeneration` on tiny random models
//! (fixtures made by `tests/fixtures/generate.py`): v1.0 (ReLU, tied embeddings: catches a
//! wrong tied-logit scale) and v1.1 (gated-GELU, untied head), with `inputs_embeds` + mask,
//! logits, masked loss, gradients, greedy and beam-search output. The decoder's causal
//! position buckets are exercised by every logit.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor, Var};
use close_t5::{GenerateConfig, T5};

fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(variant)
}

fn expected(variant: &str) -> HashMap<String, Tensor> {
    let dev = close_core::device::test_device().unwrap();
    candle_core::safetensors::load(fixture(variant).join("expected.safetensors"), &dev).unwrap()
}

/// max |a - b| / max(1, max |b|)
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(1.0)
}

/// labels with -100 → (u32 labels, f32 mask)
fn split_labels(labels: &Tensor) -> (Tensor, Tensor) {
    let keep = labels.ge(0i64).unwrap();
    let zeros = labels.zeros_like().unwrap();
    let clean = keep
        .where_cond(labels, &zeros)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    (clean, keep.to_dtype(DType::F32).unwrap())
}

fn check_forward(variant: &str) {
    let dev = close_core::device::test_device().unwrap();
    let (model, cfg) = T5::load(fixture(variant), &dev).unwrap();
    assert_eq!(cfg.tie_word_embeddings, variant == "v1_0");
    let e = expected(variant);
    let enc = model.encode(&e["inputs_embeds"], &e["mask"]).unwrap();
    let d = rel_diff(&enc, &e["encoder_output"]);
    assert!(d < 1e-4, "{variant} encoder output differs by {d}");

    let (labels, label_mask) = split_labels(&e["labels"]);
    let dec_in = model.shift_right(&labels, &label_mask).unwrap();
    assert_eq!(
        dec_in.to_vec2::<u32>().unwrap(),
        e["decoder_input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    );
    let logits = model.decode(&enc, &e["mask"], &dec_in).unwrap();
    let d = rel_diff(&logits, &e["logits"]);
    assert!(d < 1e-4, "{variant} logits differ by {d}");

    let loss = model.loss(&enc, &e["mask"], &labels, &label_mask).unwrap();
    let d = rel_diff(&loss.reshape(1).unwrap(), &e["loss"]);
    assert!(d < 1e-5, "{variant} loss differs by {d}");
}

fn check_gradients(variant: &str) {
    let dev = close_core::device::test_device().unwrap();
    let (model, _cfg, varmap) = T5::load_trainable(fixture(variant), &dev).unwrap();
    let e = expected(variant);
    let x = Var::from_tensor(&e["inputs_embeds"]).unwrap();
    let (labels, label_mask) = split_labels(&e["labels"]);
    let enc = model.encode(x.as_tensor(), &e["mask"]).unwrap();
    let loss = model.loss(&enc, &e["mask"], &labels, &label_mask).unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut checked = 0;
    for (k, want) in &e {
        let Some(name) = k.strip_prefix("grad.") else {
            continue;
        };
        let got = if name == "inputs_embeds" {
            grads.get(x.as_tensor()).unwrap().clone()
        } else {
            let var = vars
                .get(name)
                .unwrap_or_else(|| panic!("no variable {name}"));
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .clone()
        };
        let d = rel_diff(&got, want);
        assert!(d < 1e-4, "{variant} gradient of {name} differs by {d}");
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} gradients in the fixture");
}

#[derive(serde::Deserialize)]
struct Greedy {
    tokens: Vec<u32>,
    logprob: f32,
    finished: bool,
}

#[derive(serde::Deserialize)]
struct Beam {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

#[derive(serde::Deserialize)]
struct GenExpected {
    max_new_tokens: usize,
    greedy: Vec<Greedy>,
    beam4: Vec<Vec<Beam>>,
}

fn check_generation(variant: &str) {
    let dev = close_core::device::test_device().unwrap();
    let (model, _) = T5::load(fixture(variant), &dev).unwrap();
    let e = expected(variant);
    let want: GenExpected = serde_json::from_str(
        &std::fs::read_to_string(fixture(variant).join("expected.json")).unwrap(),
    )
    .unwrap();
    let mask = &e["gen.mask"];
    let enc = model.encode(&e["gen.inputs_embeds"], mask).unwrap();

    let greedy = model
        .generate(&enc, mask, &GenerateConfig::greedy(want.max_new_tokens))
        .unwrap();
    assert_eq!(greedy.len(), want.greedy.len());
    for (got, want) in greedy.iter().zip(&want.greedy) {
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tokens, want.tokens, "{variant} greedy tokens");
        assert_eq!(got[0].finished, want.finished);
        assert!(
            (got[0].logprob - want.logprob).abs() < 1e-4,
            "{variant} greedy logprob {} vs {}",
            got[0].logprob,
            want.logprob
        );
    }

    let beams = model
        .generate(&enc, mask, &GenerateConfig::beam(4, want.max_new_tokens))
        .unwrap();
    let mut finished = 0;
    for (item, (got, want)) in beams.iter().zip(&want.beam4).enumerate() {
        assert_eq!(got.len(), 4, "{variant} item {item}: number of beams");
        for (r, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.tokens, w.tokens, "{variant} item {item} beam {r} tokens");
            assert_eq!(
                g.finished, w.finished,
                "{variant} item {item} beam {r} finished"
            );
            assert!(
                (g.score - w.score).abs() < 1e-4,
                "{variant} item {item} beam {r}: score {} vs {}",
                g.score,
                w.score
            );
            assert!(
                (g.logprob - g.score).abs() < 1e-6,
                "length penalty 0: score is the summed log-prob"
            );
            finished += g.finished as usize;
        }
    }
    assert!(finished > 0, "the fixture should exercise EOS");
}

#[test]
fn v1_0_forward_logits_loss() {
    check_forward("v1_0");
}

#[test]
fn v1_1_forward_logits_loss() {
    check_forward("v1_1");
}

#[test]
fn v1_0_gradients() {
    check_gradients("v1_0");
}

#[test]
fn v1_1_gradients() {
    check_gradients("v1_1");
}

#[test]
fn v1_0_greedy_and_beam() {
    check_generation("v1_0");
}

#[test]
fn v1_1_greedy_and_beam() {
    check_generation("v1_1");
}
