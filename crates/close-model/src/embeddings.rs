//! Where CLIP vectors come from: any keyed store of unit-normalized vectors.
//!
//! Training reads text vectors (keyed by the exact caption text) and image vectors (keyed
//! by the image id as a decimal string) from embedding caches built once by `close embed`
//! (`close_clip::cache::EmbeddingCache`). [`MemEmbeddings`] is an in-memory store used by
//! tests, the demo and callers that computed vectors themselves.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use close_core::{Error, Result};

/// A keyed store of unit-normalized CLIP vectors of one dimension.
pub trait Embeddings: Send + Sync {
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// The vector stored under `key`, if any.
    fn vector(&self, key: &str) -> Option<&[f32]>;
    /// Number of stored vectors.
    fn len(&self) -> usize;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An in-memory [`Embeddings`] store.
#[derive(Debug, Clone, Default)]
pub struct MemEmbeddings {
    dim: usize,
    map: HashMap<String, Vec<f32>>,
}

impl MemEmbeddings {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            map: HashMap::new(),
        }
    }

    /// Insert `v` under `key`, L2-normalizing it (the stores hold unit vectors).
    pub fn insert(&mut self, key: impl Into<String>, v: &[f32]) -> Result<()> {
        let key = key.into();
        if v.len() != self.dim {
            return Err(Error::Shape {
                what: format!("embedding `{key}`"),
                expected: vec![self.dim],
                got: vec![v.len()],
            });
        }
        self.map.insert(key, normalized(v)?);
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| k.as_str())
    }
}

impl Embeddings for MemEmbeddings {
    fn dim(&self) -> usize {
        self.dim
    }
    fn vector(&self, key: &str) -> Option<&[f32]> {
        self.map.get(key).map(|v| v.as_slice())
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl Embeddings for close_clip::cache::EmbeddingCache {
    fn dim(&self) -> usize {
        close_clip::cache::EmbeddingCache::dim(self)
    }
    fn vector(&self, key: &str) -> Option<&[f32]> {
        self.get(key)
    }
    fn len(&self) -> usize {
        close_clip::cache::EmbeddingCache::len(self)
    }
}

/// `v / |v|`; an error for a zero or non-finite vector.
pub fn normalized(v: &[f32]) -> Result<Vec<f32>> {
    let n = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    if !n.is_finite() || n <= 0.0 {
        return Err(Error::invalid(
            "cannot normalize a zero or non-finite vector",
        ));
    }
    Ok(v.iter().map(|&x| (x as f64 / n) as f32).collect())
}

/// Look up `key`, naming the store (`what`) and the key when it is missing. The stores
/// hold only finite vectors: `EmbeddingCache::open` and [`MemEmbeddings::insert`] refuse
/// the others, so this hot-path lookup need not check again.
pub fn lookup<'a>(emb: &'a dyn Embeddings, what: &str, key: &str) -> Result<&'a [f32]> {
    emb.vector(key).ok_or_else(|| {
        let how = if key.starts_with(crate::task::NEWS_KEY_PREFIX) {
            "run `close embed --news FILE` with the Visual News files"
        } else {
            "run `close embed` over this data"
        };
        Error::invalid(format!(
            "{what} embedding cache has no vector for `{key}` ({how})"
        ))
    })
}

/// The mean of the vectors of `keys`, re-normalized: the text stand-in of an image described
/// by several captions (the reference averages caption vectors, then normalizes).
pub fn mean_vector(emb: &dyn Embeddings, what: &str, keys: &[String]) -> Result<Vec<f32>> {
    if keys.is_empty() {
        return Err(Error::invalid(format!("{what}: no texts to average")));
    }
    let mut acc = vec![0f64; emb.dim()];
    for k in keys {
        for (a, &b) in acc.iter_mut().zip(lookup(emb, what, k)?) {
            *a += b as f64;
        }
    }
    let acc: Vec<f32> = acc.iter().map(|&v| v as f32).collect();
    normalized(&acc)
}

/// Stack rows into a `[B, D]` f32 tensor on `device`.
pub fn stack_rows(rows: &[Vec<f32>], dim: usize, device: &Device) -> Result<Tensor> {
    let mut flat = Vec::with_capacity(rows.len() * dim);
    for r in rows {
        if r.len() != dim {
            return Err(Error::Shape {
                what: "embedding".into(),
                expected: vec![dim],
                got: vec![r.len()],
            });
        }
        flat.extend_from_slice(r);
    }
    Ok(Tensor::from_vec(flat, (rows.len(), dim), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_captions_is_renormalized() {
        let mut e = MemEmbeddings::new(2);
        e.insert("a", &[2.0, 0.0]).unwrap();
        e.insert("b", &[0.0, 5.0]).unwrap();
        let m = mean_vector(&e, "text", &["a".into(), "b".into()]).unwrap();
        let s = 0.5f32.sqrt();
        assert!((m[0] - s).abs() < 1e-6 && (m[1] - s).abs() < 1e-6);
        let err = mean_vector(&e, "text", &["zzz".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("zzz"), "{err}");
        assert!(e.insert("c", &[1.0]).is_err());
        assert!(e.insert("c", &[0.0, 0.0]).is_err());
    }
}
