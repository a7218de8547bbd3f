#!/usr/bin/env bash
# One-command setup of stan-mm on a fresh machine or into an existing MMAction2 environment.
#   bash tools/install.sh            runtime + test dependencies, stan-mm in editable mode
# Environment: PYTHON (default python3), STAN_TORCH (default "torch==2.14.1 torchvision==0.29.1"),
#   STAN_SKIP_TESTS_DEPS=1 to skip pytest/hypothesis/transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip"

# 1. torch + torchvision as a matching pair; an existing working pair is kept.
if ! $PY -c "import torch, torchvision" >/dev/null 2>&1; then
  $PIP install ${STAN_TORCH:-torch==2.14.1 torchvision==0.29.1}
else
  echo "[install] keeping torch $($PY -c 'import torch; print(torch.__version__)')"
fi

# 2. mmcv 2.0/2.1: keep an existing full mmcv; otherwise the pure-Python mmcv-lite 2.1.0.
if $PY -c "import mmcv, sys; v=tuple(int(x) for x in mmcv.__version__.split('.')[:2]); sys.exit(0 if (2,0)<=v<(2,2) else 1)" >/dev/null 2>&1; then
  echo "[install] keeping mmcv $($PY -c 'import mmcv; print(mmcv.__version__)')"
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
