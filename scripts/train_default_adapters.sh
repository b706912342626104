#!/usr/bin/env bash
# Train the default adapter packages (adapters/) on the preference data beside the project, then evaluate them
# (scripts/eval_default_adapters.sh: docs/pm-eval/ and adapters/weights.json).
#
#   scripts/train_default_adapters.sh [OUT_ROOT]        # about 70 min on a 2-core CPU; minutes on a GPU
#   SPLIT_ONLY=1 scripts/train_default_adapters.sh      # only the data splits (seconds): what eval_default_adapters.sh,
#                                                       # dtype_eval.sh and the base comparison read
#
# Env: DATA (default ../shared/data), BASE (default minilm), DEVICE (default auto), MORLAIF (the CLI),
# VERSION (default v2), WORK (split files, default var/default-data), EVAL (default docs/pm-eval), EXTRA
# (`pm train` options for every PM; bfloat16 autocast is pm train's default where a GPU or the CPU computes it,
# AVX512-BF16 or AMX: 1.5x faster there; EXTRA=--no-bf16 trains in float32). Every run keeps
# checkpoints in var/runs/default-<principle>: run the script again after an interruption and each PM resumes where
# it stopped (a PM with a package is skipped: delete OUT/<principle> to retrain it).
#
# What each default PM learns from, and its context window (docs/training.md says why):
#   helpfulness   HH-RLHF helpful-base/online/rejection-sampled (70% of the prompts), PandaLM, QA-Feedback's
#                 corrected answers, XSTest's safe prompts (comply rather than refuse)  256 tokens, 2 epochs
#                 (not QA-Feedback's pairwise preferences: two answers over a ~700-token passage, which a
#                 256-token window cannot see; the PM was at chance on them, 0.505, and they were 37% of its data)
#   harmlessness  HH-RLHF harmless-base (70%), every XSTest pair: refuse the unsafe, answer the safe; 1,600
#                 refusal pairs (`pm refusal-pairs`: answer a helpful prompt, refuse a red-team one)  256 tokens, 1 epoch
#   factuality    TruthfulQA, QA-Feedback's corrected answers                           256 tokens, 2 epochs
#   toxicity      ParaDetox (a fifth of its original sentences, ~3,000 pairs)            64 tokens, 2 epochs
#   bias          BBQ (30% of its contexts, ~2,900 pairs)                               128 tokens, 1 epoch
#   single_pm     4,000 pairs drawn from the files above pooled: `pm eval`'s single-PM baseline
#                                                                                       256 tokens, 1 epoch
# Every PM is trained with length-balanced pair weights (pm train's default): within each data source, pairs
# where the chosen reply is the longer one weigh as much as pairs where it is the shorter one.
# The other 30% of the HH-RLHF prompts are kept for `pm eval`: it fits the scalarizer weights on half of them
# (helpful and harmless together) and tests the served reward on the other half.
set -euo pipefail
OUT=${1:-adapters}
DATA=${DATA:-../shared/data}
BASE=${BASE:-minilm}
DEVICE=${DEVICE:-auto}
MORLAIF=${MORLAIF:-morlaif}
WORK=${WORK:-var/default-data}
VERSION=${VERSION:-v2}
read -r -a EXTRA_ARGS <<< "${EXTRA-}"
export DATA BASE DEVICE MORLAIF WORK

if [ ! -d "$DATA" ]; then echo "error: $DATA is absent (the preference data beside the project)" >&2; exit 2; fi
split() {  # name, spec, parts
  [ -s "$WORK/$1/${3%%=*}.jsonl" ] || $MORLAIF pm split "$2" --out-dir "$WORK/$1" --parts "$3" --salt "$1-default"
}
split hh-helpful-base "helpfulness=$DATA/hh-rlhf/helpful-base-dev.jsonl.gz" train=0.7,eval=0.3
split hh-helpful-online "helpfulness=$DATA/hh-rlhf/helpful-online-dev.jsonl.gz" train=0.7,eval=0.3
split hh-helpful-rs "helpfulness=$DATA/hh-rlhf/helpful-rejection-sampled-dev.jsonl.gz" train=0.7,eval=0.3
split hh-harmless "harmlessness=$DATA/hh-rlhf/harmless-base-dev.jsonl.gz" train=0.7,eval=0.3
split paradetox "$DATA/toxicity_paradetox.jsonl" use=0.2,rest=0.8
split bbq "$DATA/bias_bbq.jsonl" use=0.3,rest=0.7
# QA-Feedback's annotator-corrected answers (ids ...-corr-...) apart from its pairwise preferences
if [ ! -s "$WORK/qafeedback/preferences.jsonl" ]; then
  mkdir -p "$WORK/qafeedback"
  grep -F -- '-corr-' "$DATA/helpfulness_qafeedback.jsonl" > "$WORK/qafeedback/corrections.jsonl"
  grep -v -F -- '-corr-' "$DATA/helpfulness_qafeedback.jsonl" > "$WORK/qafeedback/preferences.jsonl.part"
  mv "$WORK/qafeedback/preferences.jsonl.part" "$WORK/qafeedback/preferences.jsonl"  # written last, whole
fi
# refusal pairs (`pm refusal-pairs`): a real answer over a stock refusal on helpful prompts, a stock refusal over the
# harmful reply on red-team ones, the same refusals on both sides: the harmlessness PM learns from the prompt, not
# the apology, when refusing wins. From the training prompts for training; from the held-out ones for pm eval --check
if [ ! -s "$WORK/refusals/refuse-heldout.jsonl" ]; then
  $MORLAIF pm refusal-pairs "$WORK"/hh-helpful-{base,online,rs}/train.jsonl --prefer answer --limit 800 \
    --out "$WORK/refusals/answer.jsonl"
  $MORLAIF pm refusal-pairs "$WORK/hh-harmless/train.jsonl" --prefer refusal --limit 800 \
    --out "$WORK/refusals/refuse.jsonl"
  $MORLAIF pm refusal-pairs "$WORK"/hh-helpful-{base,online,rs}/eval.jsonl --prefer answer \
    --out "$WORK/refusals/answer-heldout.jsonl"
  $MORLAIF pm refusal-pairs "$WORK/hh-harmless/eval.jsonl" --prefer refusal --out "$WORK/refusals/refuse-heldout.jsonl"
fi
if [ -n "${SPLIT_ONLY:-}" ]; then echo "splits in $WORK"; exit 0; fi
HELPFUL=(--data "$WORK/hh-helpful-base/train.jsonl" --data "$WORK/hh-helpful-online/train.jsonl"
  --data "$WORK/hh-helpful-rs/train.jsonl" --data "$DATA/helpfulness_pandalm.jsonl"
  --data "$WORK/qafeedback/corrections.jsonl" --data "$DATA/refusal_xstest.jsonl")
HARMLESS=(--data "$WORK/hh-harmless/train.jsonl" --data "harmlessness=$DATA/refusal_xstest.jsonl"
  --data "$WORK/refusals/answer.jsonl" --data "$WORK/refusals/refuse.jsonl")
FACTUAL=(--data "$DATA/factuality_truthfulqa.jsonl" --data "$DATA/helpfulness_qafeedback.jsonl")
TOXIC=(--data "$WORK/paradetox/use.jsonl")
BIAS=(--data "$WORK/bbq/use.jsonl")

train() {  # principle, options...
  local p=$1; shift
  # a principle with any package is skipped (adapters/harmlessness holds v3: retrained with the refusal pairs)
  if [ -n "$(ls -A "$OUT/$p" 2>/dev/null)" ]; then echo "$OUT/$p has a package: skipped"; return; fi
  echo "== $p ($(date -u +%H:%M:%S))"
  $MORLAIF pm train --principle "$p" --base "$BASE" --device "$DEVICE" --out-root "$OUT" --version "$VERSION" \
    --run-dir "var/runs/default-$p" "${EXTRA_ARGS[@]}" "$@"
}
train helpfulness --max-length 256 --epochs 2 --lr 1e-3 "${HELPFUL[@]}"
train harmlessness --max-length 256 --epochs 1 "${HARMLESS[@]}"  # v3: + the refusal pairs
# length-balanced weights still leave the two HH-trained PMs leaning on length: helpfulness toward the longer reply
# (right on 0.74 of its training pairs where the longer reply is better, 0.56 where the shorter is), harmlessness
# toward the shorter (0.52 and 0.79: a short refusal wins). One coefficient each, fitted on its training pairs, takes
# the lean out of the served score: a new version, <version>-lc, beside the trained one (docs/training.md, "Length")
for p in helpfulness harmlessness; do
  v=$(ls "$OUT/$p" | grep -v -- '-lc$' | sort | tail -1)
  [ -d "$OUT/$p/$v-lc" ] || $MORLAIF pm length-correct "$p" --adapter-root "$OUT" --from-version "$v" --base "$BASE" \
    --device "$DEVICE"
done
train factuality --max-length 256 --epochs 2 "${FACTUAL[@]}"
train toxicity --max-length 64 --epochs 2 "${TOXIC[@]}"
train bias --max-length 128 --epochs 1 "${BIAS[@]}"
# the single-PM baseline: one PM on every principle's pairs pooled (MORLAIF's single-PM RLAIF), from the same
# files as the principles' PMs (QA-Feedback's corrections, not its preferences); XSTest once, with its own labels
train single_pm --pool --max-length 256 --epochs 1 --limit 4000 --data "$WORK/hh-helpful-base/train.jsonl" \
  --data "$WORK/hh-helpful-online/train.jsonl" --data "$WORK/hh-helpful-rs/train.jsonl" \
  --data "$DATA/helpfulness_pandalm.jsonl" --data "$WORK/qafeedback/corrections.jsonl" \
  --data "$DATA/refusal_xstest.jsonl" --data "$WORK/hh-harmless/train.jsonl" \
  --data "$DATA/factuality_truthfulqa.jsonl" "${TOXIC[@]}" "${BIAS[@]}"

"$(dirname "$0")/eval_default_adapters.sh" "$OUT"
