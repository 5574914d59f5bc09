#!/usr/bin/env bash
# Runs Postbox on the embedded SQLite database (./postbox.db), starting (or installing) RabbitMQ first.
# Extra arguments go to `postbox serve` (see `--help`); configuration also comes from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
exec cargo run --release --bin postbox -- serve "$@"
