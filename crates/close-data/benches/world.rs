//! Throughput of the shapes-world generator (render + PNG + all annotation files), then of
//! loading the generated train split's VQA v2 questions + annotations and Karpathy json.
//! `cargo bench -p close-data --bench world` (images: env `CLOSE_BENCH_IMAGES`, default 10000;
//! 50 with `CLOSE_BENCH_SMOKE=1`).

use close_core::progress::NoProgress;
use close_data::load::LoadOptions;
use close_data::world::{generate, WorldConfig, WorldPaths};

close_core::global_allocator!();

fn main() {
    close_core::threads::init();
    close_core::alloc::init();
    println!("{}", close_core::bench::CpuInfo::detect());
    let images: usize = std::env::var("CLOSE_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if close_core::bench::smoke() {
            50
        } else {
            10_000
        });
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a temp dir: {e}");
            std::process::exit(1);
        }
    };
    for size in [64u32, 128] {
        let cfg = WorldConfig {
            images,
            size,
            ..WorldConfig::default()
        };
        let t = std::time::Instant::now();
        match generate(&cfg, dir.path().join(format!("w{size}")), &NoProgress) {
            Ok(_) => {
                let s = t.elapsed().as_secs_f64();
                println!(
                    "world {images} images {size}px: {s:.2}s ({:.0} images/s, {} rayon threads)",
                    images as f64 / s,
                    rayon::current_num_threads()
                );
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    let wp = WorldPaths::new(dir.path().join("w64"));
    let t = std::time::Instant::now();
    let loaded = close_data::vqa::load_vqa(
        wp.vqa_questions("train"),
        Some(&wp.vqa_annotations("train")),
        &LoadOptions::default(),
    )
    .and_then(|(qs, _)| {
        close_data::coco::Karpathy::load(wp.karpathy()).map(|k| (qs.len(), k.images.len()))
    });
    match loaded {
        Ok((q, k)) => {
            let s = t.elapsed().as_secs_f64();
            println!(
                "load {q} VQA questions+annotations and {k} Karpathy images: {s:.2}s ({:.0} questions/s)",
                q as f64 / s
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
