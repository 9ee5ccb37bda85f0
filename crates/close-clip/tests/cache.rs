//! The embedding cache: built once, reused, only missing / changed keys recomputed, bad
//! items skipped and listed.

mod common;

use std::path::PathBuf;

use candle_core::Device;
use close_clip::cache::{embed_images, embed_texts, CacheKind};
use close_clip::{Clip, EmbeddingCache};
use close_core::progress::NoProgress;

#[test]
fn image_cache_is_incremental_and_matches_direct_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = Clip::load(common::fixtures().join("quick"), &Device::Cpu).unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let names = ["rgb_53x37.png", "gray_24x31.png", "rgba_64x64.png"];
    for n in names {
        std::fs::copy(common::fixtures().join("images").join(n), imgs.join(n)).unwrap();
    }
    std::fs::write(imgs.join("bad.png"), b"nope").unwrap();
    let mut items: Vec<(String, PathBuf)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), imgs.join(n)))
        .collect();
    items.push(("99".into(), imgs.join("bad.png")));
    let dir = tmp.path().join("cache");

    let r = embed_images(&clip, &items, &dir, 2, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused, r.total, r.bad.len()), (3, 0, 3, 1));
    assert!(r.bad[0].input.contains("bad.png") && r.bad[0].key == "99");

    let c = EmbeddingCache::open(&dir).unwrap();
    assert_eq!((c.len(), c.dim(), c.kind()), (3, 20, CacheKind::Image));
    assert_eq!(c.model_hash(), clip.model_hash().unwrap());
    let direct = clip
        .embed_image_files(&[imgs.join(names[1])])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let cached = c.get("1").unwrap();
    let norm: f32 = cached.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(direct[0]
        .iter()
        .zip(cached)
        .all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(c.get("99").is_none());
    let keys: Vec<&str> = c.keys().collect();
    assert_eq!(keys, vec!["0", "1", "2"]);

    // Second run: everything reused, nothing written.
    let r = embed_images(&clip, &items[..3], &dir, 2, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused), (0, 3));

    // One new key and one changed file: only those are computed.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(
        common::fixtures().join("images/palette_45x90.png"),
        imgs.join(names[0]),
    )
    .unwrap();
    items.truncate(3);
    items.push(("7".into(), common::fixtures().join("images/one_pixel.png")));
    let r = embed_images(&clip, &items, &dir, 8, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused, r.total), (2, 2, 4));
    let c = EmbeddingCache::open(&dir).unwrap();
    let now = clip
        .embed_image_files(&[imgs.join(names[0])])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(
        now[0]
            .iter()
            .zip(c.get("0").unwrap())
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "changed file re-embedded"
    );

    // Another model: the cache is rebuilt, not mixed.
    let other = Clip::load(common::fixtures().join("gelu"), &Device::Cpu).unwrap();
    let r = embed_images(&other, &items, &dir, 8, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused, r.total), (4, 0, 4));
    assert_eq!(
        EmbeddingCache::open(&dir).unwrap().model_hash(),
        other.model_hash().unwrap()
    );
}

#[test]
fn text_cache_keys_by_text_and_skips_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = Clip::load(common::fixtures().join("gelu"), &Device::Cpu).unwrap();
    let texts = ["a photo of a cat", "x", "", "a photo of a cat"];
    let items: Vec<(String, String)> = texts
        .iter()
        .map(|t| (t.to_string(), t.to_string()))
        .collect();
    let dir = tmp.path().join("t");
    let r = embed_texts(&clip, &items, &dir, 2, &NoProgress).unwrap();
    assert_eq!(
        (r.requested, r.computed, r.bad.len(), r.total),
        (3, 2, 1, 2)
    );
    let c = EmbeddingCache::open(&dir).unwrap();
    let direct = clip.embed_texts(&["x"]).unwrap().to_vec2::<f32>().unwrap();
    assert!(direct[0]
        .iter()
        .zip(c.get("x").unwrap())
        .all(|(a, b)| (a - b).abs() < 1e-6));
    let r = embed_texts(&clip, &items, &dir, 2, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused), (0, 2));
    // A corrupt index is reported with its path.
    std::fs::write(dir.join("index.json"), "{").unwrap();
    let e = EmbeddingCache::open(&dir).unwrap_err().to_string();
    assert!(e.contains("index.json"), "{e}");
}

/// The vectors of `keys` in the cache at `dir`.
fn vectors(dir: &std::path::Path, keys: &[String]) -> Vec<Vec<f32>> {
    let c = EmbeddingCache::open(dir).unwrap();
    keys.iter().map(|k| c.get(k).unwrap().to_vec()).collect()
}

#[test]
fn a_texts_vector_does_not_depend_on_what_else_was_embedded() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = Clip::load(common::fixtures().join("gelu"), &Device::Cpu).unwrap();
    let texts: Vec<String> = (0..40)
        .map(|i| {
            let words = [
                "a", "red", "cat", "on", "the", "big", "mat", "near", "blue", "dog",
            ];
            (0..1 + i % 7)
                .map(|j| words[(i * 3 + j * 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
                + &format!(" {i}")
        })
        .collect();
    let items: Vec<(String, String)> = texts.iter().map(|t| (t.clone(), t.clone())).collect();
    // At once, in batches of 64.
    let once = tmp.path().join("once");
    embed_texts(&clip, &items, &once, 64, &NoProgress).unwrap();
    // In three passes of different sets and batch sizes, the last in reverse order.
    let passes = tmp.path().join("passes");
    embed_texts(&clip, &items[10..25], &passes, 4, &NoProgress).unwrap();
    embed_texts(&clip, &items[..12], &passes, 7, &NoProgress).unwrap();
    let rev: Vec<(String, String)> = items.iter().rev().cloned().collect();
    let r = embed_texts(&clip, &rev, &passes, 3, &NoProgress).unwrap();
    assert_eq!((r.computed, r.reused), (15, 25));
    assert_eq!(vectors(&once, &texts), vectors(&passes, &texts));
    // One text alone, outside any cache, gives the same bits.
    let alone = clip.embed_texts_exact(&texts[17..18]).unwrap();
    assert_eq!(
        alone.to_vec2::<f32>().unwrap()[0],
        vectors(&once, &texts)[17]
    );
}

#[test]
fn an_images_vector_does_not_depend_on_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = Clip::load(common::fixtures().join("quick"), &Device::Cpu).unwrap();
    let dir = common::fixtures().join("images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    files.sort();
    let items: Vec<(String, PathBuf)> = files
        .iter()
        .enumerate()
        .map(|(i, p)| (i.to_string(), p.clone()))
        .collect();
    let keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
    let once = tmp.path().join("once");
    embed_images(&clip, &items, &once, 64, &NoProgress).unwrap();
    let passes = tmp.path().join("passes");
    embed_images(&clip, &items[1..3], &passes, 1, &NoProgress).unwrap();
    embed_images(&clip, &items, &passes, 3, &NoProgress).unwrap();
    assert_eq!(vectors(&once, &keys), vectors(&passes, &keys));
}
