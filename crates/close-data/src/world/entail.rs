//! SNLI-VE-style hypotheses about a scene. A hypothesis is one clause or two joined by
//! `and`; each clause is true, false, or undecidable from the picture (material, weight,
//! drawing order, depth between non-overlapping flat shapes). Labels follow logic:
//! any false clause → contradiction; else any undecidable clause → neutral; else
//! entailment. Decidable clauses state a named object's cell, colour or size (or that it
//! lies on the background). Undecidable clauses also occur in contradictions, and decidable
//! clauses share their words (`is drawn in red` / `was drawn before`, `made of red paint` /
//! `made of wood`, `in front of the background` / `in front of the circle`), which limits
//! what a hypothesis-only model can learn (measured in [`super::bias`]).

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::language::{count_matching, unique_ref, Ref};
use super::scene::{Color, Scene, Size};
use crate::snli::Label;

/// Truth of a clause in the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

const MATERIALS: [&str; 5] = ["wood", "metal", "paper", "plastic", "glass"];

struct Namer<'a> {
    scene: &'a Scene,
    names: Vec<Option<Ref>>,
}

impl<'a> Namer<'a> {
    fn new(scene: &'a Scene) -> Self {
        let names = (0..scene.objects.len())
            .map(|i| {
                unique_ref(
                    scene,
                    i,
                    &[Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL],
                )
            })
            .collect();
        Namer { scene, names }
    }
    fn named(&self) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&i| self.names[i].is_some())
            .collect()
    }
    /// `the red circle` (a description that picks the object out; sometimes more detailed
    /// than needed).
    fn the(&self, i: usize, rng: &mut impl Rng) -> String {
        let base = self.names[i].unwrap_or(Ref::FULL);
        let r = if rng.random_bool(0.3)
            && count_matching(self.scene, &self.scene.objects[i], Ref::FULL) == 1
        {
            Ref::FULL
        } else {
            base
        };
        format!("the {}", r.words(&self.scene.objects[i], false, false, rng))
    }
    /// `the red circle` avoiding the attribute that a predicate will state.
    fn the_without(&self, i: usize, color: bool, size: bool, rng: &mut impl Rng) -> Option<String> {
        let cands: Vec<Ref> = [Ref::SHAPE, Ref::COLOR_SHAPE, Ref::SIZE_SHAPE, Ref::FULL]
            .into_iter()
            .filter(|r| (!color || !r.color) && (!size || !r.size))
            .collect();
        let r = unique_ref(self.scene, i, &cands)?;
        Some(format!(
            "the {}",
            r.words(&self.scene.objects[i], false, false, rng)
        ))
    }
}

fn other<T: Copy + PartialEq>(all: &[T], not: T, rng: &mut impl Rng) -> T {
    loop {
        let x = all[rng.random_range(0..all.len())];
        if x != not {
            return x;
        }
    }
}

/// A named object other than `a`, chosen at random (`None` when `a` is the only one).
fn other_named(named: &[usize], a: usize, rng: &mut impl Rng) -> Option<usize> {
    Some(
        *named
            .iter()
            .filter(|&&b| b != a)
            .collect::<Vec<_>>()
            .choose(rng)?
            .to_owned(),
    )
}

/// A decidable clause with the wanted truth value, if the scene allows one of the chosen kind:
/// the cell (3 in 10), colour (3) or size (3) of a named object, or figure / ground (1).
///
/// These are what one image vector of the demo's CLIP holds (docs/world.md). Existence,
/// count and relation clauses were dropped: with them the image-trained model did not learn
/// to check any clause against the image.
fn decidable_clause(nm: &Namer, want: bool, rng: &mut impl Rng) -> Option<String> {
    let named = nm.named();
    match rng.random_range(0..10) {
        0..=2 => position_clause(nm, &named, want, rng),
        3..=5 => color_clause(nm, &named, want, rng),
        6..=8 => {
            if named.len() >= 2 && rng.random_bool(0.5) {
                size_comparison_clause(nm, &named, want, rng)
            } else {
                size_clause(nm, &named, want, rng)
            }
        }
        _ => ground_clause(nm, &named, want, rng),
    }
}

/// `the red circle is in the top left`: the cell of a named object (a false one names
/// another cell).
fn position_clause(nm: &Namer, named: &[usize], want: bool, rng: &mut impl Rng) -> Option<String> {
    let objs = &nm.scene.objects;
    let i = *named.choose(rng)?;
    let (row, col) = if want {
        (objs[i].row, objs[i].col)
    } else {
        loop {
            let (r, c) = (rng.random_range(0..3u8), rng.random_range(0..3u8));
            if (r, c) != (objs[i].row, objs[i].col) {
                break (r, c);
            }
        }
    };
    Some(format!(
        "{} is in the {}",
        nm.the(i, rng),
        super::scene::CELL_NAMES[row as usize][col as usize]
    ))
}

/// `the circle is red` (or `is drawn in` / `is made of ... paint`): the colour of a named
/// object, described without its colour.
fn color_clause(nm: &Namer, named: &[usize], want: bool, rng: &mut impl Rng) -> Option<String> {
    let objs = &nm.scene.objects;
    let i = *named.choose(rng)?;
    let the = nm.the_without(i, true, false, rng)?;
    let c = if want {
        objs[i].color
    } else {
        other(&Color::ALL, objs[i].color, rng)
    };
    Some(match rng.random_range(0..5) {
        0 => format!("{the} is drawn in {}", c.word()),
        1 => format!("{the} is made of {} paint", c.word()),
        _ => format!("{the} is {}", c.word()),
    })
}

/// `the circle is bigger than the star`: a size comparison of two named objects.
fn size_comparison_clause(
    nm: &Namer,
    named: &[usize],
    want: bool,
    rng: &mut impl Rng,
) -> Option<String> {
    let objs = &nm.scene.objects;
    let a = *named.choose(rng)?;
    let b = other_named(named, a, rng)?;
    let (sa, sb) = (objs[a].size, objs[b].size);
    let options: [(&str, bool); 3] = [
        ("bigger than", sa > sb),
        ("smaller than", sa < sb),
        ("the same size as", sa == sb),
    ];
    let fits: Vec<&str> = options
        .iter()
        .filter(|(_, t)| *t == want)
        .map(|(p, _)| *p)
        .collect();
    let p = *fits.choose(rng)?;
    Some(format!("{} is {p} {}", nm.the(a, rng), nm.the(b, rng)))
}

/// `the red circle is small`: the size of a named object, described without its size.
fn size_clause(nm: &Namer, named: &[usize], want: bool, rng: &mut impl Rng) -> Option<String> {
    let objs = &nm.scene.objects;
    let i = *named.choose(rng)?;
    let the = nm.the_without(i, false, true, rng)?;
    let s = if want {
        objs[i].size
    } else {
        other(&Size::ALL, objs[i].size, rng)
    };
    Some(format!("{the} is {}", s.word()))
}

/// Figure / ground: `the circle is in front of the background` (true: every shape lies on
/// the background; no false form, which would only ever occur in contradictions).
fn ground_clause(nm: &Namer, named: &[usize], want: bool, rng: &mut impl Rng) -> Option<String> {
    if !want {
        return None;
    }
    let i = *named.choose(rng)?;
    Some(format!("{} is in front of the background", nm.the(i, rng)))
}

/// An undecidable clause about named objects.
fn unknown_clause(nm: &Namer, rng: &mut impl Rng) -> Option<String> {
    let named = nm.named();
    let a = *named.choose(rng)?;
    let two = named.len() >= 2;
    let b = if two { other_named(&named, a, rng)? } else { a };
    Some(match rng.random_range(0..4) {
        0 => format!(
            "{} is made of {}",
            nm.the(a, rng),
            MATERIALS[rng.random_range(0..MATERIALS.len())]
        ),
        1 if two => format!(
            "{} is {} than {}",
            nm.the(a, rng),
            ["heavier", "lighter"][rng.random_range(0..2)],
            nm.the(b, rng)
        ),
        2 if two => format!(
            "{} was drawn {} {}",
            nm.the(a, rng),
            ["before", "after"][rng.random_range(0..2)],
            nm.the(b, rng)
        ),
        3 if two => format!(
            "{} is {} {}",
            nm.the(a, rng),
            ["in front of", "behind"][rng.random_range(0..2)],
            nm.the(b, rng)
        ),
        _ => format!(
            "{} is made of {}",
            nm.the(a, rng),
            MATERIALS[rng.random_range(0..MATERIALS.len())]
        ),
    })
}

fn clause(nm: &Namer, t: Truth, rng: &mut impl Rng) -> Option<String> {
    for _ in 0..20 {
        let c = match t {
            Truth::True => decidable_clause(nm, true, rng),
            Truth::False => decidable_clause(nm, false, rng),
            Truth::Unknown => unknown_clause(nm, rng),
        };
        if c.is_some() {
            return c;
        }
    }
    None
}

/// A hypothesis with the given label, or `None` if the scene cannot support one.
pub fn hypothesis(scene: &Scene, label: Label, rng: &mut impl Rng) -> Option<String> {
    use Truth::*;
    let nm = Namer::new(scene);
    let parts: Vec<Truth> = match label {
        Label::Entailment => {
            if rng.random_bool(0.75) {
                vec![True]
            } else {
                vec![True, True]
            }
        }
        Label::Contradiction => match rng.random_range(0..20) {
            0..=11 => vec![False],
            12..=14 => vec![False, True],
            _ => vec![False, Unknown],
        },
        Label::Neutral => {
            if rng.random_bool(0.4) {
                vec![Unknown]
            } else {
                vec![True, Unknown]
            }
        }
    };
    let mut clauses: Vec<String> = Vec::with_capacity(parts.len());
    for t in parts {
        let c = clause(&nm, t, rng)?;
        if clauses.contains(&c) {
            return None;
        }
        clauses.push(c);
    }
    clauses.shuffle(rng);
    Some(format!("{}.", clauses.join(" and ")))
}

/// `per_label` hypotheses of each label for a scene, distinct, shuffled. When the scene
/// cannot support that many of some label (e.g. an undecidable clause needs an object that
/// can be named), every label gets the same smaller number, so classes stay balanced.
pub fn hypotheses(scene: &Scene, per_label: usize, rng: &mut impl Rng) -> Vec<(String, Label)> {
    let mut by_label: Vec<Vec<String>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for label in Label::ALL {
        let mut got = Vec::new();
        for _ in 0..per_label * 10 {
            if got.len() == per_label {
                break;
            }
            if let Some(h) = hypothesis(scene, label, rng) {
                if seen.insert(h.clone()) {
                    got.push(h);
                }
            }
        }
        by_label.push(got);
    }
    let m = by_label.iter().map(Vec::len).min().unwrap_or(0);
    let mut out: Vec<(String, Label)> = Vec::new();
    for (label, hs) in Label::ALL.into_iter().zip(by_label) {
        out.extend(hs.into_iter().take(m).map(|h| (h, label)));
    }
    out.shuffle(rng);
    out
}
