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

/// A candidate question (no explanation yet) and what deciding it needs.
type Candidate = (Question, Need);

/// A question without explanation; the explanation is filled in once the captions are
/// known to decide it.
fn ask(question: String, answer: String, qt: &'static str, at: &'static str) -> Question {
    Question {
        question,
        answer,
        question_type: qt,
        answer_type: at,
        explanation: None,
    }
}

/// Questions of one image: one existence question (`yes` or `no` at even odds), one relation
/// question (likewise) when two objects can be named, then up to `extra` of colour / shape /
/// size / count / position questions of distinct types. Only questions the captions decide
/// are kept.
pub fn questions(
    scene: &Scene,
    caps: &[Caption],
    extra: usize,
    rng: &mut impl Rng,
) -> Vec<Question> {
    let all = Facts::union(scene.objects.len(), caps.iter().map(|c| &c.facts));
    let mut cands = vec![existence_question(scene, rng)];
    cands.extend(relation_question(scene, &all, rng));
    let mut others = other_candidates(scene, &all, rng);
    others.shuffle(rng);
    cands.extend(others.into_iter().take(extra));
    keep_decided(scene, caps, &all, cands)
}

/// An existence question at one granularity: `is there a red circle?` about a present object
/// (yes) or, at even odds, a near miss with one attribute changed so that nothing matches
/// (no; yes when no near miss is found within 30 tries).
fn existence_question(scene: &Scene, rng: &mut impl Rng) -> Candidate {
    let objs = &scene.objects;
    let n = objs.len();
    let gran = [Ref::SHAPE, Ref::COLOR_SHAPE, Ref::COLOR_SHAPE, Ref::FULL][rng.random_range(0..4)];
    let want_no = rng.random_bool(0.5);
    let o = objs[rng.random_range(0..n)].clone();
    let x = if want_no {
        near_miss(scene, gran, rng)
    } else {
        None
    };
    let (x, present) = match x {
        Some(x) => (x, false),
        None => (o, true),
    };
    let w = gran.words(&x, false, false, rng);
    (
        ask(
            format!("is there {}?", indefinite(&w)),
            yes_no(present),
            "exists",
            "yes/no",
        ),
        Need::Exists(x, gran, present),
    )
}

/// A present object with one attribute changed so that nothing in the scene matches at
/// granularity `gran` (`None` when 30 tries find none).
fn near_miss(scene: &Scene, gran: Ref, rng: &mut impl Rng) -> Option<Object> {
    let objs = &scene.objects;
    for _ in 0..30 {
        let mut x = objs[rng.random_range(0..objs.len())].clone();
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
            return Some(x);
        }
    }
    None
}

/// Ordered pairs of distinct objects that can both be named and whose relative position the
/// captions decide, with the names.
fn relation_pairs(scene: &Scene, all: &Facts) -> Vec<(usize, usize, Ref, Ref)> {
    let n = scene.objects.len();
    let refs = [Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL];
    let names: Vec<Option<Ref>> = (0..n).map(|i| unique_ref(scene, i, &refs)).collect();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in 0..n {
            if let (true, Some(ra), Some(rb)) = (a != b, names[a], names[b]) {
                if all.decides_relation(a, Relation::Above, b)
                    && all.decides_relation(a, Relation::LeftOf, b)
                {
                    pairs.push((a, b, ra, rb));
                }
            }
        }
    }
    pairs
}

/// A relation question about two nameable objects whose relative position the captions
/// decide: a true or, at even odds, a false relation (`None` when no such pair exists).
fn relation_question(scene: &Scene, all: &Facts, rng: &mut impl Rng) -> Option<Candidate> {
    let objs = &scene.objects;
    let &(a, b, ra, rb) = relation_pairs(scene, all).choose(rng)?;
    let wa = ra.words(&objs[a], false, false, rng);
    let wb = rb.words(&objs[b], false, false, rng);
    let want = !rng.random_bool(0.5);
    let fits: Vec<Relation> = Relation::ALL
        .iter()
        .copied()
        .filter(|r| r.holds(&objs[a], &objs[b]) == want)
        .collect();
    let &r = fits.choose(rng)?;
    Some((
        ask(
            format!("is the {wa} {} the {wb}?", r.phrase()),
            yes_no(want),
            "relation",
            "yes/no",
        ),
        Need::Relation(a, r, b),
    ))
}

/// One candidate each of colour, shape, size, count and position (those the scene allows),
/// in that order; the caller shuffles them and keeps up to its `extra`.
fn other_candidates(scene: &Scene, all: &Facts, rng: &mut impl Rng) -> Vec<Candidate> {
    let mut idx: Vec<usize> = (0..scene.objects.len()).collect();
    let mut others = Vec::new();
    others.extend(color_question(scene, &mut idx, rng));
    others.extend(shape_question(scene, &mut idx, rng));
    others.extend(size_question(scene, &mut idx, rng));
    others.push(count_question(scene, rng));
    others.extend(position_question(scene, all, &mut idx, rng));
    others
}

/// The first object of `idx` (shuffled first) that one of `refs` names uniquely, with its
/// words.
fn pick_named(
    scene: &Scene,
    idx: &mut [usize],
    refs: &[Ref],
    rng: &mut impl Rng,
) -> Option<(usize, String)> {
    idx.shuffle(rng);
    let (i, r) = idx
        .iter()
        .find_map(|&i| unique_ref(scene, i, refs).map(|r| (i, r)))?;
    Some((i, r.words(&scene.objects[i], false, false, rng)))
}

/// `what color is the circle?` about an object named without its colour.
fn color_question(scene: &Scene, idx: &mut [usize], rng: &mut impl Rng) -> Option<Candidate> {
    let (i, w) = pick_named(scene, idx, &[Ref::SHAPE, Ref::SIZE_SHAPE], rng)?;
    Some((
        ask(
            format!("what color is the {w}?"),
            scene.objects[i].color.word().into(),
            "color",
            "other",
        ),
        Need::Color(i),
    ))
}

/// `what shape is the red shape?` about an object named without its shape.
fn shape_question(scene: &Scene, idx: &mut [usize], rng: &mut impl Rng) -> Option<Candidate> {
    let (i, w) = pick_named(scene, idx, &[Ref::COLOR, Ref::SIZE_COLOR], rng)?;
    Some((
        ask(
            format!("what shape is the {w}?"),
            scene.objects[i].shape.word().into(),
            "shape",
            "other",
        ),
        Need::Shape(i),
    ))
}

/// `what size is the red circle?` (or `small or large?`) about an object named without its
/// size.
fn size_question(scene: &Scene, idx: &mut [usize], rng: &mut impl Rng) -> Option<Candidate> {
    let (i, w) = pick_named(scene, idx, &[Ref::SHAPE, Ref::COLOR_SHAPE], rng)?;
    let text = if rng.random_bool(0.5) {
        format!("what size is the {w}?")
    } else {
        format!("is the {w} small or large?")
    };
    Some((
        ask(text, scene.objects[i].size.word().into(), "size", "other"),
        Need::Size(i),
    ))
}

/// `how many red shapes are there?`: a count over all objects, a shape, a colour, a size or
/// a colour+shape; sometimes of a kind that is absent (answer 0).
fn count_question(scene: &Scene, rng: &mut impl Rng) -> Candidate {
    let objs = &scene.objects;
    let o = if rng.random_bool(0.8) {
        objs[rng.random_range(0..objs.len())].clone()
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
    (
        ask(
            format!("how many {w} are there?"),
            c.to_string(),
            "count",
            "number",
        ),
        Need::Count(r),
    )
}

/// `where is the red circle?` about a nameable object whose cell the captions state.
fn position_question(
    scene: &Scene,
    all: &Facts,
    idx: &mut [usize],
    rng: &mut impl Rng,
) -> Option<Candidate> {
    idx.shuffle(rng);
    let (i, r) = idx.iter().filter(|&&i| all.pos[i]).find_map(|&i| {
        unique_ref(
            scene,
            i,
            &[Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL],
        )
        .map(|r| (i, r))
    })?;
    let o = &scene.objects[i];
    let w = r.words(o, false, false, rng);
    Some((
        ask(
            format!("where is the {w}?"),
            o.cell_name().into(),
            "position",
            "other",
        ),
        Need::Position(i),
    ))
}

/// The candidates that the captions together decide, each explained by the shortest single
/// caption that decides it alone (if any).
fn keep_decided(
    scene: &Scene,
    caps: &[Caption],
    all: &Facts,
    cands: Vec<Candidate>,
) -> Vec<Question> {
    cands
        .into_iter()
        .filter(|(_, need)| decided(scene, all, need))
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
