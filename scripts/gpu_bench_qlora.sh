# The QLoRA rows of BENCHMARKS.md (H100): tunelab beside the peers' baselines in one device call, with
# ../shared/bench carried as .anchors + .pk (see its README).
export PYTHONPATH=src OUT
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --method qlora --out $R"
$B --offload 2>&1 | grep SUMMARY
$B --offload --no-group 2>&1 | grep SUMMARY
rm -rf .site .site_u
BUDGET=400 bash .anchors/run_all.sh ceiling build unsloth_qlora qlora 2>&1 | grep -E "===|Error|error" | tail -8
python3 benchmarks/train_bench.py --table --out $R
