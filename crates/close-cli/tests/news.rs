//! Visual News as users have it: its images are files of their own that the Karpathy file
//! does not list, under another root, and its ids are not image ids. `close experiment` and
//! `close embed --news` must embed those images and score every item.

#[path = "../../close-serve/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use close_clip::cache::EmbeddingCache;
use close_data::news::NewsItem;
use close_experiment::ExperimentConfig;
use close_model::config::TrainConfig;
use close_model::task::{news_image_key, Task};

fn close() -> Command {
    Command::new(env!("CARGO_BIN_EXE_close"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// An item as moved, its split, and the world image it was copied from (relative path).
struct Moved {
    item: NewsItem,
    split: &'static str,
    from: String,
}

/// Move the world's Visual News files into `vn/`, with each image copied and renamed after
/// its item, and the articles copied alongside.
fn move_news(world: &Path, vn: &Path) -> Vec<Moved> {
    let mut copied = Vec::new();
    for split in ["train", "val", "test"] {
        let name = format!("visual_news_{split}.json");
        let items: Vec<NewsItem> =
            serde_json::from_slice(&std::fs::read(world.join(&name)).unwrap()).unwrap();
        let mut moved = Vec::new();
        for mut it in items {
            let from = it.image_path.trim_start_matches("./").to_string();
            it.image_path = format!("./pictures/{}.png", it.id.0);
            let article = it.article_path.trim_start_matches("./").to_string();
            for (src, dst) in [(&from, &it.image_path), (&article, &it.article_path)] {
                let dst = vn.join(dst.trim_start_matches("./"));
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(world.join(src), dst).unwrap();
            }
            copied.push(Moved {
                item: it.clone(),
                split,
                from,
            });
            moved.push(it);
        }
        std::fs::write(vn.join(name), serde_json::to_vec(&moved).unwrap()).unwrap();
        std::fs::remove_file(world.join(format!("visual_news_{split}.json"))).unwrap();
    }
    copied
}

fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<Moved>) {
    let world = root.join("world");
    let wcfg = close_data::world::WorldConfig {
        images: 40,
        val_fraction: 0.2,
        test_fraction: 0.2,
        ..Default::default()
    };
    close_data::world::generate(&wcfg, &world, &close_core::progress::NoProgress).unwrap();
    let vn = root.join("vn");
    let copied = move_news(&world, &vn);
    let texts: Vec<String> = copied.iter().map(|m| m.item.caption.clone()).collect();
    let clip = common::tiny_clip(&root.join("clip"), &texts);
    (world, vn, clip, copied)
}

#[test]
fn news_images_outside_the_karpathy_file_are_embedded_and_every_item_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (world, vn, clip, copied) = setup(dir.path());
    let mut cfg = ExperimentConfig::new(TrainConfig::small(Task::News).t5, &[Task::News], true, 0);
    cfg.tasks.get_mut(&Task::News).unwrap().max_val_examples = Some(4);
    cfg.beams = 2;
    let cfg_path = dir.path().join("experiment-config.json");
    close_core::io::write_json_atomic(&cfg_path, &cfg).unwrap();
    let out = dir.path().join("out");
    let mut cmd = close();
    cmd.args(["experiment", "-q", "--tasks", "news", "--data"])
        .arg(&world)
        .arg("--clip")
        .arg(&clip)
        .arg("--config")
        .arg(&cfg_path)
        .arg("--out")
        .arg(&out);
    for split in ["train", "val", "test"] {
        let file = vn.join(format!("visual_news_{split}.json"));
        cmd.arg("--file")
            .arg(format!("news.{split}={}", file.display()));
    }
    cmd.arg("--file").arg(format!("news_root={}", vn.display()));
    run(&mut cmd);

    // Each item's image is embedded under its own key, as the image it was copied from.
    let images = EmbeddingCache::open(out.join("cache/images")).unwrap();
    let karpathy = close_data::coco::Karpathy::load(world.join("dataset_coco.json")).unwrap();
    for m in &copied {
        let im = karpathy
            .images
            .iter()
            .find(|im| im.rel_path() == Path::new(&m.from))
            .unwrap();
        let own = images.get(&news_image_key(&m.item.id.0)).unwrap();
        assert_eq!(own, images.get(&im.image_id().to_string()).unwrap());
    }
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(!report.to_lowercase().contains("dropped"), "{report}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    assert!(runs.iter().any(|r| r["train_on"] == "images"), "{results}");
    assert!(runs.iter().all(|r| r["task"] == "news"), "{results}");

    // `close embed --news` gives the same keys and vectors.
    let cache = dir.path().join("embed");
    let mut cmd = close();
    cmd.args(["embed", "-q", "--what", "images", "--clip"])
        .arg(&clip)
        .arg("--data")
        .arg(world.join("dataset_coco.json"))
        .arg("--images")
        .arg(&world)
        .arg("--out")
        .arg(&cache);
    for split in ["train", "test"] {
        cmd.arg("--news")
            .arg(vn.join(format!("visual_news_{split}.json")));
    }
    run(&mut cmd);
    let embedded = EmbeddingCache::open(cache.join("images")).unwrap();
    let news_keys = embedded.keys().filter(|k| k.starts_with("news:")).count();
    let given: Vec<&Moved> = copied.iter().filter(|m| m.split != "val").collect();
    assert_eq!(news_keys, given.len());
    for m in given {
        let key = news_image_key(&m.item.id.0);
        // Another batch size than the experiment's: the same vector up to rounding.
        let (a, b) = (embedded.get(&key).unwrap(), images.get(&key).unwrap());
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5), "{key}");
    }
}
