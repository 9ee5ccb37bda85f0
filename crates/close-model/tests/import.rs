//! `close import` of an official-layout CLOSE checkpoint (fixture made by
//! `tests/fixtures/official_ckpt/generate.py` with torch.save): the imported run reproduces
//! HF transformers' logits.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use close_model::run::Run;
use close_model::task::Task;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official_ckpt")
}

#[test]
fn imports_official_checkpoint_and_matches_hf_logits() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    // The fixture T5 has no tokenizer; any T5-convention tokenizer within the vocab works.
    let tok =
        close_t5::tokenizer::train_tokenizer(["a red circle", "two blue squares", "yes no"], 30)
            .unwrap();
    let tok_path = dir.path().join("tok.json");
    close_t5::tokenizer::save(&tok, &tok_path).unwrap();
    let out = dir.path().join("run");
    let rep = close_model::import::import_official(
        &fx.join("model.json"),
        &fx.join("state-ep8.pth"),
        &fx.join("t5"),
        Some(&tok_path),
        Task::SCap,
        &out,
    )
    .unwrap();
    assert_eq!(rep.clip_dim, 8);
    assert_eq!(rep.n_prefix, 4);
    assert_eq!(rep.t5_model_name.as_deref(), Some("t5-tiny-test"));
    let run = Run::load(&out, &Device::Cpu).unwrap();
    assert_eq!(run.config.adapter.noise, 0.08);
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("expected.json")).unwrap()).unwrap();
    let clip: Vec<f32> = exp["clip"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let ids: Vec<u32> = exp["decoder_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<Vec<f32>> = exp["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let clip = Tensor::from_vec(clip, (1, 8), &Device::Cpu).unwrap();
    let (enc, mask) = run.model.encode(&clip, None).unwrap();
    let ids = Tensor::from_vec(ids, (1, 3), &Device::Cpu).unwrap();
    let got = run
        .model
        .t5()
        .decode(&enc, &mask, &ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut max = 0f32;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            max = max.max((a - b).abs());
        }
    }
    assert!(max < 1e-4, "max |Δlogit| = {max}");
}

#[test]
fn bad_checkpoint_is_a_clear_error() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("state.pth");
    std::fs::write(&bad, b"not a zip").unwrap();
    let e = close_model::import::import_official(
        &fx.join("model.json"),
        &bad,
        &fx.join("t5"),
        None,
        Task::SCap,
        &dir.path().join("r"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("state.pth"), "{e}");
}
