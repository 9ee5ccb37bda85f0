//! The shapes world end to end: generate a tiny world, load every file with the library's
//! loaders, and check every caption, answer and label against `scenes.json` with an
//! independent reader of the world's English; same seed → identical bytes.

use std::collections::BTreeMap;
use std::path::Path;

use close_core::progress::NoProgress;
use close_data::bias::{naive_bayes_accuracy, question_prior_accuracy};
use close_data::coco::{CocoCaptions, Karpathy};
use close_data::news::{load_visual_news_with_articles, NewsItem};
use close_data::snli::{load_snli_ve, Label};
use close_data::text::load_text_corpus;
use close_data::vqa::{
    captions_for_questions, load_vqa, load_vqae, VqaAnnotations, VqaQuestions, VqaeEntry,
};
use close_data::world::{self, Object, Scene, ScenesFile, WorldConfig, WorldPaths, SPLITS};
use close_data::LoadOptions;

const SHAPES: [(&str, &str, &str); 6] = [
    ("circle", "circles", "circle"),
    ("square", "squares", "square"),
    ("triangle", "triangles", "triangle"),
    ("diamond", "diamonds", "diamond"),
    ("star", "stars", "star"),
    ("cross", "crosses", "cross"),
];
const COLORS: [&str; 8] = [
    "red", "orange", "yellow", "green", "blue", "purple", "brown", "gray",
];
const NUMS: [&str; 10] = [
    "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
const CELLS: [[&str; 3]; 3] = [
    ["top left", "top middle", "top right"],
    ["middle left", "center", "middle right"],
    ["bottom left", "bottom middle", "bottom right"],
];

/// A noun phrase read from text: attributes named (as strings) and the quantity word.
#[derive(Debug, Clone)]
struct Np {
    qty: String,
    size: Option<&'static str>,
    color: Option<String>,
    shape: Option<String>,
}

impl Np {
    fn matches(&self, o: &Object) -> bool {
        let j = serde_json::to_value(o).unwrap();
        self.size.is_none_or(|s| j["size"] == s)
            && self.color.as_ref().is_none_or(|c| j["color"] == c.as_str())
            && self.shape.as_ref().is_none_or(|s| j["shape"] == s.as_str())
    }
    fn count(&self, sc: &Scene) -> usize {
        sc.objects.iter().filter(|o| self.matches(o)).count()
    }
    fn the<'a>(&self, sc: &'a Scene, ctx: &str) -> &'a Object {
        let m: Vec<&Object> = sc.objects.iter().filter(|o| self.matches(o)).collect();
        assert_eq!(
            m.len(),
            1,
            "`the` phrase {self:?} does not pick one object in `{ctx}` of image {}",
            sc.image_id
        );
        m[0]
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || ",.:?".contains(c))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Read a noun phrase (without determiner) starting at `w[i]`; returns it and the next index.
fn np_at(w: &[String], i: usize, qty: &str) -> Option<(Np, usize)> {
    let mut j = i;
    let size = match w.get(j).map(String::as_str) {
        Some("small") => Some("small"),
        Some("large" | "big") => Some("large"),
        _ => None,
    };
    if size.is_some() {
        j += 1;
    }
    let color = w.get(j).filter(|x| COLORS.contains(&x.as_str())).cloned();
    if color.is_some() {
        j += 1;
    }
    let noun = w.get(j)?;
    let shape = if noun == "shape" || noun == "shapes" {
        None
    } else {
        Some(
            SHAPES
                .iter()
                .find(|(s, p, _)| s == noun || p == noun)?
                .2
                .to_string(),
        )
    };
    Some((
        Np {
            qty: qty.to_string(),
            size,
            color,
            shape,
        },
        j + 1,
    ))
}

fn cell_at(w: &[String], i: usize) -> Option<((u8, u8), usize)> {
    // "in the <cell words> [corner]"
    if w.get(i).map(String::as_str) != Some("in") || w.get(i + 1).map(String::as_str) != Some("the")
    {
        return None;
    }
    for (r, row) in CELLS.iter().enumerate() {
        for (c, name) in row.iter().enumerate() {
            let n: Vec<&str> = name.split(' ').collect();
            if w.len() >= i + 2 + n.len()
                && w[i + 2..i + 2 + n.len()]
                    .iter()
                    .zip(&n)
                    .all(|(a, b)| a == b)
            {
                let mut end = i + 2 + n.len();
                if w.get(end).map(String::as_str) == Some("corner") {
                    end += 1;
                }
                return Some(((r as u8, c as u8), end));
            }
        }
    }
    None
}

fn rel_at(w: &[String], i: usize) -> Option<(&'static str, usize)> {
    let g = |k: usize| w.get(i + k).map(String::as_str);
    match (g(0), g(1), g(2), g(3)) {
        (Some("above"), ..) => Some(("above", i + 1)),
        (Some("below"), ..) => Some(("below", i + 1)),
        (Some("to"), Some("the"), Some("left"), Some("of")) => Some(("left", i + 4)),
        (Some("to"), Some("the"), Some("right"), Some("of")) => Some(("right", i + 4)),
        _ => None,
    }
}

fn holds(rel: &str, a: &Object, b: &Object) -> bool {
    match rel {
        "above" => a.row < b.row,
        "below" => a.row > b.row,
        "left" => a.col < b.col,
        "right" => a.col > b.col,
        _ => panic!("{rel}"),
    }
}

/// Check that a caption is true of the scene; returns its noun phrases with cells.
fn check_caption(text: &str, sc: &Scene) -> Vec<(Np, Option<(u8, u8)>)> {
    let w = words(text);
    let mut nps: Vec<(Np, Option<(u8, u8)>)> = Vec::new();
    let mut lead_cell = None;
    let mut i = 0;
    if let Some((cell, end)) = cell_at(&w, 0) {
        lead_cell = Some(cell);
        i = end;
    }
    while i < w.len() {
        let d = w[i].as_str();
        let is_det = d == "a" || d == "an" || NUMS[1..].contains(&d);
        if let Some((np, next)) = if is_det { np_at(&w, i + 1, d) } else { None } {
            let mut cell = None;
            let mut j = next;
            if let Some((c, end)) = cell_at(&w, j) {
                cell = Some(c);
                j = end;
            }
            if lead_cell.is_some() && nps.is_empty() && cell.is_none() {
                cell = lead_cell;
            }
            // quantity
            let n = if np.qty == "a" || np.qty == "an" {
                None
            } else {
                NUMS.iter().position(|x| *x == np.qty)
            };
            let matching: Vec<&Object> = sc
                .objects
                .iter()
                .filter(|o| np.matches(o) && cell.is_none_or(|(r, c)| o.row == r && o.col == c))
                .collect();
            match n {
                None => assert!(
                    !matching.is_empty(),
                    "`{text}`: {np:?} at {cell:?} not in image {}",
                    sc.image_id
                ),
                Some(n) => assert_eq!(
                    matching.len(),
                    n,
                    "`{text}`: count of {np:?} in image {}",
                    sc.image_id
                ),
            }
            // relation to the next phrase
            let k = if w.get(j).map(String::as_str) == Some("is") {
                j + 1
            } else {
                j
            };
            if let Some((rel, after)) = rel_at(&w, k) {
                let d2 = w.get(after).map(String::as_str).unwrap_or("");
                let (np2, _) = np_at(&w, after + 1, d2)
                    .unwrap_or_else(|| panic!("`{text}`: no phrase after relation"));
                let ok = matching.iter().any(|a| {
                    sc.objects
                        .iter()
                        .any(|b| np2.matches(b) && !std::ptr::eq(*a, b) && holds(rel, a, b))
                });
                assert!(
                    ok,
                    "`{text}`: relation {rel} false in image {}",
                    sc.image_id
                );
                nps.push((np, cell));
                i = after; // the second phrase is read (and checked) by the loop
                continue;
            }
            nps.push((np, cell));
            i = j;
        } else {
            i += 1;
        }
    }
    assert!(!nps.is_empty(), "`{text}`: no noun phrase read");
    nps
}

/// A complete caption lists exactly the scene's objects.
fn check_complete(text: &str, sc: &Scene, positional: bool) {
    let nps = check_caption(text, sc);
    let listed: Vec<&(Np, Option<(u8, u8)>)> = nps
        .iter()
        .filter(|(np, _)| np.shape.is_some() && np.color.is_some() && np.size.is_some())
        .collect();
    let total: usize = listed
        .iter()
        .map(|(np, _)| {
            if np.qty == "a" || np.qty == "an" {
                1
            } else {
                NUMS.iter().position(|x| *x == np.qty).unwrap()
            }
        })
        .sum();
    assert_eq!(
        total,
        sc.objects.len(),
        "`{text}` does not list all objects of image {}",
        sc.image_id
    );
    for (np, cell) in listed {
        if positional {
            assert!(cell.is_some(), "`{text}`: {np:?} without a cell");
        }
        let c = sc
            .objects
            .iter()
            .filter(|o| np.matches(o) && cell.is_none_or(|(r, c)| o.row == r && o.col == c))
            .count();
        let want = if np.qty == "a" || np.qty == "an" {
            1
        } else {
            NUMS.iter().position(|x| *x == np.qty).unwrap()
        };
        assert_eq!(
            c, want,
            "`{text}`: {np:?} listed {want} times, scene has {c}"
        );
    }
}

fn the_np(s: &str) -> Np {
    let w = words(s);
    assert_eq!(w[0], "the", "`{s}`");
    let (np, next) = np_at(&w, 1, "the").unwrap_or_else(|| panic!("no phrase in `{s}`"));
    assert_eq!(next, w.len(), "unread words in `{s}`");
    np
}

fn answer_question(q: &str, sc: &Scene) -> String {
    let q = q.strip_suffix('?').unwrap();
    let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
    if let Some(r) = q.strip_prefix("what color is ") {
        let o = the_np(r).the(sc, q);
        return serde_json::to_value(o).unwrap()["color"]
            .as_str()
            .unwrap()
            .into();
    }
    if let Some(r) = q.strip_prefix("what shape is ") {
        let o = the_np(r).the(sc, q);
        return serde_json::to_value(o).unwrap()["shape"]
            .as_str()
            .unwrap()
            .into();
    }
    if let Some(r) = q.strip_prefix("what size is ").or_else(|| {
        q.strip_prefix("is ")
            .and_then(|r| r.strip_suffix(" small or large"))
    }) {
        let o = the_np(r).the(sc, q);
        return serde_json::to_value(o).unwrap()["size"]
            .as_str()
            .unwrap()
            .into();
    }
    if let Some(r) = q
        .strip_prefix("how many ")
        .and_then(|r| r.strip_suffix(" are there"))
    {
        let w = words(r);
        let (np, next) = np_at(&w, 0, "").unwrap();
        assert_eq!(next, w.len());
        return np.count(sc).to_string();
    }
    if let Some(r) = q.strip_prefix("is there ") {
        let w = words(r);
        let (np, next) = np_at(&w, 1, &w[0]).unwrap();
        assert_eq!(next, w.len());
        return yn(np.count(sc) > 0);
    }
    if let Some(r) = q.strip_prefix("where is ") {
        let o = the_np(r).the(sc, q);
        return CELLS[o.row as usize][o.col as usize].into();
    }
    if let Some(r) = q.strip_prefix("is ") {
        let w = words(r);
        let (a, next) = np_at(&w, 1, "the").unwrap();
        let (rel, after) = rel_at(&w, next).unwrap_or_else(|| panic!("no relation in `{q}`"));
        let (b, end) = np_at(&w, after + 1, "the").unwrap();
        assert_eq!(end, w.len());
        return yn(holds(rel, a.the(sc, q), b.the(sc, q)));
    }
    panic!("unknown question form `{q}`")
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum T {
    True,
    False,
    Unknown,
}

fn clause_truth(c: &str, sc: &Scene) -> T {
    let tb = |b: bool| if b { T::True } else { T::False };
    let w = words(c);
    if let Some(r) = c.strip_prefix("there is no ") {
        let w = words(r);
        return tb(np_at(&w, 0, "no").unwrap().0.count(sc) == 0);
    }
    if let Some(r) = c.strip_prefix("there is exactly one ") {
        let w = words(r);
        return tb(np_at(&w, 0, "one").unwrap().0.count(sc) == 1);
    }
    if let Some(r) = c.strip_prefix("there is ") {
        let w = words(r);
        return tb(np_at(&w, 1, &w[0]).unwrap().0.count(sc) > 0);
    }
    if let Some(r) = c.strip_prefix("there are ") {
        let w = words(r);
        let n = NUMS.iter().position(|x| *x == w[0]).unwrap();
        return tb(np_at(&w, 1, &w[0]).unwrap().0.count(sc) == n);
    }
    if let Some(r) = c.strip_prefix("the background is in front of ") {
        the_np(r).the(sc, c);
        return T::False;
    }
    let (a, next) = np_at(&w, 1, "the").unwrap_or_else(|| panic!("`{c}`"));
    let a = a.the(sc, c);
    let rest = w[next..].join(" ");
    let ja = serde_json::to_value(a).unwrap();
    if let Some(col) = rest
        .strip_prefix("is made of ")
        .and_then(|r| r.strip_suffix(" paint"))
    {
        return tb(ja["color"] == col);
    }
    if rest.starts_with("is made of ")
        || rest.starts_with("is heavier than ")
        || rest.starts_with("is lighter than ")
        || rest.starts_with("was drawn before ")
        || rest.starts_with("was drawn after ")
        || ((rest.starts_with("is in front of ") || rest.starts_with("is behind "))
            && !rest.ends_with("the background"))
    {
        return T::Unknown;
    }
    if rest == "is in front of the background" {
        return T::True;
    }
    let rest = rest
        .strip_prefix("is drawn in ")
        .map(|c| format!("is {c}"))
        .unwrap_or(rest);
    let rest = rest
        .strip_prefix("is drawn ")
        .map(|c| format!("is {c}"))
        .unwrap_or(rest);
    let rest = rest
        .strip_prefix("was drawn ")
        .map(|c| format!("is {c}"))
        .unwrap_or(rest);
    let rw = words(&rest);
    if rw.len() == 2 && COLORS.contains(&rw[1].as_str()) {
        return tb(ja["color"] == rw[1].as_str());
    }
    if rw.len() == 2 && (rw[1] == "small" || rw[1] == "large") {
        return tb(ja["size"] == rw[1].as_str());
    }
    if let Some(cellname) = rest.strip_prefix("is in the ") {
        return tb(CELLS[a.row as usize][a.col as usize] == cellname);
    }
    for (p, f) in [
        ("is bigger than ", 1i32),
        ("is smaller than ", -1),
        ("is the same size as ", 0),
    ] {
        if let Some(r) = rest.strip_prefix(p) {
            let b = serde_json::to_value(the_np(r).the(sc, c)).unwrap();
            let s = |v: &serde_json::Value| -> i32 {
                if v["size"] == "large" {
                    1
                } else {
                    0
                }
            };
            return tb((s(&ja) - s(&b)).signum() == f);
        }
    }
    if let Some((rel, after)) = rel_at(&rw, 1) {
        let (b, end) = np_at(&rw, after + 1, "the").unwrap();
        assert_eq!(end, rw.len(), "`{c}`");
        return tb(holds(rel, a, b.the(sc, c)));
    }
    panic!("unknown clause `{c}`")
}

fn label_of(h: &str, sc: &Scene) -> Label {
    let ts: Vec<T> = h
        .strip_suffix('.')
        .unwrap()
        .split(" and ")
        .map(|c| clause_truth(c, sc))
        .collect();
    if ts.contains(&T::False) {
        Label::Contradiction
    } else if ts.contains(&T::Unknown) {
        Label::Neutral
    } else {
        Label::Entailment
    }
}

/// Visual News: one item per image of the split, its own id (not an image id), the image's
/// file, an article whose lead paragraph names the caption's person, and a caption whose
/// shapes are the image's and appear nowhere in the article.
fn check_news(root: &Path, file: &Path, by_id: &BTreeMap<u64, &Scene>, k: &Karpathy) -> usize {
    let (items, rep) = load_visual_news_with_articles(file, root, &LoadOptions::strict()).unwrap();
    assert!(rep.filtered.is_empty() && rep.skipped.is_empty(), "{rep:?}");
    let image_of: BTreeMap<std::path::PathBuf, u64> = k
        .images
        .iter()
        .map(|im| (root.join(im.rel_path()), im.image_id()))
        .collect();
    for e in &items {
        let image_id = image_of[&e.item.image_file(root)];
        assert_ne!(e.item.id.0, image_id.to_string());
        let sc = by_id[&image_id];
        let article = std::fs::read_to_string(e.item.article_file(root)).unwrap();
        assert!(article.lines().count() > 1, "{article}");
        let person: Vec<&str> = e.article_first_line.split(", ").take(1).collect();
        assert!(e.item.caption.contains(person[0]), "{e:?}");
        let (caption, text) = (words(&e.item.caption), words(&article));
        for o in &sc.objects {
            let colour = COLORS[o.color as usize].to_string();
            assert!(caption.contains(&colour), "{e:?} {sc:?}");
            assert!(!text.contains(&colour), "{article}");
        }
    }
    items.len()
}

fn gen(dir: &Path, cfg: &WorldConfig) -> close_data::world::WorldSummary {
    world::generate(cfg, dir, &NoProgress).unwrap()
}

#[test]
fn world_validates_against_loaders_and_scenes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        images: 60,
        seed: 7,
        ..WorldConfig::tiny()
    };
    let summary = gen(dir.path(), &cfg);
    let p = WorldPaths::new(dir.path());
    let strict = LoadOptions::strict();
    let scenes = ScenesFile::load(p.scenes()).unwrap();
    let by_id: BTreeMap<u64, &Scene> = scenes
        .images
        .iter()
        .map(|r| (r.scene.image_id, &r.scene))
        .collect();
    assert_eq!(scenes.images.len(), 60);

    // Karpathy: captions true; one complete positional caption per image; listings complete
    let (k, rep) = Karpathy::load_with(p.karpathy(), &strict).unwrap();
    assert!(rep.skipped.is_empty());
    assert_eq!(k.images.len(), 60);
    for (im, rec) in k.images.iter().zip(&scenes.images) {
        let sc = &rec.scene;
        assert_eq!(im.image_id(), sc.image_id);
        assert!(
            dir.path().join(im.rel_path()).is_file(),
            "{:?}",
            im.rel_path()
        );
        assert_eq!(im.sentences.len(), 5);
        let mut positional = 0;
        let mut naming_a_cell = 0;
        for (s, t) in im.sentences.iter().zip(&rec.caption_templates) {
            let nps = check_caption(&s.raw, sc);
            naming_a_cell += usize::from(nps.iter().any(|(_, cell)| cell.is_some()));
            if t.starts_with("positional") {
                positional += 1;
                check_complete(&s.raw, sc, true);
            } else if [
                "count_listing",
                "picture_of",
                "on_background",
                "there_is_listing",
            ]
            .contains(&t.as_str())
            {
                check_complete(&s.raw, sc, false);
            }
        }
        assert!(
            positional >= 1,
            "image {} has no complete positional caption",
            sc.image_id
        );
        // A lone object's cell is named often enough for a CLIP to learn to match it.
        if sc.objects.len() == 1 {
            assert!(
                naming_a_cell >= 3,
                "lone object of image {}: {naming_a_cell} captions name its cell",
                sc.image_id
            );
        }
        let img = image::open(dir.path().join(im.rel_path())).unwrap();
        assert_eq!((img.width(), img.height()), (sc.width, sc.height));
    }

    let mut yes = 0;
    let mut no = 0;
    let mut types = BTreeMap::<String, usize>::new();
    let mut labels = BTreeMap::<Label, usize>::new();
    for split in SPLITS {
        let caps = CocoCaptions::load(p.captions(split)).unwrap();
        assert_eq!(caps.images.len(), summary.splits[split].images);
        // VQA: every answer re-derived from the scene
        let (ex, rep) = load_vqa(
            p.vqa_questions(split),
            Some(&p.vqa_annotations(split)),
            &strict,
        )
        .unwrap();
        assert!(rep.skipped.is_empty());
        let stand_in = captions_for_questions(&ex, &k).unwrap();
        for e in &ex {
            let a = e.annotation.as_ref().unwrap();
            assert_eq!(a.answers.len(), 10);
            let sc = by_id[&e.question.image_id];
            assert_eq!(
                answer_question(&e.question.question, sc),
                a.multiple_choice_answer,
                "{}",
                e.question.question
            );
            assert_eq!(stand_in[&e.question.image_id].len(), 5);
            *types.entry(a.question_type.clone()).or_default() += 1;
            match a.multiple_choice_answer.as_str() {
                "yes" => yes += 1,
                "no" => no += 1,
                _ => {}
            }
        }
        // VQA-E: the explanation is one of the image's captions
        let (ve_e, _) = load_vqae(p.vqae(split), &strict).unwrap();
        for e in &ve_e {
            let caps_of = &stand_in[&e.img_id];
            assert!(caps_of.contains(&e.explanation.0), "{e:?}");
            assert_eq!(
                answer_question(&e.question, by_id[&e.img_id]),
                e.multiple_choice_answer
            );
        }
        let news = check_news(dir.path(), &p.visual_news(split), &by_id, &k);
        assert_eq!(news, summary.splits[split].images);
        assert_eq!(news, summary.splits[split].news);
        // SNLI-VE: every label re-derived
        let (pairs, rep) = load_snli_ve(p.snli_ve(split), &strict).unwrap();
        assert!(rep.filtered.is_empty());
        for pr in &pairs {
            let sc = by_id[&pr.image_id.parse::<u64>().unwrap()];
            check_complete(&pr.premise, sc, true);
            assert_eq!(
                label_of(&pr.hypothesis, sc),
                pr.label,
                "`{}` in image {}",
                pr.hypothesis,
                sc.image_id
            );
            *labels.entry(pr.label).or_default() += 1;
        }
        if split != "train" {
            let refs = CocoCaptions::load(p.style_refs(split)).unwrap();
            for a in &refs.annotations {
                assert!(
                    a.caption.starts_with("i ") || a.caption.starts_with("in my picture"),
                    "{}",
                    a.caption
                );
                check_caption(&a.caption, by_id[&a.image_id]);
            }
        }
    }
    // Each yes/no question is `yes` at even odds: within three standard deviations.
    let spread = 3.0 * ((yes + no) as f64).sqrt();
    assert!(
        (yes as f64 - no as f64).abs() <= spread,
        "yes/no not balanced: {yes} yes, {no} no"
    );
    assert!(yes > 0);
    for t in [
        "color", "shape", "size", "count", "exists", "relation", "position",
    ] {
        assert!(
            types.get(t).copied().unwrap_or(0) > 0,
            "no {t} questions: {types:?}"
        );
    }
    let l: Vec<usize> = labels.values().copied().collect();
    assert_eq!(l.len(), 3);
    assert!(
        l.iter().all(|&x| x == l[0]),
        "VE labels not balanced: {labels:?}"
    );
    let (style, _) = load_text_corpus(p.style_train(), &strict).unwrap();
    assert_eq!(style.len(), summary.splits["train"].images * 5);
    assert!(summary.ve_hypothesis_only_accuracy.is_some());

    // Hard-negative word groups: exclusive words (no synonyms together), of the captions.
    let groups: Vec<Vec<String>> =
        serde_json::from_slice(&std::fs::read(p.hard_negatives()).unwrap()).unwrap();
    assert!(groups.contains(&SHAPES.iter().map(|s| s.0.to_string()).collect()));
    assert!(groups.contains(&COLORS.iter().map(|s| s.to_string()).collect()));
    let used: std::collections::HashSet<String> = std::fs::read_to_string(p.karpathy())
        .unwrap()
        .split(|c: char| !c.is_ascii_alphabetic())
        .map(str::to_string)
        .collect();
    for g in &groups {
        assert!(g.len() >= 2, "{g:?}");
        assert!(
            !(g.contains(&"large".into()) && g.contains(&"big".into())),
            "{g:?}"
        );
        assert!(
            g.iter().any(|w| used.contains(w)),
            "no word of {g:?} in a caption"
        );
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let cfg = WorldConfig {
        images: 12,
        ..WorldConfig::tiny()
    };
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    gen(a.path(), &cfg);
    gen(b.path(), &cfg);
    gen(
        c.path(),
        &WorldConfig {
            seed: 1,
            ..cfg.clone()
        },
    );
    let files = |d: &Path| {
        let mut v = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(x) = stack.pop() {
            for e in std::fs::read_dir(&x).unwrap() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    stack.push(e);
                } else {
                    v.push((
                        e.strip_prefix(d).unwrap().to_path_buf(),
                        std::fs::read(&e).unwrap(),
                    ));
                }
            }
        }
        v.sort();
        v
    };
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert!(fa.len() > 12);
    assert_eq!(fa, fb);
    let img = |f: &Vec<(std::path::PathBuf, Vec<u8>)>| {
        f.iter()
            .find(|(p, _)| p.ends_with("shapes_0000001.png"))
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(img(&fa), img(&fc));
}

/// The file's bytes are exactly the compact serialization of the document they parse to.
fn assert_whole_document<T: serde::de::DeserializeOwned + serde::Serialize>(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let doc: T = serde_json::from_slice(&bytes).unwrap();
    assert!(serde_json::to_vec(&doc).unwrap() == bytes, "{path:?}");
}

#[test]
fn streamed_files_are_whole_documents_and_baselines_match_the_batch_ones() {
    // More train images than the generator holds at once, so that every file of the world
    // and of the train split spans two chunks.
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        images: 2600,
        seed: 11,
        ..WorldConfig::tiny()
    };
    let summary = gen(dir.path(), &cfg);
    let p = WorldPaths::new(dir.path());
    assert_whole_document::<Karpathy>(&p.karpathy());
    assert_whole_document::<ScenesFile>(&p.scenes());
    let strict = LoadOptions::strict();
    let mut ve = BTreeMap::new();
    let mut vqa = BTreeMap::new();
    for split in SPLITS {
        assert_whole_document::<CocoCaptions>(&p.captions(split));
        assert_whole_document::<VqaQuestions>(&p.vqa_questions(split));
        assert_whole_document::<VqaAnnotations>(&p.vqa_annotations(split));
        assert_whole_document::<Vec<VqaeEntry>>(&p.vqae(split));
        assert_whole_document::<Vec<NewsItem>>(&p.visual_news(split));
        if split != "train" {
            assert_whole_document::<CocoCaptions>(&p.style_refs(split));
        }
        let (pairs, _) = load_snli_ve(p.snli_ve(split), &strict).unwrap();
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|x| (x.hypothesis, x.label.as_str().to_string()))
            .collect();
        ve.insert(split, pairs);
        let (ex, _) = load_vqa(
            p.vqa_questions(split),
            Some(&p.vqa_annotations(split)),
            &strict,
        )
        .unwrap();
        let qs: Vec<(String, String, String)> = ex
            .into_iter()
            .map(|e| {
                let a = e.annotation.unwrap();
                (
                    e.question.question,
                    a.question_type,
                    a.multiple_choice_answer,
                )
            })
            .collect();
        vqa.insert(split, qs);
    }
    assert!(summary.splits["train"].images > 2048);
    let nb = naive_bayes_accuracy(&ve["train"], &ve["test"]);
    assert!(nb.is_some());
    assert_eq!(summary.ve_hypothesis_only_accuracy, nb);
    let prior = question_prior_accuracy(&vqa["train"], &vqa["test"]);
    assert_eq!(summary.vqa_question_only_accuracy, prior);
    for (t, acc) in &summary.vqa_question_only_by_type {
        let test: Vec<_> = vqa["test"].iter().filter(|q| &q.1 == t).cloned().collect();
        assert_eq!(
            Some(*acc),
            question_prior_accuracy(&vqa["train"], &test),
            "{t}"
        );
    }
    assert_eq!(summary.vqa_question_only_by_type.len(), 7);
}

#[test]
fn bad_config_names_the_key() {
    let e = world::generate(
        &WorldConfig {
            max_objects: 10,
            ..WorldConfig::tiny()
        },
        "/nonexistent",
        &NoProgress,
    )
    .unwrap_err();
    assert!(e.to_string().contains("max_objects"), "{e}");
    let e = WorldConfig {
        size: 4,
        ..WorldConfig::tiny()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    for jitter in [1.5, -0.1, f64::NAN] {
        let e = WorldConfig {
            position_jitter: jitter,
            ..WorldConfig::tiny()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("position_jitter"), "{e}");
    }
}
