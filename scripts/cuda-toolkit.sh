#!/usr/bin/env bash
# Assembles a CUDA toolkit good enough to *compile and link* `--features cuda` on a machine
# with no GPU and no NVIDIA install: nvcc, headers and libraries from NVIDIA's PyPI wheels,
# plus the driver library libcuda.so from Debian's non-free libcuda1 package (the wheels do
# not ship it, not even as a stub). Nothing here can run a kernel; a GPU machine uses its own
# toolkit and driver.
#
# Usage: scripts/cuda-toolkit.sh DIR   (idempotent: a complete DIR is reused as it is)
# Then:  export CUDA_ROOT=DIR PATH=DIR/bin:$PATH CUDA_COMPUTE_CAP=80
set -euo pipefail

dir=${1:?usage: scripts/cuda-toolkit.sh DIR}
# Pinned so that every CI run compiles against the same toolkit. cudarc 0.19 knows CUDA
# releases up to 13.4; 13.0 is the release PyTorch's cu13 wheels use.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
  nvidia-cublas==13.0.2.14
)
# NCCL for `--features nccl` (data-parallel training on GPUs); its wheel has its own layout.
nccl_wheel=nvidia-nccl-cu13==2.32.6
stamp="$dir/.complete-$(echo "${wheels[*]} $nccl_wheel libcuda1" | md5sum | cut -c1-12)"
if [ -e "$stamp" ]; then echo "cuda toolkit: reusing $dir"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work/wheels" "${wheels[@]}"
python3 -m pip download --quiet --no-deps --dest "$work/nccl" "$nccl_wheel"
mkdir -p "$work/root"
for w in "$work"/wheels/*.whl; do
  unzip -q -o "$w" 'nvidia/cu13/*' -d "$work/unz"
done
cp -a "$work/unz/nvidia/cu13/." "$work/root/"
unzip -q -o "$work"/nccl/*.whl 'nvidia/nccl/lib/libnccl.so.2' 'nvidia/nccl/include/nccl.h' -d "$work/unz"
cp -a "$work/unz/nvidia/nccl/lib/libnccl.so.2" "$work/root/lib/"
cp -a "$work/unz/nvidia/nccl/include/nccl.h" "$work/root/include/"

# libcuda.so: Debian's non-free component, read through a private apt state so that the
# machine's own sources are left as they are.
cat >"$work/nonfree.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
apt_opts=(-o "Dir::Etc::sourcelist=$work/nonfree.sources" -o Dir::Etc::sourceparts=/nonexistent
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq download libcuda1)
dpkg-deb -x "$work"/libcuda1_*.deb "$work/deb"
find "$work/deb" -name "libcuda.so.*" -exec cp -a {} "$work/root/lib/" \;

# The linker looks for the unversioned names.
(cd "$work/root/lib" && for f in lib*.so.*; do
  base=${f%%.so.*}.so
  [ -e "$base" ] || ln -s "$f" "$base"
done)
chmod +x "$work/root/bin/"* 2>/dev/null || true

rm -rf "$dir.tmp" && mv "$work/root" "$dir.tmp"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
touch "$stamp"
"$dir/bin/nvcc" --version | tail -2
