//! Throughput of the shapes-world generator (render + PNG + all annotation files).
//! `cargo bench -p close-data --bench world` (images: env `CLOSE_BENCH_IMAGES`, default 10000).

use close_core::progress::NoProgress;
use close_data::world::{generate, WorldConfig};

fn main() {
    let images: usize = std::env::var("CLOSE_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
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
}
