#!/usr/bin/env bash
# GRPO on a CUDA machine, from the repository root, in one device call (about 5 minutes):
#   1. `tunelab train --task grpo` through the CLI on a tiny random Llama with LoRA, QLoRA and full fine-tuning on
#      the fast path (tests/tasks/test_grpo_device.py) and the log-prob kernel's tests (tests/kernels/test_log_probs.py);
#      the sampler has its own script, scripts/gpu_decode.sh;
#   2. benchmarks/grpo_bench.py on the Llama-2-7B shape, QLoRA (NF4 base) and LoRA (bf16 base): generation tokens/s
#      (8 prompts x 8 answers of 256 tokens, KV cache) and training tokens/s (the grpo step on those 64 rows).
# If the image lacks pytest, carry its wheels in .whl/. Results: $OUT/grpo.jsonl and the lines printed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/grpo_bench}
mkdir -p "$OUT"
R=$OUT/grpo.jsonl

if ! $PY -m pytest --version >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if $PY -m pytest --version >/dev/null 2>&1; then
    $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider -m "not slow" tests/tasks/test_grpo_device.py \
        tests/kernels/test_log_probs.py 2>&1 | tee "$OUT/pytest_grpo.log" | tail -n 15
else
    echo "pytest is missing (carry its wheels in .whl/): tests skipped"
fi

timeout 240 $PY benchmarks/grpo_bench.py --shape llama2-7b --method qlora --out "$R" 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
timeout 240 $PY benchmarks/grpo_bench.py --shape llama2-7b --method lora --out "$R" 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
cat "$R"
