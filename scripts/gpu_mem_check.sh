# Peak memory and speed of 7B QLoRA with offload at micro-batch 1 and 4 (the scratch buffers sized up front), and
# the group and offload tests.
export PYTHONPATH=src OUT
python3 -m pytest -q -p no:cacheprovider tests/peft/test_group.py tests/models/test_offload.py tests/models/test_recompute.py 2>&1 | tail -1
R=$OUT/mem.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --method qlora --offload --out $R"
$B --batch 1 2>&1 | grep -E "SUMMARY|Error"
$B 2>&1 | grep -E "SUMMARY|Error"
