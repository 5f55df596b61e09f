#!/usr/bin/env bash
# Run both services in the foreground on 127.0.0.1 (Ctrl-C stops both).
# Defaults: the tiny profile on CPU, encoder on :8001, decoder on :8002. Override with
# TEXTSKETCH_PROFILE, ENCODER_PORT, DECODER_PORT and any TEXTSKETCH_* setting.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export TEXTSKETCH_PROFILE=${TEXTSKETCH_PROFILE:-tiny}
if [[ "$TEXTSKETCH_PROFILE" == tiny* ]]; then
  # Offline: the encoder's captioner and CLIP are tiny random models built in code too.
  export TEXTSKETCH_CAPTION_MODEL=${TEXTSKETCH_CAPTION_MODEL:-tiny}
  export TEXTSKETCH_CLIP_MODEL=${TEXTSKETCH_CLIP_MODEL:-tiny}
fi
ENCODER_PORT=${ENCODER_PORT:-8001}
DECODER_PORT=${DECODER_PORT:-8002}
export TEXTSKETCH_ENCODER_DECODER_URL=${TEXTSKETCH_ENCODER_DECODER_URL:-http://127.0.0.1:$DECODER_PORT}

# The launchers run uvicorn with a graceful-shutdown timeout above each service's own drain
# timeout, a request-head timeout and a connection cap (TEXTSKETCH_SERVER_*, docs/services.md).
"$VENV/bin/python" -m decoder_service --host 127.0.0.1 --port "$DECODER_PORT" &
DECODER_PID=$!
"$VENV/bin/python" -m encoder_service --host 127.0.0.1 --port "$ENCODER_PORT" &
ENCODER_PID=$!
trap 'kill -TERM $ENCODER_PID $DECODER_PID 2>/dev/null; wait' INT TERM EXIT
wait
