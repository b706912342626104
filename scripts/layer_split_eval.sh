#!/usr/bin/env bash
# What adapters on fewer layers cost in accuracy: the same PMs trained with LoRA on the upper third, the upper
# half (the default) and all layers of the base, then `morlaif pm eval --validation-only` on each set.
#
#   scripts/layer_split_eval.sh [OUT]        # MiniLM-L6, factuality + helpfulness: ~40 min on a 2-core CPU
#
# Env: DATA (default ../shared/data), BASE (default minilm), PRINCIPLES (default "factuality helpfulness"; also
# harmlessness, sycophancy),
# SPLITS (name=layers ...; default the three splits of MiniLM's 6 layers), EXTRA (the `pm train` options of
# scripts/train_default_adapters.sh), MORLAIF (the CLI). Writes OUT/<split>/ (packages), OUT/<split>-eval/
# (the evaluation) and OUT/summary.json (validation accuracy and loss per principle and split). Packages and
# evaluations already in OUT are kept, so a second run does only what is missing (copy adapters/<p>/v1 to
# OUT/upper-half/<p>/v1 to reuse the default adapters, which are trained the same way).
set -euo pipefail
OUT=${1:-var/layer-split}
DATA=${DATA:-../shared/data}
BASE=${BASE:-minilm}
MORLAIF=${MORLAIF:-morlaif}
read -r -a PRINCIPLES <<< "${PRINCIPLES:-factuality helpfulness}"
read -r -a SPLITS <<< "${SPLITS:-upper-third=4,5 upper-half=3,4,5 all=0,1,2,3,4,5}"
read -r -a EXTRA_ARGS <<< "${EXTRA:---epochs 2 --max-length 128}"
if [ ! -d "$DATA" ]; then echo "error: $DATA is absent (the preference data beside the project)" >&2; exit 2; fi

# harmlessness trains on the same 60% of HH-RLHF harmless-base as the default adapter (same split, same salt)
if [[ " ${PRINCIPLES[*]} " == *" harmlessness "* ]]; then
  $MORLAIF pm split "harmlessness=$DATA/hh-rlhf/harmless-base-dev.jsonl.gz" --out-dir "$OUT/hh" \
    --parts train=0.6,eval=0.4 --salt hh-default
fi
declare -A FILES=(
  [factuality]="$DATA/factuality_truthfulqa.jsonl"
  [helpfulness]="$DATA/helpfulness_pandalm.jsonl $DATA/refusal_xstest.jsonl"
  [harmlessness]="$DATA/refusal_xstest.jsonl $OUT/hh/train.jsonl"
  [sycophancy]="$DATA/sycophancy_anthropic.jsonl"
)
for split in "${SPLITS[@]}"; do
  name=${split%%=*} layers=${split#*=}
  for p in "${PRINCIPLES[@]}"; do
    if [ -f "$OUT/$name/$p/v1/principle.json" ]; then continue; fi
    data=()
    for f in ${FILES[$p]}; do data+=(--data "$f"); done
    $MORLAIF pm train --principle "$p" --base "$BASE" --out-root "$OUT/$name" --version v1 --layers "$layers" \
      --run-dir "$OUT/runs/$name-$p" --fresh --quiet "${EXTRA_ARGS[@]}" "${data[@]}"
  done
  if [ -f "$OUT/$name-eval/eval.json" ]; then continue; fi
  all_data=()
  declare -A seen=()
  for p in "${PRINCIPLES[@]}"; do
    for f in ${FILES[$p]}; do  # a file two principles share (XSTest) is read once, or its pairs count twice
      if [ -z "${seen[$f]:-}" ]; then seen[$f]=1; all_data+=(--data "$f"); fi
    done
  done
  $MORLAIF pm eval --adapter-root "$OUT/$name" --base "$BASE" --validation-only "${all_data[@]}" \
    --principles "$(IFS=,; echo "${PRINCIPLES[*]}")" --out "$OUT/$name-eval"
done
python3 - "$OUT" "${SPLITS[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for split in sys.argv[2:]:
    name, layers = split.split("=", 1)
    for pj in sorted((out / name).glob("*/v1/principle.json")):
        m = json.loads(pj.read_text())
        met = m["metrics"]
        summary.setdefault(m["name"], {})[name] = {
            "layers": layers, "val_accuracy": met["val_accuracy"], "val_accuracy_ci95": met.get("val_accuracy_ci95"),
            "val_loss": met["val_loss"], "val_pairs": met["val_pairs"], "train_seconds": met.get("train_seconds"),
        }
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"{'principle':<14}{'split':<13}{'layers':<13}{'val acc':>8}  {'95% CI':<16}{'val loss':>9}{'train s':>9}")
for p, by in summary.items():
    for s, r in by.items():
        ci = r["val_accuracy_ci95"] or ["", ""]
        print(f"{p:<14}{s:<13}{r['layers']:<13}{r['val_accuracy']:>8.4f}  [{ci[0]}, {ci[1]}]".ljust(64)
              + f"{r['val_loss']:>9.4f}{r['train_seconds'] or 0:>9.1f}")
PY
