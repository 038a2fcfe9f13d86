# The QLoRA rows of BENCHMARKS.md (2026-11-22, H100): tunelab beside the peers' baselines in one device call,
# with ../shared/bench carried as .anchors + .pk (see its README).
export PYTHONPATH=src OUT
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape llama2-7b --method qlora --out $R"
$B --offload 2>&1 | grep SUMMARY
$B 2>&1 | grep SUMMARY
$B --offload --batch 1 2>&1 | grep SUMMARY
rm -rf .site .site_u
BUDGET=420 bash .anchors/run_all.sh ceiling build qlora unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -8
python3 benchmarks/train_bench.py --table --out $R
