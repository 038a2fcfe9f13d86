# The QLoRA rows of BENCHMARKS.md (H100): tunelab beside the peers' baselines in one device call, with
# ../shared/bench carried as .anchors + .pk (see its README).
export PYTHONPATH=src OUT
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --out $R"
$B --method qlora --offload 2>&1 | grep SUMMARY
$B --method lora --offload 2>&1 | grep SUMMARY
$B --method qlora --offload --optimizer adamw_8bit 2>&1 | grep SUMMARY
$B --method qlora --offload --batch 1 2>&1 | grep SUMMARY
$B --method qlora --offload --batch 1 --optimizer adamw_8bit 2>&1 | grep SUMMARY
rm -rf .site .site_u
BUDGET=300 bash .anchors/run_all.sh ceiling build unsloth_qlora qlora 2>&1 | grep -E "===|Error|error" | tail -8
python3 benchmarks/train_bench.py --table --out $R
