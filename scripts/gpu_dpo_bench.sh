#!/usr/bin/env bash
# DPO on a CUDA machine, from the repository root, in one device call (about 4 minutes):
#   1. the fused log-prob kernel against its reference, and `tunelab train --task dpo` with LoRA and with full
#      fine-tuning on the fast path (tests/kernels/test_log_probs.py, tests/tasks/test_dpo_device.py);
#   2. benchmarks/dpo_bench.py on the Llama-2-7B shape: tunelab's dpo step beside TRL's DPOTrainer (its default,
#      a reference forward in every step, and precompute_ref_log_probs=True), same pairs, lengths, batch and LoRA.
# Carry .pk (../shared/bench's bundle, sites.tar.xz: trl, datasets) and, if the image lacks pytest, its wheels in
# .whl/. Results: $OUT/dpo.jsonl and the table printed at the end.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/dpo_bench}
mkdir -p "$OUT"
R=$OUT/dpo.jsonl
[ -d .site ] || tar -xJf .pk/sites.tar.xz

if ! $PY -m pytest --version >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if $PY -m pytest --version >/dev/null 2>&1; then
    $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider -m "not slow" tests/kernels/test_log_probs.py \
        tests/tasks/test_dpo_device.py 2>&1 | tee "$OUT/pytest_dpo.log" | tail -n 15
else
    echo "pytest is missing (carry its wheels in .whl/): tests skipped"
fi

B="$PY benchmarks/dpo_bench.py --out $R"
timeout 120 $B --impl tunelab 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
PYTHONPATH=$PWD/.site timeout 150 $B --impl trl 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
PYTHONPATH=$PWD/.site timeout 150 $B --impl trl --precompute-ref 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
$PY benchmarks/dpo_bench.py --table --out "$R"
