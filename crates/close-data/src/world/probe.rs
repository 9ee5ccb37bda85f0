//! Zero-shot probes of what a CLIP image vector encodes about a scene: for an image, a few
//! candidate captions that differ in one respect only (a lone object's colour, shape or
//! cell; which colour goes with which shape), of which one is true. A CLIP "reads" that
//! respect when the true caption is the image's nearest. The probes explain the demo's
//! results: a CLOSE model can only learn from the image vector what the vector holds, and it
//! transfers from text only what image and text vectors agree on.

use super::language::indefinite;
use super::scene::{Color, Object, Scene, Shape, Size};

/// The probe kinds, in report order.
pub const PROBE_KINDS: [&str; 5] = [
    "colour of a lone object",
    "shape of a lone large object",
    "shape of a lone small object",
    "cell of a lone object",
    "colour binding of two objects",
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
/// one with their colours swapped. Other scenes have none.
pub fn probes(scene: &Scene) -> Vec<Probe> {
    let objs = &scene.objects;
    match objs.as_slice() {
        [o] => {
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
        [a, b] if a.color != b.color && a.shape != b.shape => {
            let listing = |ca: Color, cb: Color| {
                format!(
                    "a picture of {} and {}.",
                    phrase(a, ca, a.shape),
                    phrase(b, cb, b.shape)
                )
            };
            vec![probe(
                PROBE_KINDS[4],
                scene,
                vec![listing(a.color, b.color), listing(b.color, a.color)],
                0,
            )]
        }
        _ => Vec::new(),
    }
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
            let objs = sample_objects(&mut rng, 64, 1, 1);
            let o = objs[0].clone();
            let ps = probes(&scene(objs));
            assert_eq!(ps.len(), 3);
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
            let objs = sample_objects(&mut rng, 64, 2, 3);
            let ps = probes(&scene(objs.clone()));
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
}
