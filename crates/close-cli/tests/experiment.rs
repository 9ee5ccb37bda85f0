//! `close experiment` killed with SIGKILL at two moments (mid-training, mid-way through the
//! runs) and rerun ends with the `results.json` of an uninterrupted run; a rerun of a
//! finished experiment computes nothing and writes the same file, also after the OUT dir
//! moved and lost its per-item test scores.

#[path = "../../close-serve/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use close_experiment::ExperimentConfig;
use close_model::config::TrainConfig;
use close_model::task::Task;

fn close() -> Command {
    Command::new(env!("CARGO_BIN_EXE_close"))
}

/// A small world, a tiny random CLIP that knows its captions, and a two-task config of two
/// epochs per run (so that a run can be resumed from its first epoch's checkpoint).
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let world = root.join("world");
    let wcfg = close_data::world::WorldConfig {
        images: 60,
        val_fraction: 0.15,
        test_fraction: 0.15,
        ..Default::default()
    };
    close_data::world::generate(&wcfg, &world, &close_core::progress::NoProgress).unwrap();
    let k = close_data::coco::Karpathy::load(world.join("dataset_coco.json")).unwrap();
    let captions: Vec<String> = k
        .images
        .iter()
        .flat_map(|im| im.captions().map(str::to_string))
        .collect();
    let clip = common::tiny_clip(&root.join("clip"), &captions);
    let mut cfg = ExperimentConfig::new(
        TrainConfig::small(Task::SCap).t5,
        &[Task::SCap, Task::Vqa],
        true,
        0,
    );
    for s in cfg.tasks.values_mut() {
        s.epochs = 2;
        s.max_val_examples = Some(20);
    }
    cfg.beams = 2;
    let cfg_path = root.join("experiment-config.json");
    close_core::io::write_json_atomic(&cfg_path, &cfg).unwrap();
    (world, clip, cfg_path)
}

/// Start `close experiment` (with the slowdown knob), its log going to `log`.
fn experiment(
    world: &Path,
    clip: &Path,
    cfg: &Path,
    out: &Path,
    slow_ms: u64,
    log: &Path,
) -> Child {
    close()
        .args(["experiment", "--tasks", "s-cap,vqa", "--data"])
        .arg(world)
        .arg("--clip")
        .arg(clip)
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env("CLOSE_TEST_SLOWDOWN_MS", slow_ms.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Wait for the experiment to succeed; returns its log.
fn finish(mut child: Child, log: &Path) -> String {
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{text}");
    text
}

/// Files under `dir` (recursively) whose name is `name`, not counting those inside a
/// directory that also holds `unless`.
fn count(dir: &Path, name: &str, unless: Option<&str>) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += count(&p, name, unless);
        } else if p.file_name().is_some_and(|f| f == name)
            && unless.is_none_or(|u| {
                !p.parent()
                    .and_then(Path::parent)
                    .is_some_and(|d| d.join(u).exists())
            })
        {
            n += 1;
        }
    }
    n
}

/// Remove the per-item scores from every test `score.json` under `dir` (as an OUT scored
/// before they were kept); returns how many files had them.
fn strip_items(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += strip_items(&p);
        } else if p.ends_with("eval/test/score.json") {
            let mut m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if m.as_object_mut().unwrap().remove("items").is_some() {
                std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
                n += 1;
            }
        }
    }
    n
}

/// SIGKILL the experiment once `ready` holds (checked every 20 ms).
fn kill_when(mut child: Child, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the moment to kill never came"
        );
        if child.try_wait().unwrap().is_some() {
            panic!("the experiment ended before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killed_twice_then_rerun_gives_the_uninterrupted_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, clip, cfg) = setup(tmp.path());
    let log = |i: usize| tmp.path().join(format!("log{i}.txt"));
    let whole = tmp.path().join("whole");
    finish(experiment(&world, &clip, &cfg, &whole, 0, &log(0)), &log(0));
    let expected = std::fs::read(whole.join("results.json")).unwrap();

    let out = tmp.path().join("killed");
    let runs = out.join("runs");
    // 1. Mid-training: a run has its first epoch's checkpoint and no result yet.
    let child = experiment(&world, &clip, &cfg, &out, 40, &log(1));
    kill_when(child, || {
        count(&runs, "state.json", Some("result.json")) > 0
    });
    // 2. Mid-way through the runs: some are finished, others not.
    let child = experiment(&world, &clip, &cfg, &out, 40, &log(2));
    kill_when(child, || count(&runs, "result.json", None) >= 2);
    let resumed = std::fs::read_to_string(log(2)).unwrap();
    assert!(
        resumed.contains(", resumed"),
        "no run continued from its checkpoint:\n{resumed}"
    );
    finish(experiment(&world, &clip, &cfg, &out, 0, &log(3)), &log(3));
    assert_eq!(std::fs::read(out.join("results.json")).unwrap(), expected);

    // A rerun of the finished experiment trains and scores nothing, and writes the same file.
    let text = finish(experiment(&world, &clip, &cfg, &out, 0, &log(4)), &log(4));
    assert!(
        !text.contains("epoch 1: loss") && !text.contains("resumed"),
        "a finished run ran again:\n{text}"
    );
    assert_eq!(std::fs::read(out.join("results.json")).unwrap(), expected);

    // Moved, and without per-item test scores: the rerun scores the saved predictions again,
    // in the new place (they give the ratios' standard errors), and writes the same file.
    let moved = tmp.path().join("moved");
    std::fs::rename(&out, &moved).unwrap();
    let stripped = strip_items(&moved.join("runs"));
    assert!(stripped >= 4, "{stripped} test scores had per-item scores");
    finish(experiment(&world, &clip, &cfg, &moved, 0, &log(5)), &log(5));
    assert_eq!(std::fs::read(moved.join("results.json")).unwrap(), expected);
    assert_eq!(
        strip_items(&moved.join("runs")),
        stripped,
        "not scored again"
    );
}
