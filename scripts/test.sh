#!/usr/bin/env bash
# The whole test suite, against real services: starts (or installs) RabbitMQ and PostgreSQL, then runs
# every test on the embedded SQLite database and the API tests again on PostgreSQL, the JavaScript
# client's tests, a real RabbitMQ restart under load, the chaos run (short form) and its checker's
# self-check, Postbox against TLS RabbitMQ nodes, and the demo page in two headless browsers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh --postgres
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export POSTBOX_TEST_PG_URL="${POSTBOX_TEST_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

echo "== tests on SQLite"
cargo test --all-targets
echo "== API tests on PostgreSQL"
POSTBOX_TEST_DATABASE=postgres cargo test --test api

echo "== the OpenAPI document validates (openapi-spec-validator)"
if ! command -v openapi-spec-validator >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "openapi-spec-validator>=0.7,<1"
fi
openapi-spec-validator docs/openapi.json

echo "== JavaScript client tests (node's test runner)"
if ! command -v node >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq nodejs >/dev/null;
  else sudo apt-get update -qq && sudo apt-get install -y -qq nodejs >/dev/null; fi
fi
(cd clients/js && node --test test/)

echo "== fault run: a real RabbitMQ restart under load (a private node)"
scripts/fault-broker-restart.sh

echo "== chaos run, short form (scripts/chaos.sh; the long run is in docs/delivery.md)"
scripts/chaos.sh
echo "== the chaos checker finds what clients that ignore their gaps miss (this run must fail)"
set +e
CHAOS_DURATION=30 CHAOS_FAULTS=3 scripts/chaos.sh --no-fill --drain 8
rc=$?
set -e
if [ "$rc" -ne 1 ]; then echo "the chaos checker did not report the losses (exit $rc)"; exit 1; fi

echo "== TLS run: amqps:// and an https management API against private TLS nodes"
scripts/tls-broker.sh

echo "== the demo page in two headless browsers"
scripts/browser-test.sh
