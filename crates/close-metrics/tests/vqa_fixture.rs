//! VQA accuracy against the official evaluator's outputs recorded by
//! `tests/fixtures/vqa/generate.py` (GT-Vision-Lab/VQA a013f00 under Python 2.7). Exact.

use std::path::{Path, PathBuf};

use close_metrics::vqa;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqa")
}

#[test]
fn matches_official_evaluator_exactly() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap())
            .unwrap();
    let s = vqa::evaluate_files(
        &dir().join("questions.json"),
        &dir().join("annotations.json"),
        &dir().join("results.json"),
    )
    .unwrap();
    assert_eq!(s.to_json(), exp["accuracy"]);
    let eval_qa = exp["evalQA"].as_object().unwrap();
    assert_eq!(eval_qa.len(), s.per_question.len());
    for (id, v) in eval_qa {
        let ours = s.per_question[&id.parse::<u64>().unwrap()];
        assert_eq!(ours, v.as_f64().unwrap(), "question {id}");
    }
}

#[test]
fn result_set_must_match_annotations() {
    let t = tempfile::tempdir().unwrap();
    let q = dir().join("questions.json");
    let a = dir().join("annotations.json");
    let res: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("results.json")).unwrap())
            .unwrap();
    let write = |name: &str, v: &Value| {
        let p = t.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let p = write("missing.json", &Value::Array(res[1..].to_vec()));
    let e = vqa::evaluate_files(&q, &a, &p).unwrap_err().to_string();
    assert!(e.contains("without a prediction"), "{e}");
    let mut extra = res.clone();
    extra.push(serde_json::json!({"question_id": 999999, "answer": "x"}));
    let e = vqa::evaluate_files(&q, &a, &write("extra.json", &Value::Array(extra)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown questions"), "{e}");
    let mut dup = res.clone();
    dup.push(res[0].clone());
    let e = vqa::evaluate_files(&q, &a, &write("dup.json", &Value::Array(dup)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("more than once") && e.contains("dup.json"),
        "{e}"
    );
    std::fs::write(
        t.path().join("bad.json"),
        "[{\"question_id\": 1,\n \"answer\": 3}]",
    )
    .unwrap();
    let e = vqa::evaluate_files(&q, &a, &t.path().join("bad.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json:2"), "{e}");
}
