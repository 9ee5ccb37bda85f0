//! Shared CLI plumbing: logging, number parsers for flags, indicatif progress for library
//! jobs.

use std::sync::Mutex;

use close_core::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Global CLI context passed to every subcommand.
pub struct Ctx {
    pub quiet: bool,
}

impl Ctx {
    /// A progress sink: indicatif bars, or nothing with `--quiet`.
    pub fn progress(&self) -> Box<dyn Progress> {
        if self.quiet {
            Box::new(close_core::progress::NoProgress)
        } else {
            Box::new(Bars::default())
        }
    }
}

/// Resolve a `--clip` / `--t5` argument (local dir, or hub id: cache first, then download).
pub fn resolve(
    spec: &str,
    kind: close_model::hub::ModelKind,
    ctx: &Ctx,
) -> anyhow::Result<std::path::PathBuf> {
    let progress = ctx.progress();
    Ok(close_model::hub::Hub::from_env().resolve(spec, kind, progress.as_ref())?)
}

pub fn init_logging(filter: &str, quiet: bool) {
    let filter = if quiet { "warn" } else { filter };
    let env = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The `--device` flag every computing subcommand takes.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArg {
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    pub spec: close_core::DeviceSpec,
}

impl DeviceArg {
    pub fn open(&self) -> anyhow::Result<candle_core::Device> {
        Ok(self.spec.open()?)
    }
}

/// clap value parser: an integer ≥ 1 (batch sizes, epochs, counts). Use with
/// `allow_negative_numbers = true` so that `-1` reaches it instead of being read as a flag.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{s} is too large")),
        Ok(_) => Err(format!("must be at least 1, got {s}")),
        Err(_) => Err(format!("expected a whole number ≥ 1, got `{s}`")),
    }
}

/// clap value parser: a whole number ≥ 0 (counts where 0 means "off").
pub fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 0 => usize::try_from(n).map_err(|_| format!("{s} is too large")),
        Ok(_) => Err(format!("must be 0 or more, got {s}")),
        Err(_) => Err(format!("expected a whole number ≥ 0, got `{s}`")),
    }
}

/// clap value parser: a finite number ≥ 0 (seconds, noise levels, rates).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(_) => Err(format!("must be a finite number ≥ 0, got {s}")),
        Err(_) => Err(format!("expected a number, got `{s}`")),
    }
}

/// clap value parser: a finite number > 0 (learning rates, timeouts).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    match non_negative(s) {
        Ok(x) if x > 0.0 => Ok(x),
        Ok(_) => Err(format!("must be greater than 0, got {s}")),
        Err(e) => Err(e.replace("≥ 0", "> 0")),
    }
}

/// clap value parser: a number in [0, 1] (fractions).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    match non_negative(s) {
        Ok(x) if x <= 1.0 => Ok(x),
        Ok(_) => Err(format!("must be between 0 and 1, got {s}")),
        Err(e) => Err(e.replace("a finite number ≥ 0", "a number in [0, 1]")),
    }
}

/// indicatif implementation of the library's progress callback.
#[derive(Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        let bar = if total > 0 {
            ProgressBar::new(total)
        } else {
            ProgressBar::new_spinner()
        };
        let style = ProgressStyle::with_template(
            "{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(stage.to_string());
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.take() {
                old.finish_and_clear();
            }
            *b = Some(bar);
        }
    }
    fn inc(&self, n: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(n);
            }
        }
    }
    fn message(&self, msg: &str) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.set_message(msg.to_string());
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}
