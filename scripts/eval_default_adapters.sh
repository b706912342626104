#!/usr/bin/env bash
# Evaluate the default adapter packages and regenerate docs/pm-eval/ from them: the one script behind every
# figure there (scripts/train_default_adapters.sh ends by calling it).
#
#   scripts/eval_default_adapters.sh [ADAPTER_ROOT]          # ~10 min on a 2-core CPU
#
# `pm eval` on each PM's validation prompts (those its training held out), per data set, with the length
# preference; the multi-objective fit on held-out HH-RLHF human preferences, helpful and harmless together,
# against the single pooled PM (in $EVAL); the helpfulness PM on QA-Feedback's preferences, outside its data
# ($EVAL/qafeedback-preferences); the fitted weights copied to ADAPTER_ROOT/weights.json (what /get_reward
# serves). Then the tables of the benchmarks whose JSON is in $EVAL (benchmarks/pm_length_context.py,
# benchmarks/base_comparison.py) are added to report.md by benchmarks/pm_eval_tables.py.
# Env: DATA, BASE, DEVICE, MORLAIF, WORK, EVAL as scripts/train_default_adapters.sh.
set -euo pipefail
OUT=${1:-adapters}
DATA=${DATA:-../shared/data}
BASE=${BASE:-minilm}
DEVICE=${DEVICE:-auto}
MORLAIF=${MORLAIF:-morlaif}
WORK=${WORK:-var/default-data}
EVAL=${EVAL:-docs/pm-eval}
PY=${PY:-python}

source "$(dirname "$0")/_default_data.sh"
$MORLAIF pm eval --adapter-root "$OUT" --base "$BASE" --device "$DEVICE" --validation-only "${EVAL_DATA[@]}" \
  "${HUMAN_DATA[@]}" --principles "$DEFAULT_PRINCIPLES" --single single_pm --out "$EVAL"
# the helpfulness PM on QA-Feedback's pairwise preferences, which it is not trained on (a 256-token window cannot
# see their ~700-token passages): their held-out prompts, for the record
$MORLAIF pm eval --adapter-root "$OUT" --base "$BASE" --device "$DEVICE" --validation-only \
  --data "$WORK/qafeedback/preferences.jsonl" --principles helpfulness --out "$EVAL/qafeedback-preferences"
cp "$EVAL/weights.json" "$OUT/weights.json"   # `make up` serves /get_reward with the fitted weights
# ... and so does the k8s deployment (its ConfigMap reads this copy)
if [ "$OUT" = adapters ]; then cp "$EVAL/weights.json" k8s/base/config/weights.json; fi
$PY benchmarks/pm_eval_tables.py "$EVAL"
