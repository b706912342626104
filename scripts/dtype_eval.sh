#!/usr/bin/env bash
# What serving in bfloat16 costs in accuracy: `morlaif pm eval` of the committed default adapters on their
# validation pairs (and on the held-out HH-RLHF human preferences), once in float32 and once in bfloat16, as
# `morlaif serve --dtype` would score them. Prints one table and writes OUT/summary.json.
#
#   scripts/dtype_eval.sh [OUT]        # MiniLM-L6, the default adapters: ~20 min on a 2-core CPU
#
# Env: DATA (default ../shared/data), ADAPTERS (default adapters), BASE (default minilm), DTYPES (default
# "float32 bfloat16"), MORLAIF (the CLI), WORK (the default adapters' splits, default var/default-data:
# scripts/train_default_adapters.sh writes them).
set -euo pipefail
OUT=${1:-var/dtype-eval}
DATA=${DATA:-../shared/data}
ADAPTERS=${ADAPTERS:-adapters}
BASE=${BASE:-minilm}
MORLAIF=${MORLAIF:-morlaif}
read -r -a DTYPES <<< "${DTYPES:-float32 bfloat16}"
WORK=${WORK:-var/default-data}
if [ ! -d "$DATA" ]; then echo "error: $DATA is absent (the preference data beside the project)" >&2; exit 2; fi
source "$(dirname "$0")/_default_data.sh"   # the same pairs as scripts/eval_default_adapters.sh
for dtype in "${DTYPES[@]}"; do
  if [ -f "$OUT/$dtype/eval.json" ]; then continue; fi
  $MORLAIF pm eval --adapter-root "$ADAPTERS" --base "$BASE" --device cpu --dtype "$dtype" --validation-only \
    "${EVAL_DATA[@]}" "${HUMAN_DATA[@]}" --principles "$DEFAULT_PRINCIPLES" --single single_pm --out "$OUT/$dtype"
done
python3 - "$OUT" "${DTYPES[@]}" <<'PY'
import json, sys
from pathlib import Path
out, dtypes = Path(sys.argv[1]), sys.argv[2:]
evals = {d: json.loads((out / d / "eval.json").read_text()) for d in dtypes}
rows = {}
for d, e in evals.items():
    for r in e["per_principle"]:
        rows.setdefault(f"{r['principle']} ({r['pm']['n']} validation pairs)", {})[d] = r["pm"]
    mo = e.get("multi_objective")
    if mo:
        for name, acc in mo["per_scalarizer"].items():
            rows.setdefault(f"human prefs, {name} ({acc['n']} test pairs)", {})[d] = acc
summary = {k: {d: v for d, v in by.items()} for k, by in rows.items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"{'':<60}" + "".join(f"{d:>24}" for d in dtypes))
for k, by in rows.items():
    cells = "".join(f"{by[d]['accuracy']:>8.3f} [{by[d]['ci95'][0]:.3f}, {by[d]['ci95'][1]:.3f}]" for d in dtypes if d in by)
    print(f"{k:<60}{cells}")
print(f"wrote {out / 'summary.json'}")
PY
