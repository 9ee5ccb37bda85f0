//! Bounded load test on loopback: many concurrent clients POST multipart images to
//! `/v1/caption` of an in-process server; reports throughput, p50/p99 latency, counts per
//! status, and the process's resident memory before, at peak and after. Fails (exit 1) on
//! any 5xx other than 503 or any transport error.
//!
//! Scenarios (each `--requests` requests from `--clients` clients):
//! 1. `real, round 1..N`: a real tiny CLOSE run (trained here in seconds, see tests/common)
//!    with room for every client (`max_inflight` ≥ clients): batching under load, no 503
//!    expected; `--rounds` (4) rounds against the same server show whether memory levels
//!    off;
//! 2. `overload`: the same model with `max_inflight` = `--overload-inflight`: the excess
//!    gets 503 + Retry-After immediately (clients count it and go on);
//! 3. `server-only`: the model-free `ColorPredictor` (no inference cost): HTTP, multipart
//!    parsing, image decoding and queueing overhead alone.
//!
//! `cargo bench -p close-serve --bench load -- [--clients 200] [--requests 2000]
//! [--overload-inflight 32] [--run DIR]` (`--run` serves an existing run instead of the
//! tiny one; the image is a shapes-world test image either way).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use close_serve::mock::ColorPredictor;
use close_serve::run::{LoadOptions, RunPredictor};
use close_serve::{Predictor, RunningServer, ServeConfig, Task};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Outcome {
    name: String,
    wall: Duration,
    latencies_ms: Vec<f64>,
    statuses: BTreeMap<String, usize>,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    batches: Option<(usize, f64)>,
    inflight: usize,
}

/// A running server and a client with a connection pool for it.
struct Target {
    server: RunningServer,
    client: reqwest::Client,
    url: String,
}

async fn start(
    predictor: Box<dyn Predictor>,
    max_inflight: usize,
    clients: usize,
    body: &[u8],
) -> Target {
    let cfg = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_inflight,
        max_batch: 32,
        ..ServeConfig::default()
    };
    let server = RunningServer::start(cfg, vec![predictor])
        .await
        .expect("start server");
    let url = format!("{}/v1/caption", server.url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Warm up (connections, first inference).
    for _ in 0..3 {
        let form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(body.to_vec()).file_name("x.png"),
        );
        let _ = client.post(&url).multipart(form).send().await;
    }
    Target {
        server,
        client,
        url,
    }
}

/// `requests` requests from `clients` concurrent clients against `t`.
async fn round(
    name: &str,
    t: &Target,
    clients: usize,
    requests: usize,
    body: Arc<Vec<u8>>,
) -> Outcome {
    let rss_before = rss_kib("VmRSS:");
    let next = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(rss_before as usize));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib("VmRSS:") as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, next, body) =
            (t.client.clone(), t.url.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(String, f64)> = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let part = reqwest::multipart::Part::bytes(body.to_vec())
                    .file_name("x.png")
                    .mime_str("image/png")
                    .unwrap();
                let form = reqwest::multipart::Form::new().part("image", part);
                let t = Instant::now();
                let status = match client.post(&url).multipart(form).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let retry = r.headers().contains_key("retry-after");
                        let _ = r.bytes().await;
                        if s == 503 && !retry {
                            "503 without Retry-After".to_string()
                        } else {
                            s.to_string()
                        }
                    }
                    Err(e) => format!("transport error: {e}"),
                };
                out.push((status, t.elapsed().as_secs_f64() * 1e3));
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for (s, ms) in t.await.unwrap() {
            if s == "200" {
                latencies.push(ms);
            }
            *statuses.entry(s).or_default() += 1;
        }
    }
    let wall = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    Outcome {
        name: name.into(),
        wall,
        latencies_ms: latencies,
        statuses,
        rss_before,
        rss_peak: peak.load(Ordering::Relaxed) as u64,
        rss_after: rss_kib("VmRSS:"),
        batches: None,
        inflight: 0,
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

close_core::global_allocator!();

fn main() {
    close_core::threads::init();
    close_core::alloc::init();
    println!("{}", close_core::bench::CpuInfo::detect());
    let args: Vec<String> = std::env::args().collect();
    // A smoke run (`CLOSE_BENCH_SMOKE=1`) keeps every scenario but few requests.
    let smoke = close_core::bench::smoke();
    let clients: usize = arg(&args, "--clients", if smoke { 8 } else { 200 });
    let requests: usize = arg(&args, "--requests", if smoke { 40 } else { 2000 });
    let overload_inflight: usize = arg(&args, "--overload-inflight", if smoke { 2 } else { 32 });
    let rounds: usize = arg(&args, "--rounds", if smoke { 1 } else { 4 });
    let run_dir: Option<String> = args
        .iter()
        .position(|a| a == "--run")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    eprintln!("preparing a tiny trained run …");
    let setup = common::tiny_setup(tmp.path());
    let run = run_dir
        .map(std::path::PathBuf::from)
        .unwrap_or(setup.run.clone());
    let body = Arc::new(std::fs::read(&setup.test_images[0]).unwrap());
    let load = || -> Box<dyn Predictor> {
        Box::new(RunPredictor::load(&run, &LoadOptions::default(), &Device::Cpu).expect("load run"))
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "{clients} clients, {requests} requests per scenario, {cores} cores, image {} bytes",
        body.len()
    );

    let mut outs = Vec::new();
    let wide = clients.max(1) + 8;
    rt.block_on(async {
        // One long-running server, several rounds: memory must level off, not keep growing.
        let t = start(load(), wide, clients, &body).await;
        for r in 1..=rounds {
            let mut o = round(
                &format!("real, round {r}"),
                &t,
                clients,
                requests,
                body.clone(),
            )
            .await;
            o.inflight = wide;
            outs.push(o);
        }
        drop(t.client);
        t.server.shutdown().await.unwrap();

        let t = start(load(), overload_inflight, clients, &body).await;
        let mut o = round("overload", &t, clients, requests, body.clone()).await;
        o.inflight = overload_inflight;
        outs.push(o);
        drop(t.client);
        t.server.shutdown().await.unwrap();

        let mock = ColorPredictor::new("colors", Task::Caption);
        let sizes = mock.batch_sizes.clone();
        let t = start(Box::new(mock), wide, clients, &body).await;
        let mut o = round("server-only", &t, clients, requests, body.clone()).await;
        o.inflight = wide;
        let s = sizes.lock().unwrap().clone();
        o.batches = Some((
            s.len(),
            s.iter().sum::<usize>() as f64 / s.len().max(1) as f64,
        ));
        outs.push(o);
        drop(t.client);
        t.server.shutdown().await.unwrap();
    });

    println!("| scenario | max in flight | wall s | ok/s | p50 ms | p99 ms | statuses | RSS before → peak → after (MiB) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for o in &outs {
        let inflight = if o.name == "overload" {
            overload_inflight
        } else {
            clients + 8
        };
        let ok = o.latencies_ms.len();
        let st: Vec<String> = o
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {:.0} → {:.0} → {:.0} |",
            o.name,
            inflight,
            o.wall.as_secs_f64(),
            ok as f64 / o.wall.as_secs_f64(),
            pct(&o.latencies_ms, 0.5),
            pct(&o.latencies_ms, 0.99),
            st.join(", "),
            o.rss_before as f64 / 1024.0,
            o.rss_peak as f64 / 1024.0,
            o.rss_after as f64 / 1024.0
        );
        for k in o.statuses.keys() {
            if k != "200" && k != "503" {
                eprintln!("FAIL: {}: unexpected outcome {k}", o.name);
                failed = true;
            }
        }
        if let Some((n, mean)) = o.batches {
            eprintln!("{}: {n} model batches, mean size {mean:.1}", o.name);
        }
    }
    if failed {
        std::process::exit(1);
    }
}
