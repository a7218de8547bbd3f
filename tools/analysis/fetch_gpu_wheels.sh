#!/usr/bin/env bash
# The stan-mm stack as wheels for a GPU machine that cannot download anything (see
# tools/analysis/gpu_session.py): run here, where pip reaches the package index; carry the
# folder there. Such machines already hold torch, torchvision, numpy, OpenCV, timm, regex,
# safetensors, matplotlib, rich, pyyaml and tqdm; this adds the rest, without dependencies.
#   bash tools/analysis/fetch_gpu_wheels.sh [DEST]        (default .whl, git-ignored)
# Environment: STAN_WHEEL_PYTHON (default 3.12, the GPU machine's Python).
set -euo pipefail
CDPATH= cd -- "$(dirname -- "$0")/../.." >/dev/null
DEST=${1:-.whl}
PYVER=${STAN_WHEEL_PYTHON:-3.12}
# the pinned stack of requirements.txt (its == lines), mmcv-lite as tools/install.sh
# installs it, and the small packages they import that such machines lack (found
# 2026-12-06 by importing stan_mm, mmaction and open_clip and running the benchmark with
# every other distribution than the GPU image's hidden: mmaction imports importlib_metadata)
PINNED=$(grep -E '^(mmengine|mmaction2|mmpretrain|decord|open-clip-torch)==' requirements.txt)
PKGS="$PINNED mmcv-lite==2.1.0 addict yapf platformdirs termcolor ftfy wcwidth
      importlib-metadata lazy-importer"
mkdir -p "$DEST"
for pkg in $PKGS; do
  python3 -m pip download -q --no-deps --only-binary=:all: --dest "$DEST" \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 "$pkg"
done
echo "[fetch_gpu_wheels] $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
