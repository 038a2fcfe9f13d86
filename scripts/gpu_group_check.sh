# Grouped LoRA projections (peft.group) and the 8-bit AdamW on the GPU: their tests, then the 7B runs that need no
# baseline beside them (LoRA bf16, the 8-bit optimizer, micro-batch 1, no offload). gpu_bench_qlora.sh has the rest.
export PYTHONPATH=src OUT
python3 -m pytest -q -p no:cacheprovider tests/peft tests/kernels tests/quant tests/models/test_recompute.py \
  tests/models/test_offload.py tests/training/test_adamw8bit.py tests/training/test_qlora.py 2>&1 | grep -E "passed|failed|FAILED|Error" | grep -v "ModelError\|embedded" | tail -12
R=$OUT/group.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --out $R"
$B --method lora --offload 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --optimizer adamw_8bit 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --batch 1 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --batch 1 --optimizer adamw_8bit 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora 2>&1 | grep -E "SUMMARY|Error"
