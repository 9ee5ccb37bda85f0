//! Zero-shot probes of what a CLIP image vector encodes about a scene: for an image, a few
//! candidate captions that differ in one respect only (a lone object's colour, shape or
//! cell; which colour goes with which shape), of which one is true. A CLIP "reads" that
//! respect when the true caption is the image's nearest. The probes explain the demo's
//! results: a CLOSE model can only learn from the image vector what the vector holds, and it
//! transfers from text only what image and text vectors agree on.

use super::language::{be, counted, indefinite, NUMBER_WORDS};
use super::scene::{Color, Object, Relation, Scene, Shape, Size};

/// The probe kinds, in report order.
pub const PROBE_KINDS: [&str; 8] = [
    "colour of a lone object",
    "shape of a lone large object",
    "shape of a lone small object",
    "cell of a lone object",
    "colour binding of two objects",
    "relation of two objects",
    "count of a shape",
    "existence of a colour and shape",
];

/// One probe: candidate captions for an image; `answer` indexes the true one.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// One of [`PROBE_KINDS`].
    pub kind: &'static str,
    pub image_id: u64,
    pub candidates: Vec<String>,
    pub answer: usize,
}

/// `a small red star` with the given colour and shape.
fn phrase(o: &Object, color: Color, shape: Shape) -> String {
    indefinite(&format!(
        "{} {} {}",
        o.size.word(),
        color.word(),
        shape.word()
    ))
}

fn index_of<T: PartialEq>(all: &[T], x: T) -> usize {
    all.iter().position(|y| *y == x).unwrap_or(0)
}

fn probe(kind: &'static str, scene: &Scene, candidates: Vec<String>, answer: usize) -> Probe {
    Probe {
        kind,
        image_id: scene.image_id,
        candidates,
        answer,
    }
}

/// The probes of one scene: colour, shape and cell for a lone object (in the world's
/// caption phrasing, `a picture of a small red star.`, `a small red star in the top
/// left.`); for two objects of different colours and shapes, the true listing against the
/// one with their colours swapped; for two objects that are told apart by their words,
/// their relation against its inverse (`a small red star above a large blue circle.`); for
/// every scene, the count of the first object's shape (`there are two stars.`).
pub fn probes(scene: &Scene) -> Vec<Probe> {
    let mut out = match scene.objects.as_slice() {
        [o] => lone_probes(scene, o),
        [a, b] => {
            let mut v = Vec::new();
            if a.color != b.color && a.shape != b.shape {
                v.push(binding_probe(scene, a, b));
            }
            v.extend(relation_probe(scene, a, b));
            v
        }
        _ => Vec::new(),
    };
    out.extend(count_probe(scene));
    out.extend(existence_probe(scene));
    out
}

fn lone_probes(scene: &Scene, o: &Object) -> Vec<Probe> {
    let picture = |c: Color, s: Shape| format!("a picture of {}.", phrase(o, c, s));
    let shape_kind = match o.size {
        Size::Large => PROBE_KINDS[1],
        Size::Small => PROBE_KINDS[2],
    };
    let cells: Vec<String> = super::CELL_NAMES
        .iter()
        .flatten()
        .map(|cell| format!("{} in the {cell}.", phrase(o, o.color, o.shape)))
        .collect();
    vec![
        probe(
            PROBE_KINDS[0],
            scene,
            Color::ALL.iter().map(|&c| picture(c, o.shape)).collect(),
            index_of(&Color::ALL, o.color),
        ),
        probe(
            shape_kind,
            scene,
            Shape::ALL.iter().map(|&s| picture(o.color, s)).collect(),
            index_of(&Shape::ALL, o.shape),
        ),
        probe(
            PROBE_KINDS[3],
            scene,
            cells,
            o.row as usize * 3 + o.col as usize,
        ),
    ]
}

fn binding_probe(scene: &Scene, a: &Object, b: &Object) -> Probe {
    let listing = |ca: Color, cb: Color| {
        format!(
            "a picture of {} and {}.",
            phrase(a, ca, a.shape),
            phrase(b, cb, b.shape)
        )
    };
    probe(
        PROBE_KINDS[4],
        scene,
        vec![listing(a.color, b.color), listing(b.color, a.color)],
        0,
    )
}

/// `a` above / below `b` when their rows differ, else left / right of it; `None` when the
/// two read the same (`a small red star` twice).
fn relation_probe(scene: &Scene, a: &Object, b: &Object) -> Option<Probe> {
    let (pa, pb) = (phrase(a, a.color, a.shape), phrase(b, b.color, b.shape));
    if pa == pb {
        return None;
    }
    let r = Relation::ALL.into_iter().find(|r| r.holds(a, b))?;
    let says = |r: Relation| format!("{pa} {} {pb}.", r.phrase());
    Some(probe(
        PROBE_KINDS[5],
        scene,
        vec![says(r), says(r.inverse())],
        0,
    ))
}

/// How many objects have the first object's shape, among one to max(3, objects).
fn count_probe(scene: &Scene) -> Option<Probe> {
    let objs = &scene.objects;
    let shape = objs.first()?.shape;
    let k = objs.iter().filter(|o| o.shape == shape).count();
    let most = objs.len().max(3).min(NUMBER_WORDS.len() - 1);
    // The world's shape-count phrasing (`there is one star.`, `there are two stars.`).
    let says = |n: usize| format!("there {} {}.", be(n), counted(n, shape));
    Some(probe(
        PROBE_KINDS[6],
        scene,
        (1..=most).map(says).collect(),
        k - 1,
    ))
}

/// For two or more objects, VQA's near-miss existence question as captions: the first
/// object's colour and shape (`there is a red star.`) against the same colour with a shape
/// that no object of that colour has, preferring another object's shape (so that the
/// words of both are in the scene and only their binding tells them apart).
fn existence_probe(scene: &Scene) -> Option<Probe> {
    let [o, rest @ ..] = scene.objects.as_slice() else {
        return None;
    };
    if rest.is_empty() {
        return None;
    }
    let absent = |s: &Shape| {
        !scene
            .objects
            .iter()
            .any(|x| x.color == o.color && x.shape == *s)
    };
    let shape = rest
        .iter()
        .map(|x| x.shape)
        .find(absent)
        .or_else(|| Shape::ALL.into_iter().find(absent))?;
    let says = |s: Shape| {
        format!(
            "there is {}.",
            indefinite(&format!("{} {}", o.color.word(), s.word()))
        )
    };
    Some(probe(
        PROBE_KINDS[7],
        scene,
        vec![says(o.shape), says(shape)],
        0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::scene::sample_objects;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scene(objects: Vec<Object>) -> Scene {
        Scene {
            image_id: 7,
            imgid: 6,
            split: "test".into(),
            file_name: "x.png".into(),
            width: 64,
            height: 64,
            background: [240, 240, 240],
            objects,
        }
    }

    #[test]
    fn a_lone_object_gets_colour_shape_and_cell_probes_whose_answer_is_the_truth() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen_small_and_large = [false; 2];
        for _ in 0..50 {
            let objs = sample_objects(&mut rng, 64, (1, 1), 0.3);
            let o = objs[0].clone();
            let ps = probes(&scene(objs));
            assert_eq!(ps.len(), 4);
            assert_eq!(ps[3].kind, PROBE_KINDS[6]);
            assert_eq!(
                ps[3].candidates[ps[3].answer],
                format!("there is one {}.", o.shape.word())
            );
            let truth = |p: &Probe| p.candidates[p.answer].clone();
            let np = format!("{} {} {}", o.size.word(), o.color.word(), o.shape.word());
            assert_eq!(ps[0].candidates.len(), 8);
            assert_eq!(truth(&ps[0]), format!("a picture of {}.", indefinite(&np)));
            assert_eq!(ps[1].candidates.len(), 6);
            assert_eq!(truth(&ps[1]), truth(&ps[0]));
            assert_eq!(ps[1].kind == PROBE_KINDS[1], o.size == Size::Large);
            seen_small_and_large[usize::from(o.size == Size::Large)] = true;
            assert_eq!(ps[2].candidates.len(), 9);
            assert_eq!(
                truth(&ps[2]),
                format!("{} in the {}.", indefinite(&np), o.cell_name())
            );
            for p in &ps {
                let mut c = p.candidates.clone();
                c.sort();
                c.dedup();
                assert_eq!(c.len(), p.candidates.len(), "{p:?}");
            }
        }
        assert_eq!(seen_small_and_large, [true, true]);
    }

    #[test]
    fn binding_probes_need_two_objects_that_differ_in_colour_and_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (mut with, mut without) = (0, 0);
        for _ in 0..200 {
            let objs = sample_objects(&mut rng, 64, (2, 3), 0.3);
            let ps: Vec<Probe> = probes(&scene(objs.clone()))
                .into_iter()
                .filter(|p| p.kind == PROBE_KINDS[4])
                .collect();
            let eligible =
                objs.len() == 2 && objs[0].color != objs[1].color && objs[0].shape != objs[1].shape;
            if !eligible {
                assert!(ps.is_empty());
                without += 1;
                continue;
            }
            with += 1;
            assert_eq!(ps.len(), 1);
            let p = &ps[0];
            assert_eq!(p.kind, PROBE_KINDS[4]);
            let (a, b) = (&objs[0], &objs[1]);
            assert!(p.candidates[0].contains(&phrase(a, a.color, a.shape)));
            assert!(p.candidates[1].contains(&phrase(a, b.color, a.shape)));
            assert!(p.candidates[1].contains(&phrase(b, a.color, b.shape)));
        }
        assert!(with > 20 && without > 20, "{with} {without}");
    }

    #[test]
    fn relation_and_count_probes_tell_the_truth_first_or_at_the_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut relations, mut counts) = (0, 0);
        for _ in 0..200 {
            let objs = sample_objects(&mut rng, 64, (1, 3), 0.3);
            for p in probes(&scene(objs.clone())) {
                if p.kind == PROBE_KINDS[5] {
                    relations += 1;
                    let (a, b) = (&objs[0], &objs[1]);
                    let r = Relation::ALL.into_iter().find(|r| r.holds(a, b)).unwrap();
                    assert!(p.candidates[0].contains(r.phrase()), "{p:?}");
                    assert!(p.candidates[1].contains(r.inverse().phrase()), "{p:?}");
                    assert_eq!(p.answer, 0);
                } else if p.kind == PROBE_KINDS[6] {
                    counts += 1;
                    let k = objs.iter().filter(|o| o.shape == objs[0].shape).count();
                    assert_eq!(p.answer, k - 1);
                    assert_eq!(p.candidates.len(), 3);
                    assert!(p.candidates[p.answer].contains(NUMBER_WORDS[k]), "{p:?}");
                }
            }
        }
        assert!(relations > 20 && counts == 200, "{relations} {counts}");
    }

    #[test]
    fn existence_probes_pit_a_present_pair_against_an_absent_one_of_the_same_colour() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (mut probed, mut binding) = (0, 0);
        for _ in 0..200 {
            let objs = sample_objects(&mut rng, 64, (1, 3), 0.3);
            let ps: Vec<Probe> = probes(&scene(objs.clone()))
                .into_iter()
                .filter(|p| p.kind == PROBE_KINDS[7])
                .collect();
            assert_eq!(ps.len(), usize::from(objs.len() > 1));
            let Some(p) = ps.first() else { continue };
            probed += 1;
            let o = &objs[0];
            let has = |text: &str| {
                objs.iter().any(|x| {
                    text == format!(
                        "there is {}.",
                        indefinite(&format!("{} {}", x.color.word(), x.shape.word()))
                    )
                })
            };
            assert_eq!(p.answer, 0);
            assert!(has(&p.candidates[0]) && p.candidates[0].contains(o.color.word()));
            assert!(!has(&p.candidates[1]) && p.candidates[1].contains(o.color.word()));
            binding += usize::from(
                objs[1..]
                    .iter()
                    .any(|x| p.candidates[1].ends_with(&format!(" {}.", x.shape.word()))),
            );
        }
        assert!(probed > 50 && binding > probed / 2, "{probed} {binding}");
    }
}
