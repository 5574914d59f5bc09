#!/usr/bin/env bash
# TLS run: Postbox against RabbitMQ nodes with TLS listeners, with certificates made for this run only.
#
# Generates into a fresh temporary directory a CA, a server certificate for `localhost` (DNS name only,
# so `127.0.0.1` is a wrong host name on purpose), a client certificate and an unrelated second CA, then
# starts two private RabbitMQ nodes (their own names, ports, data and logs there, so the shared broker and
# other tests are not disturbed):
#   pbtls   AMQP over TLS on 127.0.0.1:$TLS_AMQPS_PORT (client certificates verified when offered), plain
#           AMQP on 127.0.0.1:$TLS_PLAIN_PORT, the management API over HTTPS only on 127.0.0.1:$TLS_HTTPS_PORT
#   pbmtls  AMQP over TLS on 127.0.0.1:$TLS_MTLS_PORT with fail_if_no_peer_cert (mutual TLS required)
# then runs the ignored tests tls::* (tests/api/tls.rs) against them, and stops both nodes and removes the
# directory on exit. Nothing generated here is kept or committed.
#   scripts/tls-broker.sh            the whole run (CI runs it through scripts/test.sh)
#   scripts/tls-broker.sh --keep     leave the nodes running and print the environment to reuse them
set -euo pipefail
cd "$(dirname "$0")/.."

amqps_port="${TLS_AMQPS_PORT:-5681}"
plain_port="${TLS_PLAIN_PORT:-5682}"
mtls_port="${TLS_MTLS_PORT:-5683}"
https_port="${TLS_HTTPS_PORT:-15681}"
keep=0
[ "${1:-}" = "--keep" ] && keep=1

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

scripts/services.sh   # installs RabbitMQ when missing (and keeps the shared broker running)
command -v openssl >/dev/null 2>&1 || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null

base="$(mktemp -d /tmp/postbox-tls.XXXXXX)"
certs="$base/certs"
mkdir -p "$certs"

# --- certificates (EC P-256: generated in milliseconds; valid two days) --------------------------------
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
new_ca() { # name subject
  new_key "$certs/$1.key"
  openssl req -x509 -new -key "$certs/$1.key" -out "$certs/$1.pem" -days 2 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
new_leaf() { # name subject extensions
  new_key "$certs/$1.key"
  openssl req -new -key "$certs/$1.key" -out "$certs/$1.csr" -subj "/CN=$2"
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "$3" > "$certs/$1.ext"
  openssl x509 -req -in "$certs/$1.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" -CAcreateserial \
    -out "$certs/$1.pem" -days 2 -extfile "$certs/$1.ext" 2>/dev/null
}
new_ca ca "Postbox TLS test CA"
new_ca other-ca "Some other CA"
new_leaf server localhost $'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth'
new_leaf client postbox-test-client "extendedKeyUsage=clientAuth"
rm -f "$certs"/*.csr "$certs"/*.ext "$certs"/*.srl "$certs/ca.key" "$certs/other-ca.key"

# --- the nodes -----------------------------------------------------------------------------------------
node_env() { # name distribution-port
  # No RABBITMQ_NODE_PORT: the listeners are in rabbitmq.conf (the variable would add a plain one).
  export RABBITMQ_NODENAME="$1@localhost"
  export RABBITMQ_DIST_PORT="$2"
  export RABBITMQ_MNESIA_BASE="$base/$1/mnesia"
  export RABBITMQ_LOG_BASE="$base/$1/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/$1/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$base/$1/rabbitmq"
  export RABBITMQ_PID_FILE="$base/$1/pid"
  export RABBITMQ_USE_LONGNAME=false
}
node_stop() { (node_env "$1" "$2"; as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true); }
node_start() { (
  node_env "$1" "$2"
  as_root rabbitmq-server -detached >/dev/null 2>&1
  # `-detached` returns before the node registers; wait until it answers, then until it has booted.
  for _ in $(seq 1 240); do
    as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  as_root rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup --timeout 120 >/dev/null
); }
tls_options() { # verify settings, as rabbitmq.conf lines
  cat <<EOF
ssl_options.cacertfile = $certs/ca.pem
ssl_options.certfile = $certs/server.pem
ssl_options.keyfile = $certs/server.key
ssl_options.verify = verify_peer
EOF
}

mkdir -p "$base/pbtls/mnesia" "$base/pbtls/log" "$base/pbmtls/mnesia" "$base/pbmtls/log"
echo "[rabbitmq_management]." > "$base/pbtls/enabled_plugins"
echo "[]." > "$base/pbmtls/enabled_plugins"
{
  echo "listeners.tcp.1 = 127.0.0.1:$plain_port"
  echo "listeners.ssl.1 = 127.0.0.1:$amqps_port"
  tls_options
  echo "ssl_options.fail_if_no_peer_cert = false"
  # HTTPS only: with just an ssl listener configured the plugin opens no plain HTTP port.
  echo "management.ssl.port = $https_port"
  echo "management.ssl.ip = 127.0.0.1"
  echo "management.ssl.cacertfile = $certs/ca.pem"
  echo "management.ssl.certfile = $certs/server.pem"
  echo "management.ssl.keyfile = $certs/server.key"
} > "$base/pbtls/rabbitmq.conf"
{
  echo "listeners.tcp = none"
  echo "listeners.ssl.1 = 127.0.0.1:$mtls_port"
  tls_options
  echo "ssl_options.fail_if_no_peer_cert = true"
} > "$base/pbmtls/rabbitmq.conf"
# Debian's wrappers run the node as the rabbitmq user: it must own its directories and read the server's
# key (the client's stays the caller's: the tests read it).
chmod 755 "$base" "$certs"
chmod 644 "$certs"/*.pem
if id rabbitmq >/dev/null 2>&1; then
  as_root chown -R rabbitmq:rabbitmq "$base/pbtls" "$base/pbmtls"
  as_root chgrp rabbitmq "$certs/server.key" && as_root chmod 640 "$certs/server.key"
fi

cleanup() {
  node_stop pbtls "$((amqps_port + 20000))"
  node_stop pbmtls "$((mtls_port + 20000))"
  as_root rm -rf "$base"
}
if [ $keep -eq 0 ]; then trap cleanup EXIT; fi
# Nodes left by an interrupted or --keep run hold the ports: stop them first.
node_stop pbtls "$((amqps_port + 20000))"
node_stop pbmtls "$((mtls_port + 20000))"
for port in "$amqps_port" "$plain_port" "$mtls_port" "$https_port"; do
  if port_open "$port"; then
    echo "tls: port $port is taken; stop what listens there or set TLS_AMQPS_PORT, TLS_PLAIN_PORT, TLS_MTLS_PORT, TLS_HTTPS_PORT" >&2
    exit 1
  fi
done
echo "tls: starting private RabbitMQ nodes pbtls (TLS :$amqps_port, plain :$plain_port, HTTPS management :$https_port) and pbmtls (mutual TLS :$mtls_port)"
started=$SECONDS
node_start pbtls "$((amqps_port + 20000))" & a=$!
node_start pbmtls "$((mtls_port + 20000))" & b=$!
ok=1
wait $a || ok=0
wait $b || ok=0
if [ $ok -eq 0 ]; then
  echo "tls: a node did not start; its logs:" >&2
  as_root sh -c "tail -n 40 $base/*/log/*.log" >&2 || true
  exit 1
fi
# The management listener comes up with the plugin, a moment after the node.
for _ in $(seq 1 120); do port_open "$https_port" && break; sleep 0.25; done
echo "tls: nodes up in $((SECONDS - started)) s"

export POSTBOX_TLS_CERTS="$certs"
export POSTBOX_TLS_AMQPS_PORT="$amqps_port"
export POSTBOX_TLS_PLAIN_PORT="$plain_port"
export POSTBOX_TLS_MTLS_PORT="$mtls_port"
export POSTBOX_TLS_MANAGEMENT_URL="https://localhost:$https_port"
if [ $keep -eq 1 ]; then
  echo "tls: nodes left running (stop them with rabbitmqctl -n pbtls@localhost stop, ... -n pbmtls@localhost stop)"
  env | grep '^POSTBOX_TLS_' | sed 's/^/export /'
  exit 0
fi
cargo test --test api tls:: -- --ignored
