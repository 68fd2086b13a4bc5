#!/usr/bin/env bash
# Makes sure every service otaledger needs answers on loopback: PostgreSQL, RabbitMQ and
# Mosquitto (installed with apt-get and started when down) and the Kafka-API broker tansu
# (installed with cargo and started when down). Safe to run again: it only acts on what is missing.
set -euo pipefail

STATE_DIR="${OTALEDGER_STATE_DIR:-$HOME/.cache/otaledger}"
KAFKA_PORT="${OTALEDGER_KAFKA_PORT:-9092}"
# tansu's storage: durable by default, SQLite in $STATE_DIR/tansu-$KAFKA_PORT/ledger.db, so a
# restart of the broker keeps the ledger (docs/adr/0043; the quick start's configuration asks for
# 250 ms fetch waits and 100 ms batches, which this storage needs). OTALEDGER_TANSU_STORAGE=
# memory://tansu/ asks for memory (faster, forgets on restart): the tests' broker on 9093 and the
# benchmarks' on 9094.
TANSU_STORAGE="${OTALEDGER_TANSU_STORAGE:-sqlite://ledger.db}"
TANSU_DIR="$STATE_DIR/tansu-$KAFKA_PORT"
mkdir -p "$STATE_DIR" "$TANSU_DIR"

log() { printf '[services] %s\n' "$*" >&2; }
SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
mosquitto_stop() {
  port_open 1883 || return 0
  local pid
  pid=$(cat /run/mosquitto/mosquitto.pid 2>/dev/null || pgrep -x mosquitto || true)
  [ -n "$pid" ] && kill $pid || true
  for _ in $(seq 50); do port_open 1883 || break; sleep 0.2; done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do port_open "$port" && return 0; sleep 0.5; done
  log "$name did not open port $port"; return 1
}
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq >&2 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Tools the scripts and the tests run: openssl (development certificates), kill (the tests
# signal brokers they started) and, as clients no one here wrote, curl (HTTPS) and
# mosquitto_pub (MQTT over TLS).
for tool in python3:python3 openssl:openssl /usr/bin/kill:procps curl:curl mosquitto_pub:mosquitto-clients; do
  command -v "${tool%%:*}" >/dev/null || { log "installing ${tool#*:}"; apt_install "${tool#*:}"; }
done

# PostgreSQL
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then log "installing PostgreSQL"; apt_install postgresql; fi
  log "starting PostgreSQL"
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port 5432 PostgreSQL
fi

# RabbitMQ
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || { log "installing RabbitMQ"; apt_install rabbitmq-server; }
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port 5672 RabbitMQ 240
fi
# Its management API, through which otaledger creates each gateway's RabbitMQ user
# (docs/adr/0029). Enabled on the running node (and remembered for its next start). guest may
# use it from loopback only, as RabbitMQ allows guest nowhere else.
if ! port_open 15672; then
  log "enabling RabbitMQ's management plugin"
  rabbitmq-plugins enable --quiet rabbitmq_management >&2
  wait_port 15672 "RabbitMQ management" 120
fi

# Mosquitto. Its defaults (20 QoS 1 messages in flight and 1,000 queued per client) make the
# broker drop device messages queued for the bridge during a burst; otaledger needs it to keep
# them (docs/adr/0006). The settings are added once and the broker restarted to load them.
MOSQ_CONF=/etc/mosquitto/mosquitto.conf
# Installed first: the settings below are written into its configuration.
command -v mosquitto >/dev/null || { log "installing Mosquitto"; apt_install mosquitto; }
if [ -f "$MOSQ_CONF" ] && ! grep -q "otaledger: keep queued QoS 1 messages" "$MOSQ_CONF"; then
  log "configuring Mosquitto to queue instead of dropping QoS 1 messages"
  cat >>"$MOSQ_CONF" <<'CONF'

# otaledger: keep queued QoS 1 messages for slow subscribers instead of dropping them.
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
CONF
  mosquitto_stop
fi

# Queued QoS 1 messages (the bridge's persistent session, commands waiting for devices) and
# sessions survive a restart of Mosquitto: persistence on (Debian's configuration has it), and
# saved every 60 s as well as at a clean stop, so a crash loses at most a minute of queue instead
# of the default half hour.
if [ -f "$MOSQ_CONF" ] && ! grep -q "otaledger: persist sessions and queues" "$MOSQ_CONF"; then
  log "configuring Mosquitto to save its sessions and queues every 60 s"
  {
    printf '\n# otaledger: persist sessions and queues across restarts.\n'
    grep -q "^persistence true" "$MOSQ_CONF" ||
      printf 'persistence true\npersistence_location /var/lib/mosquitto/\n'
    printf 'autosave_interval 60\n'
  } >>"$MOSQ_CONF"
  mosquitto_stop
fi

# Development certificates (docs/adr/0028): a CA and a server certificate for localhost and
# 127.0.0.1, made once with openssl under $STATE_DIR/tls. Mosquitto serves TLS with them on 8883
# beside the plain listener; the API serves HTTPS when given them (http.tls_cert, http.tls_key).
TLS_DIR="$STATE_DIR/tls"
if [ ! -s "$TLS_DIR/server.pem" ]; then
  log "making development TLS certificates in $TLS_DIR"
  (umask 077; mkdir -p "$TLS_DIR")
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=otaledger development CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
  chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
fi
# Mosquitto reads its copy (it runs as user mosquitto; the state directory is root's).
MOSQ_TLS=/etc/mosquitto/certs
if [ -f "$MOSQ_CONF" ] && ! cmp -s "$TLS_DIR/server.pem" "$MOSQ_TLS/otaledger-server.pem" 2>/dev/null; then
  mkdir -p "$MOSQ_TLS"
  cp "$TLS_DIR/ca.pem" "$MOSQ_TLS/otaledger-ca.pem"
  cp "$TLS_DIR/server.pem" "$MOSQ_TLS/otaledger-server.pem"
  cp "$TLS_DIR/server.key" "$MOSQ_TLS/otaledger-server.key"
  chown mosquitto "$MOSQ_TLS"/otaledger-* 2>/dev/null || true
  chmod 600 "$MOSQ_TLS/otaledger-server.key"
fi
if [ -f "$MOSQ_CONF" ] && ! grep -q "otaledger: TLS listener" "$MOSQ_CONF"; then
  log "adding Mosquitto's TLS listener on 8883"
  # Debian's own file names no listener (Mosquitto then listens on 1883 alone); a second
  # listener would end that one, so the plain listener is named first.
  grep -q "^listener 1883" "$MOSQ_CONF" || printf '\nlistener 1883 127.0.0.1\n' >>"$MOSQ_CONF"
  cat >>"$MOSQ_CONF" <<CONF

# otaledger: TLS listener (docs/adr/0028) beside the plain one, written by scripts/services.sh.
listener 8883 127.0.0.1
cafile $MOSQ_TLS/otaledger-ca.pem
certfile $MOSQ_TLS/otaledger-server.pem
keyfile $MOSQ_TLS/otaledger-server.key
CONF
  mosquitto_stop
fi

# RabbitMQ's TLS listener on 5671 beside the plain one, with the same development certificate
# (docs/adr/0028), for amqps:// with amqp.tls_ca. Its copy is readable by user rabbitmq. Added
# once; the broker is restarted to load it (about 15 s).
RMQ_CONF=/etc/rabbitmq/rabbitmq.conf
RMQ_TLS=/etc/rabbitmq/otaledger-tls
if [ -d /etc/rabbitmq ] && ! cmp -s "$TLS_DIR/server.pem" "$RMQ_TLS/server.pem" 2>/dev/null; then
  mkdir -p "$RMQ_TLS"
  cp "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$RMQ_TLS/"
  chown -R rabbitmq "$RMQ_TLS" 2>/dev/null || true
  chmod 600 "$RMQ_TLS/server.key"
fi
if [ -d /etc/rabbitmq ] && ! grep -q "^listeners.ssl" "$RMQ_CONF" 2>/dev/null; then
  log "adding RabbitMQ's TLS listener on 5671 (restarting RabbitMQ)"
  cat >>"$RMQ_CONF" <<CONF
# otaledger: TLS listener (docs/adr/0028), written by scripts/services.sh.
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $RMQ_TLS/ca.pem
ssl_options.certfile = $RMQ_TLS/server.pem
ssl_options.keyfile = $RMQ_TLS/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  rabbitmqctl stop >/dev/null 2>&1 || true
  for _ in $(seq 120); do port_open 5672 || break; sleep 0.5; done
  rabbitmq-server -detached || true
  wait_port 5672 RabbitMQ 240
  wait_port 15672 "RabbitMQ management" 120
fi
port_open 5671 || log "RabbitMQ has no TLS listener on 5671 (see $RMQ_CONF)"

# Mosquitto: device identities (docs/adr/0026). The dynamic-security plugin holds the logins:
# otaledger's admin (adds and removes device logins over $CONTROL), its service login (the
# bridge, the dispatcher) and one login per provisioned device, added by otaledger. Anonymous
# clients are refused. The plugin in Mosquitto 2.0 has no per-user topic patterns, so the
# acl_file's %u patterns confine each device to its own topics. The two passwords are made
# once, kept 0600 under $MQTT_SECRETS; the plugin's file is written again only when it is
# missing or refuses the admin login.
MQTT_SECRETS="$STATE_DIR/mqtt"
DYNSEC_JSON=/var/lib/mosquitto/otaledger-dynsec.json
MOSQ_ACL=/etc/mosquitto/otaledger.acl
if [ -f "$MOSQ_CONF" ]; then
  (umask 077; mkdir -p "$MQTT_SECRETS")
  for who in admin service; do
    [ -s "$MQTT_SECRETS/$who.password" ] ||
      (umask 077; head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$MQTT_SECRETS/$who.password")
  done
  reconfigure=0
  grep -q "otaledger: device identities" "$MOSQ_CONF" || reconfigure=1
  [ -f "$DYNSEC_JSON" ] || reconfigure=1
  if [ "$reconfigure" = 0 ] && port_open 1883 &&
     ! python3 "$SCRIPTS/mqtt_dynsec.py" login 127.0.0.1 1883 otaledger-admin "$MQTT_SECRETS/admin.password"; then
    log "Mosquitto refuses otaledger's admin login: writing its dynamic-security file again (device logins are lost: provision the devices again)"
    reconfigure=1
  fi
  if [ "$reconfigure" = 1 ]; then
    log "configuring Mosquitto's dynamic-security plugin: logins required, devices confined to their own topics"
    plugin=$(find /usr/lib -name mosquitto_dynamic_security.so 2>/dev/null | head -1)
    [ -n "$plugin" ] || { log "mosquitto_dynamic_security.so not found (Debian's mosquitto 2 ships it)"; exit 1; }
    mosquitto_stop
    python3 "$SCRIPTS/mqtt_dynsec.py" write "$DYNSEC_JSON" "$MQTT_SECRETS"
    chown mosquitto:mosquitto "$DYNSEC_JSON" 2>/dev/null || true
    cat >"$MOSQ_ACL" <<'ACL'
# otaledger (docs/adr/0026): a device (user name = device id) publishes only under its own id and
# receives only its own commands; the second pair serves deployments and tests with a topic
# root of two levels ({tenant}/devices). otaledger's own logins are allowed by their roles in the
# dynamic-security plugin, which decides before this file.
pattern write devices/%u/+
pattern read devices/%u/commands
pattern write +/devices/%u/+
pattern read +/devices/%u/commands
ACL
    chmod 644 "$MOSQ_ACL"
    if ! grep -q "otaledger: device identities" "$MOSQ_CONF"; then
      sed -i 's/^allow_anonymous true/allow_anonymous false/' "$MOSQ_CONF"
      cat >>"$MOSQ_CONF" <<CONF

# otaledger: device identities (docs/adr/0026), written by scripts/services.sh.
allow_anonymous false
plugin $plugin
plugin_opt_config_file $DYNSEC_JSON
acl_file $MOSQ_ACL
CONF
    fi
  fi
fi
if ! port_open 1883; then
  log "starting Mosquitto"
  mkdir -p /run/mosquitto && chown mosquitto /run/mosquitto 2>/dev/null || true
  mosquitto -d -c "$MOSQ_CONF"
  wait_port 1883 Mosquitto
fi

# tansu (Kafka API)
loop_alive() { [ -s "$TANSU_DIR/tansu-loop.pid" ] && kill -0 "$(cat "$TANSU_DIR/tansu-loop.pid")" 2>/dev/null; }
STARTED_TANSU=0
if ! port_open "$KAFKA_PORT" && loop_alive; then
  # Our loop is between two runs of the broker (or the broker is starting): wait for it.
  log "tansu on :$KAFKA_PORT is being started again by its loop; waiting"
  wait_port "$KAFKA_PORT" tansu
elif ! port_open "$KAFKA_PORT"; then
  if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    log "installing tansu with cargo (about 10 minutes, once per machine)"
    cargo install tansu --locked --features dynostore,postgres,libsql >&2
  fi
  TANSU=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  log "starting tansu on 127.0.0.1:$KAFKA_PORT ($TANSU_STORAGE)"
  # Started again a second after it exits, as a service manager would (on durable storage the
  # ledger survives; in memory the consumers then stop with ADR 0023's reset error). tansu.pid is
  # the broker's; tansu-loop.pid the loop's (kill it first to stop the broker for good).
  (cd "$TANSU_DIR" && nohup setsid bash -c '
      echo $$ >tansu-loop.pid
      while :; do
        "$0" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
          --storage-engine "$2" >>tansu.log 2>&1 &
        echo $! >tansu.pid
        wait $!
        echo "[services] tansu exited ($?); starting it again in 1 s" >>tansu.log
        sleep 1
      done' "$TANSU" "$KAFKA_PORT" "$TANSU_STORAGE" >/dev/null 2>&1 &)
  STARTED_TANSU=1
  if ! wait_port "$KAFKA_PORT" tansu; then
    loop_alive && kill "$(cat "$TANSU_DIR/tansu-loop.pid")" 2>/dev/null
    kill "$(cat "$TANSU_DIR/tansu.pid" 2>/dev/null)" 2>/dev/null || true
    exit 1
  fi
fi
# tansu 0.6's SQLite storage has no index on its record headers; without one every fetched
# record scans them all (docs/adr/0043). Added once the broker made its tables; idempotent.
case "$TANSU_STORAGE" in
  sqlite://*)
    DB="${TANSU_STORAGE#sqlite://}"
    case "$DB" in /*) ;; *) DB="$TANSU_DIR/$DB" ;; esac
    if [ -e "$DB" ]; then
      python3 "$SCRIPTS/tansu-sqlite-index.py" "$DB" 10 ||
        log "warning: could not index tansu's SQLite headers; fetches will slow as the ledger grows"
    elif [ "$STARTED_TANSU" = 0 ]; then
      log "warning: a broker already listens on :$KAFKA_PORT and $DB does not exist: it is not this script's durable tansu (stop it to get one)"
    fi ;;
esac
log "PostgreSQL :5432, RabbitMQ :5672 (TLS :5671, management :15672), Mosquitto :1883 (TLS :8883) and Kafka :$KAFKA_PORT are up"
