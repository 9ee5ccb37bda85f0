//! Adapter fits and forwards on synthetic data.

use super::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn unit_rows(rng: &mut ChaCha8Rng, n: usize, d: usize, offset: &[f32]) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..d)
                .map(|k| rng.sample::<f32, _>(StandardNormal) * 0.3 + offset[k])
                .collect();
            crate::embeddings::normalized(&v).unwrap()
        })
        .collect()
}

fn to_tensor(rows: &[Vec<f32>]) -> Tensor {
    crate::embeddings::stack_rows(rows, rows[0].len(), &Device::Cpu).unwrap()
}

#[test]
fn noise_norm_statistics() -> Result<()> {
    // x + w·ε before renormalisation: |w·ε| ≈ w·√d, and cos(out, x) ≈ 1/√(1 + w²d).
    let d = 768;
    let w = 0.08;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let e = gaussian(&mut rng, 256, d, w, &Device::Cpu)?;
    let norms = e.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
    let mean = norms.iter().sum::<f32>() as f64 / norms.len() as f64;
    assert!(
        (mean - w * (d as f64).sqrt()).abs() < 0.02,
        "noise norm {mean}"
    );
    let x = to_tensor(&unit_rows(&mut rng, 256, d, &vec![0.0; d]));
    let a = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::Noise,
            noise: w,
            ..Default::default()
        },
        d,
        None,
        &Device::Cpu,
    )?;
    let y = a.train_forward(&x, &mut rng)?;
    let yn = y.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
    assert!(yn.iter().all(|n| (n - 1.0).abs() < 1e-4), "renormalized");
    let cos = (&y * &x)?.sum(1)?.mean_all()?.to_scalar::<f32>()? as f64;
    let expect = 1.0 / (1.0 + w * w * d as f64).sqrt(); // ≈ 0.41 as in the paper's note
    assert!((cos - expect).abs() < 0.02, "cos {cos} vs {expect}");
    // Eval is the identity; fresh draws differ; the same seed reproduces.
    assert_eq!(a.eval_forward(&x)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
    let y2 = a.train_forward(&x, &mut rng)?;
    assert!((&y - &y2)?.abs()?.sum_all()?.to_scalar::<f32>()? > 1.0);
    let mut r1 = ChaCha8Rng::seed_from_u64(9);
    let mut r2 = ChaCha8Rng::seed_from_u64(9);
    assert_eq!(
        a.train_forward(&x, &mut r1)?.to_vec2::<f32>()?,
        a.train_forward(&x, &mut r2)?.to_vec2::<f32>()?
    );
    // none: identity even in training.
    let n = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::None,
            ..Default::default()
        },
        d,
        None,
        &Device::Cpu,
    )?;
    assert_eq!(
        n.train_forward(&x, &mut rng)?.to_vec2::<f32>()?,
        x.to_vec2::<f32>()?
    );
    Ok(())
}

#[test]
fn mean_shift_moves_text_centroid_onto_image_centroid() -> Result<()> {
    let d = 16;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut oi = vec![0f32; d];
    let mut ot = vec![0f32; d];
    oi[0] = 1.0;
    ot[1] = 1.0;
    let images = unit_rows(&mut rng, 400, d, &oi);
    let texts = unit_rows(&mut rng, 500, d, &ot);
    let stats = fit_mean_shift(&images, &texts)?;
    let a = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::MeanShift,
            noise: 0.0,
            ..Default::default()
        },
        d,
        Some(stats),
        &Device::Cpu,
    )?;
    let shifted = a
        .eval_forward(&to_tensor(&texts))?
        .mean(0)?
        .to_vec1::<f32>()?;
    let ci = to_tensor(&images).mean(0)?.to_vec1::<f32>()?;
    let ct = to_tensor(&texts).mean(0)?.to_vec1::<f32>()?;
    let dist = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    };
    assert!(dist(&ct, &ci) > 0.5, "a real gap to close");
    assert!(
        dist(&shifted, &ci) < 1e-5,
        "centroid after shift {}",
        dist(&shifted, &ci)
    );
    Ok(())
}

#[test]
fn linear_fit_recovers_known_map() -> Result<()> {
    let d = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let w: Vec<f32> = (0..d * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let b: Vec<f32> = (0..d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let texts: Vec<Vec<f32>> = (0..200)
        .map(|_| {
            (0..d)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect()
        })
        .collect();
    let images: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            (0..d)
                .map(|o| (0..d).map(|k| w[o * d + k] * t[k]).sum::<f32>() + b[o])
                .collect()
        })
        .collect();
    let s = fit_linear(&images, &texts, 1e-9)?;
    let fw = s.weight.as_ref().unwrap();
    let fb = s.bias.as_ref().unwrap();
    for i in 0..d * d {
        assert!((fw[i] - w[i]).abs() < 1e-3, "W[{i}] {} vs {}", fw[i], w[i]);
    }
    for i in 0..d {
        assert!((fb[i] - b[i]).abs() < 1e-3, "b[{i}]");
    }
    assert!(s.info.train_mse.unwrap() < 1e-8);
    // Through the adapter: eval applies the map.
    let a = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::Linear,
            noise: 0.0,
            ..Default::default()
        },
        d,
        Some(s),
        &Device::Cpu,
    )?;
    let out = a.eval_forward(&to_tensor(&texts[..3]))?.to_vec2::<f32>()?;
    for r in 0..3 {
        for c in 0..d {
            assert!((out[r][c] - images[r][c]).abs() < 1e-3);
        }
    }
    Ok(())
}

#[test]
fn cov_samples_have_the_fitted_covariance_and_stats_round_trip() -> Result<()> {
    let d = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Differences with a known covariance: diag(0.04, 0.01, 0.0025, 0) + mean 0.1·e0.
    let scales = [0.2f32, 0.1, 0.05, 0.0];
    let texts: Vec<Vec<f32>> = (0..4000)
        .map(|_| {
            (0..d)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect()
        })
        .collect();
    let images: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            (0..d)
                .map(|k| {
                    t[k] + scales[k] * rng.sample::<f32, _>(StandardNormal)
                        + if k == 0 { 0.1 } else { 0.0 }
                })
                .collect()
        })
        .collect();
    let s = fit_cov(&images, &texts)?;
    let c = s.cov.as_ref().unwrap();
    for k in 0..d {
        let want = scales[k] * scales[k];
        assert!(
            (c[k * d + k] - want).abs() < 0.1 * want + 1e-4,
            "var {k}: {}",
            c[k * d + k]
        );
    }
    assert!((s.shift.as_ref().unwrap()[0] - 0.1).abs() < 0.02);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path())?;
    let back = AdapterStats::load(dir.path())?;
    assert_eq!(back, s);
    // Sampled perturbations (before renorm) follow cov_scale² Σ: check through chol.
    let a = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::Cov,
            noise: 0.0,
            cov_scale: 1.0,
            ..Default::default()
        },
        d,
        Some(back),
        &Device::Cpu,
    )?;
    let cov = Cov::new(&a.cfg, a.stats.as_ref().unwrap(), &Device::Cpu)?;
    let z = gaussian(&mut rng, 20000, d, 1.0, &Device::Cpu)?.matmul(&cov.chol_t)?;
    let var = z.sqr()?.mean(0)?.to_vec1::<f32>()?;
    for k in 0..3 {
        let want = scales[k] * scales[k];
        assert!(
            (var[k] - want).abs() < 0.1 * want,
            "sample var {k}: {} vs {want}",
            var[k]
        );
    }
    let x = to_tensor(
        &texts[..5]
            .iter()
            .map(|t| crate::embeddings::normalized(t).unwrap())
            .collect::<Vec<_>>(),
    );
    let y = a.train_forward(&x, &mut rng)?;
    assert!(y
        .sqr()?
        .sum(1)?
        .to_vec1::<f32>()?
        .iter()
        .all(|n| (n - 1.0).abs() < 1e-4));
    // Missing statistics → a clear error.
    let e = Adapter::new(
        AdapterConfig {
            kind: AdapterKind::Cov,
            ..Default::default()
        },
        d,
        None,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(e.to_string().contains("adapter fit"), "{e}");
    Ok(())
}
