#!/usr/bin/env bash
# The PPO demo of docs/ppo.md: SmolLM2-135M-Instruct (LoRA) on HH-RLHF prompts, rewarded by the default adapters
# (adapters/, MiniLM base) through a PM server on loopback, scalarized by adapters/weights.json.
#
#   scripts/ppo_demo.sh [RUN_DIR] [STEPS]        # ~1 min per step on a 2-core CPU
#
# Env: PORT (default 8765), MORLAIF (the CLI, default .venv/bin/morlaif), EXTRA (more `ppo train` options).
# Writes RUN_DIR/metrics.jsonl, RUN_DIR/tb/, RUN_DIR/policy/ and RUN_DIR/rewards.png. Rerun to resume.
set -euo pipefail
RUN=${1:-runs/ppo-demo}
STEPS=${2:-20}
PORT=${PORT:-8765}
MORLAIF=${MORLAIF:-.venv/bin/morlaif}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
mkdir -p "$RUN"

$MORLAIF serve --insecure-dev --adapter-root adapters --scalarizer-file adapters/weights.json --port "$PORT" \
  --log-level warning > "$RUN/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then cat "$RUN/server.log" >&2; exit 1; fi
  sleep 1
done

# LoRA takes a larger learning rate than MORLAIF's full fine-tuning default (1.41e-5).
$MORLAIF ppo train --url "http://127.0.0.1:$PORT" --model smollm2 --weights-file adapters/weights.json \
  --steps "$STEPS" --out "$RUN" --set ppo.batch_size=8 --set ppo.mini_batch_size=4 \
  --set ppo.learning_rate=1e-4 --set generation.max_new_tokens=48 --set run.save_every=5 "${EXTRA_ARGS[@]}"
$MORLAIF ppo plot "$RUN" --out "$RUN/rewards.png"
