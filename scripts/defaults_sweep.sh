#!/usr/bin/env bash
# Run examples/defaults_check.py over many (set, seed, overrides) jobs at once, one CPU thread each, on a machine
# with many cores (the CPU side of the GPU machine does: CUDA is hidden, so every run is the CPU's fp32 run a user
# gets). Jobs come on stdin, one a line: SET SEED [OPTION=VALUE ...]. Each job writes $OUT/sweep/<n>.jsonl; the
# table of all of them is printed at the end (examples/defaults_check.py's columns plus the overrides).
#
#   printf 'ferry_chat 42\nferry_chat 42 train.neftune_alpha=5\n' | WORKERS=12 OUT=DIR bash scripts/defaults_sweep.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp}
mkdir -p "$OUT/sweep" /tmp/sweep_runs
n=0
while read -r set seed rest; do
    [ -z "${set:-}" ] && continue
    n=$((n + 1))
    args=""
    for kv in $rest; do args="$args --set $kv"; done
    echo "$n $set $seed $args"
done | xargs -d '\n' -P "${WORKERS:-4}" -n 1 bash -c '
    read -r n set seed args <<< "$0"   # one job line; -d keeps a line whole even when it ends in a blank
    python3 examples/defaults_check.py "$set" --seeds "$seed" $args --runs /tmp/sweep_runs/$n \
        --out "'"$OUT"'/sweep/$n.jsonl" > /tmp/sweep_runs/$n.log 2>&1
    echo "job $n ($set seed $seed $args) exit $?"'
python3 - "$OUT/sweep" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(l) for f in sorted(Path(sys.argv[1]).glob("*.jsonl")) for l in f.read_text().splitlines() if l.strip()]
rows.sort(key=lambda r: (r["dataset"], json.dumps({k: v for k, v in r["set"].items() if k != "train.seed"}), r["seed"]))
for r in rows:
    sets = {k: v for k, v in r["set"].items() if k != "train.seed"}
    s = r["scores"]
    cell = lambda k: f"{100 * s[k]['tuned']:.1f}" if k in s else "-"
    print(f"{r['dataset']:<13} seed {r['seed']:<3} {json.dumps(sets):<36} steps {r['steps']:<4} facts {cell('fact'):>5}  refusals {cell('off_topic'):>5}  cpu {r['train_cpu_s']:.0f} s  loss {r['final_loss']:.4g}")
PY
