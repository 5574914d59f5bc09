#!/usr/bin/env bash
# Schema-driven fuzzing: schemathesis (from PyPI) against a live Postbox on a fresh SQLite database and a
# real RabbitMQ, with every check on. Fails on any finding.
#   FUZZ_EXAMPLES=N   examples per operation (default 20; CI's bounded run). A longer campaign:
#                     FUZZ_EXAMPLES=500 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${FUZZ_EXAMPLES:-20}"
scripts/services.sh
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "fuzz: installing schemathesis from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis>=4.3,<5"
fi
cargo build --quiet --bin postbox
bin=target/debug/postbox

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export DATABASE_URL="sqlite://$work/postbox.db?mode=rwc"
export POSTBOX_BROKER_PREFIX="fuzz$$"
export POSTBOX_POLL_TIMEOUT=0.2          # long polls and SSE answer fast
export POSTBOX_MAX_HOLD=0.5              # even when the fuzzer asks for a 60 s hold
export POSTBOX_SSE_HEARTBEAT=0.2         # SSE streams beat fast…
export POSTBOX_SSE_MAX_DURATION=1        # …and end after a second
export POSTBOX_SEND_RATE=100000          # the fuzzer sends bursts
export POSTBOX_QUEUE_EXPIRES=300         # leftover queues vanish after 5 minutes
export POSTBOX_DATA_DIR="$work/data"
export POSTBOX_TYPING_RATE=100000        # the fuzzer is one very fast typist
export RUST_LOG="${RUST_LOG:-postbox=warn}"

token_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
admin=$($bin create-user --username fuzz-admin --display-name "Fuzz Admin" --role admin | token_of)
$bin create-user --username peer --display-name Peer --college 1 >/dev/null
$bin create-user --username staffer --display-name Staffer --role staff --college 1 >/dev/null
service=$($bin service-tokens create --name fuzz | token_of)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$bin serve --bind "127.0.0.1:$port" > "$work/postbox.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/api/v1/communication/poll/test/" >/dev/null 2>&1 && break
  sleep 0.1
done

mkdir -p target/fuzz
status=0
fuzz() { # junit-report-name schemathesis-options...
  local report=$1; shift
  schemathesis --config-file tests/fuzz/schemathesis.toml run "http://127.0.0.1:$port/api/openapi.json" \
    --checks all \
    --max-examples "$examples" \
    --request-timeout 10 \
    --report junit --report-junit-path "target/fuzz/$report.xml" \
    --seed "${FUZZ_SEED:-20261124}" "$@" || status=$?
}
fuzz junit --header "Authorization: Token $admin" --exclude-path /api/v1/publish/
# The publish API takes a service token, not a user's.
fuzz junit-publish --header "Authorization: Bearer $service" --include-path /api/v1/publish/
if grep -qE "panicked|ERROR" "$work/postbox.log"; then
  echo "fuzz: the server logged errors:" >&2
  grep -E "panicked|ERROR" "$work/postbox.log" | head -20 >&2
  status=1
fi
exit $status
