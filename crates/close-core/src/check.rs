//! Checks on numbers that come from outside (checkpoints, caches, a model's outputs), so
//! that NaN, Inf or an integer tensor is reported where it enters, naming the file and
//! tensor or item, instead of surfacing later as "loss NaN" or an empty caption.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// How many of `values` are NaN or ±Inf.
pub fn count_non_finite(values: &[f32]) -> usize {
    values.iter().filter(|v| !v.is_finite()).count()
}

/// A weight read from `file` under `name`: a float dtype, and every value finite.
pub fn weight(file: &str, name: &str, t: &Tensor) -> Result<()> {
    let dtype = t.dtype();
    if !dtype.is_float() {
        return Err(Error::format(
            file,
            None,
            format!("tensor `{name}` has dtype {dtype:?}, expected a float type (F32, F16, BF16)"),
        ));
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    match count_non_finite(&values) {
        0 => Ok(()),
        bad => Err(Error::format(
            file,
            None,
            format!(
                "tensor `{name}` has {bad} non-finite values (NaN or ±Inf) of {}; \
                 the checkpoint is corrupt or its training diverged",
                values.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn integer_and_non_finite_weights_are_named() {
        let dev = Device::Cpu;
        let good = Tensor::new(&[1f32, -2.0], &dev).unwrap();
        weight("m.safetensors", "w", &good).unwrap();
        let ints = Tensor::new(&[1i64, 2], &dev).unwrap();
        let e = weight("m.safetensors", "shared.weight", &ints).unwrap_err();
        assert!(
            e.to_string().contains("`shared.weight` has dtype I64"),
            "{e}"
        );
        let nan = Tensor::new(&[1f32, f32::NAN, f32::INFINITY], &dev).unwrap();
        let e = weight("m.safetensors", "w", &nan).unwrap_err().to_string();
        assert!(
            e.starts_with("m.safetensors: tensor `w` has 2 non-finite"),
            "{e}"
        );
    }
}
