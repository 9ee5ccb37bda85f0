//! `close caption|vqa|entail` and `close serve` on a real tiny run (made by the same helper
//! as close-serve's tests: tiny world, tiny random CLIP, a few seconds of text-only training).

#[path = "../../close-serve/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use close_serve::run::{LoadOptions, RunPredictor};
use close_serve::{DecodeOptions, Predictor};

fn close() -> Command {
    Command::new(env!("CARGO_BIN_EXE_close"))
}

#[test]
fn caption_a_folder_vqa_refusal_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::tiny_setup(tmp.path());
    // A folder with good images and a broken one.
    let dir = tmp.path().join("mine");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for (i, p) in s.test_images.iter().take(3).enumerate() {
        let dst = if i == 2 {
            dir.join("sub").join("c.png")
        } else {
            dir.join(format!("{}.png", (b'a' + i as u8) as char))
        };
        std::fs::copy(p, dst).unwrap();
    }
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();

    let out = close()
        .args(["caption", "--quiet", "--batch", "2", "--beam", "2", "--run"])
        .arg(&s.run)
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files[0].ends_with("a.png")
            && files[1].ends_with("b.png")
            && files[2].ends_with("sub/c.png"),
        "{files:?}"
    );
    assert!(
        stderr.contains("broken.png") && stderr.contains("skipped"),
        "{stderr}"
    );
    // Same answers as the library.
    let p = RunPredictor::load(&s.run, &LoadOptions::default(), &Device::Cpu).unwrap();
    let opts = DecodeOptions {
        beams: 2,
        max_tokens: p.info().defaults.max_tokens,
        neighbors: 0,
    };
    for l in &lines {
        let img = close_clip::load_image(l["file"].as_str().unwrap()).unwrap();
        let e = p.predict_images(&[img], None, &opts).unwrap().remove(0);
        assert_eq!(l["caption"].as_str().unwrap(), e.answer());
        assert!((l["logprob"].as_f64().unwrap() as f32 - e.logprob()).abs() < 1e-3);
        assert!(l.get("beams").is_none());
    }

    // --out, --all-beams, --neighbors, --json summary.
    let jl = tmp.path().join("out.jsonl");
    let out = close()
        .args([
            "caption",
            "--quiet",
            "--all-beams",
            "--json",
            "--neighbors",
            "2",
            "--beam",
            "2",
            "--out",
        ])
        .arg(&jl)
        .arg("--run")
        .arg(&s.run)
        .arg(&s.test_images[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["captioned"], 1);
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&jl).unwrap().trim()).unwrap();
    assert_eq!(line["beams"].as_array().unwrap().len(), 2);
    assert_eq!(line["neighbors"].as_array().unwrap().len(), 2);

    // Errors: only bad files, a missing input, the wrong task.
    let out = close()
        .args(["caption", "--quiet", "--run"])
        .arg(&s.run)
        .arg(dir.join("broken.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image could be captioned"));
    let out = close()
        .args(["caption", "--quiet", "--run"])
        .arg(&s.run)
        .arg(tmp.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = close()
        .args(["vqa", "--quiet", "--question", "what?", "--run"])
        .arg(&s.run)
        .arg(&s.test_images[0])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("use `close caption`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `close serve` on an ephemeral port: healthz, then a graceful exit on SIGTERM.
    let (mut child, url) = spawn_server(&s.run);
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        conn,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("\"status\":\"ok\""),
        "{resp}"
    );
    terminate_gracefully(&mut child);
    // A SIGTERM sent the moment the address is logged is a graceful stop too (the handler
    // is installed before the port is bound; CI once caught the server killed here).
    let (mut child, _) = spawn_server(&s.run);
    terminate_gracefully(&mut child);
}

/// Start `close serve` on an ephemeral port; return it and the URL it logged. The caller
/// kills and waits for the child.
#[allow(clippy::zombie_processes)]
fn spawn_server(run: &std::path::Path) -> (std::process::Child, String) {
    let mut child = close()
        .args(["serve", "--addr", "127.0.0.1:0", "--run"])
        .arg(run)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 || start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("server did not report its address");
        }
        if let Some(i) = line.find("http://") {
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return (child, line[i..].trim().to_string());
        }
    }
}

/// SIGTERM the server and require a clean exit within 20 s.
fn terminate_gracefully(child: &mut std::process::Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
