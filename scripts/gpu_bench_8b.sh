# The Llama-3-8B rows of BENCHMARKS.md (2026-11-22, H100): tunelab LoRA beside lora_bf16 and lora_bf16_liger in one
# device call, ../shared/bench carried as .anchors + .pk (see its README).
export PYTHONPATH=src OUT
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape llama3-8b --out $R"
$B 2>&1 | grep SUMMARY
$B --offload 2>&1 | grep SUMMARY
rm -rf .site .site_u
SHAPE=llama3-8b BUDGET=380 bash .anchors/run_all.sh ceiling build lora_bf16 lora_bf16_liger 2>&1 | grep -E "===|Error|error" | tail -8
python3 benchmarks/train_bench.py --table --out $R
