#!/usr/bin/env bash
# One pass of the GPU checks on a lent CUDA machine (see README, "GPU"): the eos_core tests
# (the CUDA ones run there, skip here) and the instrumentation benchmark on CUDA and CPU.
# Wheels for what the machine's image lacks travel in .whl/ (pydantic, mnist1d).
set -uo pipefail
OUT=${OUT:-/tmp/eos-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/eos_core -p no:warnings -n 8 2>&1 | tail -15 | tee "$OUT/tests.txt"
python3 bench/instrumentation.py --device cuda --threads 4 2>&1 | tee "$OUT/bench_cuda.txt" | tail -30
