//! The bad-input and fault battery, run against the `close` binary as a user runs it:
//! bad flags, existing outputs, broken weights and caches, malformed data, file modes,
//! kill -9 at random moments of `train`, `embed` and `clip train` followed by a rerun, and
//! a full disk. `docs/reliability.md` lists every case with what it gets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

fn close() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_close"));
    c.arg("--quiet");
    c
}

fn run(args: &[&str]) -> Output {
    close().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "close {args:?}: {}", stderr(&o));
}

/// A world, a CLIP, its caches and a trained run, all made with the binary.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_string()
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let f = Fixture { _tmp: tmp, root };
        ok(&["world", "--out", &f.p("w"), "--images", "200"]);
        let data = f.p("w/dataset_coco.json");
        let (w, clip) = (f.p("w"), f.p("clip"));
        ok(&[
            "clip", "train", "--data", &data, "--images", &w, "--out", &clip,
        ]);
        ok(&strs(&embed_args(&clip, &data, &w, &f.p("emb"), &[])));
        let mut args = train_args(&f, &f.p("run"));
        let i = args.iter().position(|a| a == "--epochs").unwrap();
        args[i + 1] = "1".into();
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        f
    })
}

fn train_args(f: &Fixture, out: &str) -> Vec<String> {
    let (texts, images) = (f.p("emb/texts"), f.p("emb/images"));
    [
        "train",
        "--task",
        "s-cap",
        "--data",
        &f.p("w"),
        "--text-cache",
        &texts,
        "--image-cache",
        &images,
        "--t5",
        "tiny",
        "--epochs",
        "3",
        "--max-val",
        "4",
        "--max-examples-per-epoch",
        "96",
        "--batch-size",
        "16",
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec()
}

/// `close embed` of `data` (images under `images`) with `clip` into `out`, plus `extra`.
fn embed_args(clip: &str, data: &str, images: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let base = [
        "embed", "--clip", clip, "--data", data, "--images", images, "--out", out,
    ];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

#[test]
fn bad_flags_and_inputs_are_refused_with_what_to_do() {
    let f = fixture();
    let (w, data, clip, run_dir) = (
        f.p("w"),
        f.p("w/dataset_coco.json"),
        f.p("clip"),
        f.p("run"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let gold = fresh("gold.jsonl");
    std::fs::write(&gold, "{\"pairID\":\"1\",\"gold_label\":\"entailed\"}\n").unwrap();
    let preds = fresh("preds.jsonl");
    std::fs::write(&preds, "{\"pairID\":\"1\",\"label\":\"neutral\"}\n").unwrap();
    // The fixture's train command with `flag value` set (replaced, or added).
    let train = |set: &[&str]| {
        let mut a = train_args(f, &fresh("r"));
        let (flag, value) = (set[0].to_string(), set[1].to_string());
        match a.iter().position(|s| *s == flag) {
            Some(i) => a[i + 1] = value,
            None => a.extend([flag, value]),
        }
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            train(&["--batch-size", "0"]),
            "'--batch-size <BATCH_SIZE>': must be at least 1",
        ),
        (train(&["--batch-size", "-1"]), "must be at least 1, got -1"),
        (
            train(&["--lr", "nan"]),
            "'--lr <LR>': must be a finite number > 0",
        ),
        (
            train(&["--noise", "-1"]),
            "'--noise <NOISE>': must be a finite number ≥ 0",
        ),
        (train(&["--device", "gpu"]), "expected cpu, cuda or cuda:N"),
        (train(&["--task", "poetry"]), "poetry"),
        (
            embed_args(&clip, &data, &w, &fresh("e"), &["--batch-size", "0"]),
            "'--batch-size <BATCH_SIZE>': must be at least 1",
        ),
        (
            ["caption", "--run", &run_dir, "--batch", "0", &w]
                .map(String::from)
                .to_vec(),
            "'--batch <BATCH>': must be at least 1",
        ),
        (
            [
                "clip",
                "train",
                "--data",
                &data,
                "--images",
                &w,
                "--out",
                &fresh("c"),
            ]
            .iter()
            .chain(&["--max-seconds=-5"])
            .map(|s| s.to_string())
            .collect(),
            "'--max-seconds <MAX_SECONDS>': must be a finite number > 0, got -5",
        ),
        (
            [
                "world",
                "--out",
                &fresh("w2"),
                "--hypotheses-per-label",
                "100000",
            ]
            .map(String::from)
            .to_vec(),
            "hypotheses_per_label`: 100000: must be in 1..=256",
        ),
        (
            ["world", "--out", &fresh("w3"), "--val-fraction", "1.5"]
                .map(String::from)
                .to_vec(),
            "val_fraction`: 1.5: must be in [0, 1)",
        ),
        (
            ["world", "--out", &fresh("w4"), "--position-jitter", "1.5"]
                .map(String::from)
                .to_vec(),
            "'--position-jitter <POSITION_JITTER>': must be between 0 and 1, got 1.5",
        ),
        (
            ["serve", "--header-timeout", "0", "--run", &run_dir]
                .map(String::from)
                .to_vec(),
            "'--header-timeout <HEADER_TIMEOUT>': must be greater than 0",
        ),
        (
            ["score", "ve", "--gold", &gold, "--results", &preds]
                .map(String::from)
                .to_vec(),
            "gold.jsonl:1: gold_label \"entailed\" is none of",
        ),
        (
            {
                let mut a = train(&["--seed", "0"]);
                let i = a.iter().position(|s| s == "--text-cache").unwrap();
                a[i + 1] = fresh("nowhere/texts");
                a
            },
            "no embedding cache here (index.json is missing); build it with `close embed",
        ),
    ];
    let mut cases = cases;
    if !candle_core::utils::cuda_is_available() {
        cases.push((
            train(&["--device", "cuda"]),
            "rebuild with `cargo build --release --features cuda`",
        ));
    }
    for (args, want) in &cases {
        let o = run(&strs(args));
        let e = stderr(&o);
        assert!(!o.status.success(), "accepted: {args:?}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}\nwanted: {want}\ngot: {e}");
        assert_eq!(
            e.matches("os error").count(),
            e.contains("os error") as usize,
            "{e}"
        );
    }
    // Nothing was created for a refused command.
    assert!(!tmp.path().join("r").exists() && !tmp.path().join("c").exists());
}

#[test]
fn existing_outputs_are_kept_unless_forced() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (run_dir, clip_dir, world) = (
        tmp.path().join("run"),
        tmp.path().join("clip"),
        tmp.path().join("w"),
    );
    copy_dir(&f.root.join("run"), &run_dir);
    copy_dir(&f.root.join("clip"), &clip_dir);
    copy_dir(&f.root.join("w"), &world);
    let before = [snapshot(&run_dir), snapshot(&clip_dir), snapshot(&world)];

    let train = train_args(f, run_dir.to_str().unwrap());
    let o = run(&strs(&train));
    assert!(
        stderr(&o).contains("holds a run: pass --resume to continue it, --force"),
        "{}",
        stderr(&o)
    );
    let (data, w) = (f.p("w/dataset_coco.json"), f.p("w"));
    let clip_args = [
        "clip",
        "train",
        "--data",
        &data,
        "--images",
        &w,
        "--out",
        clip_dir.to_str().unwrap(),
    ];
    let o = run(&clip_args);
    assert!(
        stderr(&o).contains("already exists; pass --force to replace it"),
        "{}",
        stderr(&o)
    );
    let o = run(&["world", "--out", world.to_str().unwrap(), "--images", "10"]);
    assert!(
        stderr(&o).contains("already exists; pass --force"),
        "{}",
        stderr(&o)
    );
    // Refusals changed nothing.
    assert!(snapshot(&run_dir) == before[0], "run changed");
    assert!(snapshot(&clip_dir) == before[1], "clip changed");
    assert!(snapshot(&world) == before[2], "world changed");
    // --force with an input that fails to load keeps the old run.
    let mut forced_train = train.clone();
    forced_train.push("--force".into());
    let missing = tmp.path().join("no-such-config.json");
    let with_bad_config = [
        &forced_train[..],
        &["--config".into(), missing.to_str().unwrap().into()],
    ]
    .concat();
    let o = run(&strs(&with_bad_config));
    assert!(stderr(&o).contains("no-such-config.json"), "{}", stderr(&o));
    assert!(
        snapshot(&run_dir) == before[0],
        "a failed --force run deleted the old one"
    );
    ok(&strs(&forced_train));
    assert!(snapshot(&run_dir) != before[0]);
    // A non-run directory is never deleted, even with --force: not a world, and not an HF
    // model dir (which has a `config.json` like a run).
    for (dir, was) in [(&world, &before[2]), (&clip_dir, &before[1])] {
        let mut into = train_args(f, dir.to_str().unwrap());
        into.push("--force".into());
        let o = run(&strs(&into));
        assert!(
            stderr(&o).contains("holds no run: choose a new or empty --out"),
            "{}",
            stderr(&o)
        );
        assert!(snapshot(dir) == *was, "{} changed", dir.display());
    }
    // --force replaces.
    let mut forced = clip_args.map(String::from).to_vec();
    forced.extend(["--force", "--epochs", "1"].map(String::from));
    ok(&strs(&forced));
    assert!(snapshot(&clip_dir) != before[1]);
    // The report names the model's dir, not the staging dir it was trained in.
    let report = std::fs::read(clip_dir.join("clip_train_report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["out_dir"].as_str(), clip_dir.to_str());
    assert!(!tmp.path().join("clip.new").exists() && !tmp.path().join("clip.old").exists());
}

/// Rewrite one tensor of a safetensors file.
fn patch_tensor(file: &Path, name_part: &str, f: impl Fn(&Tensor) -> Tensor) {
    let mut map = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let key = map.keys().find(|k| k.contains(name_part)).unwrap().clone();
    let t = f(&map[&key]);
    map.insert(key, t);
    candle_core::safetensors::save(&map, file).unwrap();
}

#[test]
fn broken_weights_caches_and_data_are_named() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (w, data) = (f.p("w"), f.p("w/dataset_coco.json"));
    // A CLIP whose projection holds NaN: embed refuses and writes no cache.
    let nan_clip = tmp.path().join("clip");
    copy_dir(&f.root.join("clip"), &nan_clip);
    patch_tensor(
        &nan_clip.join("model.safetensors"),
        "visual_projection",
        |t| (t * f64::NAN).unwrap(),
    );
    let out = tmp.path().join("emb");
    let nan_clip = nan_clip.to_str().unwrap();
    let what = ["--what", "images"];
    let o = run(&strs(&embed_args(
        nan_clip,
        &data,
        &w,
        out.to_str().unwrap(),
        &what,
    )));
    assert!(
        stderr(&o).contains("gave a non-finite embedding (NaN or Inf) for `"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("images/index.json").exists());

    // A run whose embedding table is integer: caption names the tensor.
    let run_dir = tmp.path().join("run");
    copy_dir(&f.root.join("run"), &run_dir);
    patch_tensor(&run_dir.join("model.safetensors"), "shared.weight", |t| {
        t.to_dtype(DType::U32).unwrap()
    });
    let img = f.root.join("w/images/test");
    let o = run(&[
        "caption",
        "--run",
        run_dir.to_str().unwrap(),
        "--clip",
        &f.p("clip"),
        img.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("tensor `shared.weight` has dtype U32, expected a float"),
        "{}",
        stderr(&o)
    );

    // A cache shard with a NaN row: train names the cache file and key before training.
    let emb = tmp.path().join("emb2");
    copy_dir(&f.root.join("emb"), &emb);
    patch_tensor(
        &emb.join("texts/shard-00000.safetensors"),
        "embeddings",
        |t| {
            let mut v = t.to_vec2::<f32>().unwrap();
            v[3][0] = f32::NAN;
            Tensor::new(v, &Device::Cpu).unwrap()
        },
    );
    let mut a = train_args(f, tmp.path().join("r").to_str().unwrap());
    let i = a.iter().position(|s| s == "--text-cache").unwrap();
    a[i + 1] = emb.join("texts").to_str().unwrap().to_string();
    let o = run(&strs(&a));
    assert!(
        stderr(&o).contains("shard-00000.safetensors: the embedding of `"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("holds NaN or Inf; rebuild the cache"),
        "{}",
        stderr(&o)
    );

    // A Karpathy file with a repeated cocoid: refused with the line, nothing dropped.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&data).unwrap()).unwrap();
    let first = doc["images"][0]["cocoid"].clone();
    doc["images"][5]["cocoid"] = first;
    let dup = tmp.path().join("dup.json");
    std::fs::write(&dup, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let e3 = tmp.path().join("e3");
    let args = embed_args(
        &f.p("clip"),
        dup.to_str().unwrap(),
        &w,
        e3.to_str().unwrap(),
        &[],
    );
    let o = run(&strs(&args));
    assert!(
        stderr(&o).contains("dup.json:") && stderr(&o).contains("duplicate image id"),
        "{}",
        stderr(&o)
    );
}

/// The mode a new file gets here (0666 less the umask).
fn default_mode(dir: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(".probe");
    std::fs::write(&p, b"").unwrap();
    let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    std::fs::remove_file(p).unwrap();
    m
}

#[test]
fn outputs_get_the_default_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let want = default_mode(&f.root);
    for dir in ["clip", "emb", "run", "w"] {
        for (rel, _) in snapshot(&f.root.join(dir)) {
            let p = f.root.join(dir).join(&rel);
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, want, "{}: {m:o}", p.display());
        }
    }
}

/// What [`kill_and_rerun`] calls around each kill.
struct Hooks<R, A, C> {
    /// Before each start.
    reset: R,
    /// After each kill, before the rerun.
    after_kill: A,
    /// After each completed run, with the kill's index (`usize::MAX` for the reference).
    check: C,
}

/// Run `args` to completion once (the reference), then `kills` times: reset, start it,
/// kill -9 it at a random moment of the reference's duration, call `after_kill`, and rerun
/// `rerun` to completion; `check` compares each end state with the reference.
fn kill_and_rerun(
    args: &[String],
    rerun: &[String],
    kills: usize,
    slowdown_ms: u32,
    mut hooks: Hooks<impl FnMut(), impl FnMut(), impl FnMut(usize)>,
) {
    let cmd = |a: &[String]| {
        let mut c = close();
        c.args(a)
            .env("CLOSE_TEST_SLOWDOWN_MS", slowdown_ms.to_string());
        c
    };
    let t0 = Instant::now();
    let o = cmd(args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t0.elapsed();
    (hooks.check)(usize::MAX);
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut interrupted = 0;
    for k in 0..kills {
        (hooks.reset)();
        let mut child = cmd(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(rng.random_range(0.02..0.9)));
        interrupted += child.try_wait().unwrap().is_none() as usize;
        let _ = child.kill();
        let _ = child.wait();
        (hooks.after_kill)();
        let o = cmd(rerun).output().unwrap();
        assert!(o.status.success(), "rerun after kill {k}: {}", stderr(&o));
        (hooks.check)(k);
    }
    // Kills after the end prove nothing; the runs are long enough (slowed-down steps) for
    // most to land inside, and a quarter is required even on a loaded machine.
    eprintln!("{interrupted} of {kills} kills interrupted a run of {full:?}");
    assert!(
        interrupted * 4 >= kills,
        "only {interrupted} of {kills} kills interrupted a run"
    );
}

#[test]
fn train_killed_at_random_moments_resumes_to_the_same_weights() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = train_args(f, out.to_str().unwrap());
    let mut resume = args.clone();
    resume.push("--resume".into());
    let mut fresh = args.clone();
    fresh.push("--force".into());
    let files = [
        "model.safetensors",
        "last/model.safetensors",
        "last/optimizer.safetensors",
    ];
    let mut reference = Vec::new();
    kill_and_rerun(
        &fresh,
        &resume,
        20,
        30,
        Hooks {
            reset: || (),
            after_kill: || (),
            check: |k| {
                let now: Vec<Vec<u8>> = files
                    .iter()
                    .map(|p| std::fs::read(out.join(p)).unwrap())
                    .collect();
                if k == usize::MAX {
                    reference = now;
                } else {
                    assert!(
                        now == reference,
                        "kill {k}: weights differ from the uninterrupted run"
                    );
                    assert!(!out.join("last.new").exists() && !out.join("last.old").exists());
                }
            },
        },
    );
}

#[test]
fn embed_killed_at_random_moments_reruns_to_the_same_cache() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    let (o, clip, data, w) = (
        out.to_str().unwrap(),
        f.p("clip"),
        f.p("w/dataset_coco.json"),
        f.p("w"),
    );
    let args = embed_args(&clip, &data, &w, o, &["--batch-size", "16"]);
    let vectors = || {
        ["images", "texts"].map(|k| {
            let c = close_clip::cache::EmbeddingCache::open(out.join(k)).unwrap();
            let mut v: Vec<(String, Vec<f32>)> = c
                .keys()
                .map(|key| (key.to_string(), c.get(key).unwrap().to_vec()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        })
    };
    let mut reference = None;
    kill_and_rerun(
        &args,
        &args,
        20,
        15,
        Hooks {
            reset: || {
                let _ = std::fs::remove_dir_all(&out);
            },
            after_kill: || (),
            check: |k| {
                let now = vectors();
                match &reference {
                    None => reference = Some(now),
                    Some(r) => assert!(&now == r, "kill {k}: the cache differs"),
                }
            },
        },
    );
}

#[test]
fn clip_train_killed_at_random_moments_leaves_no_half_model() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip");
    let (o, data, w) = (out.to_str().unwrap(), f.p("w/dataset_coco.json"), f.p("w"));
    let args: Vec<String> = [
        "clip", "train", "--data", &data, "--images", &w, "--out", o, "--epochs", "2",
    ]
    .map(String::from)
    .to_vec();
    let reference = std::cell::RefCell::new(None::<Vec<u8>>);
    let weights = out.join("model.safetensors");
    kill_and_rerun(
        &args,
        &args,
        20,
        30,
        Hooks {
            reset: || {
                let _ = std::fs::remove_dir_all(&out);
            },
            // A kill leaves either no model or the complete one (a kill after the save); a
            // rerun then needs the dir gone.
            after_kill: || {
                if out.exists() {
                    assert_eq!(
                        std::fs::read(&weights).ok(),
                        *reference.borrow(),
                        "a partial model"
                    );
                    std::fs::remove_dir_all(&out).unwrap();
                }
            },
            check: |k| {
                let now = std::fs::read(&weights).unwrap();
                let mut r = reference.borrow_mut();
                match &*r {
                    None => *r = Some(now),
                    Some(r) => assert!(&now == r, "kill {k}: the model differs"),
                }
                assert!(!tmp.path().join("clip.new").exists());
            },
        },
    );
}

/// Mounts a tmpfs of `kib` KiB (needs root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        o.status.success().then(|| Self(dir.to_path_buf()))
    }
    fn resize(&self, kib: u32) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_with_the_path_and_resume_then_matches() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), 1600) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let reference_dir = tmp.path().join("reference");
    ok(&strs(&train_args(f, reference_dir.to_str().unwrap())));
    let out = disk.0.join("run");
    let args = train_args(f, out.to_str().unwrap());
    let o = run(&strs(&args));
    let e = stderr(&o);
    assert!(!o.status.success(), "the run fit on the small disk");
    assert!(
        e.contains(out.to_str().unwrap()) && e.contains("No space left on device"),
        "{e}"
    );
    disk.resize(16 * 1024);
    let mut resume = args.clone();
    resume.push("--resume".into());
    ok(&strs(&resume));
    for file in [
        "model.safetensors",
        "last/model.safetensors",
        "last/optimizer.safetensors",
    ] {
        let (a, b) = (
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(reference_dir.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs from the run on a roomy disk");
    }
}

#[test]
fn bad_images_are_listed_and_bad_json_names_the_line() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the world whose first three train images are broken in different ways.
    let w = tmp.path().join("w");
    copy_dir(&f.root.join("w"), &w);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("dataset_coco.json")).unwrap()).unwrap();
    let rel = |i: usize| {
        let im = &doc["images"][i];
        w.join(im["filepath"].as_str().unwrap())
            .join(im["filename"].as_str().unwrap())
    };
    let png = std::fs::read(rel(0)).unwrap();
    std::fs::write(rel(0), &png[..png.len() / 2]).unwrap(); // truncated
    std::fs::write(rel(1), b"").unwrap(); // empty
    std::fs::remove_file(rel(2)).unwrap(); // missing
    let (data, out) = (w.join("dataset_coco.json"), tmp.path().join("emb"));
    let (data, w, out) = (
        data.to_str().unwrap(),
        w.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let clip = f.p("clip");
    let o = run(&strs(&embed_args(
        &clip,
        data,
        w,
        out,
        &["--what", "images"],
    )));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bad = report["images"]["bad"].as_array().unwrap();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert_eq!(
        report["images"]["computed"].as_u64().unwrap() + 3,
        doc["images"].as_array().unwrap().len() as u64
    );
    // A syntax error in the Karpathy file: the file and line.
    let text = std::fs::read_to_string(data)
        .unwrap()
        .replacen("\"split\"", "\"split\" oops", 1);
    std::fs::write(data, text).unwrap();
    let o = run(&strs(&embed_args(&clip, data, w, out, &[])));
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("dataset_coco.json:") && e.contains("line"),
        "{e}"
    );
}

/// `close embed --shard I/N` three times plus `close embed merge` writes the same files as
/// one `close embed`, byte for byte; a shard of another model is refused, naming it.
#[test]
fn sharded_embedding_merges_to_the_single_process_cache() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel).to_str().unwrap().to_string();
    let (clip, data, w) = (f.p("clip"), f.p("w/dataset_coco.json"), f.p("w"));
    // Small batches, so that every shard gets several (200 images, 1000 captions).
    let batch = ["--batch-size", "16"];
    ok(&strs(&embed_args(&clip, &data, &w, &p("single"), &batch)));
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = p(&format!("part{i}"));
        let shard = format!("{i}/3");
        let extra = [batch[0], batch[1], "--shard", shard.as_str()];
        ok(&strs(&embed_args(&clip, &data, &w, &part, &extra)));
        parts.push(part);
    }
    let mut merge = vec!["embed", "merge", "--data", &data];
    let merged = p("merged");
    merge.extend(["--out", merged.as_str()]);
    merge.extend(parts.iter().map(String::as_str));
    ok(&merge);
    let single = snapshot(&tmp.path().join("single"));
    assert!(single.len() >= 4, "{} files", single.len());
    assert!(
        single == snapshot(&tmp.path().join("merged")),
        "merged cache differs"
    );
    // Each shard holds only its part; a second merge into the same --out is refused.
    let part0 = close_clip::EmbeddingCache::open(tmp.path().join("part0/images")).unwrap();
    assert!(part0.len() < 200 && !part0.is_empty(), "{}", part0.len());
    let o = run(&merge);
    assert!(
        !o.status.success() && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    // A bad --shard is refused with the expected form.
    let o = run(&strs(&embed_args(
        &clip,
        &data,
        &w,
        &p("x"),
        &["--shard", "3/3"],
    )));
    assert!(stderr(&o).contains("INDEX/COUNT"), "{}", stderr(&o));
}
