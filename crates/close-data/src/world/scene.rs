//! The ground truth of one shapes-world image: a light background and 1..K objects, each a
//! shape of one colour and size in its own cell of a 3×3 grid (so objects never overlap).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Object shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Star,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Star,
        Shape::Cross,
    ];
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Diamond => "diamonds",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
        }
    }
}

/// Object colours (names as in VQA answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Brown,
    Gray,
}

impl Color {
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Orange,
        Color::Yellow,
        Color::Green,
        Color::Blue,
        Color::Purple,
        Color::Brown,
        Color::Gray,
    ];
    pub fn word(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Orange => "orange",
            Color::Yellow => "yellow",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Purple => "purple",
            Color::Brown => "brown",
            Color::Gray => "gray",
        }
    }
    /// The nominal sRGB colour (each object is jittered around it).
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [215, 35, 35],
            Color::Orange => [245, 135, 15],
            Color::Yellow => [230, 200, 15],
            Color::Green => [35, 155, 55],
            Color::Blue => [35, 75, 215],
            Color::Purple => [135, 55, 185],
            Color::Brown => [125, 75, 35],
            Color::Gray => [115, 115, 115],
        }
    }
}

/// Object sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];
    /// The canonical word (VQA answers use it).
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// Names of the 3×3 grid cells, row-major (row 0 = top, column 0 = left). Also the answers
/// of position questions.
pub const CELL_NAMES: [[&str; 3]; 3] = [
    ["top left", "top middle", "top right"],
    ["middle left", "center", "middle right"],
    ["bottom left", "bottom middle", "bottom right"],
];

/// One drawn object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    /// Grid row (0 = top) and column (0 = left).
    pub row: u8,
    pub col: u8,
    /// Centre and circumradius in pixels, rotation in degrees, drawn sRGB colour.
    pub cx: f32,
    pub cy: f32,
    pub radius: f32,
    pub angle: f32,
    pub rgb: [u8; 3],
}

impl Object {
    pub fn cell_name(&self) -> &'static str {
        CELL_NAMES[self.row as usize][self.col as usize]
    }
}

/// Spatial relations between two objects, defined on grid cells: `a` is above `b` when its
/// row is strictly smaller, left of `b` when its column is strictly smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::Above,
        Relation::Below,
        Relation::LeftOf,
        Relation::RightOf,
    ];
    pub fn holds(self, a: &Object, b: &Object) -> bool {
        match self {
            Relation::Above => a.row < b.row,
            Relation::Below => a.row > b.row,
            Relation::LeftOf => a.col < b.col,
            Relation::RightOf => a.col > b.col,
        }
    }
    pub fn inverse(self) -> Relation {
        match self {
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
        }
    }
    /// The English phrase.
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }
}

/// One image's ground truth (an entry of `scenes.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// COCO-style image id (`cocoid`, `image_id`, `Flickr30K_ID`).
    pub image_id: u64,
    /// Karpathy `imgid` (0-based index).
    pub imgid: u64,
    pub split: String,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub background: [u8; 3],
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn count(&self, f: impl Fn(&Object) -> bool) -> usize {
        self.objects.iter().filter(|o| f(o)).count()
    }
}

/// Sample the objects of a scene (cells, attributes, geometry). Shapes and colours of earlier
/// objects are re-used with some probability so that counts above one are common. `jitter`
/// is [`super::WorldConfig::position_jitter`].
pub fn sample_objects(
    rng: &mut impl Rng,
    size_px: u32,
    (min_objects, max_objects): (usize, usize),
    jitter: f32,
) -> Vec<Object> {
    let n = rng.random_range(min_objects..=max_objects);
    let mut cells: Vec<u8> = (0..9).collect();
    // partial Fisher-Yates for n distinct cells
    for i in 0..n {
        let j = rng.random_range(i..9);
        cells.swap(i, j);
    }
    let cell = size_px as f32 / 3.0;
    let mut out: Vec<Object> = Vec::with_capacity(n);
    for &c in &cells[..n] {
        let shape = if !out.is_empty() && rng.random_bool(0.3) {
            out[rng.random_range(0..out.len())].shape
        } else {
            Shape::ALL[rng.random_range(0..Shape::ALL.len())]
        };
        let color = if !out.is_empty() && rng.random_bool(0.2) {
            out[rng.random_range(0..out.len())].color
        } else {
            Color::ALL[rng.random_range(0..Color::ALL.len())]
        };
        let size = Size::ALL[rng.random_range(0..2)];
        let (row, col) = (c / 3, c % 3);
        let radius = match size {
            Size::Small => 0.24 * cell,
            Size::Large => 0.42 * cell,
        } * rng.random_range(0.93..1.07f32);
        let slack = (cell / 2.0 - radius - 1.0).max(0.0) * jitter;
        let cx = (col as f32 + 0.5) * cell + rng.random_range(-1.0..=1.0f32) * slack;
        let cy = (row as f32 + 0.5) * cell + rng.random_range(-1.0..=1.0f32) * slack;
        let angle = rng.random_range(-12.0..=12.0f32);
        let base = color.rgb();
        let mut rgb = [0u8; 3];
        for k in 0..3 {
            rgb[k] = (base[k] as i32 + rng.random_range(-14..=14)).clamp(0, 255) as u8;
        }
        out.push(Object {
            shape,
            color,
            size,
            row,
            col,
            cx,
            cy,
            radius,
            angle,
            rgb,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Largest distance of an object's centre from its cell's centre, over both axes and
    /// many scenes, as a fraction of the free space around it.
    fn widest_offset(jitter: f32) -> f32 {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let cell = 64.0 / 3.0;
        let mut widest = 0.0f32;
        for _ in 0..200 {
            for o in sample_objects(&mut rng, 64, (1, 3), jitter) {
                let free = cell / 2.0 - o.radius - 1.0;
                let dx = (o.cx - (o.col as f32 + 0.5) * cell).abs();
                let dy = (o.cy - (o.row as f32 + 0.5) * cell).abs();
                widest = widest.max(dx.max(dy) / free);
            }
        }
        widest
    }

    #[test]
    fn objects_move_from_their_cells_centre_by_at_most_the_jitter() {
        assert_eq!(widest_offset(0.0), 0.0);
        let w = widest_offset(0.3);
        assert!(w > 0.25 && w <= 0.3 + 1e-4, "{w}");
        let w = widest_offset(1.0);
        assert!(w > 0.9 && w <= 1.0 + 1e-4, "{w}");
    }
}
