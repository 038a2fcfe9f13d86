set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONPATH=src
python3 benchmarks/profile_step.py --shape llama2-7b --method lora --kernels --top 25 2>&1 | grep -v Warning
python3 benchmarks/profile_step.py --shape llama2-7b --method qlora --offload --kernels --top 25 2>&1 | grep -v Warning
python3 benchmarks/profile_step.py --shape llama2-7b --method lora --offload --memory 2>&1 | grep -v Warning
python3 benchmarks/profile_step.py --shape llama2-7b --method qlora --offload --memory 2>&1 | grep -v Warning
python3 benchmarks/profile_step.py --shape llama2-7b --method qlora --offload --batch 1 --memory 2>&1 | grep -v Warning
