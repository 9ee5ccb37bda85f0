//! End to end with a real (tiny, freshly trained) CLOSE run: load the run dir, serve it, and
//! check that HTTP answers are exactly what the library predicts for the same image, that
//! concurrent (batched) requests get the same answers as single ones, and that nearest
//! captions are the corpus captions of highest CLIP cosine.

mod common;

use candle_core::Device;
use close_serve::run::{LoadOptions, RunPredictor};
use close_serve::{DecodeOptions, Predictor, RunningServer, ServeConfig, Task};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_trained_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let setup = tokio::task::spawn_blocking({
        let root = tmp.path().to_path_buf();
        move || common::tiny_setup(&root)
    })
    .await
    .unwrap();

    // The library's own answers, computed directly.
    let direct = RunPredictor::load(&setup.run, &LoadOptions::default(), &Device::Cpu).unwrap();
    let info = direct.info();
    assert_eq!(info.task, Task::Caption);
    assert_eq!(info.name, "run");
    assert_eq!(
        info.corpus_size,
        setup.captions.len(),
        "the recorded text cache is the corpus"
    );
    assert_eq!(info.defaults.beams, 3);
    let opts = DecodeOptions {
        beams: 3,
        max_tokens: 12,
        neighbors: 4,
    };
    let files: Vec<_> = setup.test_images.iter().take(4).cloned().collect();
    let imgs: Vec<image::RgbImage> = files
        .iter()
        .map(|p| close_clip::load_image(p).unwrap())
        .collect();
    let mut expected = Vec::new();
    for img in &imgs {
        expected.push(
            direct
                .predict_images(std::slice::from_ref(img), None, &opts)
                .unwrap()
                .remove(0),
        );
    }
    // Nearest captions really are the top cosines over the whole corpus.
    let clip = direct.clip().clone();
    let iv = clip.embed_images(&imgs[..1]).unwrap();
    let tv = clip.embed_texts(&setup.captions).unwrap();
    let mut cos: Vec<(f32, &String)> = iv
        .matmul(&tv.t().unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .zip(&setup.captions)
        .collect();
    cos.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (n, (c, t)) in expected[0].neighbors.iter().zip(&cos) {
        assert!((n.cosine - c).abs() < 1e-4, "{n:?} vs {c} {t}");
    }
    assert_eq!(expected[0].neighbors.len(), 4);
    eprintln!(
        "tiny run says: {:?}",
        expected
            .iter()
            .map(|e| e.answer().to_string())
            .collect::<Vec<_>>()
    );

    let server = RunningServer::start(
        ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..ServeConfig::default()
        },
        vec![Box::new(
            RunPredictor::load(&setup.run, &LoadOptions::default(), &Device::Cpu).unwrap(),
        )],
    )
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let ask = |path: std::path::PathBuf| {
        let c = c.clone();
        let url = format!("{}/v1/caption", server.url());
        async move {
            let part = Part::bytes(std::fs::read(&path).unwrap())
                .file_name("x.png")
                .mime_str("image/png")
                .unwrap();
            let form = Form::new()
                .part("image", part)
                .text("beams", "3")
                .text("max_tokens", "12")
                .text("neighbors", "4");
            let r = c.post(url).multipart(form).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    // One at a time, then all at once (batched by the worker).
    let single = ask(files[0].clone()).await;
    let together = futures_util::future::join_all(files.iter().cloned().map(ask)).await;
    for (i, v) in std::iter::once(&single).chain(together.iter()).enumerate() {
        let e = &expected[if i == 0 { 0 } else { i - 1 }];
        assert_eq!(v["model"], "run");
        assert_eq!(v["answer"].as_str().unwrap(), e.answer(), "image {i}");
        let beams = v["beams"].as_array().unwrap();
        assert_eq!(beams.len(), e.beams.len());
        assert!(!beams.is_empty() && beams.len() <= 3);
        for (b, eb) in beams.iter().zip(&e.beams) {
            assert_eq!(b["text"].as_str().unwrap(), eb.text);
            assert!(
                (b["logprob"].as_f64().unwrap() as f32 - eb.logprob).abs() < 1e-3,
                "{b} vs {eb:?}"
            );
            assert!(b["logprob"].as_f64().unwrap() <= 0.0);
        }
        let ns = v["neighbors"].as_array().unwrap();
        assert_eq!(ns.len(), 4);
        for (n, en) in ns.iter().zip(&e.neighbors) {
            assert_eq!(n["caption"].as_str().unwrap(), en.caption);
            assert!(setup.captions.contains(&en.caption));
        }
    }
    // A bad image is a 4xx, and the model keeps serving.
    let form = Form::new().part(
        "image",
        Part::bytes(b"GIF89a nonsense".to_vec()).file_name("x.gif"),
    );
    let r = c
        .post(format!("{}/v1/caption", server.url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        ask(files[1].clone()).await["answer"].as_str().unwrap(),
        expected[1].answer()
    );
    server.shutdown().await.unwrap();
}
