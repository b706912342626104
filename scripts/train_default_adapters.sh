#!/usr/bin/env bash
# Train the default adapter packages (adapters/) from ../shared/data and evaluate them on human preferences.
#
#   scripts/train_default_adapters.sh [OUT_ROOT] [EVAL_DIR]      # ~35 min on a 2-core CPU, seconds on a GPU
#
# Env: DATA (default ../shared/data), BASE (default minilm), DEVICE (default auto), MORLAIF (the CLI),
# EXTRA (`morlaif pm train` options for every PM; default "--epochs 2 --max-length 128"),
# VERSION (default v1). Sycophancy gets --max-length 384: the user's stated view, which the response must
# not just echo, sits at the start of a long prompt, and a 128-token window cuts it off.
# HH-RLHF harmless-base is split by prompt: 60% trains the harmlessness PM (and the single PM), 40% is kept
# for `pm eval`, which fits the scalarizer weights on half of those prompts and tests on the other half.
set -euo pipefail
OUT=${1:-adapters}
EVAL=${2:-var/eval/default}
DATA=${DATA:-../shared/data}
BASE=${BASE:-minilm}
DEVICE=${DEVICE:-auto}
MORLAIF=${MORLAIF:-morlaif}
WORK=${WORK:-var/default-data}
VERSION=${VERSION:-v1}
read -r -a EXTRA_ARGS <<< "${EXTRA:---epochs 2 --max-length 128}"

if [ ! -d "$DATA" ]; then echo "error: $DATA is absent (the preference data beside the project)" >&2; exit 2; fi
$MORLAIF pm split "harmlessness=$DATA/hh-rlhf/harmless-base-dev.jsonl.gz" --out-dir "$WORK/hh" \
  --parts train=0.6,eval=0.4 --salt hh-default

train() {  # principle, extra options..., then --data specs
  local p=$1; shift
  $MORLAIF pm train --principle "$p" --base "$BASE" --device "$DEVICE" --out-root "$OUT" --version "$VERSION" \
    --run-dir "var/runs/default-$p" --fresh --quiet "${EXTRA_ARGS[@]}" "$@"
}
train helpfulness --data "$DATA/helpfulness_pandalm.jsonl" --data "$DATA/refusal_xstest.jsonl"
train harmlessness --data "$DATA/refusal_xstest.jsonl" --data "$WORK/hh/train.jsonl"
train factuality --data "$DATA/factuality_truthfulqa.jsonl"
train sycophancy --data "$DATA/sycophancy_anthropic.jsonl" --max-length 384
# the single-PM baseline: one PM on every principle's pairs pooled (MORLAIF's single-PM RLAIF)
train single_pm --pool --data "$DATA/helpfulness_pandalm.jsonl" --data "$DATA/refusal_xstest.jsonl" \
  --data "$WORK/hh/train.jsonl" --data "$DATA/factuality_truthfulqa.jsonl" --data "$DATA/sycophancy_anthropic.jsonl"

$MORLAIF pm eval --adapter-root "$OUT" --base "$BASE" --device "$DEVICE" --validation-only \
  --data "$DATA/helpfulness_pandalm.jsonl" --data "$DATA/refusal_xstest.jsonl" --data "$WORK/hh/train.jsonl" \
  --data "$DATA/factuality_truthfulqa.jsonl" --data "$DATA/sycophancy_anthropic.jsonl" \
  --human "$WORK/hh/eval.jsonl" --principles helpfulness,harmlessness,factuality,sycophancy --single single_pm \
  --out "$EVAL"
cp "$EVAL/weights.json" "$OUT/weights.json"   # `make up` serves /get_reward with the fitted weights
