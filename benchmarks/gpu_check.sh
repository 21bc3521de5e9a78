#!/usr/bin/env bash
# The first checks on a CUDA machine, in one call of at most BUDGET_S seconds (default 450: fits in
# 8 minutes of a 10-minute call): install this package there (compiles the C++ and CUDA C++
# extensions for that GPU's arch, as setup.py's defaults choose), the CUDA backend tests on the GPU,
# compute-sanitizer (memcheck, racecheck) over a small call of every CUDA kernel, every op timed
# (Triton and CUDA C++ side by side) and the pytest-benchmark suite with its report. Correctness
# first: the CUDA backend tests and the Triton kernels' tests on CUDA tensors come before the
# sanitizers and the timings.
# Everything lands in $OUT (default benchmarks/results/latest).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh      # on the GPU machine (its torch, Triton, nvcc)
#   bash benchmarks/gpu_check.sh --dry-run          # rehearsal here, on CPU: every step runs in a
#                                                   # cheap form, each GPU-only part is skipped with
#                                                   # a line saying so (tests/test_gpu_check.py)
#
# Budget. Each step has a time budget (the table printed first); a step may also use what the
# steps before it left unused, but never the time reserved for the steps after it, so the whole
# run ends within BUDGET_S whatever happens. A step that times out is reported (exit 124) and the
# script goes on; the exit status is 1 if any step failed or was cut. The budgets are estimates for
# one H200 with 16 cores, from this 2-core CPU machine's measurements (see the "basis" column);
# the first GPU run replaces them with measured times (each step's time is printed and written to
# $OUT/steps.tsv).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
rm -f "$OUT/skipped.txt"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
START=$(date +%s)
status=0

# name | budget (s) | basis of the estimate
PLAN=(
  "environment|10|nvidia-smi and a torch import"
  "install|150|ninja, one job per core, one arch: wall = the slowest file of each extension (csrc/cpu/patches.cpp 57 s, csrc/cuda/patches.cu 57 s on this project's EPYC cores, ninja log) plus links and pip"
  "cuda_tests|80|tests/test_cuda_backend.py: ~330 cases, mostly the Triton JIT compiles of the comparison kernels"
  "gpu_tests|75|tests/test_triton_*.py on CUDA tensors in fp32/bf16/fp16 (test_triton_device_and_sync.py: a whole HPM step with zero host syncs, deterministic mode, the last GPU); the Triton cache is warm from cuda_tests"
  "memcheck|30|sanitize_cuda.py: one small call of each CUDA kernel under memcheck"
  "racecheck|30|the same under racecheck"
  "op_benchmarks|45|gpu_ops.py: 6 ops x 5 variants, do_bench 125 ms each, plus Triton JITs"
  "bench_suite|30|pytest-benchmark, ViT-B/16 shapes (HPM_BENCH_SHAPES), 0.5 s of rounds per case; also gets what the others leave"
)
reserved_after() {  # the budgets of the steps after step $1
  local total=0 seen=0 entry name budget
  for entry in "${PLAN[@]}"; do
    IFS='|' read -r name budget _ <<< "$entry"
    if ((seen)); then total=$((total + budget)); fi
    [[ $name == "$1" ]] && seen=1
  done
  echo "$total"
}
budget_of() {
  local entry name budget
  for entry in "${PLAN[@]}"; do
    IFS='|' read -r name budget _ <<< "$entry"
    [[ $name == "$1" ]] && { echo "$budget"; return; }
  done
}
# timeout_for STEP: what is left of BUDGET_S minus what the later steps keep (0: no time left).
timeout_for() {
  local t=$((BUDGET_S - ($(date +%s) - START) - $(reserved_after "$1")))
  ((t < 5)) && t=0
  echo "$t"
}

plan_total=0
echo "== gpu_check$( ((DRY)) && echo ' --dry-run'): step budgets (seconds, whole run <= BUDGET_S=$BUDGET_S)"
printf '   %-14s %6s  %s\n' step budget basis
for entry in "${PLAN[@]}"; do
  IFS='|' read -r name budget basis <<< "$entry"
  plan_total=$((plan_total + budget))
  printf '   %-14s %6d  %s\n' "$name" "$budget" "$basis"
done
printf '   %-14s %6d  (BUDGET_S %d)\n' total "$plan_total" "$BUDGET_S"
if ((plan_total > BUDGET_S)); then
  echo "the step budgets add up to $plan_total s, more than BUDGET_S=$BUDGET_S" >&2
  exit 2
fi

step() {
  CURRENT=$1
  STEP_T0=$(date +%s)
  echo "== $1: $2 (budget $(budget_of "$1") s, may use $(timeout_for "$1") s; +$((STEP_T0 - START)) s)"
}
done_step() {  # done_step EXIT_STATUS
  local took=$(($(date +%s) - STEP_T0))
  printf '%s\t%s\t%s\t%s\n' "$CURRENT" "$(budget_of "$CURRENT")" "$took" "$1" >> "$OUT/steps.tsv"
  if (($1 != 0)); then
    status=1
    echo "   $CURRENT: FAILED (exit $1; 124: out of time) after $took s"
  else
    echo "   $CURRENT: ok in $took s"
  fi
}
gpu_only() {  # gpu_only WHAT: in a dry run, say that WHAT is skipped and why
  echo "   skipped (dry run, needs a GPU): $1"
  echo "skipped (dry run, needs a GPU): $1" >> "$OUT/skipped.txt"
}
# run_step CMD...: run with the step's timeout; 124 when it had no time left or ran out.
run_step() {
  local t
  t=$(timeout_for "$CURRENT")
  if ((t == 0)); then
    echo "   no time left for $CURRENT" | tee -a "$OUT/skipped.txt"
    return 124
  fi
  timeout "$t" "$@"
}

step environment "versions and the GPU"
{
  if ((DRY)); then gpu_only "nvidia-smi"; else nvidia-smi; fi
  run_step "$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} > "$OUT/environment.txt" 2>&1
rc=$?
tail -1 "$OUT/environment.txt"
done_step $rc

if ((DRY)); then
  # pip's --dry-run evaluates setup.py (toolkit, archs, jobs: the same decisions) without compiling.
  step install "pip install --dry-run --no-deps --no-build-isolation -e . (the plan only; no compile in a dry run)"
  run_step "$PY" -m pip install -v --dry-run --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
  rc=$?
  grep "hpm_kernels setup:" "$OUT/install.log" | sort -u | sed 's/^/   /'
else
  step install "pip install --no-deps --no-build-isolation -e . (compiles the extensions)"
  run_step "$PY" -m pip install -v --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
  rc=$?
fi
((rc != 0)) && tail -20 "$OUT/install.log"
done_step $rc
if ((rc != 0 && !DRY)); then
  echo "install failed: nothing else can run"
  exit 1
fi
# One import: the build record, the backends, whether "cuda" is usable and the toolkit it was built with.
read -r cuda_ok build_home < <("$PY" - "$OUT" <<'PYEOF' 2> "$OUT/backends.err" || echo "0 -"
import json, sys
import hpm_kernels as hk
out = sys.argv[1]
info = hk.build_info() or {}
with open(f"{out}/build_info.json", "w") as f:
    json.dump(info, f, indent=2)
rows = hk.available_backends()
with open(f"{out}/backends.txt", "w") as f:
    f.writelines(f"{b}\n" for b in rows)
print(int(any(b.name == "cuda" and b.available for b in rows)), info.get("cuda", {}).get("cuda_home") or "-")
PYEOF
)
sed 's/^/   /' "$OUT/backends.txt" 2> /dev/null
if [[ "$cuda_ok" != 1 ]]; then
  if ((DRY)); then
    echo "   (dry run: the cuda backend is unavailable without a GPU; on the GPU machine it must be available)"
  else
    echo "   the cuda backend is unavailable (see backends.txt, build_info.json, install.log): its tests skip"
    status=1
  fi
fi

step cuda_tests "tests of the CUDA C++ backend (tests/test_cuda_backend.py)"
((DRY)) && gpu_only "the GPU cases of tests/test_cuda_backend.py (they skip here; the build check runs)"
run_step "$PY" -m pytest -q -p no:cacheprovider --maxfail=10 tests/test_cuda_backend.py > "$OUT/tests_cuda.log" 2>&1
rc=$?
tail -3 "$OUT/tests_cuda.log" | sed 's/^/   /'
done_step $rc

# The Triton kernels' tests, which run on CUDA tensors (and bf16) where a GPU is visible; the rest
# of the suite runs in CI on every commit, where these run through the interpreter.
GPU_TESTS=()
for f in tests/test_triton_*.py; do [[ $f == tests/test_triton_compiles_for_gpu.py ]] || GPU_TESTS+=("$f"); done
step gpu_tests "the Triton tests on the GPU: ${GPU_TESTS[*]}"
if ((DRY)); then
  gpu_only "running them on CUDA tensors; the dry run collects them"
  run_step "$PY" -m pytest -q -p no:cacheprovider --collect-only "${GPU_TESTS[@]}" > "$OUT/tests.log" 2>&1
else
  run_step "$PY" -m pytest -q -p no:cacheprovider --maxfail=10 "${GPU_TESTS[@]}" > "$OUT/tests.log" 2>&1
fi
rc=$?
tail -2 "$OUT/tests.log" | sed 's/^/   /'
done_step $rc

SANITIZER=$(command -v compute-sanitizer || true)
for home in "$build_home" /usr/local/cuda; do
  if [[ -z "$SANITIZER" && -x "$home/bin/compute-sanitizer" ]]; then SANITIZER="$home/bin/compute-sanitizer"; fi
done
for tool in memcheck racecheck; do
  step "$tool" "compute-sanitizer --tool $tool over benchmarks/sanitize_cuda.py"
  if ((DRY)); then
    gpu_only "compute-sanitizer $tool (found: ${SANITIZER:-none})"
    run_step "$PY" -m py_compile benchmarks/sanitize_cuda.py
    done_step $?
    continue
  fi
  if [[ "$cuda_ok" != 1 || -z "$SANITIZER" ]]; then
    echo "   skipped: $tool (cuda backend: $cuda_ok, compute-sanitizer: ${SANITIZER:-not found})" | tee -a "$OUT/skipped.txt"
    done_step 1
    continue
  fi
  # Instrument only our kernels (namespace hpm_cuda): torch's own would multiply the time.
  filter=()
  if "$SANITIZER" --help 2>&1 | grep -q -- "--kernel-name "; then filter=(--kernel-name kns=hpm_cuda); fi
  extra=()
  envs=(env)
  [[ $tool == racecheck ]] && extra=(--racecheck-report hazard)
  # Without the caching allocator an access past a tensor's end is past its allocation.
  [[ $tool == memcheck ]] && envs=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
  run_step "${envs[@]}" "$SANITIZER" --tool "$tool" --error-exitcode 9 ${filter[@]+"${filter[@]}"} \
    ${extra[@]+"${extra[@]}"} "$PY" benchmarks/sanitize_cuda.py > "$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  ((rc == 0)) && echo "   $tool: clean ($(grep -c ': ok' "$OUT/sanitizer_$tool.log") lines ok)"
  ((rc != 0)) && tail -15 "$OUT/sanitizer_$tool.log"
  done_step $rc
done

step op_benchmarks "every op timed, triton and cuda side by side (gpu_ops.py)"
if ((DRY)); then
  gpu_only "op timings with do_bench (bf16, ViT-B/16, N = 256); the dry run exercises gpu_ops.py --smoke on tiny fp32 shapes"
  run_step env TRITON_INTERPRET=1 "$PY" benchmarks/gpu_ops.py --smoke --dtype fp32 --n 2 --img 16 --patch 4 --dim 8 --json "$OUT/gpu_ops_smoke.json" > "$OUT/gpu_ops.txt" 2>&1
else
  run_step "$PY" benchmarks/gpu_ops.py --dtype bf16 --json "$OUT/gpu_ops_bf16.json" > "$OUT/gpu_ops.txt" 2>&1
fi
rc=$?
tail -25 "$OUT/gpu_ops.txt"
done_step $rc

step bench_suite "pytest-benchmark suite (ViT-B/16 shapes) and its report -> RESULTS_gpu.md"
bench=(-m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider --benchmark-json="$OUT/bench_gpu.json")
if ((DRY)); then
  gpu_only "the benchmark rounds; the dry run collects the suite and renders the committed CPU results"
  run_step env HPM_BENCH_SHAPES=vitb16_224 "$PY" "${bench[@]}" --collect-only > "$OUT/bench.log" 2>&1 &&
    run_step "$PY" benchmarks/report.py benchmarks/results/cpu.json --out "$OUT/RESULTS_dry_run.md" >> "$OUT/bench.log" 2>&1
else
  HPM_BENCH_SHAPES=${HPM_BENCH_SHAPES:-vitb16_224} HPM_BENCH_COMPILE=${HPM_BENCH_COMPILE:-vitb16_224} run_step "$PY" "${bench[@]}" > "$OUT/bench.log" 2>&1 &&
    "$PY" benchmarks/report.py "$OUT/bench_gpu.json" --out "$OUT/RESULTS_gpu.md" >> "$OUT/bench.log" 2>&1
fi
rc=$?
tail -3 "$OUT/bench.log" | sed 's/^/   /'
done_step $rc

echo "== done in $(($(date +%s) - START)) s of BUDGET_S=$BUDGET_S, status $status$( ((DRY)) && echo ' (dry run)')"
printf '   %-14s %6s %6s %5s\n' step budget took exit
while IFS=$'\t' read -r name budget took rc; do printf '   %-14s %6s %6s %5s\n' "$name" "$budget" "$took" "$rc"; done < "$OUT/steps.tsv"
exit $status
