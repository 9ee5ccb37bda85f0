//! What the bench binaries share: a description of the CPU they ran on, and their common
//! environment knobs.
//!
//! - `CLOSE_BENCH_SMOKE=1`: one short run of every case, without PyTorch (CI uses it so
//!   that the benches keep compiling and running);
//! - `BENCH_SECONDS`: how long each timed case runs ([`seconds`], [`rate`]);
//! - `CLOSE_PYTHON`: the Python that runs the PyTorch side (default
//!   `/work/venv/bin/python`).

use std::fmt;

use crate::simd::Level;

/// Whether `CLOSE_BENCH_SMOKE` asks for a one-step smoke run.
pub fn smoke() -> bool {
    std::env::var("CLOSE_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The Python for the PyTorch comparison, or `None` in a smoke run.
pub fn python() -> Option<String> {
    if smoke() {
        return None;
    }
    Some(std::env::var("CLOSE_PYTHON").unwrap_or_else(|_| "/work/venv/bin/python".into()))
}

/// Seconds each case runs for: `BENCH_SECONDS`, default 4.
pub fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0)
}

/// Items per second of `f`, which handles `items` per call: over `seconds` (at least 3
/// calls) after 2 warm-up calls; one call and no warm-up in a smoke run.
pub fn rate(seconds: f64, items: usize, mut f: impl FnMut()) -> f64 {
    use std::time::{Duration, Instant};
    if smoke() {
        let start = Instant::now();
        f();
        return items as f64 / start.elapsed().as_secs_f64();
    }
    for _ in 0..2 {
        f();
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs_f64(seconds) || n < 3 {
        f();
        n += 1;
    }
    (n * items) as f64 / start.elapsed().as_secs_f64()
}

/// The CPU a bench ran on and the kernels it chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name` from `/proc/cpuinfo`, or the architecture where that is not readable.
    pub model: String,
    /// Logical cores.
    pub cores: usize,
    /// Which of AVX2, FMA, AVX-512 F/BW/VL, AVX-512 BF16 and AMX the CPU has.
    pub features: Vec<(&'static str, bool)>,
    /// The level of the fused kernels ([`crate::simd::level`]).
    pub kernels: Level,
    /// The instruction set of `gemm`'s kernels.
    pub gemm: &'static str,
}

impl CpuInfo {
    pub fn detect() -> CpuInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags").unwrap_or_default();
        let flag = |f: &str| flags.split_whitespace().any(|x| x == f);
        let features = [
            ("avx2", "avx2"),
            ("fma", "fma"),
            ("avx512f", "avx512f"),
            ("avx512bw", "avx512bw"),
            ("avx512vl", "avx512vl"),
            ("avx512_bf16", "avx512_bf16"),
            ("amx", "amx_tile"),
        ]
        .into_iter()
        .map(|(name, f)| (name, flag(f)))
        .collect();
        CpuInfo {
            model: field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            features,
            kernels: crate::simd::level(),
            gemm: gemm_kernels(),
        }
    }
}

/// `gemm` (built with its `x86-v4` feature) runs AVX-512 kernels when the CPU has
/// AVX-512F, else AVX2 + FMA ones on x86-64.
fn gemm_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "the target's own"
}

impl fmt::Display for CpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has: Vec<&str> = self.features.iter().filter(|f| f.1).map(|f| f.0).collect();
        let lacks: Vec<&str> = self.features.iter().filter(|f| !f.1).map(|f| f.0).collect();
        write!(
            f,
            "CPU: {} ({} logical cores); has: {}; lacks: {}; fused kernels: {}; gemm: {}",
            self.model,
            self.cores,
            if has.is_empty() {
                "-".into()
            } else {
                has.join(" ")
            },
            if lacks.is_empty() {
                "-".into()
            } else {
                lacks.join(" ")
            },
            self.kernels.name(),
            self.gemm
        )
    }
}

/// This process's peak resident memory in MiB (`VmHWM`), where `/proc` has it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The PyTorch side's line for the same report, from the fields the benches' Python
/// snippets print (`torch`, `capability`).
pub fn torch_line(v: &serde_json::Value) -> String {
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    format!(
        "PyTorch {}: CPU kernel capability {}",
        get("torch"),
        get("capability")
    )
}

/// Runs a bench's PyTorch snippet (`py -c script args…`, `threads` OpenMP threads), prints
/// its version line ([`torch_line`]) and returns the number of its `torch <value>` line.
/// `None` when it cannot run, with the reason printed.
pub fn torch_value(py: &str, script: &str, args: &[String], threads: usize) -> Option<f64> {
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "PyTorch comparison skipped: {}",
            err.lines().last().unwrap_or("")
        );
        return None;
    }
    let mut value = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(meta) = serde_json::from_str::<serde_json::Value>(line) {
            println!("{}", torch_line(&meta));
        } else if let Some(v) = line.strip_prefix("torch ") {
            value = v.parse().ok();
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_rss_on_linux() {
        if cfg!(target_os = "linux") {
            let mib = peak_rss_mib().unwrap();
            assert!(mib > 1.0 && mib < 1e6, "{mib}");
        }
    }

    #[test]
    fn describes_this_cpu() {
        let info = CpuInfo::detect();
        let line = info.to_string();
        assert!(line.starts_with("CPU: "), "{line}");
        assert!(line.contains(&format!("fused kernels: {}", info.kernels.name())));
        assert_eq!(info.features.len(), 7);
        assert!(info.cores >= 1);
    }

    #[test]
    fn torch_line_names_version_and_capability() {
        let v = serde_json::json!({"torch": "2.15.0", "capability": "AVX512"});
        assert_eq!(
            torch_line(&v),
            "PyTorch 2.15.0: CPU kernel capability AVX512"
        );
    }
}
