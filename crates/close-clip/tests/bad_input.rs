//! Bad input gives one clear error naming the file or key, never a panic; batch jobs skip
//! and list bad items.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use close_clip::{load_image, Clip};

fn rewrite_weights(dir: &std::path::Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &p).unwrap();
}

#[test]
fn model_dir_problems_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    common::copy_model("quick", &d);
    rewrite_weights(&d, |t| {
        t.remove("text_model.encoder.layers.1.mlp.fc2.bias");
    });
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("text_model.encoder.layers.1.mlp.fc2.bias"),
        "{e}"
    );

    common::copy_model("quick", &d);
    rewrite_weights(&d, |t| {
        t.insert(
            "visual_projection.weight".into(),
            Tensor::zeros((7, 24), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(
        e.contains("visual_projection.weight") && e.contains("[20, 24]") && e.contains("[7, 24]"),
        "{e}"
    );

    common::copy_model("quick", &d);
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");

    common::copy_model("quick", &d);
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(e.contains("config.json"), "{e}");

    common::copy_model("quick", &d);
    std::fs::write(
        d.join("config.json"),
        "{\"model_type\": \"clip\", \"projection_dim\": ",
    )
    .unwrap();
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(e.contains("config.json"), "{e}");

    common::copy_model("quick", &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = format!("{:#}", Clip::load(&d, &Device::Cpu).err().unwrap());
    assert!(e.contains("tokenizer.json"), "{e}");

    let e = format!(
        "{:#}",
        Clip::load(tmp.path().join("nope"), &Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(e.contains("nope"), "{e}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid 1×1 PNG whose header claims `w`×`h` (the decoder must refuse before allocating).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type).
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn bad_images_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    std::fs::write(p("text.png"), b"hello, I am not a picture").unwrap();
    let good = std::fs::read(common::fixtures().join("images/rgb_53x37.png")).unwrap();
    std::fs::write(p("trunc.png"), &good[..good.len() / 3]).unwrap();
    std::fs::write(p("empty.jpg"), b"").unwrap();
    std::fs::write(p("huge.png"), png_claiming(10_000, 10_000)).unwrap();
    for (f, want) in [
        ("text.png", "not a recognised"),
        ("trunc.png", "cannot decode"),
        ("empty.jpg", ""),
        ("huge.png", "too large"),
        ("missing.png", ""),
    ] {
        let e = format!(
            "{:#}",
            load_image(p(f))
                .err()
                .unwrap_or_else(|| panic!("{f} decoded"))
        );
        assert!(e.contains(f) && e.contains(want), "{f}: {e}");
    }
    // Small and unusual-but-valid images work: 1×1, gray 16-bit, JPEG gray.
    let mut b = Vec::new();
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(3, 2, image::Luma([40000u16]))
        .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(p("g16.png"), &b).unwrap();
    assert_eq!(load_image(p("g16.png")).unwrap().dimensions(), (3, 2));
    let mut b = Vec::new();
    image::GrayImage::from_pixel(9, 5, image::Luma([77]))
        .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Jpeg)
        .unwrap();
    std::fs::write(p("g.jpg"), &b).unwrap();
    assert_eq!(load_image(p("g.jpg")).unwrap().dimensions(), (9, 5));
}

#[test]
fn empty_text_and_bad_token_inputs_are_errors() {
    let clip = Clip::load(common::fixtures().join("quick"), &Device::Cpu).unwrap();
    let e = clip
        .embed_texts(&["fine", "   "])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("text 1") && e.contains("empty"), "{e}");
    let ids = Tensor::new(&[[146u32, 5000, 147]], &Device::Cpu).unwrap();
    let e = clip.model.text_features(&ids).err().unwrap().to_string();
    assert!(e.contains("5000"), "{e}");
    let px = Tensor::zeros((1, 3, 31, 30), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = clip.model.image_features(&px).err().unwrap().to_string();
    assert!(e.contains("pixel_values"), "{e}");
}
