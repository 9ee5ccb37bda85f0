//! The modality gap between CLIP image and text vectors (Liang et al. 2022; CLOSE §3):
//! mean cosine of an image with its own caption vs. between unrelated captions / images, the
//! distance between the two centroids, and a 2-D PCA projection for the paper's Figure 2.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

/// Gap statistics, all on unit vectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapStats {
    /// Mean cos(image, one of its own captions).
    pub cos_image_own_caption: f64,
    /// Mean cos(caption, caption) over random pairs of captions of different images.
    pub cos_caption_caption: f64,
    /// Mean cos(image, image) over random pairs of different images.
    pub cos_image_image: f64,
    /// ‖mean(image vectors) − mean(caption vectors)‖₂.
    pub centroid_distance: f64,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

fn check_dims(what: &str, vs: &[Vec<f32>], dim: usize) -> Result<()> {
    for (i, v) in vs.iter().enumerate() {
        if v.len() != dim {
            return Err(Error::Shape {
                what: format!("{what}[{i}]"),
                expected: vec![dim],
                got: vec![v.len()],
            });
        }
    }
    Ok(())
}

/// Mean of a set of vectors.
pub fn centroid(vs: &[Vec<f32>]) -> Vec<f64> {
    let dim = vs.first().map_or(0, |v| v.len());
    let mut c = vec![0f64; dim];
    for v in vs {
        for (ci, x) in c.iter_mut().zip(v) {
            *ci += *x as f64;
        }
    }
    let n = vs.len().max(1) as f64;
    c.iter_mut().for_each(|x| *x /= n);
    c
}

/// Gap statistics from paired data: `images[i]` is the (unit) vector of image i and
/// `captions[i]` the (unit) vector of one of its captions. Unrelated pairs are drawn with a
/// seeded RNG as a random derangement of the indices (`pairs` pairs at most).
pub fn gap_stats(
    images: &[Vec<f32>],
    captions: &[Vec<f32>],
    pairs: usize,
    seed: u64,
) -> Result<GapStats> {
    let n = images.len();
    if n < 2 || captions.len() != n {
        return Err(Error::invalid(format!(
            "gap statistics need ≥ 2 paired image/caption vectors, got {} images and {} captions",
            n,
            captions.len()
        )));
    }
    let dim = images[0].len();
    check_dims("images", images, dim)?;
    check_dims("captions", captions, dim)?;
    let own = (0..n).map(|i| dot(&images[i], &captions[i])).sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let m = pairs.min(n).max(1);
    let (mut cc, mut ii) = (0f64, 0f64);
    for k in 0..m {
        let (a, b) = (perm[k], perm[(k + 1) % n]);
        cc += dot(&captions[a], &captions[b]);
        ii += dot(&images[a], &images[b]);
    }
    let ci = centroid(images);
    let ct = centroid(captions);
    let dist = ci
        .iter()
        .zip(&ct)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    Ok(GapStats {
        cos_image_own_caption: own,
        cos_caption_caption: cc / m as f64,
        cos_image_image: ii / m as f64,
        centroid_distance: dist,
    })
}

/// Project the union of `sets` onto its first two principal components (power iteration
/// with deflation on the covariance, f64). Returns one list of 2-D points per input set.
pub fn pca_2d(sets: &[&[Vec<f32>]]) -> Result<Vec<Vec<[f64; 2]>>> {
    let all: Vec<&Vec<f32>> = sets.iter().flat_map(|s| s.iter()).collect();
    let Some(first) = all.first() else {
        return Ok(sets.iter().map(|_| Vec::new()).collect());
    };
    let dim = first.len();
    if all.iter().any(|v| v.len() != dim) {
        return Err(Error::invalid("pca_2d: vectors of different dimensions"));
    }
    let n = all.len() as f64;
    let mut mean = vec![0f64; dim];
    for v in &all {
        for (m, x) in mean.iter_mut().zip(v.iter()) {
            *m += *x as f64 / n;
        }
    }
    let centred: Vec<Vec<f64>> = all
        .iter()
        .map(|v| v.iter().zip(&mean).map(|(x, m)| *x as f64 - m).collect())
        .collect();
    // C·u = Xᵀ(X u)/n without forming C.
    let cov_mul = |u: &[f64]| -> Vec<f64> {
        let mut out = vec![0f64; dim];
        for row in &centred {
            let p: f64 = row.iter().zip(u).map(|(a, b)| a * b).sum();
            for (o, r) in out.iter_mut().zip(row) {
                *o += p * r / n;
            }
        }
        out
    };
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        let mut u: Vec<f64> = (0..dim)
            .map(|i| ((i * 7 + c * 13) % 11) as f64 - 5.0 + 0.1)
            .collect();
        for _ in 0..200 {
            let mut w = cov_mul(&u);
            for prev in &comps {
                let p: f64 = w.iter().zip(prev).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(prev).for_each(|(a, b)| *a -= p * b);
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-300 {
                break;
            }
            u = w.into_iter().map(|x| x / norm).collect();
        }
        comps.push(u);
    }
    let mut out = Vec::new();
    let mut k = 0;
    for s in sets {
        let mut pts = Vec::with_capacity(s.len());
        for _ in 0..s.len() {
            let row = &centred[k];
            let x = row.iter().zip(&comps[0]).map(|(a, b)| a * b).sum();
            let y = row.iter().zip(&comps[1]).map(|(a, b)| a * b).sum();
            pts.push([x, y]);
            k += 1;
        }
        out.push(pts);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn shifted_cones_show_a_gap() {
        // Images live around +e0, captions around +e1; each caption is near its image.
        let mut imgs = Vec::new();
        let mut caps = Vec::new();
        for i in 0..50 {
            let t = i as f32 * 0.37;
            let common = [t.sin() * 0.3, t.cos() * 0.3];
            imgs.push(unit(vec![1.0, 0.0, common[0], common[1]]));
            caps.push(unit(vec![0.0, 1.0, common[0], common[1]]));
        }
        let g = gap_stats(&imgs, &caps, 50, 0).unwrap();
        assert!(g.cos_image_own_caption < g.cos_caption_caption, "{g:?}");
        assert!(g.centroid_distance > 1.0, "{g:?}");
        let p = pca_2d(&[&imgs, &caps]).unwrap();
        // The first component separates the two modalities.
        let mi: f64 = p[0].iter().map(|q| q[0]).sum::<f64>() / 50.0;
        let mc: f64 = p[1].iter().map(|q| q[0]).sum::<f64>() / 50.0;
        assert!((mi - mc).abs() > 1.0, "{mi} {mc}");
    }

    #[test]
    fn rejects_mismatched_inputs() {
        assert!(gap_stats(&[vec![1.0]], &[vec![1.0]], 1, 0).is_err());
        assert!(gap_stats(&[vec![1.0], vec![1.0]], &[vec![1.0], vec![1.0, 0.0]], 2, 0).is_err());
    }
}
