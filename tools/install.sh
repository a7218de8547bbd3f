#!/usr/bin/env bash
# One-command setup of stan-mm on a fresh machine or into an existing MMAction2 environment.
#   bash tools/install.sh            runtime + test dependencies, stan-mm in editable mode
# Environment: PYTHON (default python3; 3.10 or newer), STAN_TORCH (a torch/torchvision pair to
#   install even over a working one; default: keep a working pair of torch >= 2.6, else
#   install "torch==2.14.1 torchvision==0.29.1"), STAN_SKIP_TESTS_DEPS=1 to skip
#   requirements/tests.txt (pytest, hypothesis, transformers, av).
set -euo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.." >/dev/null
PY=${PYTHON:-python3}
PIP="$PY -m pip"

# The oldest torch stan-mm supports: 2.6 is the first torch whose torch.load defaults to
# weights_only=True and whose torch.serialization.safe_globals takes (callable, name)
# entries, which stan-mm's safe checkpoint loading (stan_mm/compat/checkpoint.py) needs;
# tools/test.py --amp also needs torch.get_autocast_dtype (2.4). Keep in step with setup.py.
TORCH_MIN=2.6
torch_too_old() {
  $PY -c "import sys, torch
v = tuple(int(''.join(c for c in p if c.isdigit()) or 0)
          for p in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if v < tuple(int(x) for x in '$TORCH_MIN'.split('.')) else 1)"
}
torch_min_error() {  # each argument: one more line of what to do
  TORCH_VERSION=$($PY -c 'import torch; print(torch.__version__)')
  echo "[install] error: torch $TORCH_VERSION is installed; stan-mm needs torch >= $TORCH_MIN:" >&2
  echo "[install] its safe checkpoint loading needs torch.serialization.safe_globals with" >&2
  echo "[install] (callable, name) entries and the weights_only=True default of torch.load," >&2
  echo "[install] both new in torch 2.6." >&2
  for line in "$@"; do echo "[install] $line" >&2; done
  exit 1
}

# 1. torch + torchvision as a matching pair: STAN_TORCH when set, else an existing working
#    pair is kept (torch >= TORCH_MIN, else the script stops), else the default pair.
if [ -n "${STAN_TORCH:-}" ]; then
  # a pinned torch==X.Y too old is refused before it replaces anything
  if ! $PY -c "import re, sys
m = re.search(r'(?:^|\s)torch==(\d+)\.(\d+)', '$STAN_TORCH')
sys.exit(1 if m and (int(m[1]), int(m[2])) < tuple(int(x) for x in '$TORCH_MIN'.split('.')) else 0)"; then
    echo "[install] error: STAN_TORCH=\"$STAN_TORCH\" names a torch older than $TORCH_MIN, which stan-mm" >&2
    echo "[install] needs (safe checkpoint loading); nothing was installed. Name a newer pair." >&2
    exit 1
  fi
  $PIP install $STAN_TORCH
  if torch_too_old; then
    torch_min_error "STAN_TORCH=\"$STAN_TORCH\" installed it; name a newer pair."
  fi
elif ! $PY -c "import torch, torchvision" >/dev/null 2>&1; then
  $PIP install torch==2.14.1 torchvision==0.29.1
elif torch_too_old; then
  torch_min_error "Nothing was installed. Upgrade torch and torchvision as a matching pair" \
    "for your CUDA, e.g. the default pair:" \
    "  STAN_TORCH=\"torch==2.14.1 torchvision==0.29.1\" bash tools/install.sh" \
    "or install stan-mm into another environment."
else
  echo "[install] keeping torch $($PY -c 'import torch; print(torch.__version__)')"
fi

# 2. mmcv 2.0/2.1 (mmaction2 1.2.0 refuses >= 2.2): an installed one is kept; with none,
#    the pure-Python mmcv-lite 2.1.0. Another installed mmcv stops the install: mmcv-lite
#    would be unpacked into the same mmcv package and mix the two.
if $PY -c "import mmcv" >/dev/null 2>&1; then
  MMCV_VERSION=$($PY -c 'import mmcv; print(mmcv.__version__)')
  if $PY -c "import mmcv, sys; v=tuple(int(x) for x in mmcv.__version__.split('.')[:2]); sys.exit(0 if (2,0)<=v<(2,2) else 1)" >/dev/null 2>&1; then
    echo "[install] keeping mmcv $MMCV_VERSION"
  else
    echo "[install] error: mmcv $MMCV_VERSION is installed; mmaction2 1.2.0 needs mmcv 2.0 or 2.1." >&2
    echo "[install] Uninstall it first ($PIP uninstall -y mmcv mmcv-lite), then rerun this script" >&2
    echo "[install] (it installs mmcv-lite 2.1.0), or install a full mmcv 2.1 for your torch." >&2
    exit 1
  fi
else
  $PIP install "mmcv-lite==2.1.0"
fi

# 3. The pinned stack and stan-mm itself (editable, so configs/ and tools/ stay in place).
$PIP install -r requirements.txt
if [ "${STAN_SKIP_TESTS_DEPS:-0}" != "1" ]; then
  $PIP install -r requirements/tests.txt
fi
$PIP install --no-build-isolation --no-deps -e .
$PY -c "import stan_mm; print('[install] stan_mm', stan_mm.__version__, 'imports fine')"
