#!/usr/bin/env bash
# The prepared GPU check (`make gpu-check`): runs benchmarks/gpu_check.py with the machine's own python.
# A lent GPU machine has torch/triton/onnxruntime/scikit-learn/pynvml but no package registry: the wheels it
# lacks (skl2onnx, platformdirs) travel in .whl/ (`make gpu-wheels`), and the source tree is made importable as
# the installed package would be (gpperf_torch + gpperf_torch.kernels) through a folder of links, no build.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/$($PY -c 'import torch;print(torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo gpu)-$(date +%Y%m%d)}
mkdir -p "$OUT"

SITE=/tmp/gpperf-site
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade --target "$SITE" .whl/*.whl \
    || echo "warning: could not install .whl/*.whl (the check goes on without them)"
fi
SHIM=/tmp/gpperf-shim
rm -rf "$SHIM" && mkdir -p "$SHIM/gpperf_torch"
for f in "$PWD"/gpperf_torch/*; do ln -s "$f" "$SHIM/gpperf_torch/"; done
ln -s "$PWD/kernels" "$SHIM/gpperf_torch/kernels"
export PYTHONPATH="$SHIM:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

$PY benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
