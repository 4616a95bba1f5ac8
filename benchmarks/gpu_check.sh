#!/usr/bin/env bash
# One-shot GPU check: install the project the way a bare GPU machine allows (no network), then the
# compiled kernel tests (fp32/fp16/bf16), the model on CUDA, Table 6 and the kernel benchmarks, each
# step under its own timeout (together at most 8 minutes, Triton's JIT compiles included). The
# ahead-of-time compile tests need no GPU and are left to CI. A failing step does not stop the
# others; the script exits non-zero if any failed. DIR/summary.txt is the record of the run: each
# step's status, the pytest result line, the Table 6 rows, the kernel bandwidth table, the GPU and
# the versions; each step's full log is DIR/<step>.log.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--python PY]     on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]         any CPU machine: every step under the
#       Triton interpreter at tiny sizes, in a venv holding only the GPU image's packages (linked from
#       this Python by benchmarks/image_venv.py), the project installed the same way, no package index.
#       --quick (with --dry-run) runs a subset of the tests, as tests/kernels/test_gpu_check.py does.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="" DRY_RUN=0 QUICK=0 PY="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --quick) QUICK=1; shift ;;
        --python) PY="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-bench_out/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=()
STATUS=()

note() { echo "$*" | tee -a "$SUMMARY"; }

step() {  # step NAME TIMEOUT_S CMD...: run CMD with a timeout, log to $OUT/NAME.log, record its status
    local name="$1" limit="$2" start rc=0
    shift 2
    echo "=== [$(date -u +%H:%M:%S)] $name (timeout ${limit}s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    local took=$(( $(date +%s) - start ))
    if [[ $rc -eq 0 ]]; then
        STATUS+=("$name: ok (${took}s)")
    else
        local why="FAILED (exit $rc)"
        [[ $rc -eq 124 || $rc -eq 137 ]] && why="TIMED OUT after ${limit}s"
        STATUS+=("$name: $why (${took}s), see $name.log")
        FAILED+=("$name")
        tail -n 15 "$OUT/$name.log" | sed 's/^/    | /'
    fi
    echo "    ${STATUS[-1]}"
}

# Step time limits (seconds): on the GPU they add up to 8 minutes; the interpreter is far slower.
if [[ $DRY_RUN -eq 1 ]]; then
    T_INSTALL=180 T_TESTS=900 T_MODEL=600 T_TABLE6=300 T_BENCH=300
else
    T_INSTALL=45 T_TESTS=180 T_MODEL=45 T_TABLE6=110 T_BENCH=100
fi

if [[ $DRY_RUN -eq 1 ]]; then
    MODE="dry run (CPU, Triton interpreter, tiny sizes)"
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    VENV="$OUT/venv"
    step venv 120 "$PY" benchmarks/image_venv.py "$VENV"
    PY="$VENV/bin/python"
    PIP_INDEX=(--no-index)
else
    MODE="GPU"
    export TRITON_INTERPRET=0
    PIP_INDEX=()
fi
export PYTHONUNBUFFERED=1

# 0. Install exactly as on the GPU machine: no dependencies resolved, no build isolation, no network.
step install "$T_INSTALL" "$PY" -m pip install --quiet "${PIP_INDEX[@]}" --no-deps --no-build-isolation -e .

"$PY" - >"$OUT/environment.txt" 2>&1 <<'PYEOF'
import os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print("gpu:", gpu, "| TRITON_INTERPRET =", os.environ.get("TRITON_INTERPRET"))
PYEOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >>"$OUT/environment.txt" 2>&1
else
    echo "nvidia-smi: not available" >>"$OUT/environment.txt"
fi

if [[ $DRY_RUN -eq 0 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: run with --dry-run on a CPU machine" | tee -a "$SUMMARY"
    exit 2
fi

# 1. Kernel and op tests with compiled kernels, CUDA tests included: the launchers' default configs
#    (FUSIONMAMBA_AUTOTUNE=0 keeps tuning out of the test time) and every tuning config forced once.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -m "cuda or not cuda")
if "$PY" -c "import xdist" 2>/dev/null && [[ $DRY_RUN -eq 0 ]]; then
    PYTEST+=(-n 4)  # four processes compile Triton kernels in parallel
fi
TEST_FILTER=()
[[ $QUICK -eq 1 ]] && TEST_FILTER=(-k "non_contiguous or writes_every or chunk_states or half_precision")
step tests "$T_TESTS" env FUSIONMAMBA_AUTOTUNE=0 "${PYTEST[@]}" tests/ops tests/kernels --ignore=tests/kernels/test_aot_compile.py \
    --ignore=tests/kernels/test_gpu_check.py --ignore=tests/kernels/test_model_on_device.py "${TEST_FILTER[@]}" \
    --junitxml="$OUT/tests.xml"
# 2. The model: the official-parity fixture and fp16/bf16 autocast through the Triton backend
#    (minutes under the interpreter: not in --quick).
if [[ $QUICK -eq 1 ]]; then
    STATUS+=("model: skipped (--quick)")
else
    step model "$T_MODEL" env FUSIONMAMBA_AUTOTUNE=0 GPU_CHECK_DRY_RUN="$DRY_RUN" "${PYTEST[@]}" \
        tests/kernels/test_model_on_device.py
fi
# 3. Table 6: FLOPs, run time (after untimed warm-ups that compile and tune) and peak memory.
if [[ $DRY_RUN -eq 1 ]]; then
    # The full-width model under the interpreter takes many minutes: the torch backend is timed (the
    # same timing code), and the model step has already run the Triton backend.
    step table6 "$T_TABLE6" "$PY" benchmarks/flops_runtime.py --out-dir "$OUT" --quick --quick-time-size 32x32 \
        --backends torch --no-search
else
    step table6 "$T_TABLE6" "$PY" benchmarks/flops_runtime.py --out-dir "$OUT" --runs 10 --warmup 2 --budget 5
fi
# 4. Kernel benchmarks on the model's shapes (autotuned), with achieved bandwidth.
if [[ $DRY_RUN -eq 1 ]]; then
    step bench_kernels "$T_BENCH" "$PY" benchmarks/bench_kernels.py --out-dir "$OUT" --size 32x32 --dims 2,4,8,16 \
        --budget 0.01 --min-runs 1 --no-plot
else
    step bench_kernels "$T_BENCH" "$PY" benchmarks/bench_kernels.py --out-dir "$OUT" --budget 0.15
fi

{
    echo "# gpu_check.sh, $MODE, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "## Machine"
    cat "$OUT/environment.txt"
    echo
    echo "## Steps"
    printf '%s\n' "${STATUS[@]}"
    echo
    echo "## Tests"
    grep -hE "^(=+ )?[0-9]+ (passed|failed)|^(=+ )?[0-9]+ (skipped|error)|no tests ran" "$OUT/tests.log" "$OUT/model.log" 2>/dev/null \
        | sed 's/=//g; s/^ *//' || true
    echo
    echo "## Table 6 (batch 1; FLOPs on the meta device, times after warm-up)"
    grep -E "^\| " "$OUT/table6.log" 2>/dev/null | head -n 8 || true
    echo
    echo "## Kernel bandwidth"
    sed -n '/achieved DRAM bandwidth/,/^$/p; /No GPU: achieved/p' "$OUT/bench_kernels.log" 2>/dev/null || true
} >>"$SUMMARY"

if [[ ${#FAILED[@]} -gt 0 ]]; then
    note "FAILED steps: ${FAILED[*]} (results in $OUT)"
    exit 1
fi
note "all steps passed (results in $OUT)"
