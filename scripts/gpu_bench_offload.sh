# The offload rows of BENCHMARKS.md (2026-11-22, H100): tunelab LoRA and QLoRA with activation offload beside the
# peers' baselines in one device call, ../shared/bench carried as .anchors + .pk (see its README).
export PYTHONPATH=src OUT
python3 -m pytest -q -p no:warnings tests/models/test_offload.py tests/models/test_recompute.py 2>&1 | tail -1
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --out $R"
$B 2>&1 | grep SUMMARY
$B --offload 2>&1 | grep SUMMARY
$B --method qlora --offload 2>&1 | grep SUMMARY
$B --method qlora --offload --batch 1 2>&1 | grep SUMMARY
rm -rf .site .site_u
BUDGET=330 bash .anchors/run_all.sh ceiling build lora_bf16 unsloth_qlora qlora 2>&1 | grep -E "===|Error|error" | tail -8
python3 benchmarks/train_bench.py --table --out $R
