#!/usr/bin/env bash
# Checks the GPU path end to end on a machine with an NVIDIA GPU (docs/gpu.md):
#   1. builds with --features cuda, against the machine's own CUDA toolkit and driver;
#   2. runs the HF parity tests (T5, CLIP) and the half-precision training test on the GPU;
#   3. runs `close demo --quick --device cuda`;
#   4. benches a t5-base training step, t5-base beam-5 generation and ViT-L/14 image and
#      text embedding against PyTorch CUDA in the same run, and prints the ratios.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]          (default OUT_DIR: gpu-check)
# Environment:
#   CLOSE_PYTHON      a Python with torch (CUDA) and transformers, for step 4's PyTorch side
#                     (without one, step 4 prints our side only)
#   CUDA_COMPUTE_CAP  the GPU's compute capability, e.g. 90 (default: asked of nvidia-smi)
# Everything it prints is also written to OUT_DIR/gpu-check.log.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
started=$(date +%s)
step() { echo; echo "== [$(($(date +%s) - started)) s] $*"; }

step "0. the machine"
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script needs an NVIDIA GPU"; exit 1; }
command -v nvcc >/dev/null || { echo "nvcc not found: put the CUDA toolkit's bin/ on PATH"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
nvcc --version | tail -1
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
fi
export CUDA_COMPUTE_CAP
echo "compute capability: $CUDA_COMPUTE_CAP"

step "1. build with --features cuda"
cargo build --release --features cuda -p close-cli
test_features=close-t5/cuda,close-clip/cuda,close-model/cuda
cargo test --release -p close-t5 -p close-clip -p close-model --features "$test_features" \
  --test parity --test train --test e2e --no-run

step "2. parity and precision tests on the GPU (CLOSE_TEST_DEVICE=cuda)"
export CLOSE_TEST_DEVICE=cuda
cargo test --release -p close-t5 -p close-clip --features close-t5/cuda,close-clip/cuda \
  --test parity --test train
cargo test --release -p close-model --features close-model/cuda --test e2e half_precision \
  -- --nocapture
unset CLOSE_TEST_DEVICE

step "3. close demo --quick --device cuda"
rm -rf "$out/demo"
target=${CARGO_TARGET_DIR:-target}
"$target/release/close" --quiet demo --quick --device cuda --out "$out/demo"
sed -n '1,40p' "$out/demo/REPORT.md"

step "4. real-size bench against PyTorch CUDA"
CLOSE_BENCH_DEVICE=cuda CLOSE_BENCH_RUNS=${CLOSE_BENCH_RUNS:-3} \
  CLOSE_BENCH_CASES=t5-train-b32,t5-train-b128,t5-beam5-b32,clip-image-b32,clip-text-b32 \
  cargo bench -p close-model --features close-model/cuda --bench real_size

step "done in $(($(date +%s) - started)) s; log: $out/gpu-check.log"
