# Sourced by scripts/eval_default_adapters.sh and scripts/dtype_eval.sh: what the default adapters are evaluated
# on. Needs DATA (the preference data) and WORK (the splits scripts/train_default_adapters.sh writes).
# EVAL_DATA: each PM's own data (pm eval --validation-only keeps the prompts each package held out);
# HUMAN_DATA: the held-out HH-RLHF human preferences, helpful and harmless (+ two kinds of refusal pairs, below);
# DEFAULT_PRINCIPLES: the defaults.
for f in "$WORK"/hh-harmless/eval.jsonl "$WORK"/paradetox/use.jsonl "$WORK"/qafeedback/preferences.jsonl \
  "$WORK"/refusals/refuse-heldout.jsonl; do
  [ -s "$f" ] || { echo "error: $f is missing: SPLIT_ONLY=1 scripts/train_default_adapters.sh writes the splits (seconds)" >&2; exit 2; }
done
EVAL_DATA=(--data "$WORK/hh-helpful-base/train.jsonl" --data "$WORK/hh-helpful-online/train.jsonl"
  --data "$WORK/hh-helpful-rs/train.jsonl" --data "$DATA/helpfulness_pandalm.jsonl"
  --data "$WORK/qafeedback/corrections.jsonl" --data "$DATA/refusal_xstest.jsonl"
  --data "harmlessness=$DATA/refusal_xstest.jsonl" --data "$WORK/hh-harmless/train.jsonl"
  --data "$WORK/refusals/answer.jsonl" --data "$WORK/refusals/refuse.jsonl"
  --data "$DATA/factuality_truthfulqa.jsonl" --data "$WORK/paradetox/use.jsonl" --data "$WORK/bbq/use.jsonl")
# ... and two kinds made from the same held-out prompts (pm refusal-pairs): a real answer over a stock refusal on
# the helpful ones (answer_benign), a stock refusal over the harmful reply on the red-team ones (refuse_harmful):
# the fitted weights must serve all four kinds, so the served reward neither refuses everything nor complies with
# everything
HUMAN_DATA=(--human "$WORK/hh-helpful-base/eval.jsonl" --human "$WORK/hh-helpful-online/eval.jsonl"
  --human "$WORK/hh-helpful-rs/eval.jsonl" --human "$WORK/hh-harmless/eval.jsonl"
  --human "answer_benign=$WORK/refusals/answer-heldout.jsonl" --human "refuse_harmful=$WORK/refusals/refuse-heldout.jsonl")
DEFAULT_PRINCIPLES=helpfulness,harmlessness,factuality,toxicity,bias
