#!/usr/bin/env bash
# The GPU check in one go, on a GPU machine that reaches no network (≤ 8 minutes on one H200):
#   benchmarks/gpu_check.sh OUT_DIR
# It installs the wheels `scripts/fetch-gpu-wheels` put in .gpu-wheels/ (what that machine's Python
# lacks: DeepSpeed, MLflow, Optuna, pydantic, zstandard, …) into OUT_DIR/site with --no-index, puts
# the project on the path without installing its dependencies, points pdsweep's cache at
# .gpu-wheels/cache (the default corpus, fetched here beforehand) and runs benchmarks/gpu_check.py.
# The same check runs on CPU at tiny sizes in the test suite (gpu_check.py --cpu-smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .gpu-wheels ] && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$OUT/site" .gpu-wheels/*.whl
    export PYTHONPATH="$PWD:$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d .gpu-wheels/cache ] && export PDSWEEP_CACHE="$PWD/.gpu-wheels/cache"
export DS_BUILD_OPS=0 DS_SKIP_CUDA_CHECK=1
"$PY" -c "import torch, sys; print('gpu_check:', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "${@:2}"
