//! Every task builds its examples from the files `close world` writes (the standard
//! formats), with the reference's semantics.

use close_core::progress::NoProgress;
use close_data::world::{generate, WorldConfig, WorldPaths};
use close_model::task::{ClipSource, DataPaths, Task, TaskData, TrainOn};

#[test]
fn every_task_loads_from_a_generated_world() {
    let dir = tempfile::tempdir().unwrap();
    generate(&WorldConfig::tiny(), dir.path(), &NoProgress).unwrap();
    let paths = DataPaths::new(dir.path());
    let k = close_data::coco::Karpathy::load(dir.path().join("dataset_coco.json")).unwrap();
    let caps = k.captions_by_image();

    let s = TaskData::load(Task::SCap, TrainOn::Text, &paths).unwrap();
    let n_train_caps: usize = k.split("train").map(|im| im.sentences.len()).sum();
    assert_eq!(s.train.len(), n_train_caps);
    assert!(s
        .train
        .iter()
        .all(|e| matches!(&e.clip, ClipSource::Texts(t) if t.len() == 1) && e.targets.len() == 1));
    assert!(!s.val.is_empty() && !s.test.is_empty());
    assert!(s
        .test
        .iter()
        .all(|e| e.references.len() == caps[&e.image.parse::<u64>().unwrap()].len()));

    let m = TaskData::load(Task::MCap, TrainOn::Text, &paths).unwrap();
    assert!(m
        .train
        .iter()
        .all(|e| !e.targets.is_empty() && e.targets.iter().all(|t| *t == t.to_lowercase())));

    let img = TaskData::load(Task::SCap, TrainOn::Images, &paths).unwrap();
    assert_eq!(img.train.len(), k.split("train").count());
    assert!(img
        .train
        .iter()
        .all(|e| matches!(e.clip, ClipSource::Image(_))));

    let v = TaskData::load(Task::Vqa, TrainOn::Text, &paths).unwrap();
    assert!(!v.train.is_empty() && !v.test.is_empty());
    for e in &v.train {
        assert!(e.input_text.is_some() && !e.targets.is_empty());
        // The stand-in is every caption of the image (averaged later).
        let ClipSource::Texts(t) = &e.clip else {
            panic!("vqa text stand-in")
        };
        assert!(t.len() >= 2);
    }
    assert!(v
        .test
        .iter()
        .all(|e| e.references.len() == 10 && e.answer_type.is_some()));

    let q = TaskData::load(Task::Evqa, TrainOn::Text, &paths).unwrap();
    assert!(q
        .train
        .iter()
        .all(|e| matches!(&e.clip, ClipSource::Texts(t) if t.len() == 1)));

    // evqa-explain: the same items; the target explains the answer, and the explanation is
    // the stand-in (so text-only training learns to read it back from its vector).
    let x = TaskData::load(Task::EvqaExplain, TrainOn::Text, &paths).unwrap();
    assert_eq!(x.train.len(), q.train.len());
    for (ex, plain) in x.train.iter().zip(&q.train) {
        let ClipSource::Texts(why) = &ex.clip else {
            panic!("evqa-explain text stand-in")
        };
        for (t, answer) in ex.targets.iter().zip(&plain.targets) {
            assert_eq!(*t, format!("{answer} because {}", why[0].to_lowercase()));
            assert_eq!(close_model::task::split_explained(t).0, answer);
        }
    }
    assert!(x.test.iter().all(|e| e.explanations.len() == 1));
    assert!(q.test.iter().all(|e| e.explanations.is_empty()));

    // News: the article's lead paragraph is the input, the image its own file.
    let n = TaskData::load(Task::News, TrainOn::Images, &paths).unwrap();
    assert!(n.test.iter().all(|e| e.image.starts_with("news:")
        && n.image_files[&e.image].is_file()
        && e.input_text.as_deref().is_some_and(|a| a.len() > 40)));

    let ve = TaskData::load(Task::Ve, TrainOn::Text, &paths).unwrap();
    assert!(ve
        .train
        .iter()
        .all(|e| ["entailment", "neutral", "contradiction"].contains(&e.targets[0].as_str())));
    assert!(ve.test.iter().all(|e| e.input_text.is_some()));

    let st = TaskData::load(Task::Style, TrainOn::Text, &paths).unwrap();
    assert!(!st.train.is_empty() && !st.test.is_empty());
    assert!(TaskData::load(Task::Style, TrainOn::Images, &paths).is_err());

    // Missing files are named.
    std::fs::remove_file(WorldPaths::new(dir.path()).visual_news("train")).unwrap();
    let e = TaskData::load(Task::News, TrainOn::Text, &paths)
        .unwrap_err()
        .to_string();
    assert!(e.contains("visual_news_train.json"), "{e}");
}

#[test]
fn evaluation_reads_no_train_file_and_gets_the_same_val_and_test() {
    let dir = tempfile::tempdir().unwrap();
    generate(&WorldConfig::tiny(), dir.path(), &NoProgress).unwrap();
    let paths = DataPaths::new(dir.path());
    // Every task: each has val and test in the world.
    let tasks = Task::ALL;
    let full: Vec<TaskData> = tasks
        .iter()
        .map(|&t| TaskData::load(t, TrainOn::Text, &paths).unwrap())
        .collect();
    // Every train-only file goes; the Karpathy file stays (it holds val and test captions).
    let w = WorldPaths::new(dir.path());
    for f in [
        w.vqa_questions("train"),
        w.vqa_annotations("train"),
        w.vqae("train"),
        w.snli_ve("train"),
        w.visual_news("train"),
        w.style_train(),
    ] {
        std::fs::remove_file(&f).unwrap();
    }
    for (t, d) in tasks.iter().zip(&full) {
        let e = TaskData::load_eval(*t, &paths).unwrap();
        assert!(e.train.is_empty(), "{t}");
        assert!(!e.test.is_empty(), "{t}");
        assert_eq!((&e.val, &e.test), (&d.val, &d.test), "{t}");
    }
    // Training still needs them, and says which is missing.
    let e = TaskData::load(Task::Vqa, TrainOn::Text, &paths).unwrap_err();
    assert!(e.to_string().contains("train_questions.json"), "{e}");
}
