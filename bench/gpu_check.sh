#!/usr/bin/env bash
# The GPU checks, in one run on a machine with CUDA (`make bench-gpu`, or `bash bench/gpu_check.sh`
# from anywhere in a checkout), about 10 minutes on one H200:
#   1. nvidia-smi and what torch sees of CUDA (no CUDA device: exit 1 at once);
#   2. the CUDA-marked tests (pytest -m gpu), with ENCORE_REQUIRE_CUDA=1 so none may skip;
#   3. the training stage of a 10M-listen night, GAT-BPR in fp32 and in bf16 autocast
#      (bench/bench_gpu.py -> bench/results/gpu.json, gpu.md);
#   4. bench-train's Encore GAT-BPR and PyG LightGCN on the GPU, fp32 and bf16
#      (-> bench/results/train_cuda_fp32.*, train_cuda_bf16.*; on ../shared/data when it is
#      there, else on the generated sample).
# Every step runs even when an earlier one failed (one lease should bring back all it can); the
# exit status is 1 when any failed. Each step has a time limit (GPU_CHECK_*_SECONDS below): they
# add up to under 10 minutes, a lent machine's limit for one command, and the benchmarks write
# their files after each model or precision, so a step cut short keeps what it finished.
#
# Python, the first that applies: $PYTHON; .venv/bin/python; a python3 whose torch sees CUDA (a
# GPU machine's own image, often offline: the packages it lacks, pydantic and its needs, install
# from the wheels in .whl/ that `make gpu-wheels` downloads where PyPI is reachable); else
# `make venv` builds .venv (needs PyPI).
#
# When $OUT names a folder (a lent machine's output folder), the results and this run's log are
# copied there after every step, so a run cut short still returns what it finished.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LISTENS=${GPU_CHECK_LISTENS:-10000000}
EPOCHS=${GPU_CHECK_EPOCHS:-3}
TESTS_SECONDS=${GPU_CHECK_TESTS_SECONDS:-100}
NIGHT_SECONDS=${GPU_CHECK_NIGHT_SECONDS:-300}
TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-90}  # each precision
RESULTS=bench/results
OUT=${OUT:-}
if [[ -n "$OUT" ]]; then
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1

status=0
step() { printf '\n=== %s ===\n' "$*"; }
failed() { echo "FAILED: $*"; status=1; }
save() {
    [[ -n "$OUT" ]] || return 0
    local file
    for file in "$RESULTS"/gpu.json "$RESULTS"/gpu.md "$RESULTS"/train_cuda_*; do
        [[ -f "$file" ]] && cp -f "$file" "$OUT/"
    done
    return 0
}

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif [[ -x .venv/bin/python ]]; then
        echo .venv/bin/python
    elif python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        echo python3
    else
        make venv >&2
        echo .venv/bin/python
    fi
}

PY=$(pick_python)
# Outside the venv the checkout is not installed: the repository root is what imports find.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import pydantic' 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/encore-gpu-site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/encore-gpu-site"
    else
        echo "$PY lacks pydantic: run \`make gpu-wheels\` where PyPI is reachable and bring .whl/" >&2
        exit 1
    fi
fi
# A full venv collects the whole suite; a GPU image without the warehouse's packages (duckdb,
# Prefect) runs the GPU test file alone, without conftest.py (those tests need none of it).
if "$PY" -c 'import duckdb, prefect' 2>/dev/null; then
    TESTS=(tests)
else
    TESTS=(--noconftest tests/test_gpu.py)
fi

step "the machine"
echo "python: $PY"
if command -v nvidia-smi >/dev/null; then nvidia-smi || echo "(nvidia-smi failed)"; else
    echo "(no nvidia-smi on this machine)"; fi
"$PY" - <<'EOF'
import os, sys

import torch

print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: the GPU checks need one")
props = torch.cuda.get_device_properties(0)
print(
    f"{torch.cuda.device_count()} device(s); 0: {props.name}, {props.total_memory / 2**30:.0f} GiB,"
    f" {props.multi_processor_count} SMs, capability {props.major}.{props.minor},"
    f" bf16 supported: {torch.cuda.is_bf16_supported()}"
)
EOF

step "CUDA-marked tests: pytest -m gpu ${TESTS[*]}"
ENCORE_REQUIRE_CUDA=1 timeout "$TESTS_SECONDS" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    "${TESTS[@]}" || failed "pytest -m gpu"

step "a ${LISTENS}-listen night's training stage, fp32 and bf16 (bench/bench_gpu.py)"
timeout "$NIGHT_SECONDS" "$PY" -m bench.bench_gpu --device cuda --listens "$LISTENS" \
    --epochs "$EPOCHS" || failed "bench_gpu"
save

for precision in fp32 bf16; do
    step "bench-train on CUDA, $precision: Encore GAT-BPR and PyG LightGCN"
    out="train_cuda_$precision"
    timeout "$TRAIN_SECONDS" "$PY" -m bench.bench_train --models "Encore GAT-BPR" "LightGCN (PyG)" \
        --device cuda --precision "$precision" --out "$out" || failed "bench_train $precision"
    if grep -q '"error"' "$RESULTS/$out.json" 2>/dev/null; then
        failed "bench_train $precision: a model's run raised (see $RESULTS/$out.md)"
    fi
    save
done

step "done"
for file in "$RESULTS"/gpu.md "$RESULTS"/train_cuda_fp32.md "$RESULTS"/train_cuda_bf16.md; do
    [[ -f "$file" ]] && { echo "--- $file"; cat "$file"; }
done
[[ $status -eq 0 ]] && echo "all GPU checks passed" || echo "some GPU checks FAILED (above)"
exit "$status"
