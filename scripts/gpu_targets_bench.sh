#!/usr/bin/env bash
# The rows of the speed targets that the 7B table does not cover, each beside its baseline in the same call:
#   8b     Llama-3-8B QLoRA, 4 x 2048: unsloth_qlora, then tunelab with offload and the planner at unsloth's memory
#   16k    Llama-3-8B QLoRA, 1 x 16384: unsloth_qlora, then tunelab with checkpointing (offload on and off)
#   70b    Llama-3-70B QLoRA, 1 x 2048, AdamW and 8-bit AdamW (tunelab only: the baseline has no 70B shape)
#   7b-fp8 Llama-2-7B QLoRA, 4 x 2048: unsloth_qlora, then tunelab with offload in bf16 and with train.fp8
#   8b-fp8 Llama-3-8B QLoRA, 4 x 2048: unsloth_qlora, then tunelab with offload and with the planner at unsloth's
#          memory, each in bf16 and with train.fp8
#   fp8    the QLoRA targets with and without train.fp8 in one call: Llama-2-7B beside unsloth_qlora at its memory
#          (offload) and with the planner at 24 GiB, then Llama-3-8B with train.fp8 and the planner at 7.79 GiB
#
#   OUT=DIR bash scripts/gpu_targets_bench.sh 8b 16k 70b       # from the repository root, baselines set up as
#                                                              # ../shared/bench's README says (.anchors, .pk)
# Each group appends to $OUT/<group>/results.jsonl and prints its table with ratios (train_bench.py --table).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
B="python3 benchmarks/train_bench.py"
for group in "$@"; do
    D=$OUT/$group
    mkdir -p "$D"
    echo "=== $group ($(date +%T))"
    case $group in
        8b)
            OUT=$D SHAPE=llama3-8b BUDGET=200 bash .anchors/run_all.sh ceiling build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
            $B --shape llama3-8b --method qlora --offload --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error|plan"
            $B --shape llama3-8b --method qlora --budget 7.79 --out "$D/results.jsonl" 2>&1 | grep -v "^\s*$" | tail -22
            ;;
        16k)
            OUT=$D SHAPE=llama3-8b BUDGET=150 BENCH_ARGS="--seq 16384 --batch 1" bash .anchors/run_all.sh build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
            $B --shape llama3-8b --method qlora --seq 16384 --batch 1 --offload --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            $B --shape llama3-8b --method qlora --seq 16384 --batch 1 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            ;;
        70b)
            $B --shape llama3-70b --method qlora --batch 1 --offload --steps 10 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            # 8-bit AdamW (Unsloth's notebooks' default): the memory model puts AdamW's state at 1.54 GiB, 8-bit 0.39
            $B --shape llama3-70b --method qlora --batch 1 --offload --steps 10 --optimizer adamw_8bit \
                --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            ;;
        7b-fp8)
            OUT=$D BUDGET=150 bash .anchors/run_all.sh ceiling build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
            for fp8 in "" --fp8; do
                $B --shape llama2-7b --method qlora --offload $fp8 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            done
            ;;
        8b-fp8)
            OUT=$D SHAPE=llama3-8b BUDGET=200 bash .anchors/run_all.sh ceiling build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
            for fp8 in "" --fp8; do
                $B --shape llama3-8b --method qlora --offload $fp8 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
                $B --shape llama3-8b --method qlora --budget 7.79 $fp8 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            done
            ;;
        fp8)
            OUT=$D BUDGET=150 bash .anchors/run_all.sh ceiling build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
            for fp8 in "" --fp8; do
                for how in --offload "--budget 24"; do
                    $B --shape llama2-7b --method qlora $how $fp8 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
                done
            done
            # the planner's FP8 memory against the measured peak at 8B (8b-fp8 runs it beside unsloth_qlora)
            $B --shape llama3-8b --method qlora --budget 7.79 --fp8 --out "$D/results.jsonl" 2>&1 | grep -E "SUMMARY|Error"
            ;;
        *) echo "unknown group $group (8b, 16k, 70b, 7b-fp8, 8b-fp8, fp8)"; exit 2 ;;
    esac
    $B --table --out "$D/results.jsonl"
done
