#!/usr/bin/env bash
# The main job, end to end on this machine: start both services (tiny profile, CPU),
# wait until ready, encode a Kodak image (examples/kodim23.png, in the repository) with curl, inspect the payload, decode it with
# curl, and stop the services. Output lands in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1
IMAGE=${IMAGE:-examples/kodim23.png}
mkdir -p out

bash scripts/serve.sh > out/services.log 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null || true' EXIT

for url in http://127.0.0.1:8002/health/ready http://127.0.0.1:8001/health/ready; do
  for _ in $(seq 1 180); do
    curl -sf "$url" > /dev/null && break
    sleep 1
  done
  curl -sf "$url" > /dev/null || { echo "service at $url did not become ready; see out/services.log"; exit 1; }
done

# --- the README's curl commands ---
curl -sS -f -X POST "http://127.0.0.1:8001/encode?mode=pics" \
  -H "Content-Type: image/png" --data-binary @"$IMAGE" -o out/kodim23.tsk -D out/encode.headers
curl -sS -f -X POST http://127.0.0.1:8002/decode \
  -H "Content-Type: application/msgpack" -H "Accept: image/png" \
  --data-binary @out/kodim23.tsk -o out/kodim23.decoded.png
# ---
"$VENV/bin/textsketch" info out/kodim23.tsk
grep -i '^x-' out/encode.headers || true
"$VENV/bin/python" -c "from PIL import Image; im = Image.open('out/kodim23.decoded.png'); print('decoded image:', im.size, im.mode)"
echo "demo ok: payload out/kodim23.tsk, reconstruction out/kodim23.decoded.png"
