#!/usr/bin/env bash
# Data-parallel training throughput (docs/scale.md): the same s-cap training epoch (the
# demo's small T5, a fixed number of examples, no validation) as one process with one
# thread, one process with two threads, and two MPI ranks with one thread each. Prints a
# markdown table: training examples per second (from the epoch's own time in metrics.json,
# so setup is left out) and the speed relative to one thread. A last row is the machine's
# own ceiling for two ranks: two independent one-thread processes (no communication) at
# once, each with half of every batch, timed by the slower one.
#
# Needs a build with the mpi feature:  cargo build --release -p close-cli --features mpi
# Usage: scripts/dp-throughput.sh CLIP OUT [IMAGES] [EXAMPLES] [BATCH]
# T5=scratch:t5-small (any `close train --t5`) trains another model than the demo's.
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
[ -e "$out/world/dataset_coco.json" ] || "$close" -q world --out "$out/world" --images "$images" >/dev/null
[ -e "$out/cache/texts" ] || "$close" -q embed --clip "$clip" --data "$out/world/dataset_coco.json" \
  --images "$out/world" --out "$out/cache" >/dev/null
# The training command for N examples into OUT (batch: BATCH, default $batch), in `cmd`.
cmd_for() {
  cmd=("$close" -q train --t5 "${T5:-small}" --task s-cap --data "$out/world"
    --text-cache "$out/cache/texts" --image-cache "$out/cache/images" --epochs 1 --no-eval
    --batch-size "${3:-$batch}" --max-examples-per-epoch "$1" --force --out "$2")
}

# Seconds of the run's one epoch.
epoch_seconds() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["history"][0]["seconds"])' "$1/metrics.json"; }

echo "T5 ${T5:-small}, batch $batch:"
echo "| setup | examples | epoch s | examples/s | vs 1 thread |"
echo "|---|---|---|---|---|"
base=""
for setup in "1 process, 1 thread" "1 process, 2 threads" "2 ranks, 1 thread each" \
  "ceiling: 2 independent processes"; do
  run="$out/run-${setup//[ :,]/-}"
  b=""
  cmd_for "$examples" "$run"
  case $setup in
    "1 process, 1 thread") RAYON_NUM_THREADS=1 "${cmd[@]}" >/dev/null ;;
    "1 process, 2 threads") RAYON_NUM_THREADS=2 "${cmd[@]}" >/dev/null ;;
    "2 ranks, 1 thread each") mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 "${cmd[@]}" >/dev/null ;;
    *)
      # Each does what one rank does: half of every batch, with no communication.
      cmd_for $((examples / 2)) "$run" $((batch / 2))
      RAYON_NUM_THREADS=1 "${cmd[@]}" >/dev/null &
      cmd_for $((examples / 2)) "$run-b" $((batch / 2))
      RAYON_NUM_THREADS=1 "${cmd[@]}" >/dev/null
      wait
      b=$(epoch_seconds "$run-b") ;;
  esac
  s=$(epoch_seconds "$run")
  [ -z "${b:-}" ] || s=$(awk -v a="$s" -v b="$b" 'BEGIN { print (a > b ? a : b) }')
  base=${base:-$s}
  awk -v n="$examples" -v s="$s" -v b="$base" -v name="$setup" \
    'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2fx |\n", name, n, s, n / s, b / s }'
done
