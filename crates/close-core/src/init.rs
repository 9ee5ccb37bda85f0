//! Reproducible initialisation for models trained from scratch. candle's CPU generator
//! cannot be seeded, so a model built on a plain `VarMap` starts from different weights on
//! every run. [`SeededInit`] is a `VarBuilder` backend over a `VarMap` that draws every
//! variable from a stream seeded by (seed, variable name).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which variable names start as zeros.
type NameFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A deterministic parameter initialiser: every variable is drawn from a ChaCha stream
/// seeded by (seed, name), so the same seed gives the same initial model whatever the
/// construction order (candle's CPU RNG cannot be seeded).
pub struct SeededInit {
    varmap: VarMap,
    seed: u64,
    /// Names of variables that start as zeros ([`SeededInit::zeros_for`]).
    zeros: Option<NameFilter>,
}

pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ h.finish()
}

pub fn init_tensor(
    init: Init,
    shape: &Shape,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
                }
                candle_nn::init::NormalOrUniform::Normal => (0..n)
                    .map(|_| (std * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
                    .collect(),
            }
        }
    };
    Tensor::from_vec(data, shape.clone(), dev)?.to_dtype(dtype)
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch for {name}: {:?} vs {:?}", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let h = match &self.zeros {
            Some(zero) if zero(name) => Init::Const(0.0),
            _ => h,
        };
        let t = init_tensor(h, &s, name_seed(self.seed, name), dtype, dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }
    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("no tensor `{name}` before initialisation")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// The variables of `varmap` as constants that share their memory: ops on them record no
/// backprop graph, so a forward pass keeps no activation alive (inference).
pub fn constants(varmap: &VarMap) -> candle_core::Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect())
}

impl SeededInit {
    /// Variables created through this backend land in `varmap`.
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        Self {
            varmap,
            seed,
            zeros: None,
        }
    }

    /// Variables whose name `overwritten` accepts start as zeros: for weights a checkpoint
    /// replaces right away, whose random draw would cost seconds at real sizes. Every other
    /// variable gets the same values as without it (each draws from its own name's seed).
    pub fn zeros_for(mut self, overwritten: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.zeros = Some(Box::new(overwritten));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    fn draw(seed: u64) -> (Vec<f32>, Vec<f32>, VarMap) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_backend(
            Box::new(SeededInit::new(vm.clone(), seed)),
            DType::F32,
            Device::Cpu,
        );
        let w = vb.get_with_hints(
            (64, 32),
            "a.weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let b = vb.get_with_hints(32, "a.bias", Init::Const(1.0));
        let v =
            |t: candle_core::Result<Tensor>| t.unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (v(w), v(b), vm)
    }

    #[test]
    fn same_seed_same_values_in_the_varmap_other_seed_other_values() {
        let (w1, b1, vm) = draw(3);
        let (w2, _, _) = draw(3);
        let (w3, _, _) = draw(4);
        assert_eq!(w1, w2);
        assert_ne!(w1, w3);
        assert!(b1.iter().all(|&x| x == 1.0));
        let std = (w1.iter().map(|x| x * x).sum::<f32>() / w1.len() as f32).sqrt();
        assert!((0.018..0.022).contains(&std), "{std}");
        assert_eq!(vm.all_vars().len(), 2);
    }
}
