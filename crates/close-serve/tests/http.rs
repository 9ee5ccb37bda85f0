//! HTTP integration tests against a running server on an ephemeral loopback port, with the
//! model-free `ColorPredictor` (so every answer is checkable: a red upload must come back
//! "a red image"). The real-model end-to-end test is in `tests/real_model.rs`.

use std::time::Duration;

use base64::Engine;
use close_serve::mock::ColorPredictor;
use close_serve::{Predictor, RunningServer, ServeConfig, Task};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

fn png(rgb: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn cfg() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_upload_bytes: 64 * 1024,
        ..ServeConfig::default()
    }
}

fn three_models() -> Vec<Box<dyn Predictor>> {
    vec![
        Box::new(ColorPredictor::new("cap", Task::Caption)),
        Box::new(ColorPredictor::new("vqa", Task::Vqa)),
        Box::new(ColorPredictor::new("ve", Task::Entail)),
    ]
}

async fn start() -> RunningServer {
    RunningServer::start(cfg(), three_models()).await.unwrap()
}

fn image_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes)
        .file_name("x.png")
        .mime_str("image/png")
        .unwrap()
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "status {status}: content-type {ct}"
    );
    (status, r.json().await.unwrap())
}

/// A 4xx JSON error with the given status and code.
async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> String {
    let (s, v) = json_of(r).await;
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status);
    v["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn health_models_and_page() {
    let srv = start().await;
    let c = reqwest::Client::new();
    let (s, v) = json_of(
        c.get(format!("{}/healthz", srv.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["models"], 3);
    let (_, v) = json_of(
        c.get(format!("{}/v1/models", srv.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cap", "vqa", "ve"]);
    assert_eq!(v["models"][1]["task"], "vqa");
    let page = c.get(srv.url()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"answer\"") && html.contains("/v1/models"));
    expect_error(
        c.get(format!("{}/nope", srv.url())).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.get(format!("{}/v1/caption", srv.url()))
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn multipart_and_json_uploads_are_answered() {
    let srv = start().await;
    let c = reqwest::Client::new();
    // Multipart caption of a red image.
    let form = Form::new()
        .part("image", image_part(png([230, 30, 30], 20, 16)))
        .text("beams", "3")
        .text("neighbors", "2");
    let (s, v) = json_of(
        c.post(format!("{}/v1/caption", srv.url()))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["answer"], "a red image");
    assert_eq!(v["model"], "cap");
    assert_eq!(v["beams"].as_array().unwrap().len(), 3);
    let lps: Vec<f64> = v["beams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["logprob"].as_f64().unwrap())
        .collect();
    assert!(
        lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0,
        "{lps:?}"
    );
    assert_eq!(v["logprob"].as_f64().unwrap(), lps[0]);
    assert_eq!(v["neighbors"].as_array().unwrap().len(), 2);
    assert_eq!(v["neighbors"][0]["caption"], "a red shape");

    // JSON with base64 (plain and as a data URL), VQA.
    let b64 = base64::engine::general_purpose::STANDARD.encode(png([30, 60, 230], 8, 8));
    let body = serde_json::json!({"image": b64, "question": "What colour is it?"});
    let (s, v) = json_of(
        c.post(format!("{}/v1/vqa", srv.url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["answer"], "blue");
    assert_eq!(v["text"], "What colour is it?");
    let body = serde_json::json!({"image": format!("data:image/png;base64,{b64}"), "hypothesis": "a red thing", "model": "ve"});
    let (s, v) = json_of(
        c.post(format!("{}/v1/entail", srv.url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["answer"], "contradiction");

    // Multipart entailment with the hypothesis as a text part.
    let form = Form::new()
        .part("image", image_part(png([40, 180, 60], 8, 8)))
        .text("hypothesis", "It is green.");
    let (s, v) = json_of(
        c.post(format!("{}/v1/entail", srv.url()))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["answer"], "entailment");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_json_4xx() {
    let srv = start().await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", srv.url());

    // Not an image, a truncated PNG, an empty file.
    let form = Form::new().part("image", image_part(b"this is not an image".to_vec()));
    let m = expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_image",
    )
    .await;
    assert!(m.contains("not a recognised image"), "{m}");
    let p = png([1, 2, 3], 32, 32);
    let form = Form::new().part("image", image_part(p[..p.len() / 2].to_vec()));
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_image",
    )
    .await;
    let form = Form::new().part("image", image_part(Vec::new()));
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_image",
    )
    .await;

    // Missing fields.
    let form = Form::new().text("beams", "2");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "missing_field",
    )
    .await;
    let form = Form::new().part("image", image_part(png([9, 9, 9], 4, 4)));
    let m = expect_error(
        c.post(url("/v1/vqa")).multipart(form).send().await.unwrap(),
        400,
        "missing_field",
    )
    .await;
    assert!(m.contains("question"), "{m}");
    let r = c
        .post(url("/v1/entail"))
        .json(&serde_json::json!({"hypothesis": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "missing_field").await;

    // Wrong or unknown fields, bad values.
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("question", "why?");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "unknown_field",
    )
    .await;
    let form = Form::new().part("picture", image_part(png([9, 9, 9], 4, 4)));
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "unknown_field",
    )
    .await;
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("beams", "many");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_field",
    )
    .await;
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("beams", "0");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_field",
    )
    .await;
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("max_tokens", "100000");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "bad_field",
    )
    .await;
    let r = c
        .post(url("/v1/caption"))
        .json(&serde_json::json!({"image": "!!!"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_base64").await;
    let r = c
        .post(url("/v1/caption"))
        .header("content-type", "application/json")
        .body("{\"image\": ")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_json").await;
    let r = c
        .post(url("/v1/caption"))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("garbage")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_multipart").await;

    // Models: unknown, or of another task.
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("model", "nope");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        404,
        "unknown_model",
    )
    .await;
    let form = Form::new()
        .part("image", image_part(png([9, 9, 9], 4, 4)))
        .text("model", "vqa");
    expect_error(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "wrong_task",
    )
    .await;

    // Wrong content types.
    let r = c
        .post(url("/v1/caption"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    let r = c
        .post(url("/v1/caption"))
        .body(png([1, 1, 1], 4, 4))
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;

    // The server is still healthy and answering.
    let form = Form::new().part("image", image_part(png([245, 245, 245], 4, 4)));
    let (s, v) = json_of(
        c.post(url("/v1/caption"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["answer"].as_str().unwrap()), (200, "a white image"));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_uploads_get_413() {
    let srv = start().await;
    let c = reqwest::Client::new();
    // Noise does not compress: a 200x200 noisy PNG is > 64 KiB.
    let mut img = image::RgbImage::new(200, 200);
    let mut x: u32 = 12345;
    for p in img.pixels_mut() {
        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
        *p = image::Rgb([(x >> 24) as u8, (x >> 16) as u8, (x >> 8) as u8]);
    }
    let mut big = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    assert!(big.len() > 64 * 1024);
    // With Content-Length (rejected before reading).
    let form = Form::new().part("image", image_part(big.clone()));
    let m = expect_error(
        c.post(format!("{}/v1/caption", srv.url()))
            .multipart(form)
            .send()
            .await
            .unwrap(),
        413,
        "too_large",
    )
    .await;
    assert!(m.contains("65536"), "{m}");
    // Chunked, without Content-Length (rejected while reading).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = c
        .post(format!("{}/v1/caption", srv.url()))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "too_large").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
    let r = c
        .post(format!("{}/v1/caption", srv.url()))
        .json(&serde_json::json!({"image": b64}))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "too_large").await;
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn overload_gives_503_with_retry_after_and_requests_are_batched() {
    let slow = ColorPredictor::new("cap", Task::Caption)
        .with_cost(Duration::from_millis(300), Duration::ZERO);
    let sizes = slow.batch_sizes.clone();
    let cfg = ServeConfig {
        max_inflight: 4,
        ..cfg()
    };
    let srv = RunningServer::start(cfg, vec![Box::new(slow)])
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let c = c.clone();
        let url = format!("{}/v1/caption", srv.url());
        tasks.push(tokio::spawn(async move {
            let form = Form::new().part("image", image_part(png([200, 10 + i, 10], 8, 8)));
            let r = c.post(url).multipart(form).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let (s, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
            (s, retry, v)
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (s, retry, v) = t.await.unwrap();
        match s {
            200 => {
                ok += 1;
                assert_eq!(v["answer"], "a red image");
            }
            503 => {
                busy += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(v["error"]["code"], "busy");
            }
            s => panic!("unexpected status {s}: {v}"),
        }
    }
    assert!(ok >= 4 && busy >= 1, "ok {ok}, busy {busy}");
    // Concurrent requests were answered in fewer batches than requests.
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), ok);
    assert!(sizes.iter().any(|&s| s > 1), "no batching: {sizes:?}");
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_model_times_out_with_503() {
    let slow = ColorPredictor::new("cap", Task::Caption)
        .with_cost(Duration::from_millis(1500), Duration::ZERO);
    let cfg = ServeConfig {
        request_timeout: Duration::from_millis(300),
        ..cfg()
    };
    let srv = RunningServer::start(cfg, vec![Box::new(slow)])
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let form = Form::new().part("image", image_part(png([9, 9, 9], 4, 4)));
    let t0 = std::time::Instant::now();
    let r = c
        .post(format!("{}/v1/caption", srv.url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 503, "timeout").await;
    assert!(t0.elapsed() < Duration::from_millis(1200));
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_inflight_requests() {
    let slow = ColorPredictor::new("cap", Task::Caption)
        .with_cost(Duration::from_millis(500), Duration::ZERO);
    let srv = RunningServer::start(cfg(), vec![Box::new(slow)])
        .await
        .unwrap();
    let url = srv.url();
    let c = reqwest::Client::new();
    let inflight = {
        let c = c.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let form = Form::new().part("image", image_part(png([15, 15, 15], 4, 4)));
            let r = c
                .post(format!("{url}/v1/caption"))
                .multipart(form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    srv.shutdown().await.unwrap();
    let (s, v) = inflight.await.unwrap();
    assert_eq!((s, v["answer"].as_str().unwrap()), (200, "a black image"));
    // Nothing listens any more.
    assert!(reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn examples_are_served_without_path_traversal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("red.png"), png([230, 30, 30], 8, 8)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let cfg = ServeConfig {
        examples_dir: Some(dir.path().to_path_buf()),
        ..cfg()
    };
    let srv = RunningServer::start(cfg, three_models()).await.unwrap();
    let c = reqwest::Client::new();
    let (_, v) = json_of(
        c.get(format!("{}/v1/examples", srv.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["examples"], serde_json::json!(["red.png"]));
    let r = c
        .get(format!("{}/examples/red.png", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().to_vec(), png([230, 30, 30], 8, 8));
    for bad in [
        "notes.txt",
        "..%2Fetc%2Fpasswd",
        "red.png%2F..%2F..%2Fnotes.txt",
    ] {
        let r = c
            .get(format!("{}/examples/{bad}", srv.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_configs_and_duplicate_names_are_refused() {
    let two = || -> Vec<Box<dyn Predictor>> {
        vec![
            Box::new(ColorPredictor::new("a", Task::Caption)),
            Box::new(ColorPredictor::new("a", Task::Vqa)),
        ]
    };
    assert!(RunningServer::start(cfg(), two())
        .await
        .err()
        .unwrap()
        .to_string()
        .contains("unique"));
    assert!(RunningServer::start(cfg(), vec![]).await.is_err());
    let bad = ServeConfig {
        max_inflight: 0,
        ..cfg()
    };
    assert!(RunningServer::start(bad, three_models())
        .await
        .err()
        .unwrap()
        .to_string()
        .contains("max_inflight"));
}

/// Writes one header byte every 100 ms until the server closes the connection; returns how
/// long that took (None: still open after 10 s).
async fn trickle_headers(addr: std::net::SocketAddr) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let start = std::time::Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    while start.elapsed() < Duration::from_secs(10) {
        if s.write_all(b"a").await.is_err() {
            return Some(start.elapsed());
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(_) => return Some(start.elapsed()), // closed, reset or an error answer
            Err(_) => continue,                    // still open
        }
    }
    None
}

#[tokio::test]
async fn a_client_trickling_header_bytes_is_cut_off_at_the_header_timeout() {
    let cfg = ServeConfig {
        header_timeout: Duration::from_millis(500),
        ..cfg()
    };
    let srv = RunningServer::start(cfg, three_models()).await.unwrap();
    let took = trickle_headers(srv.addr).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(5)), "{took:?}");
    // The server still answers others.
    let r = reqwest::get(format!("{}/healthz", srv.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let cfg = ServeConfig {
        header_timeout: Duration::from_secs(3),
        max_connections: 2,
        ..cfg()
    };
    let srv = RunningServer::start(cfg, three_models()).await.unwrap();
    // Two silent clients take both slots until the header timeout closes them.
    let _a = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("{}/healthz", srv.url());
    let get = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!get.is_finished(), "served while both slots were held");
    let status = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("a slot frees up at the header timeout")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    srv.shutdown().await.unwrap();
}
