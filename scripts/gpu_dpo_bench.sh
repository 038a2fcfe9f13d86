# DPO on the Llama-2-7B shape: tunelab's task dpo beside TRL's DPOTrainer (its default, a reference forward in every
# step, and precompute_ref_log_probs=True), same data, sequence, batch and LoRA, in one device call; first the tests
# of the fused log-prob kernel on CUDA. Needs ../shared/bench's bundle carried as .pk (sites.tar.xz: trl, datasets).
export PYTHONPATH=src OUT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 \
       TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
R=$OUT/dpo.jsonl
[ -d .site ] || tar -xJf .pk/sites.tar.xz
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_log_probs.py tests/kernels/test_cross_entropy.py 2>&1 | tail -2
B="python3 benchmarks/dpo_bench.py --out $R"
timeout 120 $B --impl tunelab 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
PYTHONPATH=$PWD/.site timeout 150 $B --impl trl 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
PYTHONPATH=$PWD/.site timeout 150 $B --impl trl --precompute-ref 2>&1 | grep -E "SUMMARY|Error|error" | tail -4
python3 benchmarks/dpo_bench.py --table --out $R
