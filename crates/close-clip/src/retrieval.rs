//! Image↔text retrieval recall (R@K), the standard zero-shot CLIP evaluation: each image has
//! one or more captions; image→text counts an image as a hit when any of its captions ranks
//! in the top K texts, text→image counts a caption as a hit when its image ranks in the top K.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

/// Recall at 1, 5 and 10 in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    pub image_to_text_r1: f64,
    pub image_to_text_r5: f64,
    pub image_to_text_r10: f64,
    pub text_to_image_r1: f64,
    pub text_to_image_r5: f64,
    pub text_to_image_r10: f64,
    pub n_images: usize,
    pub n_texts: usize,
}

/// Recall from unit embeddings: `img` `[n_img, d]`, `txt` `[n_txt, d]`, and `text_image[j]`
/// the image index of text `j`.
pub fn retrieval_metrics(img: &Tensor, txt: &Tensor, text_image: &[usize]) -> Result<Retrieval> {
    let (ni, _) = img.dims2()?;
    let (nt, _) = txt.dims2()?;
    if text_image.len() != nt {
        return Err(Error::Shape {
            what: "text_image".into(),
            expected: vec![nt],
            got: vec![text_image.len()],
        });
    }
    if let Some(&bad) = text_image.iter().find(|&&i| i >= ni) {
        return Err(Error::invalid(format!(
            "text_image refers to image {bad} of {ni}"
        )));
    }
    let sim = img.matmul(&txt.t()?)?.to_vec2::<f32>()?; // [ni, nt]
    let rank_of = |scores: &[f32], is_hit: &dyn Fn(usize) -> bool| -> usize {
        // Rank of the best-scoring hit (0-based): number of non-hits scoring strictly higher.
        let best = scores
            .iter()
            .enumerate()
            .filter(|(j, _)| is_hit(*j))
            .map(|(_, &s)| s)
            .fold(f32::NEG_INFINITY, f32::max);
        scores
            .iter()
            .enumerate()
            .filter(|(j, &s)| !is_hit(*j) && s > best)
            .count()
    };
    let (mut i1, mut i5, mut i10) = (0usize, 0usize, 0usize);
    for (i, row) in sim.iter().enumerate() {
        let r = rank_of(row, &|j| text_image[j] == i);
        i1 += (r < 1) as usize;
        i5 += (r < 5) as usize;
        i10 += (r < 10) as usize;
    }
    let (mut t1, mut t5, mut t10) = (0usize, 0usize, 0usize);
    for (j, &target) in text_image.iter().enumerate() {
        let col: Vec<f32> = sim.iter().map(|row| row[j]).collect();
        let r = rank_of(&col, &|i| i == target);
        t1 += (r < 1) as usize;
        t5 += (r < 5) as usize;
        t10 += (r < 10) as usize;
    }
    let fi = |c: usize| if ni == 0 { 0.0 } else { c as f64 / ni as f64 };
    let ft = |c: usize| if nt == 0 { 0.0 } else { c as f64 / nt as f64 };
    Ok(Retrieval {
        image_to_text_r1: fi(i1),
        image_to_text_r5: fi(i5),
        image_to_text_r10: fi(i10),
        text_to_image_r1: ft(t1),
        text_to_image_r5: ft(t5),
        text_to_image_r10: ft(t10),
        n_images: ni,
        n_texts: nt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn recall_counts_hits_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let img = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;
        // text 0 → image 0 (matches image 0), text 1 → image 1 but points at image 0,
        // text 2 → image 1 (matches image 1).
        let txt = Tensor::new(&[[1f32, 0.], [0.9, 0.1], [0., 1.]], &dev)?;
        let r = retrieval_metrics(&img, &txt, &[0, 1, 1])?;
        assert_eq!(r.image_to_text_r1, 1.0);
        assert!((r.text_to_image_r1 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.text_to_image_r5, 1.0);
        assert!(retrieval_metrics(&img, &txt, &[0, 1]).is_err());
        Ok(())
    }
}
