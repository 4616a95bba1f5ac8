#!/usr/bin/env bash
# One-shot GPU check: compiled kernel tests, Table 6 and the kernel benchmarks, all logged to one
# folder. Sized for < 8 minutes on a recent NVIDIA GPU. Every step runs under its own timeout; a
# failing step does not stop the others, but the script exits non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: bench_out/gpu_check_<UTC time>)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-bench_out/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
FAILED=()

step() {  # step NAME TIMEOUT_S CMD...: run CMD with a timeout, log to $OUT/NAME.log, record failure
    local name="$1" limit="$2"
    shift 2
    echo "=== [$(date -u +%H:%M:%S)] $name (timeout ${limit}s): $*" | tee -a "$OUT/summary.txt"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "    ok" | tee -a "$OUT/summary.txt"
    else
        [[ $rc -eq 124 || $rc -eq 137 ]] && echo "    TIMED OUT" | tee -a "$OUT/summary.txt"
        echo "    FAILED (exit $rc), last lines of $OUT/$name.log:" | tee -a "$OUT/summary.txt"
        tail -n 15 "$OUT/$name.log" | sed 's/^/    | /' | tee -a "$OUT/summary.txt"
        FAILED+=("$name")
    fi
}

{
    echo "date: $(date -u)"
    echo "host: $(hostname)  cpus: $(nproc)"
    nvidia-smi || echo "nvidia-smi not available"
    "$PY" - <<'PYEOF' || true
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
print("cuda available:", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import mamba_ssm; print("mamba_ssm", mamba_ssm.__version__)
except ImportError:
    print("mamba_ssm not installed (its CUDA scan is not benchmarked)")
PYEOF
} 2>&1 | tee "$OUT/environment.txt"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: this script is for a GPU machine" | tee -a "$OUT/summary.txt"
    exit 2
fi

# 1. Kernel and op tests with compiled Triton kernels (not the interpreter), CUDA tests included.
step tests 170 env TRITON_INTERPRET=0 "$PY" -m pytest tests/ops tests/kernels -m "cuda or not cuda" -q \
    -p no:cacheprovider --junitxml="$OUT/tests.xml"
# 2. Table 6: FLOPs, run time (triton and torch backends) and peak memory at 256x256.
step flops_runtime 140 "$PY" benchmarks/flops_runtime.py --out-dir "$OUT" --runs 10 --warmup 2 --budget 15
# 3. Kernel sweep over the model's shapes (256x256 and 640x480), with bandwidth figures.
step bench_kernels 150 "$PY" benchmarks/bench_kernels.py --out-dir "$OUT" --budget 0.3

echo "=== results in $OUT" | tee -a "$OUT/summary.txt"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FAILED steps: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
    exit 1
fi
echo "all steps passed" | tee -a "$OUT/summary.txt"
