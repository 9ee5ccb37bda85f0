//! Parity with HF transformers 5.24 on tiny random CLIPs (fixtures made by
//! `tests/fixtures/parity/generate.py`): pixel values after `CLIPImageProcessor` (PIL),
//! token ids, image / text embeddings and logits.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use close_clip::{load_image, Clip, ClipTokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[derive(serde::Deserialize)]
struct Expected {
    images: Vec<String>,
    texts: Vec<String>,
}

fn check(name: &str) {
    let dev = close_core::device::test_device().unwrap();
    let dir = fixtures().join(name);
    let clip = Clip::load(&dir, &dev).unwrap();
    let exp: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();

    // Pixels: Pillow-exact resampling, so equal up to float rounding.
    let hf_px = &t["pixel_values"];
    let imgs: Vec<_> = exp
        .images
        .iter()
        .map(|f| load_image(fixtures().join("images").join(f)).unwrap())
        .collect();
    let px = clip.processor.batch(&imgs, &dev).unwrap();
    for (i, f) in exp.images.iter().enumerate() {
        let d = max_abs(&px.get(i).unwrap(), &hf_px.get(i).unwrap());
        eprintln!("{name} pixels {f}: max |Δ| = {d:e}");
        assert!(d <= 1e-5, "{name} {f}: pixel max diff {d}");
    }

    // Token ids: same as HF up to HF's padding (to 16 with the pad id).
    let hf_ids = t["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    for (text, want) in exp.texts.iter().zip(&hf_ids) {
        let got = clip.tokenizer.encode(text).unwrap();
        assert_eq!(&got[..], &want[..got.len()], "{name}: ids of {text:?}");
    }

    // Embeddings from our own pixels and ids.
    let img = clip.model.image_features(&px).unwrap();
    let d = max_abs(&img, &t["image_embeds"]);
    eprintln!("{name} image_embeds max |Δ| = {d:e}");
    assert!(d < 1e-4, "{name} image embeds diff {d}");
    let ids = clip.tokenizer.encode_batch(&exp.texts, &dev).unwrap();
    let txt = clip.model.text_features(&ids).unwrap();
    let d = max_abs(&txt, &t["text_embeds"]);
    eprintln!("{name} text_embeds max |Δ| = {d:e}");
    assert!(d < 1e-4, "{name} text embeds diff {d}");
    // HF's own (max-length padded) ids give the same embeddings.
    let hf_ids_t = t["input_ids"].to_dtype(DType::U32).unwrap();
    let d = max_abs(
        &clip.model.text_features(&hf_ids_t).unwrap(),
        &t["text_embeds"],
    );
    assert!(d < 1e-4, "{name} text embeds (HF ids) diff {d}");
    let (logits, _, _) = clip.model.forward(&px, &ids).unwrap();
    let d = max_abs(&logits, &t["logits_per_image"]);
    eprintln!("{name} logits max |Δ| = {d:e}");
    assert!(d < 1e-4, "{name} logits diff {d}");
    // Unit norm.
    let n = img.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(n.iter().all(|v| (v - 1.0).abs() < 1e-5));
}

#[test]
fn parity_quick_gelu_new_style_eos() {
    check("quick");
}

#[test]
fn parity_gelu_legacy_eos_custom_preprocessing() {
    check("gelu");
}

#[test]
fn real_clip_bpe_ids_match_hf() {
    #[derive(serde::Deserialize)]
    struct Tok {
        texts: Vec<String>,
        max_length: usize,
        input_ids: Vec<Vec<u32>>,
    }
    let dir = fixtures().join("tokenizer_real");
    let exp: Tok =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_tokens.json")).unwrap())
            .unwrap();
    let tok = ClipTokenizer::load(dir.join("tokenizer.json"), exp.max_length, 49407).unwrap();
    for (text, want) in exp.texts.iter().zip(&exp.input_ids) {
        assert_eq!(&tok.encode(text).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.pad_id(), 49407, "CLIP pads with <|endoftext|>");
}
