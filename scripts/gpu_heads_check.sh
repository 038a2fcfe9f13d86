#!/usr/bin/env bash
# Classification and reward heads on a CUDA machine (issue 13's GPU cases), from the repository root:
#
#   bash scripts/gpu_heads_check.sh
#
# Runs `tunelab train` for task classify (QLoRA, fast path, Triton kernels, bf16) and task reward (full fine-tuning,
# generic path) on a tiny model and a word-level tokenizer the tests build (the GPU machine lacks the embedded
# model), then predict and eval on the GPU, and the fast body against the transformers body in bf16
# (tests/tasks/test_head_device.py; its CPU cases run too), plus the pooling tests of tests/tasks/test_head.py.
# tunelab need not be installed (PYTHONPATH=src). If pytest is missing, wheels in $WHEELS (default .whl) are
# installed into /tmp/site first. The log goes to $OUT/pytest_heads.log when OUT is set. Exit status: pytest's.
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
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
$PY -m pytest -q -rfEs --tb=short -p no:cacheprovider ${PYTEST_ARGS:-} tests/tasks/test_head_device.py \
    tests/tasks/test_head.py 2>&1 | tee "${OUT:-/tmp}/pytest_heads.log" | tail -n 40
exit "${PIPESTATUS[0]}"
