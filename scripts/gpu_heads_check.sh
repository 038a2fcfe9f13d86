#!/usr/bin/env bash
# Classification and reward heads on a CUDA machine, from the repository root:
#   scripts/gpu_heads_check.sh
# Runs `tunelab train` for task classify (QLoRA, fast path, Triton kernels, bf16) and task reward (full fine-tuning,
# generic path) on a tiny model built by the tests, then predict and eval on the GPU, and the fast body against the
# transformers body in bf16 (tests/tasks/test_head_device.py; the CPU cases run too), plus the pooling tests.
# tunelab need not be installed (PYTHONPATH=src). If pytest is missing, wheels in .whl/ are installed into /tmp/site
# first. Logs go to $OUT when it is set. Exit status: pytest's.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
LOG_DIR=${OUT:-/tmp}

if ! $PY -m pytest --version >/dev/null 2>&1; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
fi
$PY -m pytest --version || { echo "pytest is missing: carry its wheels in .whl/"; exit 3; }
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
$PY -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/tasks/test_head_device.py tests/tasks/test_head.py 2>&1 \
    | tee "$LOG_DIR/pytest_heads.log" | tail -n 40
exit "${PIPESTATUS[0]}"
