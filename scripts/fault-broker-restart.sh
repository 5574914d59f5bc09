#!/usr/bin/env bash
# Fault run: a real RabbitMQ restart under load. Starts a private RabbitMQ node (its own port, data and
# logs in a temporary directory, so the shared broker and other tests are not disturbed), then runs the
# ignored test faults::a_real_broker_restart_loses_no_acknowledged_send, which sends through Postbox
# while the node is stopped and started again, and checks that every acknowledged send is delivered
# exactly once (after dedupe by event id).
#   scripts/fault-broker-restart.sh            the whole run
#   scripts/fault-broker-restart.sh stop|start  used by the test to restart the private node
#   scripts/fault-broker-restart.sh setup       start a fresh private node and leave it running
#                                               (scripts/chaos.sh; FAULT_NODE, FAULT_AMQP_PORT, FAULT_BASE)
set -euo pipefail
cd "$(dirname "$0")/.."

port="${FAULT_AMQP_PORT:-5679}"
base="${FAULT_BASE:-/tmp/postbox-fault-rabbit}"
export RABBITMQ_NODENAME="${FAULT_NODE:-pbfault}@localhost"
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_DIST_PORT="$((port + 20000))"
export RABBITMQ_MNESIA_BASE="$base/mnesia"
export RABBITMQ_LOG_BASE="$base/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$base/rabbitmq"
export RABBITMQ_PID_FILE="$base/pid"
export RABBITMQ_USE_LONGNAME=false

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }
node_stop() { as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true; }
node_start() {
  as_root rabbitmq-server -detached >/dev/null 2>&1
  # `-detached` returns before the node registers; wait until it answers, then until it has booted.
  for _ in $(seq 1 240); do
    as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup --timeout 120 >/dev/null
}

setup() {
  scripts/services.sh   # installs RabbitMQ when missing (and keeps the shared broker running)
  mkdir -p "$base/mnesia" "$base/log"
  echo "[]." > "$base/enabled_plugins"
  printf 'loopback_users = none\nlisteners.tcp.default = %s\n' "$port" > "$base/rabbitmq.conf"
  # Debian's wrappers run the node as the rabbitmq user: it must own its directories.
  if id rabbitmq >/dev/null 2>&1; then as_root chown -R rabbitmq:rabbitmq "$base"; fi
  node_stop
  echo "fault: starting a private RabbitMQ node $RABBITMQ_NODENAME on 127.0.0.1:$port"
  node_start
}

case "${1:-run}" in
  stop) node_stop; exit 0 ;;
  start) node_start; exit 0 ;;
  setup) setup; exit 0 ;;
  run) ;;
  *) echo "usage: $0 [stop|start|setup]" >&2; exit 2 ;;
esac

setup
trap node_stop EXIT

export POSTBOX_FAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"
export POSTBOX_FAULT_STOP="$0 stop"
export POSTBOX_FAULT_START="$0 start"
cargo test --test api -- --ignored --exact faults::a_real_broker_restart_loses_no_acknowledged_send --nocapture
