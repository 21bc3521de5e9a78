#!/usr/bin/env bash
# One call on a CUDA machine that has its own PyTorch and Triton: install this package there
# (which compiles the C++ and CUDA C++ extensions), run the CUDA backend tests on the GPU, run
# compute-sanitizer (memcheck, racecheck) over a small call of every CUDA kernel, time every op
# (Triton and CUDA C++ side by side), run the pytest-benchmark suite (benchmarks/, with its report),
# then the rest of the test suite. Everything lands in
# $OUT (default benchmarks/results/latest); the op table is printed before the suite's summary.
#
# Budget: under 8 minutes on one H100. Each step has its own timeout, shortened so that the whole
# script stays within BUDGET_S seconds (default 470); a step that no time is left for is skipped
# and reported (skipped.txt, exit status 1). The steps that check the newest code come first; the
# rest of the suite (Triton, reference, CPU; most of it also runs in CI without a GPU) gets what
# is left. Estimated on an H100 host (not measured yet): install ~1.5 min (one arch), CUDA
# backend tests ~1.5 min (much of it Triton JIT compiles of the comparison kernels), sanitizers
# ~1 min, benchmarks ~2 min, the rest of the suite the remaining ~2 min.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
status=0
step() { echo "== $1 ($(date -u +%H:%M:%S), +$(($(date +%s) - START))s)"; }
# left CAP: the seconds a step may run, CAP or what remains of BUDGET_S if less (0: skip it).
left() {
  local rest=$((BUDGET_S - ($(date +%s) - START)))
  if ((rest < 20)); then echo 0; elif ((rest < $1)); then echo "$rest"; else echo "$1"; fi
}
skipped() { echo "   skipped: $1"; echo "skipped: $1" >> "$OUT/skipped.txt"; status=1; }

step "environment"
{ nvidia-smi; $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"; } > "$OUT/environment.txt" 2>&1
tail -1 "$OUT/environment.txt"

# Compile the CUDA extension for this GPU's arch only (bounds the build time), on every core.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "9.0")
fi
export TORCH_CUDA_ARCH_LIST
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ -z "${CUDA_HOME:-}" ]]; then
  nvcc_path=$(command -v nvcc || true)
  for dir in /usr/local/cuda ${nvcc_path:+"$(dirname "$(dirname "$nvcc_path")")"}; do
    if [[ -x "$dir/bin/nvcc" ]]; then
      export CUDA_HOME=$dir
      break
    fi
  done
fi
echo "   CUDA_HOME=${CUDA_HOME:-<none>} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS" | tee -a "$OUT/environment.txt"

step "install (pip install --no-deps --no-build-isolation -e .; compiles the extensions)"
t0=$(date +%s)
if ! timeout "$(left 300)" $PY -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; then
  tail -20 "$OUT/install.log"
  echo "install failed"
  exit 1
fi
echo "extension build + install: $(($(date +%s) - t0)) s (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)" | tee "$OUT/build_time.txt"
$PY -c "import hpm_kernels as hk; [print(b) for b in hk.available_backends()]" | tee "$OUT/backends.txt"
cuda_ok=$($PY -c "import hpm_kernels as hk; print(int(any(b.name == 'cuda' and b.available for b in hk.available_backends())))" 2>/dev/null || echo 0)
if [[ "$cuda_ok" != 1 ]]; then
  echo "   the cuda backend is unavailable (see backends.txt and install.log): its tests skip"
  status=1
fi

step "tests of the CUDA C++ backend (tests/test_cuda_backend.py)"
t=$(left 180)
if ((t > 0)); then
  timeout "$t" $PY -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py > "$OUT/tests_cuda.log" 2>&1 || status=1
  tail -5 "$OUT/tests_cuda.log"
else
  skipped "CUDA backend tests (out of time budget)"
fi

step "compute-sanitizer memcheck and racecheck over benchmarks/sanitize_cuda.py"
SANITIZER=$(command -v compute-sanitizer || true)
if [[ -z "$SANITIZER" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]]; then
  SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
fi
if [[ "$cuda_ok" != 1 ]]; then
  skipped "compute-sanitizer (no cuda backend)"
elif [[ -z "$SANITIZER" ]]; then
  skipped "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
else
  # Instrument only our kernels (namespace hpm_cuda): torch's own would multiply the time.
  filter=()
  if "$SANITIZER" --help 2>&1 | grep -q -- "--kernel-name "; then filter=(--kernel-name kns=hpm_cuda); fi
  for tool in memcheck racecheck; do
    t=$(left 90)
    if ((t == 0)); then
      skipped "compute-sanitizer $tool (out of time budget)"
      continue
    fi
    extra=()
    envs=(env)
    [[ $tool == racecheck ]] && extra=(--racecheck-report hazard)
    # Without the caching allocator an access past a tensor's end is past its allocation.
    [[ $tool == memcheck ]] && envs=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    "${envs[@]}" timeout "$t" "$SANITIZER" --tool "$tool" --error-exitcode 9 ${filter[@]+"${filter[@]}"} \
      ${extra[@]+"${extra[@]}"} $PY benchmarks/sanitize_cuda.py > "$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    if ((rc == 0)); then
      echo "   $tool: clean ($(grep -c ': ok' "$OUT/sanitizer_$tool.log") lines ok)"
    else
      status=1
      echo "   $tool: FAILED (exit $rc; 9: errors reported, 124: timeout), see sanitizer_$tool.log"
      tail -15 "$OUT/sanitizer_$tool.log"
    fi
  done
fi

step "op benchmarks (bf16, ViT-B/16 224 px, N = 256; triton and cuda side by side)"
t=$(left 200)
if ((t > 0)); then
  timeout "$t" $PY benchmarks/gpu_ops.py --dtype bf16 --json "$OUT/gpu_ops_bf16.json" > "$OUT/gpu_ops_bf16.txt" 2>&1 || status=1
  tail -40 "$OUT/gpu_ops_bf16.txt"
else
  skipped "op benchmarks (out of time budget)"
fi
step "benchmark suite (pytest-benchmark, all shape sets; benchmarks/README.md) -> RESULTS_gpu.md"
t=$(left 150)
if ((t > 0)); then
  HPM_BENCH_COMPILE=${HPM_BENCH_COMPILE:-vitb16_224} timeout "$t" $PY -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_gpu.json" > "$OUT/bench.log" 2>&1 || status=1
  tail -3 "$OUT/bench.log"
  [[ -s "$OUT/bench_gpu.json" ]] && $PY benchmarks/report.py "$OUT/bench_gpu.json" --out "$OUT/RESULTS_gpu.md" > /dev/null 2>&1
else
  skipped "benchmark suite (out of time budget)"
fi
step "the rest of the test suite on the GPU"
t=$(left 240)
if ((t > 0)); then
  timeout "$t" $PY -m pytest -q -x -p no:cacheprovider tests --ignore=tests/test_cuda_backend.py > "$OUT/tests.log" 2>&1 || status=1
  tail -5 "$OUT/tests.log"
else
  skipped "test suite (out of time budget)"
fi

echo "== done in $(($(date +%s) - START)) s, status $status"
exit $status
