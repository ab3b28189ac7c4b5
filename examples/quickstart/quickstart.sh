#!/usr/bin/env bash
# The README's quickstart, as a script that checks what it shows: a POST made twice
# through `idem proxy` executes once and replays; an `execute` call against `idem serve`.
# Uses $IDEM_BIN if set (the tests set it), else builds and runs the binary with cargo.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
idem="${IDEM_BIN:-}"
if [ -z "$idem" ]; then
  cargo build --release -q -p idem-gateway --manifest-path "$here/../../Cargo.toml"
  idem="$here/../../target/release/idem"
fi
# The README uses ports 3000, 8080 and 8081; the tests pick free ones.
up=${UPSTREAM_PORT:-3000} proxy=${PROXY_PORT:-8080} serve=${SERVE_PORT:-8081}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

# 1. A small API that knows nothing about idempotency, on port $up.
python3 "$here/upstream.py" "$up" & pids+=($!)
wait_for http://127.0.0.1:$up/

# 2. idem proxy in front of it (embedded store in ./idem-data by default; here a temp dir).
"$idem" proxy --listen 127.0.0.1:$proxy --upstream http://127.0.0.1:$up --store "$work/idem-data" & pids+=($!)
wait_for http://127.0.0.1:$proxy/

# 3. The same POST twice, with the same key.
first=$(curl -s -i -X POST http://127.0.0.1:$proxy/charges \
  -H 'Idempotency-Key: 6f1c2a34-8e0b-4c1e-9d52-0a7b3c9e4f11' \
  -H 'Content-Type: application/json' -d '{"amount": 1000}')
second=$(curl -s -i -X POST http://127.0.0.1:$proxy/charges \
  -H 'Idempotency-Key: 6f1c2a34-8e0b-4c1e-9d52-0a7b3c9e4f11' \
  -H 'Content-Type: application/json' -d '{"amount": 1000}')
echo "$first"; echo; echo "$second"; echo
grep -qi '^x-idempotent-replayed: false' <<<"$first"
grep -qi '^x-idempotent-replayed: true' <<<"$second"
grep -q '"id": "ch_1"' <<<"$second"   # the same charge, not ch_2

# 4. idem serve: execute an operation at most once.
"$idem" serve --listen 127.0.0.1:$serve --store memory:// --operation payment.charge=http://127.0.0.1:$up/charge & pids+=($!)
wait_for http://127.0.0.1:$serve/v1/openapi.json
executed=$(curl -s -X POST http://127.0.0.1:$serve/v1/idempotency/execute \
  -H 'Idempotency-Key: 0b8e5d6c-3f7a-4a2b-8c1d-9e0f1a2b3c4d' \
  -H 'Content-Type: application/json' \
  -d '{"operation": "payment.charge", "payload": {"amount": 1000}}')
again=$(curl -s -X POST http://127.0.0.1:$serve/v1/idempotency/execute \
  -H 'Idempotency-Key: 0b8e5d6c-3f7a-4a2b-8c1d-9e0f1a2b3c4d' \
  -H 'Content-Type: application/json' \
  -d '{"operation": "payment.charge", "payload": {"amount": 1000}}')
echo "$executed"; echo "$again"
grep -q '"status":"completed"' <<<"$executed"
[ "$executed" = "$again" ]
echo "quickstart: ok"
