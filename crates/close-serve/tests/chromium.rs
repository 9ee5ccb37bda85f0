//! The web page in headless Chromium, end to end: the page's JS lists the models, fetches a
//! shapes-world test image, uploads it as multipart to the server (exactly as a drop or a
//! file pick does), and renders the answer, the beams and the nearest captions; we read the
//! caption off the dumped DOM and compare it with the library's own prediction.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`; `.ci/run` installs it). Without it the
//! test prints a message and passes vacuously, so that a developer machine without a
//! browser still runs the rest of the suite. Set `CLOSE_SCREENSHOT=path.png` to also save a
//! screenshot of the page (used for docs/serve.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use close_serve::mock::ColorPredictor;
use close_serve::run::{LoadOptions, RunPredictor};
use close_serve::{Predictor, Query, RunningServer, ServeConfig, Task};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Run headless Chromium with the hardening flags the project uses; `extra` selects the
/// output (`--dump-dom` or `--screenshot=...`). Killed after 90 s.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=30000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.path().display()));
    cmd.args(extra).arg(url);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start chromium");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "chromium {extra:?} took {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Text content of the element with `id` in a dumped DOM (no nested tags expected).
fn element_text(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(html_unescape(&dom[open_end..close]))
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn body_state(dom: &str) -> Option<String> {
    let i = dom.find("<body")?;
    let j = i + dom[i..].find("data-state=\"")? + "data-state=\"".len();
    let k = j + dom[j..].find('"')?;
    Some(dom[j..k].to_string())
}

fn page(server: &RunningServer, query: &str) -> String {
    format!("{}/?{query}", server.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_captions_an_uploaded_image_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} not found (install Debian's `chromium`; CI does) — the browser end-to-end test did not run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let setup = tokio::task::spawn_blocking({
        let root = tmp.path().to_path_buf();
        move || common::tiny_setup(&root)
    })
    .await
    .unwrap();
    let examples: PathBuf = setup.world.join("images/test");
    let image = setup.test_images[0].clone();
    let name = image.file_name().unwrap().to_string_lossy().into_owned();

    // What the page must show: the library's predictions for this image.
    let real = RunPredictor::load(&setup.run, &LoadOptions::default(), &Device::Cpu).unwrap();
    let defaults = real.info().defaults;
    let rgb = close_clip::load_image(&image).unwrap();
    let expected_real = real
        .predict_images(std::slice::from_ref(&rgb), None, &defaults)
        .unwrap()
        .remove(0);
    let mut colors = ColorPredictor::new("colors", Task::Caption);
    let cdef = colors.info().defaults;
    let expected_color = colors
        .predict(
            &[Query {
                image: rgb.clone(),
                text: None,
            }],
            &cdef,
        )
        .unwrap()
        .remove(0);

    let cfg = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        examples_dir: Some(examples),
        ..ServeConfig::default()
    };
    let server = RunningServer::start(cfg, vec![Box::new(real), Box::new(colors)])
        .await
        .unwrap();

    for (model, expected) in [("run", &expected_real), ("colors", &expected_color)] {
        let url = page(
            &server,
            &format!("task=caption&model={model}&example={name}"),
        );
        let dom = tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
            .await
            .unwrap();
        let state = body_state(&dom);
        assert_eq!(
            state.as_deref(),
            Some("done"),
            "page did not finish (error: {:?})\n{dom}",
            element_text(&dom, "error")
        );
        assert_eq!(
            element_text(&dom, "answer").as_deref(),
            Some(expected.answer()),
            "{model}"
        );
        // Every beam and every nearest caption is on the page.
        for b in &expected.beams {
            assert!(
                dom.contains(&format!("<td>{}</td>", b.text)),
                "beam {:?} missing from {}",
                b.text,
                &dom[dom.find("id=\"beam-rows\"").unwrap_or(0)..]
            );
            assert!(
                dom.contains(&format!("{:.3}", b.logprob)),
                "log-prob of {:?} missing",
                b.text
            );
        }
        for n in &expected.neighbors {
            assert!(
                dom.contains(&format!("<td>{}</td>", n.caption)),
                "neighbour {:?} missing",
                n.caption
            );
        }
        assert!(element_text(&dom, "meta").unwrap().starts_with(model));
    }

    // A VQA task with no VQA model is not offered; an error from the server is shown.
    let url = page(&server, "task=caption&model=colors&example=missing.png");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert_eq!(body_state(&dom).as_deref(), Some("error"));
    assert!(
        element_text(&dom, "error").unwrap().contains("404"),
        "{dom}"
    );

    if let Ok(shot) = std::env::var("CLOSE_SCREENSHOT") {
        let url = page(&server, &format!("task=caption&model=run&example={name}"));
        let arg = format!("--screenshot={shot}");
        tokio::task::spawn_blocking(move || {
            chromium(&url, &[&arg, "--window-size=1100,720", "--hide-scrollbars"])
        })
        .await
        .unwrap();
        eprintln!("screenshot written to {shot}");
    }
    server.shutdown().await.unwrap();
}
