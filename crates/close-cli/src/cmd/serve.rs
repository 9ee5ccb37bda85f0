//! `close serve`: serve trained runs over HTTP (axum) with a small web page.

use std::path::PathBuf;
use std::time::Duration;

use close_serve::run::{load_runs, LoadOptions};
use close_serve::{Predictor, ServeConfig};

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories to serve (each is one model; its task picks the endpoint).
    #[arg(long = "run", required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Listening address (loopback by default; use 0.0.0.0:PORT to expose it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// CLIP model dir (default: the one recorded in each run).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Captions for the nearest-caption list: a text embedding cache dir or a text file with
    /// one caption per line (default: each run's recorded text cache).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// A folder of example images offered on the page.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// Largest accepted upload, in MiB.
    #[arg(long, default_value_t = 10.0, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub max_upload_mb: f64,
    /// Seconds allowed to receive a request body, and again to answer it.
    #[arg(long, default_value_t = 30.0, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub timeout: f64,
    /// Prediction requests admitted at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_inflight: usize,
    /// Largest batch handed to a model.
    #[arg(long, default_value_t = 16, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_batch: usize,
    /// Seconds a connection may take to send a request's headers before it is closed.
    #[arg(long, default_value_t = 10.0, value_parser = crate::common::positive_f64, allow_negative_numbers = true)]
    pub header_timeout: f64,
    /// Open connections at once; more wait until one closes.
    #[arg(long, default_value_t = 256, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_connections: usize,
}

pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<()> {
    let cfg = ServeConfig {
        addr: args.addr,
        max_upload_bytes: (args.max_upload_mb * 1024.0 * 1024.0) as usize,
        request_timeout: Duration::from_secs_f64(args.timeout),
        max_inflight: args.max_inflight,
        max_batch: args.max_batch,
        header_timeout: Duration::from_secs_f64(args.header_timeout),
        max_connections: args.max_connections,
        examples_dir: args.examples,
    };
    cfg.validate()?;
    if !args.addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {} — reachable from other machines (there is no authentication)",
            args.addr
        );
    }
    let dev = args.device.open()?;
    let opts = LoadOptions {
        clip: args.clip,
        corpus: args.corpus,
        name: None,
    };
    let predictors: Vec<Box<dyn Predictor>> = load_runs(&args.runs, &opts, &dev)?
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Predictor>)
        .collect();
    for p in &predictors {
        let i = p.info();
        tracing::info!(
            "model `{}`: {} ({} captions for nearest-caption lookup)",
            i.name,
            i.task,
            i.corpus_size
        );
    }
    close_serve::serve_blocking(cfg, predictors)?;
    Ok(())
}
