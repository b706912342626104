#!/usr/bin/env bash
# Train the default adapter packages from ../shared/data and evaluate them against human preferences.
#
#   scripts/train_default_adapters.sh [OUT_ROOT] [EVAL_DIR]
#
# Env: DATA (default ../shared/data), BASE (default minilm), DEVICE (default auto), MORLAIF (the CLI),
# EXTRA (more `morlaif pm train` options, e.g. "--epochs 2 --max-length 128").
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
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

if [ ! -d "$DATA" ]; then echo "error: $DATA is absent (the preference data beside the project)" >&2; exit 2; fi
$MORLAIF pm split "harmlessness=$DATA/hh-rlhf/harmless-base-dev.jsonl.gz" --out-dir "$WORK/hh" \
  --parts train=0.6,eval=0.4 --salt hh-default

train() {  # principle, then data specs
  local p=$1; shift
  local args=()
  for d in "$@"; do args+=(--data "$d"); done
  $MORLAIF pm train --principle "$p" "${args[@]}" --base "$BASE" --device "$DEVICE" --out-root "$OUT" \
    --version "$VERSION" --run-dir "var/runs/default-$p" --fresh --quiet "${EXTRA_ARGS[@]}"
}
train helpfulness "$DATA/helpfulness_pandalm.jsonl" "$DATA/refusal_xstest.jsonl"
train harmlessness "$DATA/refusal_xstest.jsonl" "$WORK/hh/train.jsonl"
train factuality "$DATA/factuality_truthfulqa.jsonl"
train sycophancy "$DATA/sycophancy_anthropic.jsonl"
# the single-PM baseline: one PM on every principle's pairs pooled (MORLAIF's single-PM RLAIF)
$MORLAIF pm train --principle single_pm --pool --data "$DATA/helpfulness_pandalm.jsonl" \
  --data "$DATA/refusal_xstest.jsonl" --data "$WORK/hh/train.jsonl" --data "$DATA/factuality_truthfulqa.jsonl" \
  --data "$DATA/sycophancy_anthropic.jsonl" --base "$BASE" --device "$DEVICE" --out-root "$OUT" \
  --version "$VERSION" --run-dir var/runs/default-single_pm --fresh --quiet "${EXTRA_ARGS[@]}"

$MORLAIF pm eval --adapter-root "$OUT" --base "$BASE" --device "$DEVICE" --validation-only \
  --data "$DATA/helpfulness_pandalm.jsonl" --data "$DATA/refusal_xstest.jsonl" --data "$WORK/hh/train.jsonl" \
  --data "$DATA/factuality_truthfulqa.jsonl" --data "$DATA/sycophancy_anthropic.jsonl" \
  --human "$WORK/hh/eval.jsonl" --principles helpfulness,harmlessness,factuality,sycophancy --single single_pm \
  --out "$EVAL"
