#!/usr/bin/env bash
# The product path on a CUDA machine: `tunelab check` and `tunelab train` through the real CLI on 24-layer random
# Llamas (LoRA, QLoRA, DoRA, full, layers; padded and packed), the guard with the fused and 8-bit optimizers, and the
# untrained-row case of issue 10. From the repository root:
#   scripts/gpu_train_check.sh .gpu/smollm2-tokenizer     # the folder written by scripts/save_gpu_tokenizer.py
# tunelab need not be installed (PYTHONPATH=src). Logs, the JUnit XML and the result lines go to $OUT when it is set.
# PYTEST_K selects cases by a pytest -k expression (spaces allowed: PYTEST_K="padded and not qlora"); PYTEST_ARGS
# adds further pytest arguments, split at spaces.
# Prints a table of the cases and their numbers; exit status: pytest's.
set -u
cd "$(dirname "$0")/.."
TOKENIZER=${1:-.gpu/smollm2-tokenizer}
[ -f "$TOKENIZER/tokenizer.json" ] || { echo "no tokenizer in $TOKENIZER: run scripts/save_gpu_tokenizer.py and carry it"; exit 2; }
LOG_DIR=${OUT:-/tmp}
mkdir -p "$LOG_DIR"  # each case appends its numbers there; a missing folder failed every case after it trained
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TUNELAB_GPU_TOKENIZER="$(cd "$TOKENIZER" && pwd)" TUNELAB_GPU_REPORT="$LOG_DIR/gpu_train_results.jsonl"
# What the CLI sets for itself; the tests call the CLI's main() in this process, after torch is imported.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
rm -f "$TUNELAB_GPU_REPORT"
$PY - <<'PYEOF'
import torch, transformers, peft, triton
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, triton {triton.__version__}")
PYEOF
$PY -m pytest -q tests/gpu --confcutdir=tests/gpu -rfE --tb=short -p no:cacheprovider \
    --junitxml "$LOG_DIR/gpu_train_check.xml" ${PYTEST_K:+-k "$PYTEST_K"} ${PYTEST_ARGS:-} 2>&1 | tee "$LOG_DIR/gpu_train_check.log" | tail -n 40
status=${PIPESTATUS[0]}
$PY - "$LOG_DIR/gpu_train_check.xml" "$TUNELAB_GPU_REPORT" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
xml, results = sys.argv[1], Path(sys.argv[2])
numbers = {}
if results.exists():
    for line in results.read_text().splitlines():
        r = json.loads(line)
        numbers[r.pop("case")] = r
print(f"\n{'test':<66} {'result':<7} {'s':>6}  numbers")
for case in ET.parse(xml).getroot().iter("testcase"):
    outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
        "skipped" if case.find("skipped") is not None else "passed")
    name = case.get("name")
    key = name.split("[", 1)[1].rstrip("]") if "[" in name else name
    extra = numbers.get(key) or numbers.get(f"untrained-row-{key}") or {}
    shown = ", ".join(f"{k} {v}" for k, v in extra.items() if k not in ("check", "memory"))
    print(f"{name:<66} {outcome:<7} {float(case.get('time', 0)):6.1f}  {shown}")
    for line in extra.get("check", []) + extra.get("memory", []):
        print(f"{'':<82}{line}")
PYEOF
exit "$status"
