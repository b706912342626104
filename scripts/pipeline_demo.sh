#!/usr/bin/env bash
# The rest of the MORLAIF pipeline on SmolLM2-135M-Instruct and the default adapters (docs/ppo.md "Sampling, SFT and
# reward-conditioned training"): sample responses into a label store, then the reward-in-prompt method: score
# HH-RLHF dialogues, write the scores into their prompts, fine-tune on that, and ask for scores at inference.
#
#   scripts/pipeline_demo.sh [OUT]      # ~30 min on a 2-core CPU; N_TRAIN / N_EVAL / EPOCHS trade time for signal
set -euo pipefail
OUT=${1:-var/pipeline-demo}
DATA=${DATA:-../shared/data}
MORLAIF=${MORLAIF:-.venv/bin/morlaif}
PY=${PY:-.venv/bin/python}
PORT=${PORT:-8797}
N_TRAIN=${N_TRAIN:-600}
N_EVAL=${N_EVAL:-32}
EPOCHS=${EPOCHS:-2}
PRINCIPLES=${PRINCIPLES:-helpfulness,harmlessness,brevity}
HH="$DATA/hh-rlhf/harmless-base-dev.jsonl.gz"
if [ ! -f "$HH" ]; then echo "error: $HH is absent (the preference data beside the project)" >&2; exit 2; fi
mkdir -p "$OUT"
URL="http://127.0.0.1:$PORT"

$MORLAIF serve --insecure-dev --port "$PORT" --adapter-root adapters --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "$URL/readyz" >/dev/null && break; sleep 1; done

# 1. sampling: 4 responses to each of 8 prompts, all pairs, into a label store (ready for the judge)
$MORLAIF sample "$HH" --limit 8 -k 4 --max-new-tokens 48 --store "sqlite:///$OUT/labels.db" --source demo
$MORLAIF feedback enqueue --source demo --principles "${PRINCIPLES//,brevity/}" --judge local \
  --store "sqlite:///$OUT/labels.db"

# 2. short single-turn dialogues, split by a hash of the prompt into training dialogues and held-out prompts
$PY - "$HH" "$OUT" "$N_TRAIN" <<'PY'
import json, sys
from pathlib import Path
from morlaif.jsonl import iter_objects
from policy_trainer.data import split_prompts
from morlaif.store.importers import split_hh
src, out, n_train = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = {}
for _, obj in iter_objects(src):
    parts = split_hh(obj["chosen"], obj["rejected"])
    if parts and parts[0].count("Human:") == 1 and len(parts[0]) + len(parts[1]) < 500 and parts[1].strip():
        rows.setdefault(parts[0], obj)
train, held = split_prompts(list(rows), 0.15, salt="pipeline-demo")
(out / "dialogues.jsonl").write_text("".join(json.dumps(rows[p]) + "\n" for p in train[:n_train]))
(out / "held-out.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held))
print(f"{min(len(train), n_train)} training dialogues, {len(held)} held-out prompts")
PY

# 3. reward-in-prompt: score the dialogues' responses, condition, fine-tune, evaluate
$MORLAIF score "$OUT/dialogues.jsonl" "$OUT/scored.jsonl" --url "$URL" --principles "$PRINCIPLES" \
  --condition "$OUT/conditioned.jsonl"
$MORLAIF sft "$OUT/conditioned.jsonl" --out "$OUT/sft" --epochs "$EPOCHS" --max-length 192 --batch-size 8 \
  --learning-rate 3e-4 --eval-fraction 0.1
$MORLAIF eval conditioning "$OUT/sft/policy" --scaling "$OUT/conditioned.scaling.json" \
  --prompts "$OUT/held-out.jsonl" --url "$URL" --num-prompts "$N_EVAL" --max-new-tokens 48 \
  --out "$OUT/conditioning.json"
