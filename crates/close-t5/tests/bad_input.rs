//! Bad checkpoints, configs and inputs give clear errors (naming file / key / limit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_t5::{GenerateConfig, T5Config, T5};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1_1")
}

fn copy_with(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

#[test]
fn missing_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_with(dir.path(), |t| {
        t.remove("decoder.block.1.layer.1.EncDecAttention.v.weight");
    });
    let e = T5::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("decoder.block.1.layer.1.EncDecAttention.v.weight")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn misshaped_key_names_key_file_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_with(dir.path(), |t| {
        t.insert(
            "lm_head.weight".into(),
            Tensor::zeros((64, 15), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = T5::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("model.safetensors") && e.contains("[64, 15]"),
        "{e}"
    );
}

#[test]
fn corrupt_checkpoint_and_config_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let e = T5::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    let cfg = std::fs::read_to_string(fixture().join("config.json"))
        .unwrap()
        .replace("gated-gelu", "gated-foo");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = T5::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("feed_forward_proj") && e.contains("gated-foo"),
        "{e}"
    );

    std::fs::write(dir.path().join("config.json"), "{\"d_model\": \"wide\"}").unwrap();
    let e = T5::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("config.json:1"), "{e}");

    let e = T5::load(dir.path().join("nope"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn over_long_and_malformed_inputs_are_errors() {
    let dev = Device::Cpu;
    let cfg = T5Config {
        n_positions: 8,
        ..T5Config::tiny()
    };
    let vm = VarMap::new();
    let model = T5::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let x = Tensor::zeros((1, 9, cfg.d_model), DType::F32, &dev).unwrap();
    let m = Tensor::ones((1, 9), DType::F32, &dev).unwrap();
    let e = model.encode(&x, &m).unwrap_err().to_string();
    assert!(e.contains("9") && e.contains("n_positions"), "{e}");

    let x = Tensor::zeros((1, 4, cfg.d_model), DType::F32, &dev).unwrap();
    let m = Tensor::ones((1, 4), DType::F32, &dev).unwrap();
    let enc = model.encode(&x, &m).unwrap();
    let e = model
        .generate(&enc, &m, &GenerateConfig::greedy(9))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_steps"), "{e}");
    let long = Tensor::zeros((1, 9), DType::U32, &dev).unwrap();
    assert!(model
        .decode(&enc, &m, &long)
        .unwrap_err()
        .to_string()
        .contains("n_positions"));

    // wrong widths / masks / ids
    let bad = Tensor::zeros((1, 4, cfg.d_model + 1), DType::F32, &dev).unwrap();
    assert!(model
        .encode(&bad, &m)
        .unwrap_err()
        .to_string()
        .contains("inputs_embeds"));
    let bad_mask = Tensor::ones((1, 5), DType::F32, &dev).unwrap();
    assert!(model
        .encode(&x, &bad_mask)
        .unwrap_err()
        .to_string()
        .contains("mask"));
    let ids = Tensor::new(&[[3u32, 64]], &dev).unwrap();
    assert!(model
        .embed_tokens(&ids)
        .unwrap_err()
        .to_string()
        .contains("64"));
    let labels = Tensor::new(&[[3u32, 4]], &dev).unwrap();
    let none = Tensor::zeros((1, 2), DType::F32, &dev).unwrap();
    assert!(model
        .loss(&enc, &m, &labels, &none)
        .unwrap_err()
        .to_string()
        .contains("no target"));
    assert!(model.repeat_for_targets(&enc, &m, &[0, 1]).is_err());
    assert!(model
        .generate(&enc, &m, &GenerateConfig::beam(0, 4))
        .is_err());
}
