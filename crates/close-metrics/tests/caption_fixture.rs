//! Captioning metrics against pycocoevalcap outputs recorded by
//! `tests/fixtures/caption/generate.py` (Java PTBTokenizer + Python scorers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use close_metrics::{caption, ptb};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caption")
}

fn expected() -> Value {
    let s = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

const KEYS: [&str; 6] = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"];

#[test]
fn ptb_tokenizer_matches_the_jar_on_every_tricky_case() {
    let exp = expected();
    let cases = exp["ptb_cases"].as_array().unwrap();
    let raw: Vec<&str> = cases.iter().map(|c| c[0].as_str().unwrap()).collect();
    let ours = ptb::ptb_tokens(&raw);
    let mut bad = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let want = c[1].as_str().unwrap();
        let got = ours[i].join(" ");
        if got != want {
            bad.push(format!(
                "{:?}\n   jar: {:?}\n  ours: {:?}",
                raw[i], want, got
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn tokenization_and_scores_match_pycocoevalcap() {
    let exp = expected();
    let refs = caption::load_coco_annotations(dir().join("annotations.json")).unwrap();
    let hyps = caption::load_coco_results(dir().join("results.json")).unwrap();
    // Tokenization, reference lists in image order as pycocoevalcap runs it.
    let ids: Vec<u64> = hyps.keys().copied().collect();
    let flat: Vec<&str> = ids
        .iter()
        .flat_map(|id| refs[id].iter().map(|s| s.as_str()))
        .collect();
    let tok = ptb::tokenize(&flat);
    let mut k = 0;
    for id in &ids {
        let want: Vec<String> = exp["tokenized_refs"][id.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            &tok[k..k + want.len()],
            &want[..],
            "references of image {id}"
        );
        k += want.len();
    }
    let raw_h: Vec<&str> = ids.iter().map(|id| hyps[id].as_str()).collect();
    for (id, t) in ids.iter().zip(ptb::tokenize(&raw_h)) {
        assert_eq!(
            t,
            exp["tokenized_hyps"][id.to_string()].as_str().unwrap(),
            "hypothesis of {id}"
        );
    }

    let used: BTreeMap<u64, Vec<String>> = refs
        .into_iter()
        .filter(|(id, _)| hyps.contains_key(id))
        .collect();
    let s = caption::score(&used, &hyps).unwrap();
    let got = s.to_json();
    for key in KEYS {
        let (a, b) = (
            got[key].as_f64().unwrap(),
            exp["overall"][key].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-9,
            "{key}: ours {a} vs pycocoevalcap {b}"
        );
    }
    assert!(got.get("METEOR").is_none());
    let per = s.per_image_json();
    let per = per.as_array().unwrap();
    assert_eq!(per.len(), exp["per_image"].as_object().unwrap().len());
    for p in per {
        let id = p["image_id"].as_u64().unwrap().to_string();
        for key in KEYS {
            let (a, b) = (
                p[key].as_f64().unwrap(),
                exp["per_image"][&id][key].as_f64().unwrap(),
            );
            assert!((a - b).abs() <= 1e-9, "image {id} {key}: ours {a} vs {b}");
        }
    }
}

#[test]
fn file_evaluation_scores_only_images_with_results() {
    let exp = expected();
    let s = caption::evaluate_files(
        &dir().join("annotations.json"),
        &dir().join("results.json"),
        &caption::ScoreOptions::default(),
    )
    .unwrap();
    let cider = exp["overall"]["CIDEr"].as_f64().unwrap();
    assert!((s.cider - cider).abs() <= 1e-9);
    // One annotated image has no result: strict mode refuses.
    let strict = caption::ScoreOptions {
        require_all: true,
        ..Default::default()
    };
    let e = caption::evaluate_files(
        &dir().join("annotations.json"),
        &dir().join("results.json"),
        &strict,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no hypothesis"), "{e}");
}

#[test]
fn bad_result_files_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let ann = dir().join("annotations.json");
    let write = |name: &str, s: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let opts = caption::ScoreOptions::default();
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("results.json")).unwrap())
            .unwrap();
    let id = first[0]["image_id"].as_u64().unwrap();

    let p = write(
        "dup.json",
        &format!(r#"[{{"image_id":{id},"caption":"a"}},{{"image_id":{id},"caption":"b"}}]"#),
    );
    let e = caption::evaluate_files(&ann, &p, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dup.json") && e.contains("twice"), "{e}");

    let p = write("extra.json", r#"[{"image_id":7,"caption":"a"}]"#);
    let e = caption::evaluate_files(&ann, &p, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not in"), "{e}");

    let p = write("bad.json", "[{\"image_id\":1,\n\"caption\": }]");
    let e = caption::evaluate_files(&ann, &p, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json:2"), "{e}");

    let p = write("type.json", r#"[{"image_id":"x","caption":"a"}]"#);
    assert!(caption::evaluate_files(&ann, &p, &opts).is_err());

    // Empty hypothesis: scored (as pycocoevalcap does), not an error.
    let p = write(
        "empty.json",
        &format!(r#"[{{"image_id":{id},"caption":""}}]"#),
    );
    let s = caption::evaluate_files(&ann, &p, &opts).unwrap();
    assert_eq!(s.bleu[0], 0.0);
}

/// METEOR through the real jar, only where Java and pycocoevalcap's jar are present (CI has
/// neither; the test then returns early and says so).
#[test]
fn meteor_via_jar_when_available() {
    let jar = std::env::var("CLOSE_METEOR_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(
                "/work/venv/lib/python3.11/site-packages/pycocoevalcap/meteor/meteor-1.5.jar",
            )
        });
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .is_ok();
    if !jar.is_file() || !java {
        eprintln!("skipping METEOR test: java or {} missing", jar.display());
        return;
    }
    let refs = vec![vec![
        "a dog runs on the grass".to_string(),
        "a brown dog running".to_string(),
    ]];
    let hyps = vec!["a dog running on grass".to_string()];
    let (corpus, per) = close_metrics::meteor::meteor(&jar, &refs, &hyps).unwrap();
    assert_eq!(per.len(), 1);
    assert!(corpus > 0.2 && corpus < 1.0, "{corpus}");
}
