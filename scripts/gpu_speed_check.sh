# Quick A/B of the QLoRA step on the GPU: the group, recompute, offload, LoRA-kernel and 8-bit AdamW tests, then 7B
# QLoRA and LoRA with offload, micro-batch 1 with either optimizer.
export PYTHONPATH=src OUT
python3 -m pytest -q -p no:cacheprovider tests/peft/test_group.py tests/models/test_recompute.py tests/models/test_offload.py \
  tests/kernels/test_lora.py tests/quant/test_adamw8bit.py tests/training/test_adamw8bit.py 2>&1 | grep -E "passed|failed|FAILED|Error" | grep -v "ModelError\|embedded" | tail -8
R=$OUT/speed.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --out $R"
$B --method qlora --offload 2>&1 | grep -E "SUMMARY|Error"
$B --method lora --offload 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --optimizer adamw_8bit 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --batch 1 2>&1 | grep -E "SUMMARY|Error"
$B --method qlora --offload --batch 1 --optimizer adamw_8bit 2>&1 | grep -E "SUMMARY|Error"
