//! Shared n-gram machinery for BLEU and CIDEr: Python-compatible whitespace splitting, word
//! interning and n-gram counting with a fast hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `str.isspace()` of Python 3 (what `str.split()` splits on): Unicode White_Space plus the
/// ASCII information separators U+001C..U+001F.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// Python's `s.split()` (no argument).
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_is_space).filter(|w| !w.is_empty())
}

/// An n-gram (n ≤ 4) of interned word ids (ids start at 1; unused slots are 0).
pub type Ngram = [u32; 4];

/// Multiplicative hasher for small integer keys (the n-gram maps are the hot path).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Word → id interner.
#[derive(Default)]
pub struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    pub fn words(&mut self, s: &str) -> Vec<u32> {
        py_split(s)
            .map(|w| {
                let next = self.ids.len() as u32 + 1;
                *self.ids.entry(w.to_string()).or_insert(next)
            })
            .collect()
    }
}

/// Counts of all 1..=4-grams of `words` (pycocoevalcap's `precook`).
pub fn count_ngrams(words: &[u32]) -> FxMap<Ngram, u32> {
    let mut m: FxMap<Ngram, u32> = FxMap::default();
    m.reserve(words.len() * 4);
    for k in 1..=4usize {
        if words.len() < k {
            break;
        }
        for w in words.windows(k) {
            let mut g = [0u32; 4];
            g[..k].copy_from_slice(w);
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// n (1..=4) of an n-gram key.
#[inline]
pub fn order(g: &Ngram) -> usize {
    g.iter().take_while(|&&x| x != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_semantics() {
        let v: Vec<&str> = py_split(" a\u{a0}b\u{1c}c  d\t").collect();
        assert_eq!(v, vec!["a", "b", "c", "d"]);
        assert_eq!(py_split("").count(), 0);
    }

    #[test]
    fn ngram_counts() {
        let mut i = Interner::default();
        let w = i.words("a b a b");
        let c = count_ngrams(&w);
        assert_eq!(c[&[1, 0, 0, 0]], 2);
        assert_eq!(c[&[1, 2, 0, 0]], 2);
        assert_eq!(c[&[2, 1, 0, 0]], 1);
        assert_eq!(c[&[1, 2, 1, 2]], 1);
        assert_eq!(c.len(), 2 + 2 + 2 + 1);
        assert_eq!(order(&[1, 2, 0, 0]), 2);
    }
}
