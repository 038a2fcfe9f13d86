#!/usr/bin/env bash
# The sampler (models/decode.py) on a CUDA machine, from the repository root, in one device call (about 6 minutes):
#   1. its tests: the CPU suite of tests/models/test_decode.py, then tests/gpu/test_decode_gpu.py (the fast path in
#      bf16 with the Triton ops, plain and over an NF4 base with LoRA, against the generic path; a throughput print);
#   2. benchmarks/decode_bench.py on the Llama-2-7B shape, batch 16 x 128 new tokens after 128-token prompts: the fast
#      path (fixed shapes, CUDA graph) with a bf16 base, bf16 + LoRA and NF4 + LoRA, NF4 + LoRA without the graph
#      (--dynamic), beside a transformers model through our sampler's generic
#      path and through transformers' own generate.
# If the image lacks pytest, carry its wheels in .whl/. Results: $OUT/decode.jsonl; the log of the tests in
# $OUT/pytest_decode.log.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/decode_bench}
mkdir -p "$OUT"
R=$OUT/decode.jsonl

if ! $PY -m pytest --version >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
STATUS=0
if $PY -m pytest --version >/dev/null 2>&1; then
    $PY -m pytest -q -s -rfEs --tb=short -p no:cacheprovider -m "not slow" tests/models/test_decode.py \
        tests/gpu/test_decode_gpu.py 2>&1 | tee "$OUT/pytest_decode.log" | grep -E "decode |passed|failed|Error" | tail -n 20
    STATUS=${PIPESTATUS[0]}
else
    echo "pytest is missing (carry its wheels in .whl/): tests skipped"
fi

B="$PY benchmarks/decode_bench.py --shape llama2-7b --batch 16 --prompt 128 --new 128 --out $R"
for args in "--impl tunelab --method full" "--impl tunelab --method lora" "--impl tunelab --method qlora" \
            "--impl tunelab --method qlora --dynamic" "--impl hf" "--impl hf_generate"; do
    # shellcheck disable=SC2086
    timeout 150 $B $args 2>&1 | grep -E "SUMMARY|Error|error" | tail -3
done
exit "$STATUS"
