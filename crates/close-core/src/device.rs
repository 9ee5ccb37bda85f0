//! [`DeviceSpec`]: the compute device a user asks for (`cpu`, `cuda`, `cuda:N`), parsed
//! once and opened with a message that says what to do when this build cannot open it.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A compute device as named on the command line and in configs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::config("device", format!("`{s}`: expected cpu, cuda or cuda:N"));
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            t => {
                let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl DeviceSpec {
    /// Open the device. A CUDA device on a build without CUDA support is an error that says
    /// how to rebuild, instead of candle's generic one.
    pub fn open(self) -> Result<candle_core::Device> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) if !candle_core::utils::cuda_is_available() => Err(Error::config(
                "device",
                format!(
                    "cuda:{n}: this build has no CUDA support; rebuild with \
                     `cargo build --release --features cuda`, or use --device cpu"
                ),
            )),
            Self::Cuda(n) => candle_core::Device::new_cuda(n)
                .map_err(|e| Error::config("device", format!("cuda:{n}: {e}"))),
        }
    }
}

/// The environment variable that moves the parity tests to another device.
pub const TEST_DEVICE_VAR: &str = "CLOSE_TEST_DEVICE";

/// The device the HF parity and precision tests run on: `CLOSE_TEST_DEVICE` (`cpu`,
/// `cuda`, `cuda:N`), the CPU when unset. `scripts/gpu-check.sh` sets it; a value that does
/// not parse or open fails the test instead of quietly testing the CPU.
pub fn test_device() -> Result<candle_core::Device> {
    match std::env::var(TEST_DEVICE_VAR) {
        Ok(s) if !s.trim().is_empty() => s.parse::<DeviceSpec>()?.open(),
        _ => Ok(candle_core::Device::Cpu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_round_trips_through_json() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), d);
        }
        for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn cuda_without_cuda_support_says_how_to_rebuild() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
