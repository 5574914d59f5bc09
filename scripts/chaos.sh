#!/usr/bin/env bash
# The chaos run (docs/delivery.md, "The chaos run"): a private RabbitMQ node on loopback, the postbox
# binary started by the driver itself, a mixed population of clients and senders, and faults: SIGKILLs
# of Postbox, RabbitMQ stopped and started, connections cut mid-answer, stale polls, overflowing
# postboxes. Exits non-zero on any silent loss.
#   scripts/chaos.sh                     the short run CI does (60 s, 8 faults, SQLite)
#   CHAOS_DURATION=1800 CHAOS_FAULTS=120 CHAOS_RATE=60 scripts/chaos.sh     the long run
#   CHAOS_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/chaos scripts/chaos.sh   on PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."

# CHAOS_NODE and CHAOS_AMQP_PORT let two runs (a long one and CI's) use nodes of their own.
export FAULT_NODE="${CHAOS_NODE:-pbchaos}" FAULT_AMQP_PORT="${CHAOS_AMQP_PORT:-5681}"
export FAULT_BASE="/tmp/postbox-$FAULT_NODE-rabbit"
node="scripts/fault-broker-restart.sh"
cargo build --quiet --bin postbox --bin postbox-chaos
"$node" setup
trap '"$node" stop' EXIT

export CHAOS_AMQP_URL="amqp://guest:guest@127.0.0.1:$FAULT_AMQP_PORT/%2f"
export CHAOS_BROKER_STOP="$node stop" CHAOS_BROKER_START="$node start"
target/debug/postbox-chaos --bin target/debug/postbox "$@"
