//! Words and noun phrases of the shapes world, and the caption templates (plain and
//! first-person style). Every caption is generated from the scene together with the
//! [`Facts`] it states, so that questions can be checked to be answerable from captions.

use rand::seq::SliceRandom;
use rand::Rng;

use super::scene::{Object, Relation, Scene, Shape, Size};

/// Number words used in captions (index = count).
pub const NUMBER_WORDS: [&str; 10] = [
    "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Groups of mutually exclusive caption words (shapes, colours, sizes, counts, sides) for
/// hard-negative CLIP training: exchanging two words of a group, or one for another, makes
/// a caption false for its image (`large` and `big` are synonyms, so they share no group).
pub fn hard_negative_groups() -> Vec<Vec<String>> {
    use super::scene::{Color, Shape};
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Shape::ALL.iter().map(|s| s.word().to_string()).collect(),
        Shape::ALL.iter().map(|s| s.plural().to_string()).collect(),
        Color::ALL.iter().map(|c| c.word().to_string()).collect(),
        words(&["small", "large"]),
        words(&["small", "big"]),
        words(&NUMBER_WORDS[1..4]),
        words(&["left", "right"]),
        words(&["top", "bottom"]),
        words(&["above", "below"]),
    ]
}

/// `a` or `an` for the following word.
pub fn article(next: &str) -> &'static str {
    match next.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Prefix a phrase with its indefinite article.
pub fn indefinite(phrase: &str) -> String {
    format!("{} {phrase}", article(phrase))
}

/// Which attributes a reference names. An object matches a reference when every named
/// attribute equals the reference object's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ref {
    pub size: bool,
    pub color: bool,
    pub shape: bool,
}

impl Ref {
    pub const SHAPE: Ref = Ref {
        size: false,
        color: false,
        shape: true,
    };
    pub const COLOR_SHAPE: Ref = Ref {
        size: false,
        color: true,
        shape: true,
    };
    pub const SIZE_SHAPE: Ref = Ref {
        size: true,
        color: false,
        shape: true,
    };
    pub const FULL: Ref = Ref {
        size: true,
        color: true,
        shape: true,
    };
    pub const COLOR: Ref = Ref {
        size: false,
        color: true,
        shape: false,
    };
    pub const SIZE_COLOR: Ref = Ref {
        size: true,
        color: true,
        shape: false,
    };

    pub fn matches(self, x: &Object, o: &Object) -> bool {
        (!self.size || x.size == o.size)
            && (!self.color || x.color == o.color)
            && (!self.shape || x.shape == o.shape)
    }

    /// Words for `o` (no article), e.g. `small red circle`, `red shape`. `big_ok` allows the
    /// synonym `big` for `large`.
    pub fn words(self, o: &Object, plural: bool, big_ok: bool, rng: &mut impl Rng) -> String {
        let mut w: Vec<&str> = Vec::with_capacity(3);
        if self.size {
            w.push(match o.size {
                Size::Small => "small",
                Size::Large if big_ok && rng.random_bool(0.4) => "big",
                Size::Large => "large",
            });
        }
        if self.color {
            w.push(o.color.word());
        }
        w.push(match (self.shape, plural) {
            (true, false) => o.shape.word(),
            (true, true) => o.shape.plural(),
            (false, false) => "shape",
            (false, true) => "shapes",
        });
        w.join(" ")
    }
}

/// Number of objects of `scene` matching `o` under `r`.
pub fn count_matching(scene: &Scene, o: &Object, r: Ref) -> usize {
    scene.objects.iter().filter(|x| r.matches(x, o)).count()
}

/// The first of `candidates` that picks out object `i` uniquely.
pub fn unique_ref(scene: &Scene, i: usize, candidates: &[Ref]) -> Option<Ref> {
    let o = &scene.objects[i];
    candidates
        .iter()
        .copied()
        .find(|r| count_matching(scene, o, *r) == 1)
}

/// `in the top left corner`, `in the center`, ...
pub fn position_phrase(o: &Object, rng: &mut impl Rng) -> String {
    let name = o.cell_name();
    let corner = o.row != 1 && o.col != 1;
    if corner && rng.random_bool(0.5) {
        format!("in the {name} corner")
    } else {
        format!("in the {name}")
    }
}

/// What a caption states, in terms of the scene's objects (indices into `Scene::objects`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Every object with its size, colour and shape (so also counts and absences).
    pub complete: bool,
    /// Exact count of every shape present (and so absence of the others).
    pub shape_counts: bool,
    /// Exact count of every colour present.
    pub color_counts: bool,
    /// The total number of objects.
    pub total: bool,
    /// Objects whose grid cell is stated (with a description that picks them out).
    pub pos: Vec<bool>,
    /// Stated relations `(a, rel, b)` between uniquely described objects.
    pub rel: Vec<(usize, Relation, usize)>,
    /// Objects mentioned with size, colour and shape by a unique description.
    pub described: Vec<bool>,
}

impl Facts {
    pub fn new(n: usize) -> Self {
        Facts {
            pos: vec![false; n],
            described: vec![false; n],
            ..Default::default()
        }
    }

    /// What the captions state taken together.
    pub fn union<'a>(n: usize, all: impl IntoIterator<Item = &'a Facts>) -> Facts {
        let mut u = Facts::new(n);
        for f in all {
            u.complete |= f.complete;
            u.shape_counts |= f.shape_counts;
            u.color_counts |= f.color_counts;
            u.total |= f.total;
            for i in 0..n {
                u.pos[i] |= f.pos[i];
                u.described[i] |= f.described[i];
            }
            u.rel.extend(f.rel.iter().copied());
        }
        u
    }

    /// Whether the relation between `a` and `b` along `rel`'s axis is decided.
    pub fn decides_relation(&self, a: usize, rel: Relation, b: usize) -> bool {
        if self.pos[a] && self.pos[b] {
            return true;
        }
        let vertical = matches!(rel, Relation::Above | Relation::Below);
        self.rel.iter().any(|&(x, r, y)| {
            let same_axis = matches!(r, Relation::Above | Relation::Below) == vertical;
            same_axis && ((x == a && y == b) || (x == b && y == a))
        })
    }
}

/// A caption with its template name and what it states.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    pub template: &'static str,
    pub facts: Facts,
}

fn join_list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Objects in reading order (top to bottom, left to right).
fn reading_order(scene: &Scene) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scene.objects.len()).collect();
    idx.sort_by_key(|&i| (scene.objects[i].row, scene.objects[i].col));
    idx
}

/// A listing of every object with size, colour and shape; identical objects are grouped
/// (`two large red circles`). Order: reading order, large first, or random.
pub(crate) fn listing(scene: &Scene, rng: &mut impl Rng) -> String {
    let mut order = reading_order(scene);
    match rng.random_range(0..3) {
        0 => {}
        1 => order.sort_by_key(|&i| std::cmp::Reverse(scene.objects[i].size)),
        _ => order.shuffle(rng),
    }
    let mut groups: Vec<(usize, usize)> = Vec::new(); // (representative, count)
    for &i in &order {
        let o = &scene.objects[i];
        if let Some(g) = groups
            .iter_mut()
            .find(|(r, _)| Ref::FULL.matches(&scene.objects[*r], o))
        {
            g.1 += 1;
        } else {
            groups.push((i, 1));
        }
    }
    let items: Vec<String> = groups
        .iter()
        .map(|&(r, c)| {
            let w = Ref::FULL.words(&scene.objects[r], c > 1, true, rng);
            if c == 1 {
                indefinite(&w)
            } else {
                format!("{} {w}", NUMBER_WORDS[c])
            }
        })
        .collect();
    join_list(&items)
}

/// A listing with every object's cell (identical objects are not grouped).
fn positional_listing(scene: &Scene, rng: &mut impl Rng) -> String {
    let mut order = reading_order(scene);
    if rng.random_bool(0.3) {
        order.shuffle(rng);
    }
    let items: Vec<String> = order
        .iter()
        .map(|&i| {
            let o = &scene.objects[i];
            format!(
                "{} {}",
                indefinite(&Ref::FULL.words(o, false, true, rng)),
                position_phrase(o, rng)
            )
        })
        .collect();
    join_list(&items)
}

fn complete_facts(scene: &Scene) -> Facts {
    let n = scene.objects.len();
    let mut f = Facts::new(n);
    f.complete = true;
    f.shape_counts = true;
    f.color_counts = true;
    f.total = true;
    for i in 0..n {
        f.described[i] = count_matching(scene, &scene.objects[i], Ref::FULL) == 1;
    }
    f
}

/// `one star`, `two stars`.
pub(crate) fn counted(n: usize, shape: Shape) -> String {
    let noun = if n == 1 { shape.word() } else { shape.plural() };
    format!("{} {noun}", NUMBER_WORDS[n])
}

pub(crate) fn be(n: usize) -> &'static str {
    if n == 1 {
        "is"
    } else {
        "are"
    }
}

/// A description of object `i` (with article) for relation and position captions, and
/// whether it picks the object out uniquely.
fn mention(scene: &Scene, i: usize, rng: &mut impl Rng) -> (String, bool, bool) {
    let o = &scene.objects[i];
    let r = match rng.random_range(0..3) {
        0 => Ref::COLOR_SHAPE,
        _ => Ref::FULL,
    };
    let unique = count_matching(scene, o, r) == 1;
    (
        indefinite(&r.words(o, false, true, rng)),
        unique,
        unique && r == Ref::FULL,
    )
}

/// Templates that describe the whole scene with positions (every image has one).
pub fn positional_caption(scene: &Scene, first_person: bool, rng: &mut impl Rng) -> Caption {
    let list = positional_listing(scene, rng);
    let (text, template) = if first_person {
        match rng.random_range(0..2) {
            0 => (format!("i see {list}."), "style_positional"),
            _ => (
                format!("in my picture i can see {list}."),
                "style_positional",
            ),
        }
    } else {
        match rng.random_range(0..3) {
            0 => (format!("{list}."), "positional_list"),
            1 => (format!("a picture with {list}."), "positional_picture"),
            _ => (format!("an image showing {list}."), "positional_image"),
        }
    };
    let mut facts = complete_facts(scene);
    facts.pos = vec![true; scene.objects.len()];
    Caption {
        text,
        template,
        facts,
    }
}

/// A caption's text and template name.
type Text = (String, &'static str);

/// `shape` or `shapes`.
fn shape_noun(k: usize) -> &'static str {
    if k == 1 {
        "shape"
    } else {
        "shapes"
    }
}

/// One caption of the given template kind, or `None` when it does not apply to the scene.
fn caption_of_kind(scene: &Scene, kind: &str, rng: &mut impl Rng) -> Option<Caption> {
    let mut facts = Facts::new(scene.objects.len());
    let (text, template): Text = match kind {
        "listing" => {
            facts = complete_facts(scene);
            listing_caption(scene, rng)
        }
        "shape_counts" => shape_counts_caption(scene, &mut facts, rng),
        "color_counts" => color_counts_caption(scene, &mut facts, rng),
        "total" => total_caption(scene, &mut facts, rng),
        "salient" => salient_caption(scene, &mut facts, rng)?,
        "relation" => relation_caption(scene, &mut facts, rng)?,
        "position" => position_caption(scene, &mut facts, rng),
        "two_positions" => two_positions_caption(scene, &mut facts, rng)?,
        _ => return None,
    };
    Some(Caption {
        text,
        template,
        facts,
    })
}

/// A complete listing in one of four frames (its facts are [`complete_facts`]).
fn listing_caption(scene: &Scene, rng: &mut impl Rng) -> Text {
    let n = scene.objects.len();
    let list = listing(scene, rng);
    match rng.random_range(0..4) {
        0 => (
            format!("{} {}: {list}.", NUMBER_WORDS[n], shape_noun(n)),
            "count_listing",
        ),
        1 => (format!("a picture of {list}."), "picture_of"),
        2 => (format!("{list} on a light background."), "on_background"),
        _ => (
            format!(
                "there {} {list}.",
                if list.starts_with("a ") || list.starts_with("an ") {
                    "is"
                } else {
                    "are"
                }
            ),
            "there_is_listing",
        ),
    }
}

/// `there are two circles and one star.`: the count of every shape present.
fn shape_counts_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Text {
    let objs = &scene.objects;
    let mut shapes: Vec<_> = objs.iter().map(|o| o.shape).collect();
    shapes.sort();
    shapes.dedup();
    shapes.shuffle(rng);
    let items: Vec<String> = shapes
        .iter()
        .map(|s| counted(objs.iter().filter(|o| o.shape == *s).count(), *s))
        .collect();
    facts.shape_counts = true;
    facts.total = true;
    let c0 = objs.iter().filter(|o| o.shape == shapes[0]).count();
    (
        format!("there {} {}.", be(c0), join_list(&items)),
        "shape_counts",
    )
}

/// `two red shapes and one blue shape on a light background.`: the count of every colour.
fn color_counts_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Text {
    let objs = &scene.objects;
    let mut colors: Vec<_> = objs.iter().map(|o| o.color).collect();
    colors.sort();
    colors.dedup();
    colors.shuffle(rng);
    let items: Vec<String> = colors
        .iter()
        .map(|c| {
            let k = objs.iter().filter(|o| o.color == *c).count();
            format!("{} {} {}", NUMBER_WORDS[k], c.word(), shape_noun(k))
        })
        .collect();
    facts.color_counts = true;
    facts.total = true;
    (
        format!("{} on a light background.", join_list(&items)),
        "color_counts",
    )
}

/// `three shapes on a light background.`: the total only.
fn total_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Text {
    let n = scene.objects.len();
    facts.total = true;
    let w = shape_noun(n);
    match rng.random_range(0..2) {
        0 => (
            format!("{} {w} on a light background.", NUMBER_WORDS[n]),
            "total",
        ),
        _ => (
            format!("a simple drawing of {} {w}.", NUMBER_WORDS[n]),
            "total",
        ),
    }
}

/// The large objects and a count of the small ones, or (when all objects have one size) a
/// random object `among other shapes`. Needs two objects.
fn salient_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Option<Text> {
    let objs = &scene.objects;
    let n = objs.len();
    if n < 2 {
        return None;
    }
    let large: Vec<usize> = (0..n).filter(|&i| objs[i].size == Size::Large).collect();
    if large.is_empty() || large.len() == n {
        let i = rng.random_range(0..n);
        let w = Ref::FULL.words(&objs[i], false, true, rng);
        facts.described[i] = count_matching(scene, &objs[i], Ref::FULL) == 1;
        return Some((
            format!("{} among other shapes.", indefinite(&w)),
            "salient_one",
        ));
    }
    let items: Vec<String> = large
        .iter()
        .map(|&i| {
            facts.described[i] = count_matching(scene, &objs[i], Ref::FULL) == 1;
            indefinite(&Ref::FULL.words(&objs[i], false, true, rng))
        })
        .collect();
    let k = n - large.len();
    Some((
        format!(
            "{} and {} small {}.",
            join_list(&items),
            NUMBER_WORDS[k],
            shape_noun(k)
        ),
        "salient_large",
    ))
}

/// `a red star above a blue circle.`: one true relation between two objects (`None` when
/// no relation holds, e.g. a single object).
fn relation_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Option<Text> {
    let objs = &scene.objects;
    let n = objs.len();
    let mut pairs: Vec<(usize, Relation, usize)> = Vec::new();
    for a in 0..n {
        for b in 0..n {
            for r in Relation::ALL {
                if a != b && r.holds(&objs[a], &objs[b]) {
                    pairs.push((a, r, b));
                }
            }
        }
    }
    let &(a, r, b) = pairs.get(rng.random_range(0..pairs.len().max(1)))?;
    let (ma, ua, da) = mention(scene, a, rng);
    let (mb, ub, db) = mention(scene, b, rng);
    if ua && ub {
        facts.rel.push((a, r, b));
    }
    facts.described[a] = da;
    facts.described[b] = db;
    Some(match rng.random_range(0..3) {
        0 => (format!("{ma} {} {mb}.", r.phrase()), "relation"),
        1 => (format!("{ma} is {} {mb}.", r.phrase()), "relation_is"),
        _ => (
            format!("there is {ma} {} {mb}.", r.phrase()),
            "relation_there",
        ),
    })
}

/// `a red star in the top left corner.`: the cell of one object.
fn position_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Text {
    let objs = &scene.objects;
    let i = rng.random_range(0..objs.len());
    let (m, u, d) = mention(scene, i, rng);
    facts.pos[i] = u;
    facts.described[i] = d;
    let p = position_phrase(&objs[i], rng);
    match rng.random_range(0..2) {
        0 => (format!("{m} {p}."), "position"),
        _ => (format!("{p} there is {m}."), "position_there"),
    }
}

/// The cells of two distinct objects. Needs two objects.
fn two_positions_caption(scene: &Scene, facts: &mut Facts, rng: &mut impl Rng) -> Option<Text> {
    let objs = &scene.objects;
    let n = objs.len();
    if n < 2 {
        return None;
    }
    let i = rng.random_range(0..n);
    let j = (i + rng.random_range(1..n)) % n;
    let (mi, ui, di) = mention(scene, i, rng);
    let (mj, uj, dj) = mention(scene, j, rng);
    facts.pos[i] = ui;
    facts.pos[j] = uj;
    facts.described[i] = di;
    facts.described[j] = dj;
    let (pi, pj) = (
        position_phrase(&objs[i], rng),
        position_phrase(&objs[j], rng),
    );
    Some((format!("{mi} {pi} and {mj} {pj}."), "two_positions"))
}

/// The plain captions of an image: one complete positional description plus `k - 1`
/// captions of other templates (complete listings, counts, salient objects, relations,
/// positions), all distinct, in random order.
pub fn captions(scene: &Scene, k: usize, rng: &mut impl Rng) -> Vec<Caption> {
    let mut out = vec![positional_caption(scene, false, rng)];
    let mut kinds = vec![
        "listing",
        "shape_counts",
        "color_counts",
        "salient",
        "relation",
        "relation",
        "position",
        "two_positions",
        "total",
    ];
    kinds.shuffle(rng);
    if scene.objects.len() == 1 {
        // A lone object's cell is all that tells it from the same object elsewhere; with
        // two captions in five naming it, a CLIP trained on the world never learned to
        // match cells (docs/world.md, "Captions"). Three of its captions name it.
        for _ in 0..20 {
            if out.len() >= 3.min(k) {
                break;
            }
            if let Some(c) = caption_of_kind(scene, "position", rng) {
                if !out.iter().any(|x| x.text == c.text) {
                    out.push(c);
                }
            }
        }
    }
    // later fallbacks when a scene has few distinct sentences
    kinds.extend([
        "listing",
        "position",
        "relation",
        "listing",
        "position",
        "shape_counts",
        "color_counts",
    ]);
    for kind in kinds {
        if out.len() >= k {
            break;
        }
        if let Some(c) = caption_of_kind(scene, kind, rng) {
            if !out.iter().any(|x| x.text == c.text) {
                out.push(c);
            }
        }
    }
    let mut tries = 0;
    while out.len() < k && tries < 50 {
        tries += 1;
        let c = if rng.random_bool(0.5) {
            positional_caption(scene, false, rng)
        } else {
            caption_of_kind(scene, "listing", rng)
                .unwrap_or_else(|| positional_caption(scene, false, rng))
        };
        if !out.iter().any(|x| x.text == c.text) {
            out.push(c);
        }
    }
    while out.len() < k {
        let c = out[out.len() % out.len().max(1)].clone();
        out.push(c);
    }
    out.shuffle(rng);
    out
}

/// First-person style captions (`i see ...`): the same facts in another voice.
pub fn style_captions(scene: &Scene, k: usize, rng: &mut impl Rng) -> Vec<String> {
    let n = scene.objects.len();
    let mut out: Vec<String> = Vec::new();
    let mut kinds = vec![0, 1, 2, 3, 4, 5];
    kinds.shuffle(rng);
    kinds.extend([0, 1, 3, 4, 0, 1, 3, 4, 0, 0, 0]);
    for kind in kinds {
        if out.len() >= k {
            break;
        }
        let s = match kind {
            0 => positional_caption(scene, true, rng).text,
            1 => format!("i see {}.", listing(scene, rng)),
            2 => format!(
                "i count {} {}: {}.",
                NUMBER_WORDS[n],
                if n == 1 { "shape" } else { "shapes" },
                listing(scene, rng)
            ),
            3 => match caption_of_kind(scene, "relation", rng) {
                Some(c) => format!("i notice {}", strip_there(&c.text)),
                None => continue,
            },
            4 => match caption_of_kind(scene, "position", rng) {
                Some(c) if c.template == "position" => format!("i can see {}", c.text),
                Some(c) => format!("i can see {}", strip_there(&c.text)),
                None => continue,
            },
            _ => match caption_of_kind(scene, "salient", rng) {
                Some(c) => format!("i spot {}", c.text),
                None => continue,
            },
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    while out.len() < k {
        out.push(positional_caption(scene, true, rng).text);
    }
    out
}

/// `there is a red star above a blue circle.` → `a red star above a blue circle.`;
/// `in the center there is a red star.` → `a red star in the center.`
fn strip_there(s: &str) -> String {
    if let Some(rest) = s.strip_prefix("there is ") {
        return rest.to_string();
    }
    if let Some((pos, np)) = s.split_once(" there is ") {
        return format!("{} {pos}.", np.trim_end_matches('.'));
    }
    s.replacen(" is ", " ", 1)
}

/// Karpathy-style tokens: lower-case words, punctuation dropped.
pub fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == ':' || c == '?')
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect()
}
