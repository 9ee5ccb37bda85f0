//! News stories around the shapes world's images, in the manner of Visual News: an article
//! that names invented people, a place and an event, and a caption that joins the article's
//! lead person, event and place to what the image shows. The names come only from the
//! article and the shapes only from the image, so a captioner needs both.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::language;
use super::scene::Scene;

const FIRST_NAMES: [&str; 24] = [
    "Ada", "Bram", "Cleo", "Dario", "Elin", "Farah", "Gideon", "Hana", "Ivo", "Juno", "Kasper",
    "Lena", "Milo", "Nadia", "Otto", "Priya", "Quinn", "Rosa", "Soren", "Talia", "Umar", "Vera",
    "Wren", "Yusuf",
];
const SURNAMES: [&str; 20] = [
    "Abernathy",
    "Brightwater",
    "Castellan",
    "Dunmore",
    "Everly",
    "Fairweather",
    "Greaves",
    "Holloway",
    "Ingram",
    "Kettering",
    "Larkspur",
    "Marchetti",
    "Northcott",
    "Okafor",
    "Pemberton",
    "Quillon",
    "Ravensworth",
    "Sandoval",
    "Thistlewood",
    "Vantongeren",
];
const PLACES: [&str; 16] = [
    "Port Alder",
    "Brackenfold",
    "Cinderbay",
    "Dovecote Hill",
    "Elmstead",
    "Fernhollow",
    "Glimmerton",
    "Harrowgate",
    "Ivywick",
    "Juniper Falls",
    "Kestrel Point",
    "Lanternmoor",
    "Millbrook",
    "Northhaven",
    "Oakridge",
    "Pebblecombe",
];
const EVENTS: [&str; 12] = [
    "harvest fair",
    "kite festival",
    "robotics final",
    "lantern parade",
    "art biennale",
    "chess open",
    "science expo",
    "flower show",
    "design week",
    "marathon",
    "book fair",
    "winter market",
];
const ROLES: [&str; 8] = [
    "the mayor",
    "the curator",
    "the festival director",
    "a local teacher",
    "the head judge",
    "a visiting architect",
    "the town planner",
    "a young engineer",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// One image's story: the article (its first line is the lead paragraph) and the caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Story {
    pub article: String,
    pub caption: String,
    /// The person the caption names (the article's first-named person).
    pub person: String,
}

fn person(rng: &mut impl Rng) -> String {
    format!(
        "{} {}",
        FIRST_NAMES.choose(rng).expect("non-empty"),
        SURNAMES.choose(rng).expect("non-empty")
    )
}

/// The story of `scene`. The lead paragraph names two people (the first is the one the
/// caption names), the event, the place and the day; the caption adds the image's shapes.
pub fn story(scene: &Scene, rng: &mut impl Rng) -> Story {
    let lead = person(rng);
    let mut other = person(rng);
    while other == lead {
        other = person(rng);
    }
    let place = *PLACES.choose(rng).expect("non-empty");
    let event = *EVENTS.choose(rng).expect("non-empty");
    let (role, other_role) = two_of(&ROLES, rng);
    let (day, end_day) = two_of(&DAYS, rng);
    let shapes = language::listing(scene, rng);
    let caption = match rng.random_range(0..3) {
        0 => format!("{lead} with {shapes} at the {event} in {place}."),
        1 => format!("{lead} presents {shapes} at the {place} {event}."),
        _ => format!("at the {event} in {place}, {lead} shows {shapes}."),
    };
    let visitors = rng.random_range(2..60) * 100;
    let article = [
        format!(
            "{lead}, {role}, opened the {event} in {place} on {day}, and {other}, {other_role}, \
             welcomed the first visitors."
        ),
        String::new(),
        format!(
            "The {event} runs until {end_day}. Organisers expect about {visitors} visitors, \
             and {other} said the programme was the largest the town has seen."
        ),
        String::new(),
        format!("{lead} will speak again at the closing ceremony in {place}."),
    ]
    .join("\n");
    Story {
        article,
        caption,
        person: lead,
    }
}

/// Two different entries of `items`.
fn two_of<'a>(items: &[&'a str], rng: &mut impl Rng) -> (&'a str, &'a str) {
    let a = rng.random_range(0..items.len());
    let b = (a + rng.random_range(1..items.len())) % items.len();
    (items[a], items[b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_caption_names_the_lead_person_and_the_articles_place_and_event() {
        let cfg = crate::world::WorldConfig::tiny();
        for i in 0..cfg.images {
            let im = crate::world::make_image(&cfg, i);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
            let s = story(&im.scene, &mut rng);
            let first = s.article.lines().next().unwrap();
            assert!(first.starts_with(&s.person), "{first}");
            assert!(s.caption.contains(&s.person), "{}", s.caption);
            let place = PLACES.iter().find(|p| s.caption.contains(**p)).unwrap();
            let event = EVENTS.iter().find(|e| s.caption.contains(**e)).unwrap();
            assert!(first.contains(place) && first.contains(event), "{first}");
            // The shapes are in the caption and nowhere in the article.
            let (caption, article) = (language::tokens(&s.caption), language::tokens(&s.article));
            for o in &im.scene.objects {
                let colour = o.color.word().to_string();
                assert!(caption.contains(&colour), "{}", s.caption);
                assert!(!article.contains(&colour), "{}", s.article);
            }
        }
    }
}
