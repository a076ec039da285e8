#!/usr/bin/env bash
# Smoke test of one server build, as the release workflow runs it:
# `--help` runs; with SMOKE=serve (default) it also loads a model on the CPU
# and answers /health and /v1/models on 127.0.0.1.
#
#   scripts/smoke-server.sh <server binary> <model.gguf>
set -euo pipefail
exe="$1"
model="$2"
"$exe" --help > /dev/null
echo "--help: ok"
if [ "${SMOKE:-serve}" != serve ]; then
  exit 0
fi
port=18080
"$exe" -m "$model" --host 127.0.0.1 --port "$port" -ngl 0 -c 512 > server.log 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/health" > /dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    cat server.log
    echo "the server exited before it was healthy" >&2
    exit 1
  fi
  sleep 1
done
curl -fsS "http://127.0.0.1:$port/health"
echo
curl -fsS "http://127.0.0.1:$port/v1/models" | tee models.json
echo
grep -q '"data"' models.json
echo "/health and /v1/models: ok"
