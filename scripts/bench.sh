#!/usr/bin/env bash
# Runs one benchmark scenario of docs/BENCHMARKS.md against a fresh Postbox (release build, a new
# database and broker prefix each run), then stops it. Prints the loadtest's table; writes its JSON to
# bench-results/<scenario>-<time>.json.
#
#   scripts/bench.sh a                 # U=1000, R=2000 msg/s, D=20 s
#   scripts/bench.sh b 800             # U=1000 at R=800 msg/s, D=15 s (search R for (b))
#   scripts/bench.sh c                 # 10 000 idle pollers for 20 s
#   scripts/bench.sh d                 # broadcast to 5 000
#   scripts/bench.sh raw               # the broker alone: publish with confirm + consume, no HTTP, no DB
#   DB=postgres scripts/bench.sh a     # the same on PostgreSQL (a fresh database on 127.0.0.1:5432)
#
# Extra arguments after the scenario (and R for b) go to `postbox-loadtest`; DURATION=s lengthens b and c,
# SENDERS=n changes the concurrent senders of a, b and raw (64), USERS=n resizes c and d,
# BIN=path benchmarks that binary instead of building this tree, RESTART=s restarts Postbox s seconds
# after it started (same database and broker prefix: every poller's next poll is a first poll in the
# new process, a restart storm; give the run a --duration that covers it).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: scripts/bench.sh a|b R|c|d|raw [loadtest args]}
shift
rate=""
if [ "$scenario" = b ]; then
  rate=${1:?usage: scripts/bench.sh b R}
  shift
fi

scripts/services.sh $([ "${DB:-sqlite}" = postgres ] && echo --postgres)
# BIN=path runs another build of the service (an earlier commit's, to compare) instead of building this
# tree; the load generator (postbox-loadtest, its own binary) is this tree's unless LOADTEST=path.
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet --bin postbox
  bin=target/release/postbox
fi
if [ -n "${LOADTEST:-}" ]; then
  loadtest=$LOADTEST
else
  cargo build --release --quiet --bin postbox-loadtest
  loadtest=target/release/postbox-loadtest
fi
ulimit -n "$(ulimit -Hn)" || true

run_id="bench$(date +%s)"
work=$(mktemp -d)
mkdir -p bench-results
json="bench-results/${scenario}${rate:+-$rate}-$(date +%Y%m%d-%H%M%S).json"
if [ "${DB:-sqlite}" = postgres ]; then
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $run_id" >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$run_id"
else
  export DATABASE_URL="sqlite://$work/postbox.db?mode=rwc"
fi
# Short expiry: a run's postboxes leave the broker two minutes after it (they would skew the next run).
export POSTBOX_BROKER_PREFIX=$run_id POSTBOX_SEND_RATE=100000 POSTBOX_MESSAGE_TTL=60 \
  POSTBOX_QUEUE_EXPIRES=120 POSTBOX_DATA_DIR="$work/data" RUST_LOG=${RUST_LOG:-warn}
port=${PORT:-8100}
broker_pid=$(pgrep -x beam.smp | head -1 || true)

# Wait (up to 5 minutes) until RabbitMQ is idle: after a large run it spends minutes expiring and
# deleting thousands of queues, which would be counted against the next run.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$broker_pid/stat" 2>/dev/null || echo 0; }
for _ in $([ -n "$broker_pid" ] && seq 60); do
  before=$(cpu_ticks); sleep 2; after=$(cpu_ticks)
  # Below 0.1 core over 2 s (ticks are 1/100 s).
  [ $((after - before)) -lt 20 ] && break
  echo "waiting for RabbitMQ to settle ($((after - before)) ticks in 2 s)"
done

server_pid=""
restarter=""
# Deletes the run's postboxes through RabbitMQ's management API (enabled by scripts/services.sh;
# ~600 deletes/s). Left to their expiry instead, thousands of queues would be deleted by the broker
# during the next run and skew it (raw baseline 6 300 -> 3 800 msg/s over one series).
delete_queues() {
  local mgmt=${RABBITMQ_MGMT_URL:-http://127.0.0.1:15672}
  command -v rabbitmqctl >/dev/null && command -v curl >/dev/null || return 0
  curl -sf -u guest:guest "$mgmt/api/overview" >/dev/null || return 0
  rabbitmqctl -q list_queues name --no-table-headers 2>/dev/null | grep "^$1\\." \
    | sed "s|^|$mgmt/api/queues/%2f/|" \
    | xargs -r curl -s -o /dev/null -u guest:guest -X DELETE || true
}

# Stops the server whose pid is in $work/server.pid (started by this shell or by the restarter).
stop_server() {
  local pid
  pid=$(cat "$work/server.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

start_server() {
  "$bin" serve --bind "127.0.0.1:$port" >>"$work/server.log" 2>&1 &
  echo $! >"$work/server.pid"
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/api/v1/communication/poll/test/" >/dev/null && break
    sleep 0.1
  done
}

cleanup() {
  if [ -n "$restarter" ]; then kill "$restarter" 2>/dev/null || true; fi
  stop_server
  cp "$work/server.log" "${json%.json}.server.log" 2>/dev/null || true
  rm -rf "$work"
  delete_queues "$run_id"
  if [ "${DB:-sqlite}" = postgres ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $run_id" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

lt=("$loadtest" --json "$json")
[ -n "$broker_pid" ] && lt+=(--broker-pid "$broker_pid")
if [ "$scenario" != raw ]; then
  "$bin" migrate >/dev/null
  admin=$("$bin" create-user --username bench-admin --role admin | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  start_server
  server_pid=$(cat "$work/server.pid")
  lt+=(--url "http://127.0.0.1:$port" --admin-token "$admin" --server-pid "$server_pid")
  if [ -n "${RESTART:-}" ]; then
    # The loadtest's server figures then cover the first process only.
    (
      sleep "$RESTART"
      echo "restarting Postbox ($(date +%T))" >&2
      stop_server
      start_server
      echo "Postbox restarted ($(date +%T))" >&2
    ) &
    restarter=$!
  fi
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
case "$scenario" in
  a) "${lt[@]}" --users 1000 --senders ${SENDERS:-64} --rate 2000 --duration 20 --drain 10 "$@" ;;
  b) "${lt[@]}" --users 1000 --senders ${SENDERS:-64} --rate "$rate" --duration "${DURATION:-15}" --drain 10 "$@" ;;
  c) "${lt[@]}" --mode idle --users "${USERS:-10000}" --duration "${DURATION:-20}" "$@" ;;
  d) "${lt[@]}" --mode broadcast --users "${USERS:-5000}" --duration 5 --drain 5 "$@" ;;
  raw) "${lt[@]}" --mode raw --users 1000 --senders ${SENDERS:-64} --rate 0 --duration 20 --drain 10 "$@" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "JSON: $json"
