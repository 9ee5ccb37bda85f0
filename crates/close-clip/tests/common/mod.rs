//! Shared test helpers: fixture paths and a tiny synthetic image–caption dataset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// Copy a fixture model dir into `dst`.
pub fn copy_model(name: &str, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 40, 220]),
    ("yellow", [230, 220, 30]),
    ("purple", [150, 40, 180]),
    ("gray", [128, 128, 128]),
];

/// `n` images (32 px) of one colored square on white at a random place, captioned with its
/// color and side ("a red square on the left"), as a Karpathy json in `root`. Every
/// fourth image is in `test`.
pub fn synthetic_world(root: &Path, n: usize, seed: u64) -> PathBuf {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut images = Vec::new();
    for i in 0..n {
        let (cname, rgb) = COLORS[next() % COLORS.len()];
        let left = next() % 2 == 0;
        let mut img = image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        let x0 = if left { next() % 4 } else { 16 + next() % 4 };
        let y0 = next() % 16;
        for y in y0..y0 + 12 {
            for x in x0..x0 + 12 {
                img.put_pixel(x as u32, y as u32, image::Rgb(rgb));
            }
        }
        let file = format!("{i:04}.png");
        img.save(root.join("images").join(&file)).unwrap();
        let side = if left { "left" } else { "right" };
        images.push(serde_json::json!({
            "split": if i % 4 == 0 { "test" } else { "train" },
            "filepath": "images", "filename": file, "imgid": i, "cocoid": 1000 + i,
            "sentences": [{"raw": format!("a {cname} square on the {side}")}, {"raw": format!("{cname} box, {side} side")}],
        }));
    }
    let p = root.join("dataset_coco.json");
    std::fs::write(
        &p,
        serde_json::to_string(&serde_json::json!({"dataset": "synthetic", "images": images}))
            .unwrap(),
    )
    .unwrap();
    p
}
