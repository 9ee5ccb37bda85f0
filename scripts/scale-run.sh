#!/usr/bin/env bash
# How cost grows with data (docs/scale.md): for each image count, a shapes world → embed
# (a given CLIP) → one training epoch of s-cap and of VQA with the demo's small T5 → test
# eval of both, with every stage's wall time and peak RSS (GNU time). Prints a markdown
# table with the cost per item of each stage (item: an image for world and embed, a
# training example for the epochs, a test item for eval).
#
# Usage: scripts/scale-run.sh CLIP OUT N...   e.g. scripts/scale-run.sh demo/clip scale 6000 30000
set -euo pipefail
cd "$(dirname "$0")/.."
clip=${1:?usage: scripts/scale-run.sh CLIP OUT N...}
out=${2:?usage: scripts/scale-run.sh CLIP OUT N...}
shift 2
[ $# -gt 0 ] || { echo "give at least one image count"; exit 1; }
close=${CLOSE:-${CARGO_TARGET_DIR:-target}/release/close}
[ -x "$close" ] || { echo "build first: cargo build --release (or set CLOSE=path/to/close)"; exit 1; }
mkdir -p "$out"
table="$out/scale.md"
echo "| images | stage | items | wall s | ms per item | peak RSS MiB |" >"$table"
echo "|---|---|---|---|---|---|" >>"$table"

stage() { # stage N NAME ITEMS-FUNCTION COMMAND...: ITEMS-FUNCTION prints the item count afterwards
  local n=$1 name=$2 items_of=$3; shift 3
  /usr/bin/time -f '%e %M' -o "$out/time.txt" "$@" >"$out/$n-$name.out" 2>"$out/$n-$name.err" || {
    echo "$n $name failed:"; tail -5 "$out/$n-$name.err"; exit 1; }
  read -r secs kib <"$out/time.txt"
  local items ms
  items=$("$items_of" "$n" "$name")
  ms=$(awk -v s="$secs" -v i="$items" 'BEGIN { printf "%.3f", 1000 * s / i }')
  echo "| $n | $name | $items | $secs | $ms | $((kib / 1024)) |" | tee -a "$table"
}

images() { echo "$1"; }
# Training examples of the epoch, from the run's metrics.json.
examples() {
  grep -o '"examples_per_epoch": *[0-9]*' "$out/$1/run-${2#train-}/metrics.json" | grep -o '[0-9]*$'
}
# Test items of the task, from the world's split table (images, captions, questions, ...).
test_items() {
  local col=2
  [ "$2" = eval-vqa ] && col=4
  awk -v c="$col" '$1 == "test" { print $c }' "$out/$1-world.out"
}

for n in "$@"; do
  d="$out/$n"
  rm -rf "$d"
  stage "$n" world images "$close" -q world --out "$d/world" --images "$n" --seed 1
  stage "$n" embed images "$close" -q embed --clip "$clip" --data "$d/world/dataset_coco.json" \
    --images "$d/world" --out "$d/cache"
  for task in s-cap vqa; do
    stage "$n" "train-$task" examples "$close" -q train --task "$task" --data "$d/world" \
      --text-cache "$d/cache/texts" --image-cache "$d/cache/images" --epochs 1 --no-eval \
      --out "$d/run-$task"
    stage "$n" "eval-$task" test_items "$close" -q eval --run "$d/run-$task" --data "$d/world" \
      --image-cache "$d/cache/images" --split test
  done
done
cat "$table"
