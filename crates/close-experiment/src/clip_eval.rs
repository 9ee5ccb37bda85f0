//! Stage: the CLIP on the test split, from the caches: retrieval R@1 both ways (each image
//! against all captions of the test images) and the modality gap (each image with its first
//! caption), plus a PCA scatter of the two modalities.

use std::path::Path;

use candle_core::{Device, Tensor};

use close_clip::gap::{gap_stats, pca_2d};
use close_clip::retrieval_metrics;
use close_core::{Error, Result};
use close_data::coco::Karpathy;
use close_model::embeddings::Embeddings;

use crate::embed::Caches;
use crate::results::ClipInfo;

/// Most image–caption pairs the gap statistics sample, and points per modality in the PCA.
const GAP_PAIRS: usize = 2000;
const PCA_POINTS: usize = 400;
/// Test images ranked in retrieval (the first ones with vectors; COCO's 1k-image protocol).
const RETRIEVAL_IMAGES: usize = 1000;

/// Retrieval and gap on the test split; writes the PCA figure to `pca_png`.
pub fn clip_on_test(
    karpathy: &Karpathy,
    caches: &Caches,
    seed: u64,
    pca_png: &Path,
) -> Result<ClipInfo> {
    let (mut img, mut txt, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gap_img, mut gap_txt) = (Vec::new(), Vec::new());
    for im in karpathy.split("test") {
        let Some(iv) = caches.images.vector(&im.image_id().to_string()) else {
            continue;
        };
        let caps: Vec<&[f32]> = im
            .captions()
            .filter_map(|c| caches.texts.vector(c))
            .collect();
        if let Some(first) = im.captions().next().and_then(|c| caches.texts.vector(c)) {
            gap_img.push(iv.to_vec());
            gap_txt.push(first.to_vec());
        }
        if caps.is_empty() || owner.last().is_some_and(|&o| o + 1 >= RETRIEVAL_IMAGES) {
            continue;
        }
        for c in caps {
            txt.extend_from_slice(c);
            owner.push(img.len() / iv.len());
        }
        img.extend_from_slice(iv);
    }
    if owner.is_empty() || gap_img.len() < 2 {
        return Err(Error::invalid(
            "the test split needs at least 2 images with captions to measure the CLIP",
        ));
    }
    let dim = caches.images.dim();
    let img = Tensor::from_vec(img, (owner.last().map_or(0, |o| o + 1), dim), &Device::Cpu)?;
    let txt = Tensor::from_vec(txt, (owner.len(), dim), &Device::Cpu)?;
    let r = retrieval_metrics(&img, &txt, &owner)?;
    let gap = gap_stats(&gap_img, &gap_txt, GAP_PAIRS, seed)?;
    let n = gap_img.len().min(PCA_POINTS);
    let pca = pca_2d(&[&gap_img[..n], &gap_txt[..n]])?;
    close_core::plot::scatter(
        pca_png,
        "CLIP image vs caption vectors (PCA)",
        &[
            ("image".into(), pca[0].clone()),
            ("caption".into(), pca[1].clone()),
        ],
    )?;
    Ok(ClipInfo {
        r1_image_to_text: r.image_to_text_r1,
        r1_text_to_image: r.text_to_image_r1,
        gap,
    })
}
