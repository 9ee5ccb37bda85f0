//! Shared CLI plumbing: logging, device parsing, indicatif progress for library jobs.

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

/// Parse `--device`: `cpu`, `cuda`, `cuda:N`.
pub fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => Ok(candle_core::Device::new_cuda(0)?),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..]
                .parse()
                .map_err(|_| anyhow::anyhow!("--device {s}: expected cuda:N"))?;
            Ok(candle_core::Device::new_cuda(n)?)
        }
        s => anyhow::bail!("--device {s}: expected cpu, cuda or cuda:N"),
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
