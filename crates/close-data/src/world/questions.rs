//! VQA questions about a scene. Every question is kept only if the image's captions taken
//! together decide its answer (checked with the captions' [`Facts`]); the VQA-E explanation
//! is the shortest single caption that decides it on its own.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::language::{count_matching, indefinite, unique_ref, Caption, Facts, Ref};
use super::scene::{Color, Object, Relation, Scene, Shape, Size};

/// Question categories (written as `question_type`).
pub const QUESTION_TYPES: [&str; 7] = [
    "color", "shape", "size", "count", "exists", "relation", "position",
];

/// A generated question.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question: String,
    pub answer: String,
    /// One of [`QUESTION_TYPES`].
    pub question_type: &'static str,
    /// `yes/no`, `number` or `other` (as in VQA v2).
    pub answer_type: &'static str,
    /// The shortest caption that alone decides the answer, if any.
    pub explanation: Option<String>,
}

/// What a question needs to be decided.
enum Need {
    Color(usize),
    Shape(usize),
    Size(usize),
    /// count/absence over the attributes a reference names
    Count(Ref),
    /// existence of an object matching (object, ref)
    Exists(Object, Ref, bool),
    Position(usize),
    Relation(usize, Relation, usize),
}

fn decided(scene: &Scene, f: &Facts, need: &Need) -> bool {
    match need {
        Need::Color(i) | Need::Shape(i) | Need::Size(i) => f.complete || f.described[*i],
        Need::Count(r) => {
            f.complete
                || (*r
                    == Ref {
                        size: false,
                        color: false,
                        shape: false,
                    }
                    && f.total)
                || (*r == Ref::SHAPE && f.shape_counts)
                || (*r == Ref::COLOR && f.color_counts)
        }
        Need::Exists(x, r, present) => {
            f.complete
                || (*r == Ref::SHAPE && f.shape_counts)
                || (*r == Ref::COLOR && f.color_counts)
                || (*present
                    && f.described
                        .iter()
                        .enumerate()
                        .any(|(i, d)| *d && r.matches(&scene.objects[i], x)))
        }
        Need::Position(i) => f.pos[*i],
        Need::Relation(a, r, b) => f.decides_relation(*a, *r, *b),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Questions of one image: an existence pair (one yes, one no), a relation pair (one yes, one
/// no) when two objects can be named, then up to `extra` of colour / shape / size / count /
/// position questions of distinct types. Only questions the captions decide are kept.
pub fn questions(
    scene: &Scene,
    caps: &[Caption],
    extra: usize,
    rng: &mut impl Rng,
) -> Vec<Question> {
    let n = scene.objects.len();
    let objs = &scene.objects;
    let all = Facts::union(n, caps.iter().map(|c| &c.facts));
    let mut cands: Vec<(Question, Need)> = Vec::new();
    let q = |question: String, answer: String, qt: &'static str, at: &'static str| Question {
        question,
        answer,
        question_type: qt,
        answer_type: at,
        explanation: None,
    };

    // existence: one yes, one no, at the same granularity
    let gran = [Ref::SHAPE, Ref::COLOR_SHAPE, Ref::COLOR_SHAPE, Ref::FULL][rng.random_range(0..4)];
    {
        let o = objs[rng.random_range(0..n)].clone();
        let w = gran.words(&o, false, false, rng);
        cands.push((
            q(
                format!("is there {}?", indefinite(&w)),
                yes_no(true),
                "exists",
                "yes/no",
            ),
            Need::Exists(o, gran, true),
        ));
        // a near miss: change one attribute of a present object so that nothing matches
        for _ in 0..30 {
            let mut x = objs[rng.random_range(0..n)].clone();
            match rng.random_range(0..3) {
                0 if gran.color => x.color = Color::ALL[rng.random_range(0..8)],
                1 if gran.size => {
                    x.size = if x.size == Size::Small {
                        Size::Large
                    } else {
                        Size::Small
                    }
                }
                _ => x.shape = Shape::ALL[rng.random_range(0..6)],
            }
            if count_matching(scene, &x, gran) == 0 {
                let w = gran.words(&x, false, false, rng);
                cands.push((
                    q(
                        format!("is there {}?", indefinite(&w)),
                        yes_no(false),
                        "exists",
                        "yes/no",
                    ),
                    Need::Exists(x, gran, false),
                ));
                break;
            }
        }
    }

    // relation pair: same two objects, one true and one false relation
    let names: Vec<Option<Ref>> = (0..n)
        .map(|i| {
            unique_ref(
                scene,
                i,
                &[Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL],
            )
        })
        .collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for a in 0..n {
        for b in 0..n {
            if a != b
                && names[a].is_some()
                && names[b].is_some()
                && all.decides_relation(a, Relation::Above, b)
                && all.decides_relation(a, Relation::LeftOf, b)
            {
                pairs.push((a, b));
            }
        }
    }
    if let Some(&(a, b)) = pairs.choose(rng) {
        let (ra, rb) = (names[a].unwrap_or(Ref::FULL), names[b].unwrap_or(Ref::FULL));
        let wa = ra.words(&objs[a], false, false, rng);
        let wb = rb.words(&objs[b], false, false, rng);
        let truths: Vec<Relation> = Relation::ALL
            .iter()
            .copied()
            .filter(|r| r.holds(&objs[a], &objs[b]))
            .collect();
        let falses: Vec<Relation> = Relation::ALL
            .iter()
            .copied()
            .filter(|r| !r.holds(&objs[a], &objs[b]))
            .collect();
        if let (Some(&t), Some(&f)) = (truths.choose(rng), falses.choose(rng)) {
            for r in [t, f] {
                cands.push((
                    q(
                        format!("is the {wa} {} the {wb}?", r.phrase()),
                        yes_no(r.holds(&objs[a], &objs[b])),
                        "relation",
                        "yes/no",
                    ),
                    Need::Relation(a, r, b),
                ));
            }
        }
    }

    // other types, one candidate each, shuffled
    let mut others: Vec<(Question, Need)> = Vec::new();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    if let Some((i, r)) = idx
        .iter()
        .find_map(|&i| unique_ref(scene, i, &[Ref::SHAPE, Ref::SIZE_SHAPE]).map(|r| (i, r)))
    {
        let w = r.words(&objs[i], false, false, rng);
        others.push((
            q(
                format!("what color is the {w}?"),
                objs[i].color.word().into(),
                "color",
                "other",
            ),
            Need::Color(i),
        ));
    }
    idx.shuffle(rng);
    if let Some((i, r)) = idx
        .iter()
        .find_map(|&i| unique_ref(scene, i, &[Ref::COLOR, Ref::SIZE_COLOR]).map(|r| (i, r)))
    {
        let w = r.words(&objs[i], false, false, rng);
        others.push((
            q(
                format!("what shape is the {w}?"),
                objs[i].shape.word().into(),
                "shape",
                "other",
            ),
            Need::Shape(i),
        ));
    }
    idx.shuffle(rng);
    if let Some((i, r)) = idx
        .iter()
        .find_map(|&i| unique_ref(scene, i, &[Ref::SHAPE, Ref::COLOR_SHAPE]).map(|r| (i, r)))
    {
        let w = r.words(&objs[i], false, false, rng);
        let text = if rng.random_bool(0.5) {
            format!("what size is the {w}?")
        } else {
            format!("is the {w} small or large?")
        };
        others.push((
            q(text, objs[i].size.word().into(), "size", "other"),
            Need::Size(i),
        ));
    }
    {
        // count over all, a shape, a colour, a size, or a colour+shape; absent kinds sometimes
        let o = if rng.random_bool(0.8) {
            objs[rng.random_range(0..n)].clone()
        } else {
            let mut x = objs[0].clone();
            x.shape = Shape::ALL[rng.random_range(0..6)];
            x.color = Color::ALL[rng.random_range(0..8)];
            x
        };
        let none = Ref {
            size: false,
            color: false,
            shape: false,
        };
        let r = [
            none,
            Ref::SHAPE,
            Ref::SHAPE,
            Ref::COLOR,
            Ref::COLOR_SHAPE,
            Ref {
                size: true,
                color: false,
                shape: false,
            },
        ][rng.random_range(0..6)];
        let w = r.words(&o, true, false, rng);
        let c = count_matching(scene, &o, r);
        others.push((
            q(
                format!("how many {w} are there?"),
                c.to_string(),
                "count",
                "number",
            ),
            Need::Count(r),
        ));
    }
    idx.shuffle(rng);
    if let Some((i, r)) = idx.iter().filter(|&&i| all.pos[i]).find_map(|&i| {
        unique_ref(
            scene,
            i,
            &[Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL],
        )
        .map(|r| (i, r))
    }) {
        let w = r.words(&objs[i], false, false, rng);
        others.push((
            q(
                format!("where is the {w}?"),
                objs[i].cell_name().into(),
                "position",
                "other",
            ),
            Need::Position(i),
        ));
    }
    others.shuffle(rng);
    cands.extend(others.into_iter().take(extra));

    cands
        .into_iter()
        .filter(|(_, need)| decided(scene, &all, need))
        .map(|(mut question, need)| {
            question.explanation = caps
                .iter()
                .filter(|c| decided(scene, &c.facts, &need))
                .min_by_key(|c| c.text.len())
                .map(|c| c.text.clone());
            question
        })
        .collect()
}
