#!/usr/bin/env bash
# Data-parallel training throughput (docs/scale.md): the same s-cap training epoch (the
# demo's small T5, a fixed number of examples, no validation) as one process with one
# thread, one process with two threads, and two MPI ranks with one thread each. Prints a
# markdown table: training examples per second (from the epoch's own time in metrics.json,
# so setup is left out) and the speed relative to one thread.
#
# Needs a build with the mpi feature:  cargo build --release -p close-cli --features mpi
# Usage: scripts/dp-throughput.sh CLIP OUT [IMAGES] [EXAMPLES] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
clip=${1:?usage: scripts/dp-throughput.sh CLIP OUT [IMAGES] [EXAMPLES] [BATCH]}
out=${2:?usage: scripts/dp-throughput.sh CLIP OUT [IMAGES] [EXAMPLES] [BATCH]}
images=${3:-1000}
examples=${4:-2048}
batch=${5:-64}
close=${CLOSE:-${CARGO_TARGET_DIR:-target}/release/close}
[ -x "$close" ] || { echo "build first: cargo build --release -p close-cli --features mpi"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

mkdir -p "$out"
[ -e "$out/world/dataset_coco.json" ] || "$close" -q world --out "$out/world" --images "$images"
[ -e "$out/cache/texts" ] || "$close" -q embed --clip "$clip" --data "$out/world/dataset_coco.json" \
  --images "$out/world" --out "$out/cache"
args=(-q train --task s-cap --data "$out/world" --text-cache "$out/cache/texts"
  --image-cache "$out/cache/images" --epochs 1 --no-eval --batch-size "$batch"
  --max-examples-per-epoch "$examples" --force)

# Seconds of the run's one epoch.
epoch_seconds() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["history"][0]["seconds"])' "$1/metrics.json"; }

echo "| setup | examples | epoch s | examples/s | vs 1 thread |"
echo "|---|---|---|---|---|"
base=""
for setup in "1 process, 1 thread" "1 process, 2 threads" "2 ranks, 1 thread each"; do
  run="$out/run-${setup// /-}"
  case $setup in
    "1 process, 1 thread") RAYON_NUM_THREADS=1 "$close" "${args[@]}" --out "$run" >/dev/null ;;
    "1 process, 2 threads") RAYON_NUM_THREADS=2 "$close" "${args[@]}" --out "$run" >/dev/null ;;
    *) mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 "$close" "${args[@]}" --out "$run" >/dev/null ;;
  esac
  s=$(epoch_seconds "$run")
  base=${base:-$s}
  awk -v n="$examples" -v s="$s" -v b="$base" -v name="$setup" \
    'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2fx |\n", name, n, s, n / s, b / s }'
done
