#!/usr/bin/env bash
# The performance suite of benchmarks/ in one go (docs/benchmarks.md): MiniLM-L6 and SmolLM2-135M, adapters on
# all layers and on the upper third, 1/4/12 principles, 64 and 256 tokens, then PPO-like groups (4 responses per
# prompt; micro-batches of the server's default 16384 tokens, so a group under 12 principles fits one) on the
# decoder, then end to end over HTTP with 1/8/32 clients on both bases. Every scoring table also times our engine
# and the sequential loop with the base in bfloat16 (--bf16). Results in benchmarks/results/suite/.
#
#   scripts/bench_suite.sh            # ~2 h on a 2-core CPU; SMOLLM2_ITEMS / REPEATS / SMOLLM2_REPEATS trade time
#                                     # for noise
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/suite}
REPEATS=${REPEATS:-3}
SMOLLM2_ITEMS=${SMOLLM2_ITEMS:-4}
SMOLLM2_REPEATS=${SMOLLM2_REPEATS:-1}
mkdir -p "$OUT"
for layers in upper-third all; do
  $PY benchmarks/score_throughput.py --base minilm --principles 1,4,12 --tokens 64,256 --adapter-layers $layers \
    --repeats "$REPEATS" --bf16 --out "$OUT/minilm-$layers.json"
done
for layers in upper-third all; do
  $PY benchmarks/score_throughput.py --base smollm2 --principles 1,4,12 --tokens 64,256 --adapter-layers $layers \
    --items "$SMOLLM2_ITEMS" --repeats "$SMOLLM2_REPEATS" --bf16 --out "$OUT/smollm2-$layers.json"
done
$PY benchmarks/score_throughput.py --base smollm2 --principles 4,12 --tokens 256 --adapter-layers upper-third \
  --items 8 --group 4 --repeats 1 --max-batch-tokens 16384 --bf16 --out "$OUT/smollm2-upper-third-groups.json"
$PY benchmarks/http_throughput.py --base minilm --principles 4 --items 8 --out "$OUT/http-minilm.json"
$PY benchmarks/http_throughput.py --base smollm2 --principles 4 --items 2 --seconds 40 --port 8792 \
  --out "$OUT/http-smollm2.json"
