//! Draws the log-log chart of `docs/scale.md` from the table `scripts/scale-run.sh` writes:
//! per stage, log10 of the wall time against log10 of the image count. A line of slope 1 is
//! linear growth; steeper is worse than linear.
//!
//! Run: `cargo run --release -p close-core --example scale_plot -- scale/scale.md docs/scale.png`

use std::collections::BTreeMap;
use std::path::Path;

use close_core::plot::{line_chart, Series};

/// `(images, stage, wall seconds)` of every data row of the markdown table.
fn rows(table: &str) -> Vec<(f64, String, f64)> {
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | images | stage | items | wall s | ms per item | peak RSS MiB |
            let images = cells.get(1)?.parse().ok()?;
            let secs = cells.get(4)?.parse().ok()?;
            Some((images, cells.get(2)?.to_string(), secs))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [table, png] = args.as_slice() else {
        anyhow::bail!("usage: scale_plot TABLE.md OUT.png");
    };
    let text = std::fs::read_to_string(table)?;
    let mut by_stage: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (images, stage, secs) in rows(&text) {
        by_stage
            .entry(stage)
            .or_default()
            .push((images.log10(), secs.max(1e-3).log10()));
    }
    if by_stage.is_empty() {
        anyhow::bail!("{table}: no table rows");
    }
    let series: Vec<Series> = by_stage
        .into_iter()
        .map(|(stage, points)| Series::new(stage, points))
        .collect();
    line_chart(
        Path::new(png),
        "cost against data size (log-log; slope 1 = linear)",
        "log10 images",
        "log10 wall seconds",
        &series,
    )?;
    println!("wrote {png}");
    Ok(())
}
