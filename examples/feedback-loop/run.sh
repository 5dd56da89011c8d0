#!/usr/bin/env bash
# The feedback loop on one machine, CPU only, every step real (docs/feedback-loop.md):
#   0. the current model: the local DPO example, trained for a few steps
#   1. serve it with a feedback log; simulated users (kubetune dev loadgen) rate answers and
#      a scripted user sends a 1-5 rating and a correction
#   2. build the data: kubetune feedback build (served feedback + the review files here)
#   3. DPO from the current model on the pairs, with evaluation gates
#   4. the verdict: Promotable or not (a ModelRollout, rollout.yaml, takes it from there on a
#      cluster; `kubetune dev canary` shows a rollout locally)
# Usage: examples/feedback-loop/run.sh   (from anywhere; about 5 minutes on 2 cores)
# PERSONAL_DATA=redact|drop|allow (default redact) is passed to --personal-data.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=examples/feedback-loop
CACHE=${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}
PVC=$CACHE/pvc
WORK=${WORK:-runs/feedback-loop}
PORT=${PORT:-8011}
STEPS=${STEPS:-4}
mkdir -p "$WORK"

echo "== 0. the current model (pvc://checkpoints/local-dpo)"
if [ ! -f "$PVC/checkpoints/local-dpo/config.json" ]; then
  kubetune run examples/local/dpo.yaml --local --nproc 1 --max-steps "$STEPS" \
    --cache-dir "$CACHE" --output-dir "$PVC/checkpoints/local-dpo"
fi

echo "== 1. serve it with a feedback log; users rate the answers"
kubetune serve "$PVC/checkpoints/local-dpo" --served-model-name support-v1 --port "$PORT" \
  --feedback-log "$WORK/feedback.jsonl" --threads 1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
# simulated users: thumbs up/down on /v1/completions answers
kubetune dev loadgen "http://127.0.0.1:$PORT" --count 30 --rate 10 --satisfied-rate 0.5 --seed 1
# a user of the chat endpoint: a 1-5 rating, and a corrected answer
python - "$PORT" <<'PY'
import json, sys, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"

def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)

for question, correction, score in [
    ("how do I reset my password?", "Open Settings, choose Security, then Reset password.", 1),
    ("where is my order?", "Track it under Orders > Track parcel.", 2),
    ("what are your opening hours?", None, 4),
]:
    done = post("/v1/chat/completions", {"messages": [{"role": "user", "content": question}], "max_tokens": 16})
    body = {"id": done["id"], "rating": score}
    if correction:
        body["correction"] = correction
    print("feedback logged:", post("/v1/feedback", body)["logged"])
PY
kill $SERVER; wait $SERVER 2>/dev/null || true; trap - EXIT

echo "== 2. build the dataset (counts only are printed)"
DATA=$PVC/datasets/feedback-loop
kubetune feedback build --feedback "$WORK/feedback.jsonl" \
  --reviews "$HERE/reviews.jsonl" --reviews "$HERE/reviews.csv" \
  --personal-data "${PERSONAL_DATA:-redact}" --out "$DATA"
cp "$HERE/eval.jsonl" "$DATA/eval.jsonl"

echo "== 3. DPO from the current model, gated on evaluation"
kubetune run "$HERE/dpo-from-feedback.yaml" --local --nproc 1 --max-steps "$STEPS" \
  --cache-dir "$CACHE" --output-dir "$WORK/support-dpo-feedback" --fresh

echo "== 4. the verdict (a ModelRollout only takes a Promotable model: $HERE/rollout.yaml)"
python -c "import json,sys; r=json.load(open(sys.argv[1])); print('evaluation', r['verdict'])" \
  "$WORK/support-dpo-feedback/evaluation.json"
