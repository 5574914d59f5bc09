#!/usr/bin/env bash
# Makes sure the services Postbox needs run on this machine: RabbitMQ always, PostgreSQL with --postgres.
# Installs them from Debian's packages when missing and starts them when stopped, so a fresh machine
# needs nothing set up by hand. Idempotent: on a machine where both already run it only checks.
set -euo pipefail

want_pg=0
for arg in "$@"; do
  case "$arg" in
    --postgres) want_pg=1 ;;
    *) echo "usage: $0 [--postgres]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_updated=0
apt_install() {
  if [ $apt_updated -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_port() { # port seconds name
  for _ in $(seq 1 "$(( $2 * 4 ))"); do port_open "$1" && return 0; sleep 0.25; done
  echo "error: $3 did not open port $1 within $2 s" >&2; return 1
}

ensure_rabbitmq() {
  if port_open 5672; then
    echo "rabbitmq: running on 127.0.0.1:5672"
  else
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      echo "rabbitmq: not installed; installing rabbitmq-server from Debian's packages"
      apt_install rabbitmq-server
    fi
    if ! port_open 5672; then
      echo "rabbitmq: starting (rabbitmq-server -detached)"
      # Debian's wrapper starts the broker through `su`, which leaves it 1 024 file descriptors; with
      # those it recovers more than ~900 durable queues (leftovers of load tests) so slowly that it
      # seems hung. Raise the soft limit to the hard one, as the service unit does (65 536).
      bin=/usr/lib/rabbitmq/bin/rabbitmq-server
      if [ -x "$bin" ] && id rabbitmq >/dev/null 2>&1; then
        as_root su rabbitmq -s /bin/sh -c \
          "ulimit -n \$(ulimit -Hn) 2>/dev/null; cd /var/lib/rabbitmq && $bin -detached" >/dev/null 2>&1 || true
      else
        as_root rabbitmq-server -detached >/dev/null 2>&1 || true
      fi
    fi
    # A broker recovering many queues takes minutes to open its port.
    wait_port 5672 600 RabbitMQ
    as_root rabbitmqctl -q await_startup --timeout 300 >/dev/null 2>&1 || true
    echo "rabbitmq: running on 127.0.0.1:5672"
  fi
  # The management UI (port 15672) is what operators watch postboxes with; see rabbitmq/README.md.
  if command -v rabbitmq-plugins >/dev/null 2>&1 && ! port_open 15672; then
    as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 \
      && echo "rabbitmq: management UI enabled on http://127.0.0.1:15672" \
      || echo "rabbitmq: could not enable the management plugin (not needed to run Postbox)"
  fi
}

pg_ok() { psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      echo "postgres: not installed; installing postgresql from Debian's packages"
      apt_install postgresql
    fi
    if ! port_open 5432; then
      echo "postgres: starting"
      version=$(ls /etc/postgresql | sort -V | tail -n 1)
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    wait_port 5432 60 PostgreSQL
  fi
  if ! pg_ok; then
    # A fresh install only allows peer login: give the postgres role the test password.
    echo "postgres: setting the postgres role's password for TCP logins"
    as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  fi
  pg_ok || { echo "error: cannot log in to PostgreSQL as postgres on 127.0.0.1:5432" >&2; exit 1; }
  echo "postgres: running on 127.0.0.1:5432"
}

ensure_rabbitmq
if [ $want_pg -eq 1 ]; then ensure_postgres; fi
