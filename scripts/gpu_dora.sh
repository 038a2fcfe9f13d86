#!/usr/bin/env bash
# DoRA on a CUDA machine: its tests (the fused computation against the fp32 reference, over bf16 and NF4 bases; DoRA
# and QDoRA through `tunelab train`), then the fallback's cost measured: DoRA layers run one by one (no grouped
# projections), so llama2-7b steps are timed for LoRA and DoRA over bf16 and NF4 bases in one run. From the root:
#   scripts/gpu_dora.sh .gpu/smollm2-tokenizer      # the folder written by scripts/save_gpu_tokenizer.py
# Results (JSON lines and the table) go to $OUT (default /tmp). Exit status: the tests'.
set -u
cd "$(dirname "$0")/.."
TOKENIZER=${1:-.gpu/smollm2-tokenizer}
LOG_DIR=${OUT:-/tmp}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TUNELAB_GPU_TOKENIZER="$(cd "$TOKENIZER" 2>/dev/null && pwd)"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
$PY -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/peft/test_dora.py 2>&1 | tail -n 20
status=${PIPESTATUS[0]}
$PY -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/gpu --confcutdir=tests/gpu -k "dora" 2>&1 | tail -n 20
[ "${PIPESTATUS[0]}" = 0 ] || status=1
RESULTS="$LOG_DIR/dora_bench.jsonl"
rm -f "$RESULTS"
for method in lora qlora; do
    $PY benchmarks/train_bench.py --shape llama2-7b --method $method --steps 12 --out "$RESULTS"
    $PY benchmarks/train_bench.py --shape llama2-7b --method $method --dora --steps 12 --out "$RESULTS"
done
$PY benchmarks/train_bench.py --table --out "$RESULTS"
exit "$status"
