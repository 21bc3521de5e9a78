#!/usr/bin/env bash
# One call on a CUDA machine that has its own PyTorch and Triton: install this package there,
# run the test suite on the GPU, then time every op. Everything lands in $OUT (default
# benchmarks/results/latest); the op table is printed last. Budget: under 8 minutes on one H100.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }

step "environment"
{ nvidia-smi; $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"; } > "$OUT/environment.txt" 2>&1
tail -1 "$OUT/environment.txt"

step "install (pip install --no-deps --no-build-isolation -e .)"
if ! $PY -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; then
  tail -20 "$OUT/install.log"; echo "install failed"; exit 1
fi
$PY -c "import hpm_kernels as hk; [print(b) for b in hk.available_backends()]" | tee "$OUT/backends.txt"

step "tests on the GPU"
timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
tail -5 "$OUT/tests.log"

step "op benchmarks (bf16, ViT-B/16 224 px, N = 256)"
timeout 240 $PY benchmarks/gpu_ops.py --dtype bf16 --json "$OUT/gpu_ops_bf16.json" > "$OUT/gpu_ops_bf16.txt" 2>&1 || status=1
cat "$OUT/gpu_ops_bf16.txt" | tail -30
exit $status
