#!/usr/bin/env bash
# Every test that needs CUDA, on a GPU machine (kernels, NF4, grouped projections, recompute and offload, 8-bit AdamW,
# QLoRA trained and evaluated as trained): what to run before merging work on the fast path.
#
#   bash scripts/gpu_tests.sh                    # from the repository root; tunelab need not be installed
#   PYTEST_ARGS="-x -k nf4" bash scripts/gpu_tests.sh
#
# The GPU image lacks the embedded model and the gguf package, so the tests that need them skip (saying so) and the
# tiny test model gets a small tokenizer built on the spot. Carry .pk (the baseline's bundle) for the NF4 tests that
# compare with bitsandbytes. If pytest is missing, wheels in $WHEELS (default .whl) are
# installed into /tmp/site first. The log goes to $OUT/pytest_gpu.log when OUT is set. Exit status: pytest's.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if ! $PY -m pytest --version >/dev/null 2>&1 && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY -m pytest --version || { echo "pytest is missing: put its wheels in $WHEELS/"; exit 3; }
# The NF4 tests compare with bitsandbytes, which the GPU image lacks: take it from the baseline's package bundle
# (../shared/bench/make_sites.sh writes .pk/sites.tar.xz) when that was carried.
if ! $PY -c "import bitsandbytes" 2>/dev/null && [ -f .pk/sites.tar.xz ]; then
    mkdir -p /tmp/bnb && tar -xJf .pk/sites.tar.xz -C /tmp/bnb --wildcards '.site/bitsandbytes*'
    export PYTHONPATH="$PYTHONPATH:/tmp/bnb/.site"
fi
$PY -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__},', torch.cuda.get_device_name())"

# The folders that hold CUDA tests; quant/ is listed for when NF4 gets its own package.
DIRS=$(for d in tests/kernels tests/quant tests/peft tests/models tests/training tests/infer tests/tasks; do [ -d "$d" ] && echo "$d"; done)
# Parallel workers when pytest-xdist is there: Triton compiles each kernel variant once per process.
XDIST=""
if $PY -c "import xdist" 2>/dev/null; then XDIST="-n 4"; fi
# -v: each test's outcome goes to the log as it finishes, so a run cut short still says which tests failed.
# shellcheck disable=SC2086
$PY -m pytest -v -rfEs --tb=short -p no:cacheprovider $XDIST ${PYTEST_ARGS:-} $DIRS 2>&1 | tee "${OUT:-/tmp}/pytest_gpu.log" | tail -n 80
exit "${PIPESTATUS[0]}"
