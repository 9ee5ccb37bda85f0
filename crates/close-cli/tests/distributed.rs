//! Data-parallel `close train` on loopback (feature `mpi`; needs Open MPI's `mpirun`):
//! two ranks of one thread each against one process with the whole batch, a rank that
//! dies, and the resume after it. Run with
//! `cargo test --release -p close-cli --features mpi --test distributed`.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

/// A world, a CLIP and its caches, made with the binary.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_string()
    }
}

fn close() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_close"));
    c.arg("--quiet").env("RAYON_NUM_THREADS", "1");
    c
}

/// `mpirun -np 2 close …`, one thread per rank.
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", "2", "--oversubscribe", "--bind-to", "none"])
        // Open MPI refuses root without these; CI runs as root.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .args([env!("CARGO_BIN_EXE_close"), "--quiet"]);
    c
}

fn output(mut c: Command) -> Output {
    c.output()
        .expect("mpirun not found: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)")
}

fn ok(c: Command) -> Output {
    let what = format!("{c:?}");
    let o = output(c);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let f = Fixture { _tmp: tmp, root };
        let (w, clip, data) = (f.p("w"), f.p("clip"), f.p("w/dataset_coco.json"));
        let mut c = close();
        c.args(["world", "--out", &w, "--images", "120"]);
        ok(c);
        let mut c = close();
        c.args([
            "clip", "train", "--data", &data, "--images", &w, "--out", &clip,
        ]);
        c.args(["--preset", "tiny", "--epochs", "1"]);
        ok(c);
        let mut c = close();
        c.args(["embed", "--clip", &clip, "--data", &data, "--images", &w]);
        c.args(["--out", &f.p("emb")]);
        ok(c);
        f
    })
}

/// 2 epochs of 10 steps, 15 examples a batch: the ranks take 7 and 8 rows.
fn train_args(f: &Fixture, out: &Path) -> Vec<String> {
    let (texts, images) = (f.p("emb/texts"), f.p("emb/images"));
    let args = [
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
        "2",
        "--batch-size",
        "15",
        "--max-examples-per-epoch",
        "150",
        "--max-val",
        "4",
        "--log-every",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.map(String::from).to_vec()
}

/// The (step, loss) lines of a run's log.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let file = run.join("last/model.safetensors");
    let mut t: Vec<_> = candle_core::safetensors::load(file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            let d = (ta - tb).unwrap().abs().unwrap();
            d.flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max)
}

/// The two-rank run of `train_args` into `out`, made once and shared by the tests.
fn two_rank_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let f = fixture();
        let out = f.root.join("two-ranks");
        let mut c = mpirun();
        c.args(train_args(f, &out));
        let o = ok(c);
        // Only rank 0 prints the summary.
        let printed = String::from_utf8_lossy(&o.stdout);
        assert_eq!(printed.matches("\"run_dir\"").count(), 1, "{printed}");
        out
    })
}

#[test]
fn two_ranks_take_the_steps_of_one_process_with_the_whole_batch() {
    let f = fixture();
    let one = f.root.join("one-process");
    let mut c = close();
    c.args(train_args(f, &one));
    ok(c);
    let two = two_rank_run();

    let (a, b) = (losses(&one), losses(two));
    assert_eq!(a.len(), 20, "{a:?}");
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    for ((step, la), (_, lb)) in a.iter().zip(&b) {
        assert!(
            (la - lb).abs() <= 1e-5,
            "step {step}: loss {la} alone, {lb} on two ranks"
        );
    }
    assert_eq!(a.len(), b.len());
    let d = max_weight_diff(&one, two);
    eprintln!("largest weight difference after 20 steps: {d:e}");
    assert!(d <= 1e-5, "final weights differ by up to {d}");
    // Rank 0 validated: the best epoch and its metric are recorded as alone.
    let metrics = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("metrics.json")).unwrap()).unwrap()
    };
    assert_eq!(metrics(&one)["best_epoch"], metrics(two)["best_epoch"]);
}

#[test]
fn a_dead_rank_stops_the_run_and_resume_finishes_it() {
    let f = fixture();
    let out = f.root.join("killed");
    // Rank 1 dies after step 15, in the second epoch (the first one's checkpoint exists).
    let mut c = mpirun();
    c.args(train_args(f, &out)).env("CLOSE_TEST_DIE_AT", "1:15");
    let t0 = Instant::now();
    let o = output(c);
    let took = t0.elapsed();
    assert!(!o.status.success(), "the run went on without rank 1");
    let err = stderr(&o);
    assert!(
        err.contains("rank 1"),
        "the error does not name rank 1: {err}"
    );
    // Bounded: rank 0 is stopped, it does not wait for its partner forever.
    assert!(took < Duration::from_secs(300), "took {took:?}");
    let state = std::fs::read_to_string(out.join("last/state.json")).unwrap();
    assert!(
        state.contains("\"step\":10") || state.contains("\"step\": 10"),
        "{state}"
    );

    let mut c = mpirun();
    c.args(train_args(f, &out)).arg("--resume");
    ok(c);
    let two = two_rank_run();
    assert_eq!(losses(&out), losses(two));
    let (a, b) = (weights(&out), weights(two));
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        let d = (ta - tb).unwrap().abs().unwrap().flatten_all().unwrap();
        let d = d.max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(
            d, 0.0,
            "{name}: resumed run differs from the uninterrupted one"
        );
    }
}

#[test]
fn two_ranks_refuse_to_start_from_different_weights() {
    let f = fixture();
    // Rank 1 gets another seed, so its weights (and noise) differ from rank 0's.
    let out = f.root.join("mismatch");
    let script =
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then set -- \"$@\" --seed 5; fi; exec \"$@\"";
    let mut c = Command::new("mpirun");
    c.args([
        "-np",
        "2",
        "--oversubscribe",
        "--bind-to",
        "none",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("RAYON_NUM_THREADS", "1")
    .args([env!("CARGO_BIN_EXE_close"), "--quiet"])
    .args(train_args(f, &out));
    let o = output(c);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("rank 1's config differs from rank 0's"),
        "{err}"
    );
}
