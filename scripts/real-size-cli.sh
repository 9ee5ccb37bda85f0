#!/usr/bin/env bash
# The paper's model sizes through the CLI, as a user runs them: HF-layout dirs with the
# shapes of openai/clip-vit-large-patch14 and t5-base (random weights, made by
# scripts/real-size-checkpoints.py) load; `close embed` embeds a small shapes world with
# the ViT-L/14; `close train` trains t5-base on it for 1 step, then for 4; `close caption`
# captions 8 images with beam 5. Prints each command's wall time and peak RSS (GNU time)
# as a markdown table (docs/scale.md).
#
# Usage: scripts/real-size-cli.sh CHECKPOINTS OUT [DEVICE]
#   CHECKPOINTS  the dir scripts/real-size-checkpoints.py wrote
#   OUT          a work dir (replaced)
#   DEVICE       cpu (default), cuda or cuda:N
set -euo pipefail
cd "$(dirname "$0")/.."
ck=${1:?usage: scripts/real-size-cli.sh CHECKPOINTS OUT [DEVICE]}
out=${2:?usage: scripts/real-size-cli.sh CHECKPOINTS OUT [DEVICE]}
device=${3:-cpu}
close=${CLOSE:-${CARGO_TARGET_DIR:-target}/release/close}
[ -x "$close" ] || { echo "build first: cargo build --release (or set CLOSE=path/to/close)"; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (Debian package: time)"; exit 1; }
clip="$ck/clip-vit-large-patch14"
t5="$ck/t5-base"
rm -rf "$out" && mkdir -p "$out"

rows=()
run() { # run SLUG LABEL COMMAND...: time a command (output in OUT/SLUG.out, .err), keep its row
  local slug=$1 label=$2; shift 2
  /usr/bin/time -f '%e %M' -o "$out/time.txt" "$@" >"$out/$slug.out" 2>"$out/$slug.err" || {
    echo "$label failed:"; tail -5 "$out/$slug.err"; exit 1; }
  read -r secs kib <"$out/time.txt"
  rows+=("| $label | $secs | $((kib / 1024)) |")
  echo "$label: ${secs} s, peak RSS $((kib / 1024)) MiB"
}

"$close" -q world --out "$out/world" --images 48 --seed 1
run embed "embed (ViT-L/14, 48 images and their captions)" \
  "$close" -q embed --clip "$clip" --data "$out/world/dataset_coco.json" \
  --images "$out/world/images" --out "$out/caches" --batch-size 16 --device "$device"
train=("$close" -q train --task s-cap --data "$out/world" --text-cache "$out/caches/texts"
  --image-cache "$out/caches/images" --clip "$clip" --t5 "$t5" --epochs 1 --batch-size 8
  --no-eval --device "$device")
run train-1 "train t5-base, 1 step (load and first step)" \
  "${train[@]}" --max-examples-per-epoch 8 --out "$out/run-1"
run train-4 "train t5-base, 4 steps" \
  "${train[@]}" --max-examples-per-epoch 32 --out "$out/run-4"
mapfile -t imgs < <(find "$out/world/images" -name '*.png' | sort | head -8)
run caption "caption 8 images, beam 5" \
  "$close" -q caption --run "$out/run-4" --beam 5 --device "$device" "${imgs[@]}"

echo
echo "| command | wall s | peak RSS MiB |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
head -3 "$out/caption.out"
