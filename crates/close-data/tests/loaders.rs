//! Every loader on small hand-written fixtures in the real formats (tests/fixtures/):
//! good records load, a malformed one is an error naming file and line, or is skipped and
//! counted with `LoadOptions::skip_bad`.

use std::path::PathBuf;

use close_data::coco::{load_coco_results, CocoCaptions, Karpathy};
use close_data::news::{load_visual_news, load_visual_news_with_articles};
use close_data::snli::{load_snli, load_snli_ve, Label};
use close_data::text::load_text_corpus;
use close_data::vqa::{
    captions_for_questions, load_vqa, load_vqa_results, load_vqae, training_targets,
    VqaAnnotations, VqaQuestions,
};
use close_data::LoadOptions;

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn strict() -> LoadOptions {
    LoadOptions::strict()
}
fn skip() -> LoadOptions {
    LoadOptions::skip_bad()
}

fn err_names(e: close_core::Error, file: &str, line: usize) -> String {
    let s = e.to_string();
    assert!(
        s.contains(&format!("{file}:{line}:")),
        "expected {file}:{line} in `{s}`"
    );
    s
}

#[test]
fn karpathy() {
    let (k, rep) = Karpathy::load_with(fx("coco/dataset_coco.json"), &strict()).unwrap();
    assert_eq!(rep.loaded, 3);
    assert_eq!(k.split("train").count(), 2, "train includes restval");
    assert_eq!(k.split("test").next().unwrap().captions().count(), 2);
    assert_eq!(
        k.captions_by_image()[&522418],
        vec!["A woman wearing a net on her head cutting a cake. "]
    );

    let e = Karpathy::load(fx("coco/dataset_coco_bad.json")).unwrap_err();
    let s = err_names(e, "dataset_coco_bad.json", 3);
    assert!(s.contains("images[1]") && s.contains("filename"), "{s}");
    let (k, rep) = Karpathy::load_with(fx("coco/dataset_coco_bad.json"), &skip()).unwrap();
    assert_eq!(k.images.len(), 1);
    assert_eq!(
        rep.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![Some(3), Some(4)]
    );
    assert!(rep.skipped[1].reason.contains("no sentences"));
}

#[test]
fn coco_captions_and_results() {
    let e = CocoCaptions::load(fx("coco/captions_val2014.json")).unwrap_err();
    let s = err_names(e, "captions_val2014.json", 8);
    assert!(s.contains("image_id 999"), "{s}");
    let (c, rep) = CocoCaptions::load_with(fx("coco/captions_val2014.json"), &skip()).unwrap();
    assert_eq!(c.annotations.len(), 3);
    assert_eq!(rep.skipped.len(), 2);
    assert_eq!(rep.skipped[1].line, Some(9));
    assert!(
        rep.skipped[1].reason.contains("caption"),
        "{:?}",
        rep.skipped
    );
    assert_eq!(c.by_image()[&391895].len(), 2);

    let e = load_coco_results(fx("coco/results.json"), &strict()).unwrap_err();
    let s = err_names(e, "results.json", 3);
    assert!(s.contains("duplicate image_id 522418"), "{s}");
    let (r, rep) = load_coco_results(fx("coco/results.json"), &skip()).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        rep.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![Some(3), Some(4)]
    );
}

#[test]
fn vqa_v2_join_and_results() {
    let e = VqaQuestions::load(fx("vqa/v2_OpenEnded_mscoco_val2014_questions.json")).unwrap_err();
    let s = err_names(e, "v2_OpenEnded_mscoco_val2014_questions.json", 5);
    assert!(s.contains("questions[3]") && s.contains("question"), "{s}");
    let (q, rep) = VqaQuestions::load_with(
        fx("vqa/v2_OpenEnded_mscoco_val2014_questions.json"),
        &skip(),
    )
    .unwrap();
    assert_eq!((q.questions.len(), rep.skipped.len()), (4, 1));
    assert_eq!(q.data_subtype, "val2014");

    let e = VqaAnnotations::load(fx("vqa/v2_mscoco_val2014_annotations.json")).unwrap_err();
    let s = err_names(e, "v2_mscoco_val2014_annotations.json", 5);
    assert!(s.contains("no answers"), "{s}");

    let qp = fx("vqa/v2_OpenEnded_mscoco_val2014_questions.json");
    let ap = fx("vqa/v2_mscoco_val2014_annotations.json");
    assert!(load_vqa(&qp, Some(&ap), &strict()).is_err());
    let (ex, rep) = load_vqa(&qp, Some(&ap), &skip()).unwrap();
    assert_eq!(ex.len(), 3);
    // skipped: the question without text, the annotation without answers, and the question
    // left without an annotation
    assert_eq!(rep.skipped.len(), 3, "{:?}", rep.skipped);
    let a = ex[0].annotation.as_ref().unwrap();
    assert_eq!(
        a.training_targets(),
        vec!["motorcycle".to_string(), "bike".to_string()]
    );
    assert_eq!(training_targets(["a", "b", "b", "c", "a"]), vec!["a", "b"]);

    let k = Karpathy::load(fx("coco/dataset_coco.json")).unwrap();
    let caps = captions_for_questions(&ex, &k).unwrap();
    assert_eq!(caps[&391895].len(), 2);

    let e = load_vqa_results(fx("vqa/results.json"), &strict()).unwrap_err();
    err_names(e, "results.json", 3);
    let (r, rep) = load_vqa_results(fx("vqa/results.json"), &skip()).unwrap();
    assert_eq!((r.len(), rep.skipped.len()), (2, 2));
    assert_eq!(rep.skipped[1].line, Some(4));
}

#[test]
fn vqa_e() {
    let e = load_vqae(fx("vqa/VQA-E_val_set.json"), &strict()).unwrap_err();
    let s = err_names(e, "VQA-E_val_set.json", 2);
    assert!(s.contains("empty explanation"), "{s}");
    let (v, rep) = load_vqae(fx("vqa/VQA-E_val_set.json"), &skip()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].explanation.0,
        "a man riding a motor bike on a dirt road"
    );
    assert_eq!(
        rep.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![Some(2), Some(3)]
    );
}

#[test]
fn snli_and_snli_ve() {
    let e = load_snli(fx("snli/snli_1.0_dev.jsonl"), &strict()).unwrap_err();
    err_names(e, "snli_1.0_dev.jsonl", 5);
    let (p, rep) = load_snli(fx("snli/snli_1.0_dev.jsonl"), &skip()).unwrap();
    assert_eq!(
        p.iter().map(|x| x.label).collect::<Vec<_>>(),
        vec![Label::Neutral, Label::Entailment]
    );
    assert_eq!(rep.filtered.len(), 1, "the `-` pair is filtered");
    assert_eq!(rep.filtered[0].line, Some(4));
    assert_eq!(
        rep.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![Some(5), Some(6)]
    );
    assert!(rep.skipped[1].reason.contains("maybe"));

    let e = load_snli_ve(fx("snli/snli_ve_dev.jsonl"), &strict()).unwrap_err();
    let s = err_names(e, "snli_ve_dev.jsonl", 3);
    assert!(s.contains("Flickr30K_ID"), "{s}");
    let (p, rep) = load_snli_ve(fx("snli/snli_ve_dev.jsonl"), &skip()).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p[2].image_id, "2407214681", "numeric ids are accepted");
    assert_eq!(p[1].label, Label::Contradiction);
    assert_eq!(rep.skipped.len(), 1);
}

#[test]
fn visual_news() {
    let e = load_visual_news(fx("news/data.json"), &strict()).unwrap_err();
    let s = err_names(e, "data.json", 3);
    assert!(s.contains("empty caption"), "{s}");
    let (ex, rep) =
        load_visual_news_with_articles(fx("news/data.json"), fx("news"), &skip()).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        ex[0].article_first_line,
        "Thousands of people protested outside parliament against the new law."
    );
    assert_eq!(
        ex[0].item.image_file(&fx("news")),
        fx("news/bbc/images/0001/1001.jpg")
    );
    assert_eq!(rep.skipped.len(), 1);
    assert_eq!(rep.filtered.len(), 1, "missing article file");
    assert!(rep.filtered[0].reason.contains("1004"));
}

#[test]
fn text_corpus() {
    let e = load_text_corpus(fx("text/corpus.txt"), &strict()).unwrap_err();
    let s = err_names(e, "corpus.txt", 4);
    assert!(s.contains("UTF-8"), "{s}");
    let (lines, rep) = load_text_corpus(fx("text/corpus.txt"), &skip()).unwrap();
    assert_eq!(
        lines,
        vec![
            "a red circle above a blue square.",
            "a small green star.",
            "a gray cross."
        ]
    );
    assert_eq!(rep.skipped.len(), 1);
}

#[test]
fn missing_file_names_the_path() {
    let e = Karpathy::load(fx("nope/dataset_coco.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope/dataset_coco.json"), "{e}");
}
