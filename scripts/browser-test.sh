#!/usr/bin/env bash
# The demo page in two real browsers: installs Chromium (Debian's package) and the test's node modules
# when missing, builds target/debug/postbox, makes sure RabbitMQ runs, starts Postbox with --demo on a
# free port with a throwaway SQLite database and broker prefix, creates alice and bob (in one college),
# carol, and a staff user, and runs clients/demo/test/ under node's test runner (alice and bob chat, the
# staff user notifies them; screenshots in target/browser-artifacts/; a host app's page on another origin
# uses Postbox through CORS). The server is stopped however the test ends.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() { # package...: installs, running `apt-get update` first only when the package is not found
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
    if [ $apt_updated -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium_bin" ]; then
  echo "browser-test: installing chromium from Debian's packages"
  apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "browser-test: installing nodejs and npm from Debian's packages"
  apt_install nodejs npm
fi

echo "browser-test: node modules (playwright-core)"
(cd clients/demo/test && npm install --no-audit --no-fund --loglevel=error >/dev/null)

echo "browser-test: building target/debug/postbox"
cargo build --quiet --bin postbox
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac
postbox="$target_dir/debug/postbox"

scripts/services.sh

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
port=$(free_port)
page_port=$(free_port)
export POSTBOX_BIND="127.0.0.1:$port"
# cors.test.js serves a host app's page from this other origin (localhost, not 127.0.0.1, another port).
export POSTBOX_CORS_ORIGINS="http://localhost:$page_port"
export DATABASE_URL="sqlite://$work/postbox.db?mode=rwc"
export POSTBOX_BROKER_PREFIX="pbbrowser$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
export POSTBOX_DATA_DIR="$work/data"
export POSTBOX_MESSAGE_TTL=60       # this run's events and postboxes vanish from RabbitMQ soon after it
export POSTBOX_QUEUE_EXPIRES=120
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export RUST_LOG="${RUST_LOG:-postbox=warn}"

echo "browser-test: starting postbox serve --demo on $POSTBOX_BIND (prefix $POSTBOX_BROKER_PREFIX)"
"$postbox" serve --demo >"$work/server.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 120); do
  if curl -fsS -o /dev/null "http://$POSTBOX_BIND/readyz" 2>/dev/null; then ready=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.25
done
if [ $ready -ne 1 ]; then
  echo "error: postbox did not become ready within 30 s; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

college=7 # any number: colleges are ids on users, and this run's database and broker are its own
user() { # username display-name [create-user options...] -> "id token"
  "$postbox" create-user --username "$1" --display-name "$2" "${@:3}" \
    | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const u=JSON.parse(s);console.log(u.id, u.token)})"
}
read -r alice_id alice_token < <(user alice Alice --college "$college")
read -r bob_id bob_token < <(user bob Bob --college "$college")
read -r carol_id carol_token < <(user carol Carol)
read -r staff_id staff_token < <(user staff Staff --role staff)
[ -n "$alice_token" ] && [ -n "$bob_token" ] && [ -n "$carol_token" ] && [ -n "$staff_token" ] \
  || { echo "error: create-user printed no token" >&2; exit 1; }

mkdir -p "$target_dir/browser-artifacts"
status=0
(
  cd clients/demo/test
  POSTBOX_URL="http://$POSTBOX_BIND" ALICE_ID="$alice_id" ALICE_TOKEN="$alice_token" \
    BOB_ID="$bob_id" BOB_TOKEN="$bob_token" CAROL_ID="$carol_id" CAROL_TOKEN="$carol_token" \
    STAFF_ID="$staff_id" STAFF_TOKEN="$staff_token" COLLEGE_ID="$college" \
    CHROMIUM="$chromium_bin" \
    ARTIFACTS_DIR="$target_dir/browser-artifacts" \
    PAGE_PORT="$page_port" \
    timeout --kill-after=10 210 node --test --test-concurrency=1 two-browsers.test.js cors.test.js
) || status=$?
if [ $status -ne 0 ]; then
  echo "browser-test: FAILED (exit $status); the server's log:" >&2
  tail -n 60 "$work/server.log" >&2
fi
exit $status
